//! The reconcile decision: a pure function from (spec, persisted status,
//! observed world, clock) to (new status, actions). No I/O happens here.
//!
//! The caller writes the returned status *first* and only then performs the
//! actions (write-ahead). Every action is idempotent and every flow is a
//! sequence of small steps recorded in the status, so running [`decide`] again
//! after a crash at any point — before the status write, after it, or after
//! any prefix of the actions — continues the same flow: the same savepoint
//! is waited for (recognised by its unique target directory even if the
//! trigger id was never recorded), the same deployment is created, and no
//! savepoint is triggered twice.

use runnel_api::{CheckpointInProgress, CheckpointInfo, JobState, SnapshotKind};

use crate::crd::{
    CheckpointRef, Condition, DeploymentRecord, DesiredState, HealthWindow, LifecycleState,
    Operation, OperationKind, OperationPhase, Restore, SavepointInProgress, SavepointRecord,
    SavepointRecordState, SavepointTrigger, StreamJobSpec, StreamJobStatus, UnconfirmedSavepoint,
    UpgradeMode,
};

/// Phase of a runtime pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Being deleted.
    Terminating,
}

/// A runtime pod of this StreamJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObs {
    pub deploy_id: u64,
    pub phase: PodPhase,
}

/// What the runtime's control API answered (for the current deployment).
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeObs {
    pub deploy_id: u64,
    pub state: JobState,
    pub restarts: u32,
    pub completed: Vec<CheckpointInfo>,
    pub in_progress: Vec<CheckpointInProgress>,
    /// The snapshot this runtime restored from, as it reports it.
    pub restored_from: Option<String>,
}

/// Answer of `GET /v1/job/savepoints/{id}` for the recorded trigger id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerObs {
    InProgress,
    Completed(String),
    Failed(String),
    /// 404: the runtime does not know the id (it was restarted).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisposalState {
    Running,
    Succeeded,
    Failed(String),
}

/// A savepoint-disposal Job and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisposalObs {
    pub path: String,
    pub state: DisposalState,
}

/// Everything observed this round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    pub pods: Vec<PodObs>,
    /// `None`: no pod answered (not started, gone, or unreachable).
    pub runtime: Option<RuntimeObs>,
    pub trigger: Option<TriggerObs>,
    pub disposals: Vec<DisposalObs>,
}

/// The inputs of one decision.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// `<namespace>-<name>`: names savepoint directories.
    pub key: &'a str,
    pub generation: i64,
    pub spec: &'a StreamJobSpec,
    pub savepoint_annotation: Option<&'a str>,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub status: &'a StreamJobStatus,
    pub world: &'a World,
    pub now_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the ConfigMap and pod of deployment `deploy_id` (and the
    /// Service) unless they exist, from `status.lastReconciledSpec` (or
    /// `lastStableSpec` for a rollback).
    Deploy {
        deploy_id: u64,
        spec_generation: i64,
        spec: Box<StreamJobSpec>,
        restore: Restore,
    },
    /// Delete every runtime pod (and its ConfigMap) except `keep`.
    DeletePods {
        keep: Option<u64>,
    },
    /// `POST /v1/job/savepoints` or `/v1/job/stop`; the caller records the
    /// returned trigger id in the status.
    TriggerSavepoint {
        target_directory: String,
        stop: bool,
    },
    RemoveSavepointAnnotation,
    /// Start (or keep) a Job that deletes the savepoint's files.
    Dispose {
        path: String,
    },
    /// Delete the finished disposal Job of `path`.
    ForgetDisposal {
        path: String,
    },
    AddFinalizer,
    RemoveFinalizer,
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
}

/// What to write, then do.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: StreamJobStatus,
    pub actions: Vec<Action>,
}

/// The part of the spec that a deployment runs: a change here is an upgrade.
/// Nonces, desired state and the operator-only knobs are not.
pub fn deployed_view(spec: &StreamJobSpec) -> serde_json::Value {
    let mut s = spec.clone();
    s.savepoint_trigger_nonce = None;
    s.restart_nonce = None;
    s.state = DesiredState::Running;
    s.rollback = Default::default();
    s.health = Default::default();
    s.allow_checkpoint_fallback = false;
    s.upgrade_mode = UpgradeMode::Savepoint;
    s.savepoints.periodic_interval_seconds = None;
    s.savepoints.history_max_count = 0;
    s.savepoints.history_max_age_seconds = None;
    s.savepoints.timeout_seconds = 0;
    s.savepoints.savepoint_on_delete = false;
    serde_json::to_value(&s).unwrap_or(serde_json::Value::Null)
}

/// Validates `spec.job` the way the runtime will read it.
pub fn validate(spec: &StreamJobSpec) -> Result<(), String> {
    if spec.image.trim().is_empty() {
        return Err(
            "spec.image: must not be empty (set it, or start the operator with --default-runtime-image)"
                .into(),
        );
    }
    if spec.parallelism == Some(0) {
        return Err("spec.parallelism: must be at least 1".into());
    }
    let job = runnel_spec::from_value(crate::render::effective_job(spec), "spec.job")
        .map_err(|e| runnel_spec::format_errors(&e))?;
    // CEL syntax, checked here so that a typo is a ValidationFailed status
    // and not a runtime pod that fails at start until the operator gives up.
    // (Field references and types are the runtime's to check: it knows the
    // record shapes.)
    let errors: Vec<runnel_spec::SpecError> = job
        .expressions(&runnel_spec::Path::root("spec.job"))
        .into_iter()
        .filter_map(|(p, src)| {
            cel::Program::compile(src.trim())
                .err()
                .map(|e| p.err(format!("invalid CEL: {}", e.to_string().trim())))
        })
        .collect();
    if !errors.is_empty() {
        return Err(runnel_spec::format_errors(&errors));
    }
    if spec.savepoints.directory.is_none()
        && (spec.upgrade_mode == UpgradeMode::Savepoint
            || spec.savepoint_trigger_nonce.is_some()
            || spec.savepoints.periodic_interval_seconds.is_some())
    {
        return Err("spec.savepoints.directory: required for savepoints (upgradeMode savepoint, nonce or periodic)".into());
    }
    Ok(())
}

