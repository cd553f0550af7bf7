//! A task whose chain head reads from input channels: barrier alignment,
//! watermark propagation, in-flight recording for unaligned checkpoints.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, TryRecvError};
use serde_bytes::ByteBuf;

use super::aligner::{Action, AlignMode, BarrierAligner};
use super::chain::{Notification, OperatorSnapshot, Out};
use super::{Control, TaskEnv, TaskRunner};
use crate::error::TaskError;
use crate::event::{Barrier, Batch, Event, SnapshotKind, StreamRecord};
use crate::functions::Data;
use crate::valve::{ValveOutput, WatermarkValve};

pub(crate) struct InputTask<T> {
    pub head: Out<T>,
    pub channels: Vec<Receiver<Batch<T>>>,
    pub restored_in_flight: Vec<StreamRecord<T>>,
}

struct State<T> {
    bufs: Vec<std::vec::IntoIter<Event<T>>>,
    blocked: Vec<bool>,
    ended: Vec<bool>,
    recording: Vec<bool>,
    in_flight: Vec<StreamRecord<T>>,
    pending_unaligned: Option<(Barrier, Vec<OperatorSnapshot>)>,
    aligner: BarrierAligner,
    valve: WatermarkValve,
    drain: bool,
    /// The barrier being aligned, for actions triggered by a channel ending.
    last_barrier: Option<Barrier>,
    /// When the first barrier of the checkpoint being aligned arrived.
    align_start: Option<(u64, Instant)>,
    /// A stop-with-savepoint this task snapshotted and whose outcome it has
    /// not been told yet.
    pending_stop: Option<u64>,
}

impl<T> State<T> {
    /// Follows the outcome of a pending stop-with-savepoint.
    fn note(&mut self, c: &Control) {
        if let (Some(id), Control::Notify(n)) = (self.pending_stop, c) {
            match n {
                Notification::Complete(c) if *c >= id => self.pending_stop = None,
                Notification::Aborted(a) if *a == id => self.pending_stop = None,
                _ => {}
            }
        }
    }
}

impl<T: Data> TaskRunner for InputTask<T> {
    fn run(mut self: Box<Self>, env: &TaskEnv) -> Result<(), TaskError> {
        let n = self.channels.len();
        let mut st = State {
            bufs: (0..n).map(|_| Vec::new().into_iter()).collect(),
            blocked: vec![false; n],
            ended: vec![false; n],
            recording: vec![false; n],
            in_flight: Vec::new(),
            pending_unaligned: None,
            aligner: BarrierAligner::new(env.mode, n),
            valve: WatermarkValve::new(n),
            drain: true,
            last_barrier: None,
            align_start: None,
            pending_stop: None,
        };
        // Records persisted in flight by an unaligned checkpoint come first.
        for r in std::mem::take(&mut self.restored_in_flight) {
            self.head.record(r)?;
        }
        let mut rr = 0usize;
        let mut last_flush = Instant::now();
        loop {
            loop {
                match env.control.try_recv() {
                    Ok(c) => {
                        st.note(&c);
                        self.control(env, c)?
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(TaskError::Cancelled),
                }
            }
            if let Some(t) = self.head.next_processing_time() {
                let now = env.clock.now_ms();
                // Due once the clock is past it (see `processing_time`).
                if t < now {
                    self.head.processing_time(now)?;
                }
            }
            if st.ended.iter().all(|e| *e) && st.bufs.iter().all(|b| b.as_slice().is_empty()) {
                // The inputs end after a stop-with-savepoint completed, but
                // the notification that it did may still be on its way (on
                // another connection, from a coordinator on another machine).
                // Ending first would leave this task's sinks without their
                // commit: the stopped job's last output would wait for a
                // restore. Flink's tasks, too, finish only after the final
                // checkpoint's notification.
                while st.pending_stop.is_some() {
                    let c = env.control.recv().map_err(|_| TaskError::Cancelled)?;
                    st.note(&c);
                    self.control(env, c)?;
                }
                self.head.end(st.drain)?;
                self.head.flush()?;
                return Ok(());
            }
            let mut progressed = false;
            for k in 0..n {
                let ch = (rr + k) % n;
                if st.blocked[ch] {
                    continue;
                }
                if st.bufs[ch].as_slice().is_empty() {
                    if st.ended[ch] {
                        continue;
                    }
                    match self.channels[ch].try_recv() {
                        Ok(b) => st.bufs[ch] = b.into_iter(),
                        Err(TryRecvError::Empty) => continue,
                        Err(TryRecvError::Disconnected) => return Err(TaskError::Cancelled),
                    }
                }
                self.drain_channel(env, &mut st, ch)?;
                progressed = true;
                rr = ch + 1;
                break;
            }
            if progressed {
                if last_flush.elapsed() >= env.flush_interval {
                    self.head.flush()?;
                    last_flush = Instant::now();
                }
                continue;
            }
            // Nothing to read: flush what we have before waiting, so that batching
            // never adds latency when the input is slow.
            self.head.flush()?;
            last_flush = Instant::now();
            self.wait(env, &mut st)?;
        }
    }
}

impl<T: Data> InputTask<T> {
    fn control(&mut self, env: &TaskEnv, c: Control) -> Result<(), TaskError> {
        match c {
            Control::Notify(n) => self.head.notify(n),
            Control::Cancel => Err(TaskError::Cancelled),
            Control::Trigger(b) => {
                env.decline(b.id, "trigger sent to a non-source task".into());
                Ok(())
            }
            Control::FinishSources => Ok(()),
        }
    }

