//! The job master: deploys attempts, coordinates checkpoints and savepoints,
//! handles failures with the restart strategy, and serves client requests.
//! One thread owns all of this, so every decision is made in one place.

pub(crate) mod deploy;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use serde::Serialize;

use crate::checkpoint::format::{
    FORMAT_NAME, FORMAT_VERSION, KeyedStateMeta, METADATA_FILE, OperatorMeta, SnapshotMetadata,
    SubtaskMeta,
};
use crate::checkpoint::trigger::{
    TriggerDecision, barriers_can_overtake, decide, may_start_exclusive,
};
use crate::checkpoint::{self, LoadedSnapshot};
use crate::clock::system_now_ms;
use crate::config::JobConfig;
use crate::error::{JobError, TaskError};
use crate::event::{Barrier, SnapshotKind, SnapshotTarget};
use crate::faults::FaultPoint;
use crate::graph::JobGraph;
use crate::metrics::JobMetrics;
use crate::restart::{RestartDecision, RestartTracker};
use crate::storage::{self, CheckpointStorage};
use crate::task::chain::Notification;
use crate::task::{Control, UploadJob};
use deploy::{Deployed, deploy, spawn_uploader, validate_restore};

pub(crate) struct AckedOp {
    pub uid: String,
    pub keyed_metas: Vec<KeyedStateMeta>,
    pub meta: SubtaskMeta,
}

pub(crate) enum MasterMsg {
    Ack {
        attempt: u64,
        checkpoint_id: u64,
        task: (usize, u32),
        ops: Vec<AckedOp>,
        alignment_ms: u64,
    },
    Decline {
        attempt: u64,
        checkpoint_id: u64,
        reason: String,
    },
    SourceFinished {
        attempt: u64,
    },
    TaskExited {
        attempt: u64,
        result: Result<(), TaskError>,
    },
    Savepoint {
        dir: String,
        kind: SnapshotKind,
        reply: Sender<Result<SavepointInfo, JobError>>,
    },
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SavepointInfo {
    pub checkpoint_id: u64,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletedCheckpoint {
    pub id: u64,
    pub kind: SnapshotKind,
    pub path: String,
    pub duration_ms: u64,
    pub size_bytes: u64,
    /// Longest barrier alignment of any subtask.
    pub alignment_ms: u64,
    pub completed_ms: i64,
}

/// A triggered snapshot that has neither completed nor failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointInProgress {
    pub id: u64,
    pub kind: SnapshotKind,
    pub path: String,
    pub started_ms: i64,
    pub acknowledged: u32,
    pub total: u32,
}

pub use runnel_api::JobState;

/// Observable job status; the control API serves this.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub state: JobState,
    pub start_ms: i64,
    pub restarts: u32,
    pub attempt: u64,
    /// Snapshot each attempt restored from (None for a fresh start).
    pub restored_from: Vec<Option<String>>,
    pub completed: Vec<CompletedCheckpoint>,
    pub in_progress: Vec<CheckpointInProgress>,
    /// Completed snapshots of this run, including those retention deleted.
    pub completed_checkpoints: u64,
    pub failed_checkpoints: u64,
    pub last_failure: Option<String>,
    pub parallelism: BTreeMap<String, u32>,
    pub max_parallelism: u32,
}

#[derive(Debug, PartialEq)]
pub enum JobOutcome {
    /// All sources finished and everything drained.
    Finished,
    Cancelled,
    /// Stopped with a savepoint.
    Stopped(SavepointInfo),
}

/// Handle to a running job.
pub struct JobClient {
    handle: JobHandle,
    join: Option<JoinHandle<Result<JobOutcome, JobError>>>,
}

/// A cloneable handle to a running job for other threads (the control server):
/// it sends requests and reads status, but cannot wait for the job's end.
#[derive(Clone)]
pub struct JobHandle {
    tx: Sender<MasterMsg>,
    status: Arc<Mutex<JobStatus>>,
    metrics: Arc<JobMetrics>,
}

/// The eventual outcome of a savepoint request.
pub type SavepointReceiver = Receiver<Result<SavepointInfo, JobError>>;

impl JobHandle {
    fn request(&self, dir: &str, kind: SnapshotKind) -> Result<SavepointReceiver, JobError> {
        let (tx, rx) = bounded(1);
        self.tx
            .send(MasterMsg::Savepoint {
                dir: dir.to_string(),
                kind,
                reply: tx,
            })
            .map_err(|_| JobError::Terminated)?;
        Ok(rx)
    }

    /// Triggers a savepoint into `dir` and returns at once; the receiver yields
    /// the result.
    pub fn trigger_savepoint_async(&self, dir: &str) -> Result<SavepointReceiver, JobError> {
        self.request(dir, SnapshotKind::Savepoint)
    }

    /// Triggers stop-with-savepoint and returns at once.
    pub fn stop_with_savepoint_async(
        &self,
        dir: &str,
        drain: bool,
    ) -> Result<SavepointReceiver, JobError> {
        self.request(dir, SnapshotKind::StopSavepoint { drain })
    }