struct Ctx<'a> {
    input: &'a Input<'a>,
    st: StreamJobStatus,
    actions: Vec<Action>,
    /// Why nothing progresses although something is wanted.
    waiting: Option<(String, String)>,
}

impl Ctx<'_> {
    fn event(&mut self, warning: bool, reason: &str, message: impl Into<String>) {
        self.actions.push(Action::Event {
            warning,
            reason: reason.into(),
            message: message.into(),
        });
    }

    fn now(&self) -> i64 {
        self.input.now_ms
    }

    fn current_deploy(&self) -> Option<u64> {
        self.st.deployment.as_ref().map(|d| d.deploy_id)
    }

    /// The runtime answer, if it is from the current deployment.
    fn runtime(&self) -> Option<&RuntimeObs> {
        let id = self.current_deploy()?;
        self.input
            .world
            .runtime
            .as_ref()
            .filter(|r| r.deploy_id == id)
    }

    fn job_running(&self) -> bool {
        self.runtime().is_some_and(|r| r.state == JobState::Running)
    }

    fn current_pod(&self) -> Option<&PodObs> {
        let id = self.current_deploy()?;
        self.input.world.pods.iter().find(|p| p.deploy_id == id)
    }
}

/// Decides one reconcile step.
pub fn decide(input: &Input<'_>) -> Decision {
    let mut c = Ctx {
        input,
        st: input.status.clone(),
        actions: Vec::new(),
        waiting: None,
    };
    c.st.observed_generation = Some(input.generation);
    observe_runtime(&mut c);
    track_savepoint(&mut c);
    adopt_unconfirmed_savepoint(&mut c);

    if input.deleting {
        on_delete(&mut c);
        finish(&mut c);
        return Decision {
            status: c.st,
            actions: c.actions,
        };
    }
    if input.spec.savepoints.savepoint_on_delete && !input.has_finalizer {
        c.actions.push(Action::AddFinalizer);
    }

    match validate(input.spec) {
        Err(e) => {
            if c.st.invalid_generation != Some(input.generation) {
                c.event(true, "ValidationFailed", e.clone());
            }
            c.st.invalid_generation = Some(input.generation);
            c.st.error = Some(e);
            // Nothing running is torn down: flows already under way finish,
            // but nothing new starts from an invalid spec.
            if c.st.operation.is_some() {
                advance_operation(&mut c);
            }
        }
        Ok(()) => {
            if c.st.invalid_generation.is_some() {
                c.st.invalid_generation = None;
                c.st.error = None;
            }
            if c.st.operation.is_some() {
                advance_operation(&mut c);
            } else {
                start_operation(&mut c);
            }
            if c.st.operation.is_none() && c.st.savepoint_in_progress.is_none() {
                maybe_trigger_savepoint(&mut c);
            }
        }
    }
    retain_history(&mut c);
    finish(&mut c);
    Decision {
        status: c.st,
        actions: c.actions,
    }
}

fn observe_runtime(c: &mut Ctx<'_>) {
    let Some(rt) = c.runtime().cloned() else {
        if c.current_deploy().is_none() {
            c.st.job_state = None;
        }
        return;
    };
    c.st.job_state = Some(job_state_name(rt.state).into());
    if let Some(last) = rt
        .completed
        .iter()
        .filter(|s| s.kind == SnapshotKind::Checkpoint)
        .max_by_key(|s| s.id)
    {
        c.st.last_checkpoint = Some(CheckpointRef {
            id: last.id,
            path: last.path.clone(),
            completed_ms: last.completed_ms,
        });
    }
    if rt.state == JobState::Running
        && let Some(d) = c.st.deployment.as_mut()
        && !d.stable
    {
        d.stable = true;
        let (id, rollback) = (d.deploy_id, d.rollback);
        if !rollback {
            c.st.last_stable_spec = c.st.last_reconciled_spec.clone();
            c.st.last_stable_generation = Some(d.spec_generation);
        }
        c.event(false, "JobRunning", format!("deployment {id} is running"));
    }
}

fn job_state_name(s: JobState) -> &'static str {
    match s {
        JobState::Created => "CREATED",
        JobState::Running => "RUNNING",
        JobState::Restarting => "RESTARTING",
        JobState::Finished => "FINISHED",
        JobState::Cancelled => "CANCELLED",
        JobState::Stopped => "STOPPED",
        JobState::Failed => "FAILED",
    }
}

enum SpProgress {
    NotStarted,
    InProgress,
    Completed(String),
    Failed(String),
    /// Not read: it may have completed (the runtime records it before).
    Lost(String),
}

