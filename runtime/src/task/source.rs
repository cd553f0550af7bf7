//! A source task: polls the source function, generates watermarks, and takes
//! snapshots between polls, so position and output always agree.

use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};

use super::chain::{Notification, Out};
use super::{Control, TaskEnv, TaskRunner};
use crate::error::TaskError;
use crate::event::{Barrier, MAX_WATERMARK, SnapshotKind};
use crate::executor::MasterMsg;
use crate::functions::{InitContext, SnapshotContext, SourceFunction, SourceOutput, SourcePoll};
use crate::state::operator::OperatorStateStore;
use crate::watermark::{WatermarkGen, WatermarkStrategy};

pub(crate) struct SourceTask<T, S> {
    pub uid: String,
    pub f: S,
    pub head: Out<T>,
    pub store: OperatorStateStore,
    pub restored: bool,
    pub watermarks: Option<WatermarkStrategy<T>>,
    pub subtask: u32,
    pub parallelism: u32,
    pub metrics: std::sync::Arc<crate::metrics::JobMetrics>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    /// Emitted everything; stays alive to take part in checkpoints until all
    /// sources are done, so the final checkpoint covers all output.
    Finished,
    /// Stop-with-savepoint barrier emitted; waiting for the savepoint's outcome.
    Stopping {
        id: u64,
        drain: bool,
    },
}

enum Next {
    Continue,
    Exit,
}