    pub fn cancel(&self) -> Result<(), JobError> {
        self.tx
            .send(MasterMsg::Cancel)
            .map_err(|_| JobError::Terminated)
    }

    pub fn status(&self) -> JobStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The job's metrics (what `/metrics` serves).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }
}

impl JobClient {
    /// A cloneable handle for other threads.
    pub fn handle(&self) -> JobHandle {
        self.handle.clone()
    }

    /// Triggers a savepoint into `dir` and returns at once; the receiver yields
    /// the result.
    pub fn trigger_savepoint_async(&self, dir: &str) -> Result<SavepointReceiver, JobError> {
        self.handle.trigger_savepoint_async(dir)
    }

    /// Takes a savepoint into `dir` and waits for it.
    pub fn trigger_savepoint(&self, dir: &str) -> Result<SavepointInfo, JobError> {
        self.handle
            .trigger_savepoint_async(dir)?
            .recv()
            .map_err(|_| JobError::Terminated)?
    }

    /// Takes a savepoint and ends the job after it. With `drain`, the final
    /// watermark fires all event-time timers first.
    pub fn stop_with_savepoint(&self, dir: &str, drain: bool) -> Result<SavepointInfo, JobError> {
        self.handle
            .stop_with_savepoint_async(dir, drain)?
            .recv()
            .map_err(|_| JobError::Terminated)?
    }

    pub fn cancel(&self) -> Result<(), JobError> {
        self.handle.cancel()
    }

    pub fn status(&self) -> JobStatus {
        self.handle.status()
    }

    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.handle.metrics()
    }

    pub fn wait(mut self) -> Result<JobOutcome, JobError> {
        match self.join.take() {
            Some(j) => j.join().map_err(|p| JobError::Failed {
                reason: "job master panicked".into(),
                cause: deploy::panic_message(&p),
            })?,
            None => Err(JobError::Terminated),
        }
    }
}

/// Distributed execution: deploys an attempt's tasks elsewhere (on workers)
/// and returns proxies whose control channels reach them; the job master runs
/// checkpoints, failures and restarts over them exactly as over local tasks.
pub(crate) trait AttemptDeployer: Send {
    fn deploy(
        &mut self,
        graph: &JobGraph,
        config: &JobConfig,
        attempt: u64,
        restore: Option<&str>,
        master: &Sender<MasterMsg>,
    ) -> Result<Deployed, TaskError>;
}

pub(crate) fn start(graph: JobGraph, config: JobConfig) -> Result<JobClient, JobError> {
    start_with(graph, config, None)
}

pub(crate) fn start_with(
    graph: JobGraph,
    config: JobConfig,
    deployer: Option<Box<dyn AttemptDeployer>>,
) -> Result<JobClient, JobError> {
    let (tx, rx) = unbounded();
    let status = Arc::new(Mutex::new(JobStatus {
        name: config.name.clone(),
        state: JobState::Created,
        start_ms: system_now_ms(),
        restarts: 0,
        attempt: 0,
        restored_from: vec![],
        completed: vec![],
        in_progress: vec![],
        completed_checkpoints: 0,
        failed_checkpoints: 0,
        last_failure: None,
        max_parallelism: config.max_parallelism,
        parallelism: deploy::effective_parallelism(&graph, &config)
            .into_iter()
            .zip(graph.nodes.iter())
            .map(|(p, n)| (n.uid.clone(), p))
            .collect(),
    }));
    let checkpoint_storage = match &config.checkpoint.storage {
        Some(uri) => Some(storage::open(uri)?),
        None => None,
    };
    // Resolve the initial restore before starting, so a bad path fails fast.
    let initial = match &config.restore {
        None => None,
        Some(r) => {
            let snap = if r.latest {
                checkpoint::load_latest(&r.path)?
            } else {
                checkpoint::load_snapshot(&r.path)?
            };
            validate_restore(&graph, &config, &snap, r.allow_non_restored_state)?;
            Some(snap)
        }
    };
    let initial_restore = initial.as_ref().map(|s| s.uri.clone());
    let metrics = graph.metrics.clone();
    let mut master = Master {
        deployer,
        metrics: metrics.clone(),
        graph,
        config,
        rx,
        tx: tx.clone(),
        status: status.clone(),
        checkpoint_storage,
        initial_restore,
        initial_snapshot: initial,
        next_id: 1,
        completed: Vec::new(),
        clock_base: Instant::now(),
    };
    master.init_next_id()?;
    // Before anything of this run reaches the checkpoint directory: from now
    // on "the latest checkpoint" there means this run's (`lineage`).
    if let Some(st) = &master.checkpoint_storage {
        checkpoint::lineage::start(
            st.as_ref(),
            master.next_id,
            master.initial_restore.as_deref(),
        )?;
    }
    let join = std::thread::Builder::new()
        .name("job-master".into())
        .spawn(move || master.run())
        .map_err(|e| JobError::InvalidConfig(format!("cannot start the job master: {e}")))?;
    Ok(JobClient {
        handle: JobHandle {
            tx,
            status,
            metrics,
        },
        join: Some(join),
    })
}