/// Whether `path` lies under `dir`. Storage URIs may carry a query
/// (`s3://b/p?endpoint=...`) after the path: only the paths are compared.
fn under(dir: &str, path: &str) -> bool {
    let strip = |u: &str| u.split_once('?').map_or(u, |(p, _)| p).to_string();
    let (dir, path) = (strip(dir), strip(path));
    path.strip_prefix(dir.trim_end_matches('/'))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A savepoint whose outcome was not read is adopted into the history once
/// the runtime of a later deployment reports restoring from it: the runtime
/// found it complete, and it committed output, so it is the job's savepoint
/// like any other (shown, kept, disposed of in turn). Any other restore point
/// means it is not the job's latest state, and it is forgotten.
fn adopt_unconfirmed_savepoint(c: &mut Ctx<'_>) {
    let Some(u) = c.st.unconfirmed_savepoint.clone() else {
        return;
    };
    let Some(d) = c.st.deployment.as_ref() else {
        return;
    };
    let Some(rt) = c.input.world.runtime.as_ref() else {
        return;
    };
    if rt.deploy_id != d.deploy_id || d.started_ms <= u.started_ms {
        return;
    }
    c.st.unconfirmed_savepoint = None;
    let Some(path) = rt
        .restored_from
        .clone()
        .filter(|p| under(&u.target_directory, p))
    else {
        return;
    };
    if c.st.savepoint_history.iter().any(|r| r.path == path) {
        return;
    }
    c.st.savepoint_history.push(SavepointRecord {
        path: path.clone(),
        time_ms: u.started_ms,
        trigger: u.trigger,
        state: SavepointRecordState::Completed,
    });
    c.st.last_savepoint = Some(path.clone());
    c.event(
        false,
        "SavepointRecovered",
        format!(
            "{:?} savepoint {path} completed without its result being read; the job restored from it",
            u.trigger
        ),
    );
}

fn savepoint_progress(c: &Ctx<'_>, sp: &SavepointInProgress) -> SpProgress {
    let w = c.input.world;
    let rt = w.runtime.as_ref().filter(|r| r.deploy_id == sp.deploy_id);
    if let Some(rt) = rt {
        if let Some(done) = rt
            .completed
            .iter()
            .find(|s| s.kind != SnapshotKind::Checkpoint && under(&sp.target_directory, &s.path))
        {
            return SpProgress::Completed(done.path.clone());
        }
        if rt
            .in_progress
            .iter()
            .any(|s| under(&sp.target_directory, &s.path))
        {
            return SpProgress::InProgress;
        }
    }
    match (&sp.trigger_id, &w.trigger) {
        (Some(_), Some(TriggerObs::Completed(p))) => return SpProgress::Completed(p.clone()),
        (Some(_), Some(TriggerObs::Failed(e))) => return SpProgress::Failed(e.clone()),
        (Some(_), Some(TriggerObs::Unknown)) => {
            return SpProgress::Lost("the runtime no longer knows the savepoint trigger".into());
        }
        _ => {}
    }
    let pod_alive = w.pods.iter().any(|p| {
        p.deploy_id == sp.deploy_id && matches!(p.phase, PodPhase::Pending | PodPhase::Running)
    });
    if !pod_alive {
        return SpProgress::Lost("the runtime pod went away during the savepoint".into());
    }
    if c.now() - sp.started_ms > (c.input.spec.savepoints.timeout_seconds as i64) * 1000 {
        return SpProgress::Lost("timed out".into());
    }
    if sp.trigger_id.is_none() && rt.is_some_and(|r| r.state == JobState::Running) {
        // The runtime shows no trace of it: the trigger was never sent.
        return SpProgress::NotStarted;
    }
    SpProgress::InProgress
}

/// Follows the savepoint in progress and records its outcome.
fn track_savepoint(c: &mut Ctx<'_>) {
    let Some(sp) = c.st.savepoint_in_progress.clone() else {
        return;
    };
    let progress = savepoint_progress(c, &sp);
    let lost = matches!(progress, SpProgress::Lost(_));
    match progress {
        SpProgress::InProgress => {}
        SpProgress::NotStarted => c.actions.push(Action::TriggerSavepoint {
            target_directory: sp.target_directory.clone(),
            stop: sp.stop,
        }),
        SpProgress::Completed(path) => {
            c.st.savepoint_in_progress = None;
            c.st.savepoint_failures = 0;
            c.st.last_savepoint_failure_ms = None;
            c.st.savepoint_history.push(SavepointRecord {
                path: path.clone(),
                time_ms: c.now(),
                trigger: sp.trigger,
                state: SavepointRecordState::Completed,
            });
            c.st.last_savepoint = Some(path.clone());
            if let Some(v) = c.input.savepoint_annotation {
                // An annotation that arrived while this one ran is served by it.
                c.st.handled_savepoint_annotation = Some(v.to_string());
            }
            c.event(
                false,
                "SavepointCompleted",
                format!("{:?} savepoint completed: {path}", sp.trigger),
            );
            if let Some(op) = c.st.operation.as_mut()
                && op.phase == OperationPhase::Savepointing
            {
                op.restore = Some(Restore::Savepoint(path));
                op.phase = OperationPhase::TearingDown;
            }
        }
        SpProgress::Failed(reason) | SpProgress::Lost(reason) => {
            if lost {
                c.st.unconfirmed_savepoint = Some(UnconfirmedSavepoint {
                    trigger: sp.trigger,
                    target_directory: sp.target_directory.clone(),
                    started_ms: sp.started_ms,
                });
            }
            c.st.savepoint_in_progress = None;
            c.st.savepoint_failures = c.st.savepoint_failures.saturating_add(1);
            c.st.last_savepoint_failure_ms = Some(c.now());
            c.st.error = Some(format!("savepoint failed: {reason}"));
            c.event(
                true,
                "SavepointFailed",
                format!("{:?} savepoint failed: {reason}", sp.trigger),
            );
            if let Some(op) = c.st.operation.clone()
                && op.phase == OperationPhase::Savepointing
            {
                if c.input.spec.allow_checkpoint_fallback || op.kind == OperationKind::Suspend {
                    let restore = last_state_restore(&c.st);
                    if let Some(o) = c.st.operation.as_mut() {
                        o.restore = Some(restore);
                        o.phase = OperationPhase::TearingDown;
                    }
                } else {
                    // Abandon; the next round starts over (a new savepoint).
                    c.st.operation = None;
                }
            }
        }
    }
    if c.st.savepoint_in_progress.is_none()
        && sp.trigger == SavepointTrigger::Annotation
        && c.input.savepoint_annotation.is_some()
    {
        c.actions.push(Action::RemoveSavepointAnnotation);
    }
}

/// Where a "last state" redeploy restores from: the newest snapshot of the
/// current deployment's run, which the runtime finds itself
/// (`--from-latest-checkpoint`): its checkpoints, a savepoint it recorded
/// (also a stop savepoint whose result was lost), or, if it wrote neither,
/// the point it started from. The runtime's lineage marker, written before
/// the job reports RUNNING, keeps an older run's newer checkpoints in the
/// same directory out of it. A deployment never seen RUNNING may not have
/// written its marker (the pod never started): its own restore point is then
/// its last state.
fn last_state_restore(st: &StreamJobStatus) -> Restore {
    let Some(d) = &st.deployment else {
        return st
            .resume_restore
            .clone()
            .unwrap_or(Restore::LatestCheckpoint);
    };
    let checkpointed_since = st
        .last_checkpoint
        .as_ref()
        .is_some_and(|c| c.completed_ms >= d.started_ms);
    if checkpointed_since || d.stable {
        Restore::LatestCheckpoint
    } else {
        d.restore.clone()
    }
}

fn fresh_restore(spec: &StreamJobSpec) -> Restore {
    spec.initial_savepoint_path
        .clone()
        .map(Restore::Savepoint)
        .unwrap_or(Restore::Empty)
}

/// `<directory>/<key>-<seq>`; the directory's query (`?endpoint=...` of an
/// S3 URI) stays at the end, where the runtime's URI parser expects it.
fn savepoint_target(dir: &str, key: &str, seq: u64) -> String {
    let (path, query) = match dir.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (dir, String::new()),
    };
    format!("{}/{key}-{seq}{query}", path.trim_end_matches('/'))
}