    fn wait(&mut self, env: &TaskEnv, st: &mut State<T>) -> Result<(), TaskError> {
        let timeout = self.head.next_processing_time().map(|t| {
            let now = env.clock.now_ms();
            let ms = (t + 1 - now).clamp(0, 1000) as u64;
            // A manual clock moves without waking us: poll it.
            Duration::from_millis(if env.clock.is_manual() { ms.min(5) } else { ms })
        });
        let mut sel = Select::new();
        let ctrl = sel.recv(&env.control);
        let mut map = Vec::new();
        for ch in 0..self.channels.len() {
            if !st.blocked[ch] && !st.ended[ch] && st.bufs[ch].as_slice().is_empty() {
                map.push((sel.recv(&self.channels[ch]), ch));
            }
        }
        let op = match timeout {
            Some(d) => match sel.select_timeout(d) {
                Ok(op) => op,
                Err(_) => return Ok(()),
            },
            None => sel.select(),
        };
        let idx = op.index();
        if idx == ctrl {
            let c = op.recv(&env.control).map_err(|_| TaskError::Cancelled)?;
            st.note(&c);
            return self.control(env, c);
        }
        let ch = map
            .iter()
            .find(|(i, _)| *i == idx)
            .map(|(_, c)| *c)
            .ok_or_else(|| TaskError::Internal("select returned an unknown channel".into()))?;
        let b = op
            .recv(&self.channels[ch])
            .map_err(|_| TaskError::Cancelled)?;
        st.bufs[ch] = b.into_iter();
        Ok(())
    }