struct Pending {
    kind: SnapshotKind,
    target: Arc<SnapshotTarget>,
    started: u64,
    started_ms: i64,
    alignment_ms: u64,
    acks: HashMap<(usize, u32), Vec<AckedOp>>,
    reply: Option<Sender<Result<SavepointInfo, JobError>>>,
    is_final: bool,
}

enum AttemptEnd {
    Finished,
    Stopped(SavepointInfo),
    Cancelled,
    Failed(TaskError),
}

struct Master {
    graph: JobGraph,
    config: JobConfig,
    rx: Receiver<MasterMsg>,
    tx: Sender<MasterMsg>,
    status: Arc<Mutex<JobStatus>>,
    checkpoint_storage: Option<Arc<dyn CheckpointStorage>>,
    initial_restore: Option<String>,
    /// The snapshot loaded to validate the restore, kept for the first
    /// attempt: loading it again would double the restore time (and, with
    /// both in memory at once, its footprint).
    initial_snapshot: Option<LoadedSnapshot>,
    next_id: u64,
    /// Completed snapshots usable for recovery, oldest first.
    completed: Vec<CompletedCheckpoint>,
    clock_base: Instant,
    metrics: Arc<JobMetrics>,
    deployer: Option<Box<dyn AttemptDeployer>>,
}

impl Master {
    fn now(&self) -> u64 {
        self.clock_base.elapsed().as_millis() as u64
    }

    fn set_status(&self, f: impl FnOnce(&mut JobStatus)) {
        let mut g = match self.status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }

    /// Checkpoint ids continue after the restored snapshot and after anything
    /// already in the checkpoint directory (checkpoints, savepoint references
    /// and lineage markers), so ids never collide and the highest id there is
    /// the newest snapshot.
    fn init_next_id(&mut self) -> Result<(), JobError> {
        let mut max = 0;
        if let Some(uri) = &self.initial_restore {
            max = checkpoint::read_metadata(uri)?.checkpoint_id;
        }
        if let Some(uri) = &self.config.checkpoint.storage
            && let Some((id, _)) = checkpoint::list_checkpoints(uri)?.first()
        {
            max = max.max(*id);
        }
        if let Some(st) = &self.checkpoint_storage {
            if let Some(id) = checkpoint::savepoint_ref::ref_ids(st.as_ref())?.first() {
                max = max.max(*id);
            }
            // A marker names the first id of a run, which that run may not
            // have used: a run that wrote nothing leaves its ids to the next
            // (and two coordinators racing from the same state still race for
            // the same checkpoint number, where `_metadata` decides).
            if let Some(id) = checkpoint::lineage::marker_ids(st.as_ref())?.first() {
                max = max.max(id.saturating_sub(1));
            }
        }
        self.next_id = max + 1;
        Ok(())
    }