/// The id of the next deployment: above every id the status ever recorded
/// (`deploySeq`, kept across suspend) and above any pod still around (a
/// status written by an older operator has no `deploySeq`).
pub fn next_deploy_id(
    deploy_seq: u64,
    current: Option<u64>,
    pods: impl IntoIterator<Item = u64>,
) -> u64 {
    pods.into_iter()
        .chain(current)
        .fold(deploy_seq, u64::max)
        .saturating_add(1)
}

/// How long after the `failures`-th failed savepoint in a row the next one
/// may be triggered: 10 s, doubling, at most 5 min.
pub fn savepoint_backoff_ms(failures: u32) -> i64 {
    if failures == 0 {
        return 0;
    }
    (10_000i64 << (failures - 1).min(5)).min(300_000)
}

fn begin_savepoint(c: &mut Ctx<'_>, trigger: SavepointTrigger, stop: bool) -> bool {
    let (Some(dir), Some(deploy_id)) = (
        c.input.spec.savepoints.directory.clone(),
        c.current_deploy(),
    ) else {
        return false;
    };
    if let Some(at) = c.st.last_savepoint_failure_ms {
        let retry_at = at + savepoint_backoff_ms(c.st.savepoint_failures);
        if c.now() < retry_at {
            c.waiting = Some((
                "SavepointBackoff".into(),
                format!(
                    "{} savepoint(s) failed in a row; the next is triggered in {} s",
                    c.st.savepoint_failures,
                    (retry_at - c.now() + 999) / 1000
                ),
            ));
            return false;
        }
    }
    c.st.savepoint_seq += 1;
    let target = savepoint_target(&dir, c.input.key, c.st.savepoint_seq);
    c.st.savepoint_in_progress = Some(SavepointInProgress {
        trigger,
        target_directory: target.clone(),
        trigger_id: None,
        stop,
        started_ms: c.now(),
        deploy_id,
    });
    c.actions.push(Action::TriggerSavepoint {
        target_directory: target.clone(),
        stop,
    });
    c.event(
        false,
        "SavepointTriggered",
        format!(
            "{trigger:?} savepoint{} into {target}",
            if stop { " (stop)" } else { "" }
        ),
    );
    true
}