    fn drain_channel(
        &mut self,
        env: &TaskEnv,
        st: &mut State<T>,
        ch: usize,
    ) -> Result<(), TaskError> {
        while !st.blocked[ch] {
            let Some(ev) = st.bufs[ch].next() else { break };
            match ev {
                Event::Record(r) => {
                    if st.recording[ch] {
                        st.in_flight.push(r.clone());
                    }
                    self.head.record(r)?;
                }
                Event::Watermark(w) => {
                    let o = st.valve.input_watermark(ch, w);
                    self.valve_out(o)?;
                }
                Event::Idle(idle) => {
                    for o in st.valve.input_idle(ch, idle) {
                        self.valve_out(o)?;
                    }
                }
                Event::Barrier(b) => {
                    if st.align_start.is_none_or(|(id, _)| id != b.id) {
                        st.align_start = Some((b.id, Instant::now()));
                    }
                    st.last_barrier = Some(b.clone());
                    for a in st.aligner.on_barrier(ch, b.id, b.must_align()) {
                        self.apply(env, st, a, &b)?;
                    }
                }
                Event::End { drain } => {
                    st.ended[ch] = true;
                    st.drain &= drain;
                    // An input that ended for good (a bounded source, a
                    // drained stop) no longer holds the watermark back; one
                    // that stopped without draining keeps its last watermark,
                    // or the end of the stop would fire every open event-time
                    // window and timer, which the savepoint has yet to hold.
                    if drain {
                        for o in st.valve.channel_ended(ch) {
                            self.valve_out(o)?;
                        }
                    }
                    // A barrier is only needed for identification here.
                    let actions = st.aligner.on_end(ch);
                    if !actions.is_empty() {
                        let b = st
                            .pending_unaligned
                            .as_ref()
                            .map(|(b, _)| b.clone())
                            .or_else(|| st.last_barrier.clone());
                        if let Some(b) = b {
                            for a in actions {
                                self.apply(env, st, a, &b)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn valve_out(&mut self, o: ValveOutput) -> Result<(), TaskError> {
        match o {
            ValveOutput::None => Ok(()),
            ValveOutput::Watermark(w) => self.head.watermark(w),
            ValveOutput::Idle => self.head.idle(true),
            ValveOutput::Active => self.head.idle(false),
        }
    }

    fn apply(
        &mut self,
        env: &TaskEnv,
        st: &mut State<T>,
        a: Action,
        b: &Barrier,
    ) -> Result<(), TaskError> {
        match a {
            Action::Block(ch) => {
                st.blocked[ch] = true;
            }
            Action::Snapshot { id, record } => {
                env.fault_before_snapshot(id)?;
                if matches!(b.kind, SnapshotKind::StopSavepoint { .. }) {
                    st.pending_stop = Some(id);
                }
                let mut snaps = Vec::new();
                let alignment_ms = match st.align_start {
                    Some((aid, t)) if aid == id => t.elapsed().as_millis() as u64,
                    _ => 0,
                };
                self.head.barrier(b, &mut snaps)?;
                st.blocked.iter_mut().for_each(|x| *x = false);
                st.last_barrier = None;
                if env.mode == AlignMode::Unaligned && !b.must_align() {
                    for ch in record {
                        st.recording[ch] = true;
                    }
                    st.in_flight.clear();
                    st.pending_unaligned = Some((b.clone(), snaps));
                } else {
                    env.upload(b, snaps, alignment_ms)?;
                }
            }
            Action::StopRecording(ch) => st.recording[ch] = false,
            Action::Complete(id) => {
                if let Some((pb, mut snaps)) = st.pending_unaligned.take() {
                    if pb.id != id {
                        return Err(TaskError::Internal(format!(
                            "unaligned checkpoint {id} completed while {} was pending",
                            pb.id
                        )));
                    }
                    let mut encoded = Vec::with_capacity(st.in_flight.len());
                    for r in st.in_flight.drain(..) {
                        encoded.push(ByteBuf::from(postcard::to_allocvec(&r).map_err(|e| {
                            TaskError::State {
                                task: env.name.clone(),
                                message: format!("cannot encode an in-flight record: {e}"),
                            }
                        })?));
                    }
                    attach_in_flight(&env.head_uid, &mut snaps, encoded);
                    env.upload(&pb, snaps, 0)?;
                }
            }
            Action::Abort(id) => {
                st.blocked.iter_mut().for_each(|x| *x = false);
                st.recording.iter_mut().for_each(|x| *x = false);
                st.in_flight.clear();
                st.pending_unaligned = None;
                st.last_barrier = None;
                self.head.notify(Notification::Aborted(id))?;
                env.decline(id, format!("{}: superseded by a newer barrier", env.name));
            }
        }
        Ok(())
    }
}

/// In-flight records belong to the chain head's input.
fn attach_in_flight(head_uid: &str, snaps: &mut Vec<OperatorSnapshot>, records: Vec<ByteBuf>) {
    if let Some(s) = snaps.iter_mut().find(|s| s.uid == head_uid) {
        s.state.in_flight = records;
        return;
    }
    snaps.push(OperatorSnapshot {
        uid: head_uid.to_string(),
        key_groups: None,
        keyed_metas: vec![],
        keyed_entries: 0,
        state: crate::checkpoint::format::SubtaskState {
            in_flight: records,
            ..Default::default()
        },
        keyed: None,
    });
}