impl<T: crate::functions::Data, S: SourceFunction<T>> TaskRunner for SourceTask<T, S> {
    fn run(mut self: Box<Self>, env: &TaskEnv) -> Result<(), TaskError> {
        let uid = self.uid.clone();
        let user = |error| TaskError::User {
            task: uid.clone(),
            error,
        };
        self.f
            .initialize_state(&mut InitContext::<()> {
                operator_state: &mut self.store,
                keyed: None,
                restored: self.restored,
                // A source has no input.
                in_flight: false,
                subtask: self.subtask,
                parallelism: self.parallelism,
                operator: &self.uid,
                metrics: &self.metrics,
            })
            .map_err(user)?;
        let mut phase = Phase::Running;
        let mut buf = Vec::with_capacity(1024);
        let mut wm = WatermarkGen::new(env.clock.now_ms());
        let mut last_flush = Instant::now();
        loop {
            loop {
                match env.control.try_recv() {
                    Ok(c) => {
                        if let Next::Exit = self.control(env, c, &mut phase)? {
                            return Ok(());
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(TaskError::Cancelled),
                }
            }
            let wait = match phase {
                Phase::Running => {
                    buf.clear();
                    let mut source_wm = None;
                    let status = self
                        .f
                        .poll(&mut SourceOutput {
                            buf: &mut buf,
                            watermark: &mut source_wm,
                        })
                        .map_err(user)?;
                    let had_records = !buf.is_empty();
                    self.emit(env, &mut buf, &mut wm)?;
                    if let Some(w) = source_wm
                        && w > wm.emitted
                    {
                        wm.emitted = w;
                        wm.last_emit_ms = env.clock.now_ms();
                        self.head.watermark(w)?;
                    }
                    match status {
                        SourcePoll::MoreAvailable => {
                            if last_flush.elapsed() >= env.flush_interval {
                                self.head.flush()?;
                                last_flush = Instant::now();
                            }
                            None
                        }
                        SourcePoll::Idle(d) => {
                            if !had_records {
                                self.check_idle(env, &mut wm)?;
                            }
                            self.head.flush()?;
                            last_flush = Instant::now();
                            Some(d)
                        }
                        SourcePoll::Finished => {
                            self.head.watermark(MAX_WATERMARK)?;
                            self.head.flush()?;
                            phase = Phase::Finished;
                            let _ = env.master.send(MasterMsg::SourceFinished {
                                attempt: env.attempt,
                            });
                            None
                        }
                    }
                }
                Phase::Finished | Phase::Stopping { .. } => {
                    self.head.flush()?;
                    Some(Duration::from_secs(3600))
                }
            };
            if let Some(d) = wait {
                match env.control.recv_timeout(d) {
                    Ok(c) => {
                        if let Next::Exit = self.control(env, c, &mut phase)? {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(TaskError::Cancelled),
                }
            }
        }
    }
}

impl<T: crate::functions::Data, S: SourceFunction<T>> SourceTask<T, S> {
    fn user(&self) -> impl Fn(crate::error::UserError) -> TaskError + '_ {
        move |error| TaskError::User {
            task: self.uid.clone(),
            error,
        }
    }

    fn emit(
        &mut self,
        env: &TaskEnv,
        buf: &mut Vec<crate::event::StreamRecord<T>>,
        wm: &mut WatermarkGen,
    ) -> Result<(), TaskError> {
        let Some(strategy) = &self.watermarks else {
            for r in buf.drain(..) {
                self.head.record(r)?;
            }
            return Ok(());
        };
        let strategy = strategy.clone();
        if buf.is_empty() {
            return Ok(());
        }
        let now = env.clock.now_ms();
        wm.last_record_ms = now;
        if wm.idle {
            wm.idle = false;
            self.head.idle(false)?;
        }
        for mut r in buf.drain(..) {
            let ts = match &strategy.timestamp {
                Some(f) => Some(f(&r.value, r.timestamp)),
                None => r.timestamp,
            };
            if let Some(ts) = ts {
                r.timestamp = Some(ts);
                if ts > wm.max_ts {
                    wm.max_ts = ts;
                }
            }
            self.head.record(r)?;
        }
        let c = wm.candidate(strategy.bound_ms);
        if c > wm.emitted
            && (env.watermark_interval_ms == 0
                || now.saturating_sub(wm.last_emit_ms) >= env.watermark_interval_ms)
        {
            wm.emitted = c;
            wm.last_emit_ms = now;
            self.head.watermark(c)?;
        }
        Ok(())
    }

    fn check_idle(&mut self, env: &TaskEnv, wm: &mut WatermarkGen) -> Result<(), TaskError> {
        let Some(s) = &self.watermarks else {
            return Ok(());
        };
        // Emit a pending watermark first: the interval may have held it back.
        let c = wm.candidate(s.bound_ms);
        if c > wm.emitted {
            wm.emitted = c;
            wm.last_emit_ms = env.clock.now_ms();
            self.head.watermark(c)?;
        }
        if let Some(idle_ms) = s.idleness_ms
            && !wm.idle
            && env.clock.now_ms().saturating_sub(wm.last_record_ms) >= idle_ms
        {
            wm.idle = true;
            self.head.idle(true)?;
        }
        Ok(())
    }

    fn control(&mut self, env: &TaskEnv, c: Control, phase: &mut Phase) -> Result<Next, TaskError> {
        match c {
            Control::Cancel => Err(TaskError::Cancelled),
            Control::Trigger(b) => {
                if let Phase::Stopping { id, .. } = phase {
                    env.decline(b.id, format!("{}: stopping with savepoint {id}", env.name));
                    return Ok(Next::Continue);
                }
                self.snapshot(env, &b)?;
                if let SnapshotKind::StopSavepoint { drain } = b.kind {
                    *phase = Phase::Stopping { id: b.id, drain };
                }
                Ok(Next::Continue)
            }
            Control::Notify(n) => {
                match n {
                    Notification::Complete(id) => self.f.notify_checkpoint_complete(id),
                    Notification::Aborted(id) => self.f.notify_checkpoint_aborted(id),
                }
                .map_err(self.user())?;
                self.head.notify(n)?;
                match (n, *phase) {
                    (Notification::Complete(c), Phase::Stopping { id, drain }) if c >= id => {
                        self.head.end(drain)?;
                        self.head.flush()?;
                        Ok(Next::Exit)
                    }
                    (Notification::Aborted(a), Phase::Stopping { id, drain }) if a == id => {
                        if drain {
                            // The final watermark already went out; state downstream
                            // has fired its windows. Only a restart is consistent.
                            return Err(TaskError::State {
                                task: env.name.clone(),
                                message: format!(
                                    "stop-with-savepoint {id} (drain) failed after the final watermark; restarting from the last checkpoint"
                                ),
                            });
                        }
                        *phase = Phase::Running;
                        Ok(Next::Continue)
                    }
                    _ => Ok(Next::Continue),
                }
            }
            Control::FinishSources => {
                self.head.end(true)?;
                self.head.flush()?;
                Ok(Next::Exit)
            }
        }
    }

    fn snapshot(&mut self, env: &TaskEnv, b: &Barrier) -> Result<(), TaskError> {
        env.fault_before_snapshot(b.id)?;
        if let SnapshotKind::StopSavepoint { drain: true } = b.kind {
            self.head.watermark(MAX_WATERMARK)?;
        }
        self.f
            .snapshot_state(&mut SnapshotContext {
                operator_state: &mut self.store,
                checkpoint_id: b.id,
                kind: b.kind,
            })
            .map_err(self.user())?;
        let mut snaps = vec![super::chain::OperatorSnapshot {
            uid: self.uid.clone(),
            key_groups: None,
            keyed_metas: vec![],
            keyed_entries: 0,
            state: crate::checkpoint::format::SubtaskState {
                operator_states: self.store.snapshot()?,
                ..Default::default()
            },
            keyed: None,
        }];
        self.head.barrier(b, &mut snaps)?;
        env.upload(b, snaps, 0)
    }
}