/// Starts the operation `kind` from the current deployment, choosing how its
/// state is carried over.
fn begin_operation(c: &mut Ctx<'_>, kind: OperationKind, target_generation: i64) {
    let mode = c.input.spec.upgrade_mode;
    let stable = c.st.deployment.as_ref().is_some_and(|d| d.stable);
    let mut op = Operation {
        kind,
        phase: OperationPhase::TearingDown,
        target_generation,
        restore: None,
        started_ms: c.now(),
    };
    let restore = match (kind, mode) {
        (OperationKind::Rollback, _) => c.st.deployment.as_ref().map(|d| d.restore.clone()),
        (_, UpgradeMode::Stateless) => Some(fresh_restore(c.input.spec)),
        (OperationKind::Restart, _) => Some(last_state_restore(&c.st)),
        (_, UpgradeMode::LastState) if kind != OperationKind::Suspend => {
            Some(last_state_restore(&c.st))
        }
        _ => {
            // savepoint mode (and suspend in last-state mode): stop with savepoint.
            if c.job_running() {
                None
            } else if !stable
                && !matches!(
                    c.st.deployment.as_ref().map(|d| &d.restore),
                    Some(Restore::LatestCheckpoint)
                )
            {
                // Never ran since its restore point: that point is still exact.
                c.st.deployment.as_ref().map(|d| d.restore.clone())
            } else if c.input.spec.allow_checkpoint_fallback || kind == OperationKind::Suspend {
                Some(last_state_restore(&c.st))
            } else {
                c.waiting = Some((
                    "WaitingForRunningJob".into(),
                    "the job is not running, so no savepoint can be taken; set allowCheckpointFallback to upgrade from the latest checkpoint".into(),
                ));
                return;
            }
        }
    };
    match restore {
        Some(r) => op.restore = Some(r),
        None => {
            op.phase = OperationPhase::Savepointing;
            let trigger = if kind == OperationKind::Suspend {
                SavepointTrigger::Suspend
            } else {
                SavepointTrigger::Upgrade
            };
            if c.st.savepoint_in_progress.is_some() || !begin_savepoint(c, trigger, true) {
                if c.st.savepoint_in_progress.is_some() {
                    c.waiting = Some((
                        "WaitingForSavepoint".into(),
                        "a savepoint is in progress".into(),
                    ));
                }
                return;
            }
        }
    }
    c.event(
        false,
        &format!("{kind:?}Started"),
        format!(
            "{kind:?} to generation {target_generation} ({:?})",
            op.restore
        ),
    );
    c.st.given_up = false;
    c.st.operation = Some(op);
    if c.st
        .operation
        .as_ref()
        .is_some_and(|o| o.phase == OperationPhase::TearingDown)
    {
        advance_operation(c);
    }
}

fn start_operation(c: &mut Ctx<'_>) {
    let spec = c.input.spec;
    let generation = c.input.generation;
    let Some(dep) = c.st.deployment.clone() else {
        if spec.state == DesiredState::Running {
            if c.st.last_reconciled_spec.is_none() {
                // Nonces set at creation are not requests.
                c.st.handled_restart_nonce = spec.restart_nonce;
                c.st.handled_savepoint_nonce = spec.savepoint_trigger_nonce;
            }
            let restore =
                c.st.resume_restore
                    .clone()
                    .unwrap_or_else(|| fresh_restore(spec));
            c.st.operation = Some(Operation {
                kind: OperationKind::Deploy,
                phase: OperationPhase::TearingDown,
                target_generation: generation,
                restore: Some(restore),
                started_ms: c.now(),
            });
            advance_operation(c);
        }
        return;
    };
    if c.st.savepoint_in_progress.is_some() {
        // One thing at a time: a flow starts once the savepoint has finished.
        c.waiting = Some((
            "WaitingForSavepoint".into(),
            "a savepoint is in progress".into(),
        ));
        return;
    }
    if spec.state == DesiredState::Suspended {
        begin_operation(c, OperationKind::Suspend, generation);
        return;
    }
    let spec_changed =
        c.st.last_reconciled_spec
            .as_deref()
            .and_then(|s| serde_json::from_str::<StreamJobSpec>(s).ok())
            .is_none_or(|old| deployed_view(&old) != deployed_view(spec));
    if spec_changed && c.st.rolled_back_generation != Some(generation) {
        begin_operation(c, OperationKind::Upgrade, generation);
        if c.st.operation.is_some() || c.st.savepoint_in_progress.is_some() {
            return;
        }
        // Waiting for a running job: a health restart (of the deployed
        // spec) below may bring it back, after which the upgrade proceeds.
    }
    if spec.restart_nonce != c.st.handled_restart_nonce {
        c.st.handled_restart_nonce = spec.restart_nonce;
        if spec.restart_nonce.is_some() {
            c.st.operator_restarts_ms.clear();
            begin_operation(c, OperationKind::Restart, dep.spec_generation);
            return;
        }
    }
    // Rollback: an upgraded deployment that did not come up in time.
    if spec.rollback.enabled
        && !dep.stable
        && !dep.rollback
        && c.st.last_stable_spec.is_some()
        && c.st.last_stable_generation != Some(dep.spec_generation)
        && c.now() - dep.started_ms > spec.rollback.timeout_seconds.unwrap_or(300) as i64 * 1000
    {
        c.st.rolled_back_generation = Some(dep.spec_generation);
        begin_operation(c, OperationKind::Rollback, dep.spec_generation);
        return;
    }
    if let Some(reason) = unhealthy(c, &dep) {
        let window = spec.health.restart_window_seconds as i64 * 1000;
        let now = c.now();
        c.st.operator_restarts_ms.retain(|t| now - t <= window);
        if c.st.given_up {
            return;
        }
        if c.st.operator_restarts_ms.len() as u32 >= spec.health.max_operator_restarts {
            c.st.given_up = true;
            c.st.error = Some(format!(
                "unhealthy ({reason}) and restarted too often; giving up until the spec or restartNonce changes"
            ));
            c.event(true, "GaveUp", c.st.error.clone().unwrap_or_default());
            return;
        }
        c.st.operator_restarts_ms.push(now);
        set_condition(&mut c.st, "Degraded", "True", "Restarted", &reason, now);
        c.event(
            true,
            "Unhealthy",
            format!("restarting from the last state: {reason}"),
        );
        begin_operation(c, OperationKind::Restart, dep.spec_generation);
    }
}