    fn run(mut self) -> Result<JobOutcome, JobError> {
        let mut tracker = RestartTracker::new(self.config.restart.clone());
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let restore = self.pick_restore();
            let kept = self
                .initial_snapshot
                .take()
                .filter(|s| restore.as_deref() == Some(s.uri.as_str()));
            let mut snap = match &restore {
                None => None,
                Some(_) if kept.is_some() => kept,
                Some(uri) => match checkpoint::load_snapshot(uri) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        self.set_status(|s| s.state = JobState::Failed);
                        return Err(JobError::Restore(e));
                    }
                },
            };
            if let Some(s) = &snap {
                tracing::info!(attempt, snapshot = %s.uri, checkpoint = s.metadata.checkpoint_id, "restoring");
            } else {
                tracing::info!(attempt, "starting without restored state");
            }
            self.set_status(|s| {
                s.attempt = attempt;
                s.state = JobState::Running;
                s.restored_from.push(restore.clone());
            });
            self.metrics.running.set(1);
            let end = self.run_attempt(attempt, snap.as_mut());
            self.metrics.running.set(0);
            self.set_status(|s| s.in_progress.clear());
            drop(snap);
            match end {
                AttemptEnd::Finished => {
                    self.set_status(|s| s.state = JobState::Finished);
                    return Ok(JobOutcome::Finished);
                }
                AttemptEnd::Stopped(info) => {
                    self.set_status(|s| s.state = JobState::Stopped);
                    return Ok(JobOutcome::Stopped(info));
                }
                AttemptEnd::Cancelled => {
                    if !self.config.checkpoint.retain_on_cancellation {
                        self.dispose_checkpoints();
                    }
                    self.set_status(|s| s.state = JobState::Cancelled);
                    return Ok(JobOutcome::Cancelled);
                }
                AttemptEnd::Failed(e) => {
                    let msg = e.to_string();
                    tracing::warn!(attempt, error = %msg, "attempt failed");
                    self.set_status(|s| {
                        s.last_failure = Some(msg.clone());
                        s.state = JobState::Restarting;
                    });
                    let decision = if let TaskError::Incompatible(_) = e {
                        RestartDecision::GiveUp {
                            reason: "restored state is incompatible with the job".into(),
                        }
                    } else if let TaskError::User { error, .. } = &e
                        && error.is_fatal()
                    {
                        RestartDecision::GiveUp {
                            reason: "a function reported an error that restarting cannot fix"
                                .into(),
                        }
                    } else {
                        tracker.on_failure(self.now())
                    };
                    match decision {
                        RestartDecision::GiveUp { reason } => {
                            self.set_status(|s| s.state = JobState::Failed);
                            return Err(JobError::Failed { reason, cause: msg });
                        }
                        RestartDecision::Restart { delay_ms, .. } => {
                            self.set_status(|s| s.restarts += 1);
                            self.metrics.restarts.inc();
                            if self.sleep_interruptibly(Duration::from_millis(delay_ms)) {
                                self.dispose_checkpoints_if_needed();
                                self.set_status(|s| s.state = JobState::Cancelled);
                                return Ok(JobOutcome::Cancelled);
                            }
                        }
                    }
                }
            }
        }
    }

    fn dispose_checkpoints_if_needed(&self) {
        if !self.config.checkpoint.retain_on_cancellation {
            self.dispose_checkpoints();
        }
    }

    /// Latest completed snapshot of this run, else the one the job started from.
    fn pick_restore(&self) -> Option<String> {
        self.completed
            .last()
            .map(|c| c.path.clone())
            .or_else(|| self.initial_restore.clone())
    }

    /// Waits during a restart delay; returns true if the job was cancelled.
    fn sleep_interruptibly(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left) {
                Ok(MasterMsg::Cancel) => return true,
                Ok(MasterMsg::Savepoint { reply, .. }) => {
                    let _ = reply.send(Err(JobError::Rejected("the job is restarting".into())));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    fn dispose_checkpoints(&self) {
        let Some(st) = &self.checkpoint_storage else {
            return;
        };
        for c in &self.completed {
            if c.kind == SnapshotKind::Checkpoint {
                let _ = st.delete_dir(&format!("chk-{}", c.id));
            } else {
                // The savepoint stays (the user owns it); "the latest
                // checkpoint" of a cancelled job must not lead back to it.
                let _ = st.delete(&checkpoint::savepoint_ref::ref_name(c.id));
            }
        }
    }

    fn run_attempt(&mut self, attempt: u64, snap: Option<&mut LoadedSnapshot>) -> AttemptEnd {
        let (up_tx, up_rx) = unbounded::<UploadJob>();
        let uploader = match spawn_uploader(up_rx, self.tx.clone()) {
            Ok(j) => j,
            Err(e) => return AttemptEnd::Failed(TaskError::Internal(format!("uploader: {e}"))),
        };
        let deployed = match &mut self.deployer {
            Some(d) => d.deploy(
                &self.graph,
                &self.config,
                attempt,
                snap.map(|s| s.uri.as_str()),
                &self.tx,
            ),
            None => deploy(
                &self.graph,
                &self.config,
                attempt,
                snap,
                &self.tx,
                &up_tx,
                &self.metrics,
            ),
        };
        let deployed = match deployed {
            Ok(d) => d,
            Err(e) => {
                drop(up_tx);
                let _ = uploader.join();
                return AttemptEnd::Failed(e);
            }
        };
        drop(up_tx);
        let mut run = AttemptRun {
            attempt,
            d: deployed,
            pending: BTreeMap::new(),
            sources_finished: 0,
            exited: 0,
            started: self.now(),
            last_trigger: None,
            last_end: None,
            consecutive_failures: 0,
            final_triggered: false,
            final_deferred: false,
            queued: VecDeque::new(),
            stopping: None,
        };
        let end = self.supervise(&mut run);
        self.teardown(&mut run);
        // Once the uploader has drained, nothing writes into pending snapshot
        // directories any more: discard them, they can never complete.
        let _ = uploader.join();
        for (id, p) in std::mem::take(&mut run.pending) {
            if let Err(e) = checkpoint::discard_incomplete(p.target.storage.as_ref(), &p.target.dir)
            {
                tracing::warn!(id, error = %e, "could not discard an incomplete snapshot");
            }
            if let Some(r) = p.reply {
                let _ = r.send(Err(JobError::Rejected(
                    "the attempt ended before the savepoint completed".into(),
                )));
            }
        }
        for q in std::mem::take(&mut run.queued) {
            let _ = q.reply.send(Err(JobError::Rejected(
                "the attempt ended before the savepoint started".into(),
            )));
        }
        end
    }

    fn supervise(&mut self, run: &mut AttemptRun) -> AttemptEnd {
        let total = run.d.tasks.len();
        loop {
            // Periodic trigger and timeouts.
            let now = self.now();
            self.start_waiting(run);
            let mut wait = Duration::from_millis(500);
            let stop_pending = run
                .pending
                .values()
                .any(|p| matches!(p.kind, SnapshotKind::StopSavepoint { .. }));
            // Where barriers can overtake, savepoints are exclusive (see
            // `may_start_exclusive`); with aligned barriers, periodic
            // checkpoints run beside them and only count themselves.
            let overtaking = barriers_can_overtake(&self.config.checkpoint);
            let savepoint_active = overtaking
                && (!run.queued.is_empty() || run.pending.values().any(|p| p.kind.is_savepoint()));
            let in_progress = if overtaking {
                run.pending.len()
            } else {
                run.pending
                    .values()
                    .filter(|p| p.kind == SnapshotKind::Checkpoint)
                    .count()
            };
            if !run.final_triggered
                && !stop_pending
                && run.stopping.is_none()
                && run.sources_finished < run.d.source_subtasks
            {
                match decide(
                    &self.config.checkpoint,
                    now,
                    run.started,
                    run.last_trigger,
                    run.last_end,
                    in_progress,
                    savepoint_active,
                ) {
                    TriggerDecision::Now => {
                        if let Err(e) =
                            self.trigger(run, SnapshotKind::Checkpoint, None, None, false)
                        {
                            tracing::warn!(error = %e, "checkpoint trigger failed");
                        }
                    }
                    TriggerDecision::At(t) => wait = wait.min(Duration::from_millis(t - now)),
                    _ => {}
                }
            }
            let expired: Vec<u64> = run
                .pending
                .iter()
                .filter(|(_, p)| now.saturating_sub(p.started) >= self.config.checkpoint.timeout_ms)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                let reason = format!(
                    "checkpoint {id} expired after {} ms",
                    self.config.checkpoint.timeout_ms
                );
                if let Some(end) = self.fail_checkpoint(run, id, reason) {
                    return end;
                }
            }
            if let Some(p) = run.pending.values().map(|p| p.started).min() {
                let deadline = p + self.config.checkpoint.timeout_ms;
                wait = wait.min(Duration::from_millis(deadline.saturating_sub(now).max(1)));
            }
            let msg = match self.rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return AttemptEnd::Cancelled,
            };
            match msg {
                MasterMsg::Ack {
                    attempt,
                    checkpoint_id,
                    task,
                    ops,
                    alignment_ms,
                } if attempt == run.attempt => {
                    let Some(p) = run.pending.get_mut(&checkpoint_id) else {
                        continue;
                    };
                    p.acks.insert(task, ops);
                    p.alignment_ms = p.alignment_ms.max(alignment_ms);
                    if p.acks.len() == total {
                        let end = self.complete(run, checkpoint_id);
                        self.publish_pending(run);
                        if let Some(end) = end {
                            return end;
                        }
                    } else {
                        self.publish_pending(run);
                    }
                }
                MasterMsg::Decline {
                    attempt,
                    checkpoint_id,
                    reason,
                } if attempt == run.attempt => {
                    if run.pending.contains_key(&checkpoint_id)
                        && let Some(end) = self.fail_checkpoint(run, checkpoint_id, reason)
                    {
                        return end;
                    }
                }
                MasterMsg::SourceFinished { attempt } if attempt == run.attempt => {
                    run.sources_finished += 1;
                    if run.sources_finished == run.d.source_subtasks && run.stopping.is_none() {
                        self.finish_sources(run);
                    }
                }
                MasterMsg::TaskExited { attempt, result } if attempt == run.attempt => {
                    run.exited += 1;
                    match result {
                        Ok(()) => {
                            if run.exited == total {
                                return match run.stopping.take() {
                                    Some(info) => AttemptEnd::Stopped(info),
                                    None => AttemptEnd::Finished,
                                };
                            }
                        }
                        Err(e) => return AttemptEnd::Failed(self.first_real_error(run, e)),
                    }
                }
                MasterMsg::Savepoint { dir, kind, reply } => {
                    let is_stop =
                        |k: &SnapshotKind| matches!(k, SnapshotKind::StopSavepoint { .. });
                    let stop_pending = run.pending.values().any(|p| is_stop(&p.kind))
                        || run.queued.iter().any(|q| is_stop(&q.kind));
                    if run.stopping.is_some() || run.final_triggered || stop_pending {
                        let _ = reply.send(Err(JobError::Rejected("the job is finishing".into())));
                        continue;
                    }
                    run.queued.push_back(QueuedSavepoint { dir, kind, reply });
                    self.start_waiting(run);
                }
                MasterMsg::Cancel => return AttemptEnd::Cancelled,
                _ => {} // A message from an earlier attempt: fenced off.
            }
        }
    }

    /// A failing task makes its neighbours fail with `Cancelled` (their channels
    /// close); report the root cause if it arrives shortly.
    fn first_real_error(&self, run: &mut AttemptRun, e: TaskError) -> TaskError {
        if !matches!(e, TaskError::Cancelled) {
            return e;
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(m) = self.rx.recv_deadline(deadline) {
            match m {
                MasterMsg::TaskExited { attempt, result } if attempt == run.attempt => {
                    run.exited += 1;
                    if let Err(e2) = result
                        && !matches!(e2, TaskError::Cancelled)
                    {
                        return e2;
                    }
                }
                other => self.defer(other),
            }
        }
        e
    }

    fn finish_sources(&mut self, run: &mut AttemptRun) {
        // Savepoints not started yet cannot be taken any more: the final
        // checkpoint is the last snapshot.
        for q in std::mem::take(&mut run.queued) {
            let _ = q
                .reply
                .send(Err(JobError::Rejected("the job is finishing".into())));
        }
        if self.checkpoint_storage.is_some() && self.config.checkpoint.interval_ms.is_some() {
            // A final checkpoint, so that everything emitted is covered by a
            // completed checkpoint before the job ends; once the snapshots in
            // progress are done.
            run.final_deferred = true;
            self.start_waiting(run);
        } else {
            self.send_finish(run);
        }
        run.final_triggered = true;
    }

    /// Starts the final checkpoint or the requested savepoints: at once with
    /// aligned barriers; where barriers can overtake (unaligned and
    /// at-least-once modes), one at a time and only when no snapshot is in
    /// progress, since a task abandons a snapshot that a newer barrier
    /// overtakes, which would fail the checkpoint in progress (counted
    /// against the tolerable failures) or the savepoint.
    fn start_waiting(&mut self, run: &mut AttemptRun) {
        let overtaking = barriers_can_overtake(&self.config.checkpoint);
        while may_start_exclusive(overtaking, run.pending.len()) {
            if run.final_deferred {
                run.final_deferred = false;
                if let Err(e) = self.trigger(run, SnapshotKind::Checkpoint, None, None, true) {
                    tracing::warn!(error = %e, "final checkpoint could not be triggered; finishing without it");
                    self.send_finish(run);
                }
                return;
            }
            let Some(q) = run.queued.pop_front() else {
                return;
            };
            if let Err(e) = self.trigger(run, q.kind, Some(q.dir), Some(q.reply.clone()), false) {
                let _ = q.reply.send(Err(e));
            }
        }
    }

    fn send_finish(&self, run: &AttemptRun) {
        for t in run.d.tasks.iter().filter(|t| t.is_source) {
            let _ = t.control.send(Control::FinishSources);
        }
    }

    fn trigger(
        &mut self,
        run: &mut AttemptRun,
        kind: SnapshotKind,
        dir: Option<String>,
        reply: Option<Sender<Result<SavepointInfo, JobError>>>,
        is_final: bool,
    ) -> Result<(), JobError> {
        let id = self.next_id;
        let target = match (&kind, dir) {
            (SnapshotKind::Checkpoint, _) => {
                let st = self
                    .checkpoint_storage
                    .clone()
                    .ok_or_else(|| JobError::InvalidConfig("no checkpoint storage".into()))?;
                let d = format!("chk-{id}");
                SnapshotTarget {
                    location: st.uri(&d),
                    storage: st,
                    dir: d,
                }
            }
            (_, Some(dir)) => {
                let st = storage::open(&dir)?;
                let d = format!("savepoint-{id}-{:06x}", rand::random::<u32>() & 0xff_ffff);
                SnapshotTarget {
                    location: st.uri(&d),
                    storage: st,
                    dir: d,
                }
            }
            (_, None) => {
                return Err(JobError::InvalidConfig(
                    "a savepoint needs a target directory".into(),
                ));
            }
        };
        self.next_id += 1;
        let barrier = Barrier {
            id,
            timestamp_ms: system_now_ms(),
            kind,
            target: Arc::new(target),
            is_final,
        };
        let now = self.now();
        if kind == SnapshotKind::Checkpoint && !is_final {
            run.last_trigger = Some(now);
        }
        tracing::debug!(id, ?kind, target = %barrier.target.location, "triggering");
        run.pending.insert(
            id,
            Pending {
                kind,
                target: barrier.target.clone(),
                started: now,
                started_ms: system_now_ms(),
                alignment_ms: 0,
                acks: HashMap::new(),
                reply,
                is_final,
            },
        );
        self.publish_pending(run);
        for t in run.d.tasks.iter().filter(|t| t.is_source) {
            let _ = t.control.send(Control::Trigger(barrier.clone()));
        }
        Ok(())
    }

    fn fail_checkpoint(
        &mut self,
        run: &mut AttemptRun,
        id: u64,
        reason: String,
    ) -> Option<AttemptEnd> {
        let p = run.pending.remove(&id)?;
        tracing::warn!(id, reason = %reason, "checkpoint failed");
        self.set_status(|s| s.failed_checkpoints += 1);
        self.metrics.checkpoints_failed.inc();
        self.publish_pending(run);
        if let Err(e) = checkpoint::discard_incomplete(p.target.storage.as_ref(), &p.target.dir) {
            tracing::warn!(id, error = %e, "could not discard a failed snapshot");
        }
        for t in &run.d.tasks {
            let _ = t.control.send(Control::Notify(Notification::Aborted(id)));
        }
        if let Some(r) = p.reply {
            let _ = r.send(Err(JobError::Rejected(format!(
                "savepoint {id} failed: {reason}"
            ))));
        }
        if p.is_final {
            // Retry the final checkpoint; the job cannot finish without it.
            if let Err(e) = self.trigger(run, SnapshotKind::Checkpoint, None, None, true) {
                tracing::warn!(error = %e, "final checkpoint retry failed; finishing");
                self.send_finish(run);
            }
            return None;
        }
        if p.kind == SnapshotKind::Checkpoint {
            run.last_end = Some(self.now());
            run.consecutive_failures += 1;
            if run.consecutive_failures > self.config.checkpoint.tolerable_failures {
                return Some(AttemptEnd::Failed(TaskError::TooManyCheckpointFailures {
                    tolerable: self.config.checkpoint.tolerable_failures,
                    last: reason,
                }));
            }
        }
        None
    }

    fn complete(&mut self, run: &mut AttemptRun, id: u64) -> Option<AttemptEnd> {
        let p = run.pending.remove(&id)?;
        let fault = |point: FaultPoint| -> Option<AttemptEnd> {
            self.config
                .faults
                .should_fail(&point)
                .then(|| AttemptEnd::Failed(TaskError::Injected(format!("{point:?}"))))
        };
        if let Some(end) = fault(FaultPoint::BeforeMetadata { checkpoint_id: id }) {
            return Some(end);
        }
        let mut by_op: BTreeMap<String, (Vec<KeyedStateMeta>, Vec<SubtaskMeta>)> = BTreeMap::new();
        let mut own_files = Vec::new();
        for (_, ops) in p.acks {
            for op in ops {
                let e = by_op.entry(op.uid).or_default();
                if e.0.is_empty() {
                    e.0 = op.keyed_metas;
                }
                own_files.push(storage::join(&p.target.dir, &op.meta.file));
                e.1.push(op.meta);
            }
        }
        let mut size = 0;
        let operators = by_op
            .into_iter()
            .map(|(uid, (keyed_states, mut subtasks))| {
                subtasks.sort_by_key(|s| s.index);
                size += subtasks.iter().map(|s| s.size).sum::<u64>();
                OperatorMeta {
                    parallelism: run
                        .d
                        .parallelism
                        .get(&uid)
                        .copied()
                        .unwrap_or(subtasks.len() as u32),
                    uid,
                    keyed_states,
                    subtasks,
                }
            })
            .collect();
        let md = SnapshotMetadata {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            kind: if p.kind.is_savepoint() {
                "savepoint"
            } else {
                "checkpoint"
            }
            .into(),
            checkpoint_id: id,
            job_name: self.config.name.clone(),
            created_ms: system_now_ms(),
            max_parallelism: self.config.max_parallelism,
            operators,
        };
        // The commit: `_metadata` is created only if absent, so a coordinator
        // that lost a race on this checkpoint number (a stale one) fails here
        // instead of replacing the winner's checkpoint.
        // A savepoint commits output like a checkpoint, so the job's checkpoint
        // directory must know of it before it commits: a restore from "the
        // latest checkpoint" must not go back behind it (`savepoint_ref`).
        let referenced = match (&self.checkpoint_storage, p.kind.is_savepoint()) {
            (Some(st), true) => {
                checkpoint::savepoint_ref::write_ref(st.as_ref(), id, &p.target.location).map_err(
                    |e| format!("recording the savepoint in the checkpoint directory: {e}"),
                )
            }
            _ => Ok(()),
        };
        let written = referenced
            .and_then(|()| serde_json::to_vec_pretty(&md).map_err(|e| e.to_string()))
            .and_then(|bytes| {
                size += bytes.len() as u64;
                match p
                    .target
                    .storage
                    .write_new(&storage::join(&p.target.dir, METADATA_FILE), &bytes)
                {
                    Ok(()) => Ok(()),
                    Err(e @ crate::error::StorageError::AlreadyExists { .. }) => {
                        // Remove only our own (uniquely named) state files; the
                        // directory belongs to the committed checkpoint now.
                        for f in &own_files {
                            let _ = p.target.storage.delete(f);
                        }
                        Err(format!(
                            "another coordinator committed checkpoint {id} first ({e})"
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
        if let Err(reason) = written {
            // Put it back so that fail_checkpoint does the bookkeeping.
            run.pending.insert(
                id,
                Pending {
                    kind: p.kind,
                    target: p.target,
                    started: p.started,
                    started_ms: p.started_ms,
                    alignment_ms: p.alignment_ms,
                    acks: HashMap::new(),
                    reply: p.reply,
                    is_final: p.is_final,
                },
            );
            return self.fail_checkpoint(run, id, format!("writing _metadata: {reason}"));
        }
        if let Some(end) = fault(FaultPoint::AfterMetadata { checkpoint_id: id }) {
            // The checkpoint is complete on storage even though nobody was told:
            // recovery must use it.
            self.record_completed(id, &p.target, p.kind, p.started, size, p.alignment_ms);
            return Some(end);
        }
        self.record_completed(id, &p.target, p.kind, p.started, size, p.alignment_ms);
        if p.kind.is_savepoint()
            && let Some(st) = &self.checkpoint_storage
            && let Err(e) = checkpoint::savepoint_ref::prune_below(st.as_ref(), id)
        {
            tracing::warn!(error = %e, "could not delete older savepoint references");
        }
        for t in &run.d.tasks {
            let _ = t.control.send(Control::Notify(Notification::Complete(id)));
        }
        // Completion subsumes every older pending checkpoint.
        let older: Vec<u64> = run
            .pending
            .iter()
            .filter(|(pid, pp)| **pid < id && !pp.is_final && pp.reply.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        for o in older {
            if let Some(op) = run.pending.remove(&o) {
                // Its tasks may still be writing; a late file under a deleted
                // directory is harmless because without `_metadata` it is never read.
                let _ = checkpoint::discard_incomplete(op.target.storage.as_ref(), &op.target.dir);
            }
        }
        let info = SavepointInfo {
            checkpoint_id: id,
            path: p.target.location.clone(),
        };
        if let Some(r) = p.reply {
            let _ = r.send(Ok(info.clone()));
        }
        if p.kind == SnapshotKind::Checkpoint {
            run.consecutive_failures = 0;
            run.last_end = Some(self.now());
        }
        if let SnapshotKind::StopSavepoint { .. } = p.kind {
            run.stopping = Some(info);
        }
        if p.is_final {
            self.send_finish(run);
        }
        None
    }

    fn record_completed(
        &mut self,
        id: u64,
        target: &SnapshotTarget,
        kind: SnapshotKind,
        started: u64,
        size: u64,
        alignment_ms: u64,
    ) {
        let c = CompletedCheckpoint {
            id,
            kind,
            path: target.location.clone(),
            duration_ms: self.now().saturating_sub(started),
            size_bytes: size,
            alignment_ms,
            completed_ms: system_now_ms(),
        };
        self.metrics
            .checkpoint_completed(id, c.duration_ms, size, alignment_ms);
        tracing::info!(id, path = %c.path, size = c.size_bytes, duration_ms = c.duration_ms, "snapshot completed");
        self.completed.push(c.clone());
        // Retention over the whole checkpoint directory (checkpoints of earlier
        // runs count too); savepoints belong to the user and are never touched.
        // A failure here is logged: the next completion retries it.
        if kind == SnapshotKind::Checkpoint
            && let Some(st) = &self.checkpoint_storage
        {
            let retained = self.config.checkpoint.retained as usize;
            match checkpoint::retention::enforce(st.as_ref(), retained) {
                Ok(dropped) => self
                    .completed
                    .retain(|c| c.kind != SnapshotKind::Checkpoint || !dropped.contains(&c.id)),
                Err(e) => tracing::warn!(error = %e, "could not delete subsumed checkpoints"),
            }
        }
        let completed = self.completed.clone();
        self.set_status(|s| {
            s.completed = completed;
            s.completed_checkpoints += 1;
        });
    }

    /// Mirrors the pending snapshots into the shared status.
    fn publish_pending(&self, run: &AttemptRun) {
        let total = run.d.tasks.len() as u32;
        let list: Vec<CheckpointInProgress> = run
            .pending
            .iter()
            .map(|(id, p)| CheckpointInProgress {
                id: *id,
                kind: p.kind,
                path: p.target.location.clone(),
                started_ms: p.started_ms,
                acknowledged: p.acks.len() as u32,
                total,
            })
            .collect();
        self.set_status(|s| s.in_progress = list);
    }

    /// Handles a message that arrives while an attempt is ending: client
    /// requests must not be lost (a cancel is re-queued for the restart loop,
    /// a savepoint request is answered), attempt messages are stale.
    fn defer(&self, m: MasterMsg) {
        match m {
            MasterMsg::Savepoint { reply, .. } => {
                let _ = reply.send(Err(JobError::Rejected("the job is restarting".into())));
            }
            MasterMsg::Cancel => {
                let _ = self.tx.send(MasterMsg::Cancel);
            }
            _ => {}
        }
    }

    fn teardown(&self, run: &mut AttemptRun) {
        for t in &run.d.tasks {
            let _ = t.control.send(Control::Cancel);
        }
        let total = run.d.tasks.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while run.exited < total {
            match self.rx.recv_deadline(deadline) {
                Ok(MasterMsg::TaskExited { attempt, .. }) if attempt == run.attempt => {
                    run.exited += 1
                }
                Ok(m) => self.defer(m),
                Err(_) => {
                    let names: Vec<&str> = run.d.tasks.iter().map(|t| t.name.as_str()).collect();
                    tracing::error!(
                        remaining = total - run.exited,
                        tasks = ?names,
                        "tasks did not stop within 30 s; abandoning their threads"
                    );
                    return;
                }
            }
        }
        for t in &mut run.d.tasks {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
    }
}

struct AttemptRun {
    attempt: u64,
    d: Deployed,
    pending: BTreeMap<u64, Pending>,
    sources_finished: usize,
    exited: usize,
    started: u64,
    last_trigger: Option<u64>,
    last_end: Option<u64>,
    consecutive_failures: u32,
    final_triggered: bool,
    /// The final checkpoint, once the sources finished, waits for the
    /// snapshots in progress (see [`may_start_exclusive`]).
    final_deferred: bool,
    /// Savepoint requests waiting for the snapshots in progress, in order.
    queued: VecDeque<QueuedSavepoint>,
    stopping: Option<SavepointInfo>,
}

struct QueuedSavepoint {
    dir: String,
    kind: SnapshotKind,
    reply: Sender<Result<SavepointInfo, JobError>>,
}