/// Why the current deployment needs a restart, if it does.
fn unhealthy(c: &mut Ctx<'_>, dep: &DeploymentRecord) -> Option<String> {
    let spec = c.input.spec;
    match c.current_pod().map(|p| p.phase) {
        None => return Some("the runtime pod is gone".into()),
        Some(PodPhase::Failed) => return Some("the runtime pod failed".into()),
        _ => {}
    }
    let rt = c.runtime()?.clone();
    if rt.state == JobState::Failed {
        return Some("the job failed".into());
    }
    let now = c.now();
    let window = spec.health.restart_window_seconds as i64 * 1000;
    let w = match c.st.health_window.clone() {
        Some(w) if w.deploy_id == dep.deploy_id && now - w.start_ms <= window => w,
        _ => {
            let w = HealthWindow {
                start_ms: now,
                restarts_at_start: rt.restarts,
                deploy_id: dep.deploy_id,
            };
            c.st.health_window = Some(w.clone());
            w
        }
    };
    if rt.restarts.saturating_sub(w.restarts_at_start) > spec.health.max_restarts {
        return Some(format!(
            "{} restarts within {}s",
            rt.restarts - w.restarts_at_start,
            spec.health.restart_window_seconds
        ));
    }
    if let Some(t) = spec.health.checkpoint_progress_timeout_seconds
        && rt.state == JobState::Running
    {
        let last =
            c.st.last_checkpoint
                .as_ref()
                .map(|c| c.completed_ms)
                .unwrap_or(0)
                .max(dep.started_ms);
        if now - last > t as i64 * 1000 {
            return Some(format!("no checkpoint completed for {t}s"));
        }
    }
    None
}

fn advance_operation(c: &mut Ctx<'_>) {
    let Some(op) = c.st.operation.clone() else {
        return;
    };
    match op.phase {
        OperationPhase::Savepointing => {
            if c.st.savepoint_in_progress.is_none() {
                // Write-ahead records both together; an absent savepoint here
                // means it was resolved above without a restore point.
                c.st.operation = None;
            }
        }
        OperationPhase::TearingDown => {
            if c.input.world.pods.iter().any(|_| true) {
                c.actions.push(Action::DeletePods { keep: None });
                return;
            }
            let restore = op.restore.clone().unwrap_or(Restore::Empty);
            if op.kind == OperationKind::Suspend {
                c.st.deployment = None;
                c.st.resume_restore = Some(restore);
                c.st.operation = None;
                c.st.job_state = None;
                c.event(false, "Suspended", "the job is suspended");
                return;
            }
            let restarting = op.kind == OperationKind::Restart;
            // A restart of a rolled-back deployment stays rolled back.
            let rollback = op.kind == OperationKind::Rollback
                || restarting && c.st.deployment.as_ref().is_some_and(|d| d.rollback);
            let spec_json = if rollback {
                c.st.last_stable_spec.clone()
            } else if restarting && c.st.last_reconciled_spec.is_some() {
                // A restart runs what is deployed, not a pending change.
                c.st.last_reconciled_spec.clone()
            } else {
                serde_json::to_string(c.input.spec).ok()
            };
            let Some(spec) = spec_json
                .as_deref()
                .and_then(|s| serde_json::from_str::<StreamJobSpec>(s).ok())
            else {
                c.st.operation = None;
                c.st.error = Some("no spec to deploy".into());
                return;
            };
            let deploy_id = next_deploy_id(
                c.st.deploy_seq,
                c.st.deployment.as_ref().map(|d| d.deploy_id),
                c.input.world.pods.iter().map(|p| p.deploy_id),
            );
            c.st.deploy_seq = deploy_id;
            let spec_generation = if rollback {
                c.st.last_stable_generation.unwrap_or(op.target_generation)
            } else {
                op.target_generation
            };
            c.st.deployment = Some(DeploymentRecord {
                deploy_id,
                spec_generation,
                restore: restore.clone(),
                started_ms: c.now(),
                rollback,
                stable: false,
            });
            if !rollback {
                c.st.last_reconciled_spec = spec_json;
            }
            c.st.resume_restore = None;
            c.st.health_window = None;
            if let Some(o) = c.st.operation.as_mut() {
                o.phase = OperationPhase::Deploying;
            }
            c.actions.push(Action::Deploy {
                deploy_id,
                spec_generation,
                spec: Box::new(spec),
                restore,
            });
        }
        OperationPhase::Deploying => {
            let Some(dep) = c.st.deployment.clone() else {
                c.st.operation = None;
                return;
            };
            if c.current_pod().is_some() {
                c.st.operation = None;
                c.event(
                    false,
                    &format!("{:?}Completed", op.kind),
                    format!("deployment {} created ({:?})", dep.deploy_id, dep.restore),
                );
                return;
            }
            let spec_json = if dep.rollback {
                c.st.last_stable_spec.clone()
            } else {
                c.st.last_reconciled_spec.clone()
            };
            if let Some(spec) = spec_json
                .as_deref()
                .and_then(|s| serde_json::from_str::<StreamJobSpec>(s).ok())
            {
                c.actions.push(Action::Deploy {
                    deploy_id: dep.deploy_id,
                    spec_generation: dep.spec_generation,
                    spec: Box::new(spec),
                    restore: dep.restore.clone(),
                });
            }
        }
    }
}

fn maybe_trigger_savepoint(c: &mut Ctx<'_>) {
    if !c.job_running() || c.input.spec.savepoints.directory.is_none() {
        return;
    }
    let spec = c.input.spec;
    if let Some(v) = c.input.savepoint_annotation {
        if c.st.handled_savepoint_annotation.as_deref() != Some(v) {
            // Handled only once a savepoint has begun: during a back-off the
            // request waits (and says so in a condition) instead of being
            // removed unserved.
            if begin_savepoint(c, SavepointTrigger::Annotation, false) {
                c.st.handled_savepoint_annotation = Some(v.to_string());
            }
            return;
        }
        // Served already; the removal did not land yet.
        c.actions.push(Action::RemoveSavepointAnnotation);
    } else {
        c.st.handled_savepoint_annotation = None;
    }
    if spec.savepoint_trigger_nonce.is_some()
        && spec.savepoint_trigger_nonce != c.st.handled_savepoint_nonce
    {
        if begin_savepoint(c, SavepointTrigger::Nonce, false) {
            c.st.handled_savepoint_nonce = spec.savepoint_trigger_nonce;
        }
        return;
    }
    if let Some(every) = spec.savepoints.periodic_interval_seconds {
        let since =
            c.st.last_periodic_savepoint_ms
                .or(c.st.deployment.as_ref().map(|d| d.started_ms))
                .unwrap_or(c.now());
        if c.now() - since >= every as i64 * 1000
            && begin_savepoint(c, SavepointTrigger::Periodic, false)
        {
            c.st.last_periodic_savepoint_ms = Some(c.now());
        }
    }
}

/// Bounds the history by count and age. At least the newest savepoint is
/// kept, and so is any savepoint a deployment or flow restores from; a
/// disposed savepoint's entry goes only once its files are deleted.
fn retain_history(c: &mut Ctx<'_>) {
    let spec = &c.input.spec.savepoints;
    let now = c.now();
    let mut protected: Vec<String> = Vec::new();
    for r in [
        c.st.deployment.as_ref().map(|d| d.restore.clone()),
        c.st.operation.as_ref().and_then(|o| o.restore.clone()),
        c.st.resume_restore.clone(),
    ]
    .into_iter()
    .flatten()
    {
        if let Restore::Savepoint(p) = r {
            protected.push(p);
        }
    }
    if let Some(p) = &c.input.spec.initial_savepoint_path {
        protected.push(p.clone());
    }
    let completed: Vec<usize> = (0..c.st.savepoint_history.len())
        .filter(|&i| c.st.savepoint_history[i].state == SavepointRecordState::Completed)
        .collect();
    let newest = completed
        .iter()
        .copied()
        .max_by_key(|&i| c.st.savepoint_history[i].time_ms);
    let max_count = spec.history_max_count.max(1) as usize;
    let excess = completed.len().saturating_sub(max_count);
    let mut by_age = completed.clone();
    by_age.sort_by_key(|&i| c.st.savepoint_history[i].time_ms);
    let mut dispose: Vec<usize> = by_age.iter().copied().take(excess).collect();
    if let Some(age) = spec.history_max_age_seconds {
        for &i in &completed {
            if now - c.st.savepoint_history[i].time_ms > age as i64 * 1000 && !dispose.contains(&i)
            {
                dispose.push(i);
            }
        }
    }
    for i in dispose {
        let path = c.st.savepoint_history[i].path.clone();
        if Some(i) == newest || protected.contains(&path) {
            continue;
        }
        c.st.savepoint_history[i].state = SavepointRecordState::Disposing;
        c.event(false, "SavepointDisposing", format!("disposing of {path}"));
    }
    let mut keep = Vec::new();
    for r in std::mem::take(&mut c.st.savepoint_history) {
        if r.state != SavepointRecordState::Disposing {
            keep.push(r);
            continue;
        }
        match c.input.world.disposals.iter().find(|d| d.path == r.path) {
            Some(DisposalObs {
                state: DisposalState::Succeeded,
                ..
            }) => {
                c.actions.push(Action::ForgetDisposal {
                    path: r.path.clone(),
                });
                c.event(false, "SavepointDisposed", format!("deleted {}", r.path));
            }
            Some(DisposalObs {
                state: DisposalState::Failed(e),
                ..
            }) => {
                c.event(
                    true,
                    "SavepointDisposalFailed",
                    format!("{}: {e}; retrying", r.path),
                );
                c.actions.push(Action::ForgetDisposal {
                    path: r.path.clone(),
                });
                keep.push(r);
            }
            Some(_) => keep.push(r),
            None => {
                c.actions.push(Action::Dispose {
                    path: r.path.clone(),
                });
                keep.push(r);
            }
        }
    }
    c.st.savepoint_history = keep;
}

fn on_delete(c: &mut Ctx<'_>) {
    if !c.input.has_finalizer {
        return;
    }
    let wants_final = c.input.spec.savepoints.savepoint_on_delete;
    match &c.st.savepoint_in_progress {
        Some(sp) if sp.trigger == SavepointTrigger::Delete => return,
        _ => {}
    }
    let done =
        c.st.savepoint_history
            .last()
            .is_some_and(|r| r.trigger == SavepointTrigger::Delete);
    if wants_final && !done && c.job_running() && c.st.savepoint_in_progress.is_none() {
        c.st.operation = None;
        if begin_savepoint(c, SavepointTrigger::Delete, true) {
            return;
        }
    }
    if c.st.savepoint_in_progress.is_some() && !done {
        return;
    }
    c.actions.push(Action::RemoveFinalizer);
}

fn set_condition(
    st: &mut StreamJobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    msg: &str,
    now: i64,
) {
    if let Some(c) = st.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_ms = now;
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = msg.into();
    } else {
        st.conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: msg.into(),
            last_transition_ms: now,
        });
    }
}

/// Lifecycle state and conditions from the decided status.
fn finish(c: &mut Ctx<'_>) {
    let now = c.now();
    let running = c.job_running();
    let old = c.st.lifecycle_state;
    let lifecycle = if let Some(op) = &c.st.operation {
        match op.kind {
            OperationKind::Deploy | OperationKind::Restart => LifecycleState::Deploying,
            OperationKind::Upgrade => LifecycleState::Upgrading,
            OperationKind::Suspend => LifecycleState::Suspended,
            OperationKind::Rollback => LifecycleState::RollingBack,
        }
    } else if c.st.deployment.is_none() {
        if c.st.resume_restore.is_some() || c.input.spec.state == DesiredState::Suspended {
            LifecycleState::Suspended
        } else if c.st.invalid_generation.is_some() {
            LifecycleState::Failed
        } else {
            LifecycleState::Created
        }
    } else if c.st.given_up {
        LifecycleState::Failed
    } else if c.st.deployment.as_ref().is_some_and(|d| d.rollback) {
        if running {
            LifecycleState::RolledBack
        } else {
            LifecycleState::RollingBack
        }
    } else if running {
        LifecycleState::Running
    } else if c
        .current_pod()
        .is_some_and(|p| p.phase == PodPhase::Succeeded)
        || c.runtime().is_some_and(|r| r.state.is_terminal())
    {
        // Bounded job that finished.
        LifecycleState::Running
    } else {
        LifecycleState::Deploying
    };
    c.st.lifecycle_state = lifecycle;
    if old != lifecycle {
        c.event(
            lifecycle == LifecycleState::Failed,
            "LifecycleChanged",
            format!("{old:?} -> {lifecycle:?}"),
        );
    }
    let ready = running
        && matches!(
            lifecycle,
            LifecycleState::Running | LifecycleState::RolledBack
        );
    set_condition(
        &mut c.st,
        "Ready",
        if ready { "True" } else { "False" },
        &format!("{lifecycle:?}"),
        "",
        now,
    );
    match (&c.st.operation, c.waiting.clone()) {
        (Some(op), _) => {
            let (k, p) = (op.kind, op.phase);
            set_condition(
                &mut c.st,
                "Progressing",
                "True",
                &format!("{k:?}"),
                &format!("{p:?}"),
                now,
            )
        }
        (None, Some((reason, msg))) => {
            set_condition(&mut c.st, "Progressing", "False", &reason, &msg, now)
        }
        (None, None) => set_condition(&mut c.st, "Progressing", "False", "Idle", "", now),
    }
    if lifecycle == LifecycleState::RolledBack {
        set_condition(
            &mut c.st,
            "Degraded",
            "True",
            "RolledBack",
            "the upgrade was rolled back",
            now,
        );
    } else if c.st.given_up {
        set_condition(&mut c.st, "Degraded", "True", "GaveUp", "", now);
    } else if ready
        && c.st
            .conditions
            .iter()
            .any(|x| x.type_ == "Degraded" && x.status == "True")
    {
        set_condition(&mut c.st, "Degraded", "False", "Recovered", "", now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_under_a_directory_ignore_uri_queries() {
        use super::under;
        let q = "?endpoint=http://h:1&path_style=true";
        let dir = format!("s3://b/sp/ns-a-3{q}");
        assert!(under(&dir, &format!("s3://b/sp/ns-a-3/savepoint-7-abc{q}")));
        assert!(under(
            "s3://b/sp/ns-a-3/",
            "s3://b/sp/ns-a-3/savepoint-7-abc"
        ));
        assert!(!under(
            &dir,
            &format!("s3://b/sp/ns-a-30/savepoint-7-abc{q}")
        ));
        assert!(!under(&dir, &format!("s3://b/sp/ns-a-3{q}")));
        assert!(!under(&dir, "s3://b/chk/chk-7"));
    }

    #[test]
    fn savepoint_targets_keep_the_uri_query_last() {
        assert_eq!(
            super::savepoint_target("s3://b/sp/", "ns-a", 3),
            "s3://b/sp/ns-a-3"
        );
        assert_eq!(
            super::savepoint_target("s3://b/sp?endpoint=http://h:1&path_style=true", "ns-a", 3),
            "s3://b/sp/ns-a-3?endpoint=http://h:1&path_style=true"
        );
    }

    #[test]
    fn deploy_ids_never_repeat() {
        use super::next_deploy_id;
        // Fresh job.
        assert_eq!(next_deploy_id(0, None, []), 1);
        // Resumed after suspend: no deployment, no pods, the seq remembers.
        assert_eq!(next_deploy_id(4, None, []), 5);
        // A status from an operator that had no seq: pods and the current
        // deployment still count.
        assert_eq!(next_deploy_id(0, Some(3), [2, 7]), 8);
        assert_eq!(next_deploy_id(9, Some(3), [2, 7]), 10);
        assert_eq!(next_deploy_id(u64::MAX, None, []), u64::MAX);
    }
}
