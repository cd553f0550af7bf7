//! Table tests of the pure reconcile state machine, with an operator crash at
//! every step of every flow.
//!
//! `Sim` is a deterministic model of the world the machine decides over
//! (pods, the runtime's control API, disposal Jobs, the StreamJob object).
//! One reconcile round is: decide → write status → perform each action (a
//! savepoint trigger's id is written to status right after it). A crash
//! at point `p` performs only the first `p` of those sub-steps; the next
//! operator then runs the machine from the persisted status and the world.

use std::collections::BTreeMap;

use runnel_api::{CheckpointInProgress, CheckpointInfo, JobState, SnapshotKind};
use runnel_operator::crd::{
    DesiredState, LifecycleState, Restore, SavepointRecordState, SavepointTrigger, StreamJobSpec,
    StreamJobStatus, UpgradeMode,
};
use runnel_operator::machine::{
    Action, DisposalObs, DisposalState, Input, PodObs, PodPhase, RuntimeObs, TriggerObs, World,
    decide,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Starts and runs.
    Good,
    /// Every pod fails.
    AlwaysFails,
}

#[derive(Clone, Debug)]
struct SimRuntime {
    state: JobState,
    restarts: u32,
    completed: Vec<CheckpointInfo>,
    in_progress: Vec<(CheckpointInProgress, bool)>,
    triggers: BTreeMap<String, String>,
    next_id: u64,
    /// What the runtime reports restoring from.
    restored_from: Option<String>,
}

#[derive(Clone, Debug)]
struct SimPod {
    phase: PodPhase,
    rt: Option<SimRuntime>,
    restore: Restore,
    generation: i64,
}

#[derive(Clone, Debug)]
struct Sim {
    spec: StreamJobSpec,
    generation: i64,
    annotation: Option<String>,
    status: StreamJobStatus,
    pods: BTreeMap<u64, SimPod>,
    now: i64,
    health: Health,
    /// Savepoint triggers the runtime accepted: (target dir, stop).
    accepted: Vec<(String, bool)>,
    deploys: Vec<(u64, i64, Restore)>,
    disposals: BTreeMap<String, DisposalState>,
    deleted_files: Vec<String>,
    events: Vec<String>,
    /// Checkpoint ids written to storage (for last-state).
    checkpoints: u64,
    /// Every savepoint the runtime takes fails (e.g. the store is down).
    savepoints_fail: bool,
    /// No periodic checkpoint completes (a long interval, or a stuck job).
    checkpoints_stall: bool,
    /// The StreamJob is being deleted.
    deleting: bool,
    /// The StreamJob carries the operator's finalizer.
    finalizer: bool,
    /// When the finalizer was removed: whether a delete savepoint was in the
    /// history by then.
    finalizer_removed_after_savepoint: Option<bool>,
    /// The newest snapshot the runtime's "latest" discovery finds: the last
    /// completed checkpoint or savepoint (the runtime records savepoints in
    /// the checkpoint directory).
    latest: Option<String>,
}

fn job() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "name": "demo",
        "checkpoint": { "interval": "1s", "storage": "file:///chk" },
        "sources": [{ "name": "n", "generator": { "fields": { "n": { "sequence": {} } } } }],
        "sinks": [{ "name": "out", "stdout": {} }]
    })
}

fn spec(mode: UpgradeMode) -> StreamJobSpec {
    serde_json::from_value(serde_json::json!({
        "image": "runnel:1",
        "parallelism": 2,
        "job": job(),
        "upgradeMode": match mode {
            UpgradeMode::Stateless => "stateless",
            UpgradeMode::Savepoint => "savepoint",
            UpgradeMode::LastState => "last-state",
        },
        "savepoints": { "directory": "file:///sp" }
    }))
    .unwrap()
}

const STEP_MS: i64 = 1000;

impl Sim {
    fn new(spec: StreamJobSpec) -> Sim {
        Sim {
            spec,
            generation: 1,
            annotation: None,
            status: StreamJobStatus::default(),
            pods: BTreeMap::new(),
            now: 1_000_000,
            health: Health::Good,
            accepted: vec![],
            deploys: vec![],
            disposals: BTreeMap::new(),
            deleted_files: vec![],
            events: vec![],
            checkpoints: 0,
            savepoints_fail: false,
            checkpoints_stall: false,
            deleting: false,
            finalizer: false,
            finalizer_removed_after_savepoint: None,
            latest: None,
        }
    }

    fn current(&self) -> Option<u64> {
        self.status.deployment.as_ref().map(|d| d.deploy_id)
    }

    fn world(&self) -> World {
        let pods = self
            .pods
            .iter()
            .map(|(id, p)| PodObs {
                deploy_id: *id,
                phase: p.phase,
            })
            .collect();
        let cur = self.current();
        let runtime = cur.and_then(|id| {
            let p = self.pods.get(&id)?;
            let rt = p.rt.as_ref()?;
            Some(RuntimeObs {
                deploy_id: id,
                state: rt.state,
                restarts: rt.restarts,
                completed: rt.completed.clone(),
                in_progress: rt.in_progress.iter().map(|(c, _)| c.clone()).collect(),
                restored_from: rt.restored_from.clone(),
            })
        });
        let trigger = self.status.savepoint_in_progress.as_ref().and_then(|sp| {
            let tid = sp.trigger_id.as_ref()?;
            let rt = self.pods.get(&sp.deploy_id)?.rt.as_ref()?;
            Some(match rt.triggers.get(tid) {
                None => TriggerObs::Unknown,
                Some(_) if self.savepoints_fail => TriggerObs::Failed("storage unreachable".into()),
                Some(target) => match rt
                    .completed
                    .iter()
                    .find(|c| c.path.starts_with(target.as_str()))
                {
                    Some(c) => TriggerObs::Completed(c.path.clone()),
                    None => TriggerObs::InProgress,
                },
            })
        });
        let disposals = self
            .disposals
            .iter()
            .map(|(p, s)| DisposalObs {
                path: p.clone(),
                state: s.clone(),
            })
            .collect();
        World {
            pods,
            runtime,
            trigger,
            disposals,
        }
    }

    /// The world moves on by one step: pods start, savepoints and
    /// checkpoints complete, disposal Jobs finish.
    fn tick(&mut self) {
        self.now += STEP_MS;
        let health = self.health;
        let savepoints_fail = self.savepoints_fail;
        let checkpoints_stall = self.checkpoints_stall;
        let mut latest = self.latest.clone();
        for (id, p) in self.pods.iter_mut() {
            match p.phase {
                PodPhase::Pending => {
                    if health == Health::AlwaysFails {
                        p.phase = PodPhase::Failed;
                    } else {
                        p.phase = PodPhase::Running;
                        p.rt = Some(SimRuntime {
                            state: JobState::Running,
                            restarts: 0,
                            completed: vec![],
                            in_progress: vec![],
                            triggers: BTreeMap::new(),
                            next_id: 1,
                            restored_from: match &p.restore {
                                Restore::Empty => None,
                                Restore::Savepoint(s) => Some(s.clone()),
                                Restore::LatestCheckpoint => latest.clone(),
                            },
                        });
                    }
                }
                PodPhase::Running => {
                    let Some(rt) = p.rt.as_mut() else { continue };
                    let done: Vec<_> = std::mem::take(&mut rt.in_progress);
                    for (c, stop) in done {
                        if savepoints_fail {
                            // Failed: never completes, the job keeps running.
                            continue;
                        }
                        latest = Some(format!("{}/savepoint-{}-abc{}", c.path, c.id, id));
                        rt.completed.push(CheckpointInfo {
                            id: c.id,
                            kind: c.kind,
                            path: format!("{}/savepoint-{}-abc{}", c.path, c.id, id),
                            duration_ms: 5,
                            size_bytes: 10,
                            alignment_ms: 0,
                            completed_ms: self.now,
                        });
                        if stop {
                            rt.state = JobState::Stopped;
                        }
                    }
                    if rt.state == JobState::Running && !checkpoints_stall {
                        self.checkpoints += 1;
                        let id = rt.next_id;
                        rt.next_id += 1;
                        latest = Some(format!("file:///chk/chk-{id}"));
                        rt.completed.push(CheckpointInfo {
                            id,
                            kind: SnapshotKind::Checkpoint,
                            path: format!("file:///chk/chk-{id}"),
                            duration_ms: 1,
                            size_bytes: 1,
                            alignment_ms: 0,
                            completed_ms: self.now,
                        });
                    }
                }
                _ => {}
            }
        }
        self.latest = latest;
        for (path, st) in self.disposals.iter_mut() {
            if *st == DisposalState::Running {
                *st = DisposalState::Succeeded;
                self.deleted_files.push(path.clone());
            }
        }
    }

    fn decide(&self) -> runnel_operator::machine::Decision {
        let world = self.world();
        decide(&Input {
            key: "ns-demo",
            generation: self.generation,
            spec: &self.spec,
            savepoint_annotation: self.annotation.as_deref(),
            deleting: self.deleting,
            has_finalizer: self.finalizer,
            status: &self.status,
            world: &world,
            now_ms: self.now,
        })
    }

    /// Performs one action; returns the trigger id to record, if any.
    fn act(&mut self, a: &Action) -> Option<(String, String)> {
        match a {
            Action::Deploy {
                deploy_id,
                spec_generation,
                restore,
                ..
            } => {
                if !self.pods.contains_key(deploy_id) {
                    self.pods.insert(
                        *deploy_id,
                        SimPod {
                            phase: PodPhase::Pending,
                            rt: None,
                            restore: restore.clone(),
                            generation: *spec_generation,
                        },
                    );
                    self.deploys
                        .push((*deploy_id, *spec_generation, restore.clone()));
                }
            }
            Action::DeletePods { keep } => self.pods.retain(|id, _| Some(*id) == *keep),
            Action::TriggerSavepoint {
                target_directory,
                stop,
            } => {
                let cur = self.current()?;
                let rt = self.pods.get_mut(&cur)?.rt.as_mut()?;
                if rt.state != JobState::Running {
                    return None;
                }
                let id = rt.next_id;
                rt.next_id += 1;
                rt.in_progress.push((
                    CheckpointInProgress {
                        id,
                        kind: if *stop {
                            SnapshotKind::StopSavepoint
                        } else {
                            SnapshotKind::Savepoint
                        },
                        path: target_directory.clone(),
                        started_ms: self.now,
                        acknowledged_subtasks: 0,
                        total_subtasks: 2,
                    },
                    *stop,
                ));
                let tid = format!("t{id}");
                rt.triggers.insert(tid.clone(), target_directory.clone());
                self.accepted.push((target_directory.clone(), *stop));
                return Some((target_directory.clone(), tid));
            }
            Action::RemoveSavepointAnnotation => self.annotation = None,
            Action::Dispose { path } => {
                self.disposals
                    .entry(path.clone())
                    .or_insert(DisposalState::Running);
            }
            Action::ForgetDisposal { path } => {
                self.disposals.remove(path);
            }
            Action::AddFinalizer => self.finalizer = !self.deleting,
            Action::RemoveFinalizer => {
                if self.finalizer {
                    self.finalizer = false;
                    self.finalizer_removed_after_savepoint =
                        Some(!self.savepoints_of(SavepointTrigger::Delete).is_empty());
                }
            }
            Action::Event { reason, .. } => self.events.push(reason.clone()),
        }
        None
    }

    /// Number of crash points of the next round.
    fn round_len(&self) -> usize {
        let d = self.decide();
        1 + d.actions.len()
            + d.actions
                .iter()
                .filter(|a| matches!(a, Action::TriggerSavepoint { .. }))
                .count()
    }

    /// One round; `crash_at`: stop after that many sub-steps.
    fn round(&mut self, crash_at: Option<usize>) {
        let d = self.decide();
        let mut budget = crash_at.unwrap_or(usize::MAX);
        if budget == 0 {
            return;
        }
        budget -= 1;
        self.status = d.status.clone();
        for a in &d.actions {
            if budget == 0 {
                return;
            }
            budget -= 1;
            if let Some((target, tid)) = self.act(a) {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                if let Some(sp) = self.status.savepoint_in_progress.as_mut()
                    && sp.target_directory == target
                {
                    sp.trigger_id = Some(tid);
                }
            }
        }
    }

    /// Reconciles with the world moving on until nothing changes.
    fn settle(&mut self) {
        for _ in 0..60 {
            self.round(None);
            self.tick();
        }
    }

    fn stop_triggers(&self) -> usize {
        self.accepted.iter().filter(|(_, stop)| *stop).count()
    }

    fn savepoints_of(&self, t: SavepointTrigger) -> Vec<String> {
        self.status
            .savepoint_history
            .iter()
            .filter(|r| r.trigger == t)
            .map(|r| r.path.clone())
            .collect()
    }

    fn final_restore(&self) -> Restore {
        self.status.deployment.as_ref().unwrap().restore.clone()
    }
}

/// A job that was deployed and is running (with some checkpoints).
fn running(mode: UpgradeMode) -> Sim {
    let mut s = Sim::new(spec(mode));
    s.settle();
    assert_eq!(s.status.lifecycle_state, LifecycleState::Running);
    assert_eq!(s.deploys.len(), 1);
    s
}

/// Runs `change` on a settled sim and then the flow, crashing at every
/// sub-step of every round (each crash in its own fork), and checks `check`
/// for each fork and for the uncrashed run.
fn with_crash_at_every_step(base: &Sim, change: impl Fn(&mut Sim), check: impl Fn(&Sim, &str)) {
    let mut clean = base.clone();
    change(&mut clean);
    let mut prefix = clean.clone();
    // The clean run, recording each round's length.
    let mut lens = vec![];
    for _ in 0..40 {
        lens.push(prefix.round_len());
        prefix.round(None);
        prefix.tick();
    }
    check(&prefix, "no crash");
    let mut forks = 0;
    let mut at_round = clean.clone();
    for (r, len) in lens.iter().enumerate() {
        for p in 0..*len {
            let mut f = at_round.clone();
            f.round(Some(p));
            // The operator restarts; the world keeps moving.
            f.tick();
            f.settle();
            check(&f, &format!("crash in round {r} after {p} sub-steps"));
            forks += 1;
        }
        at_round.round(None);
        at_round.tick();
    }
    assert!(forks > 10, "only {forks} crash points");
}

fn change_parallelism(s: &mut Sim) {
    s.spec.parallelism = Some(4);
    s.generation += 1;
}

#[test]
fn savepoint_upgrade_survives_a_crash_at_every_step() {
    let base = running(UpgradeMode::Savepoint);
    with_crash_at_every_step(&base, change_parallelism, |s, when| {
        assert_eq!(s.stop_triggers(), 1, "{when}: {:?}", s.accepted);
        let sp = s.savepoints_of(SavepointTrigger::Upgrade);
        assert_eq!(sp.len(), 1, "{when}");
        assert_eq!(
            s.final_restore(),
            Restore::Savepoint(sp[0].clone()),
            "{when}"
        );
        assert_eq!(s.deploys.len(), 2, "{when}: {:?}", s.deploys);
        let d = s.status.deployment.as_ref().unwrap();
        assert_eq!(d.spec_generation, 2, "{when}");
        assert_eq!(s.pods.len(), 1, "{when}");
        assert_eq!(s.pods[&d.deploy_id].generation, 2);
        assert_eq!(
            s.pods[&d.deploy_id].restore,
            Restore::Savepoint(sp[0].clone())
        );
        assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
        assert!(s.status.operation.is_none(), "{when}");
        assert_eq!(s.status.last_savepoint.as_deref(), Some(sp[0].as_str()));
    });
}

#[test]
fn last_state_upgrade_survives_a_crash_at_every_step() {
    let base = running(UpgradeMode::LastState);
    with_crash_at_every_step(&base, change_parallelism, |s, when| {
        assert!(
            s.accepted.is_empty(),
            "{when}: no savepoint in last-state mode"
        );
        assert_eq!(s.final_restore(), Restore::LatestCheckpoint, "{when}");
        assert_eq!(s.deploys.len(), 2, "{when}");
        assert_eq!(s.deploys[1].2, Restore::LatestCheckpoint);
        assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
    });
}

#[test]
fn stateless_upgrade_survives_a_crash_at_every_step() {
    let base = running(UpgradeMode::Stateless);
    with_crash_at_every_step(&base, change_parallelism, |s, when| {
        assert!(s.accepted.is_empty(), "{when}");
        assert_eq!(s.final_restore(), Restore::Empty, "{when}");
        assert_eq!(s.deploys.len(), 2, "{when}");
        assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
    });
}

#[test]
fn health_restart_survives_a_crash_at_every_step() {
    let base = running(UpgradeMode::Savepoint);
    with_crash_at_every_step(
        &base,
        |s| {
            let cur = s.current().unwrap();
            s.pods.get_mut(&cur).unwrap().phase = PodPhase::Failed;
            s.pods.get_mut(&cur).unwrap().rt = None;
        },
        |s, when| {
            assert_eq!(s.deploys.len(), 2, "{when}: {:?}", s.deploys);
            assert_eq!(s.final_restore(), Restore::LatestCheckpoint, "{when}");
            assert!(s.accepted.is_empty(), "{when}: no savepoint of a dead pod");
            assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
        },
    );
}

#[test]
fn nonce_savepoint_triggers_once_across_crashes() {
    let base = running(UpgradeMode::Savepoint);
    with_crash_at_every_step(
        &base,
        |s| {
            s.spec.savepoint_trigger_nonce = Some(7);
            s.generation += 1;
        },
        |s, when| {
            assert_eq!(s.accepted.len(), 1, "{when}: {:?}", s.accepted);
            assert_eq!(s.savepoints_of(SavepointTrigger::Nonce).len(), 1, "{when}");
            assert_eq!(s.deploys.len(), 1, "{when}: a nonce is no upgrade");
        },
    );
}

#[test]
fn periodic_savepoints_survive_crashes_without_bursts() {
    let mut base = running(UpgradeMode::Savepoint);
    base.spec.savepoints.history_max_count = 100;
    with_crash_at_every_step(
        &base,
        |s| s.spec.savepoints.periodic_interval_seconds = Some(10),
        |s, when| {
            // 40 simulated seconds of the flow plus the fork's settling: one
            // every 10 s, never two in a row after a restart.
            let n = s.savepoints_of(SavepointTrigger::Periodic).len();
            assert!((3..=11).contains(&n), "{when}: {n}");
            let mut times: Vec<i64> = s
                .status
                .savepoint_history
                .iter()
                .filter(|r| r.trigger == SavepointTrigger::Periodic)
                .map(|r| r.time_ms)
                .collect();
            times.sort_unstable();
            assert!(
                times.windows(2).all(|w| w[1] - w[0] >= 9_000),
                "{when}: {times:?}"
            );
        },
    );
}

#[test]
fn rollback_survives_a_crash_at_every_step() {
    let mut base = running(UpgradeMode::Savepoint);
    base.spec.rollback.enabled = true;
    base.spec.rollback.timeout_seconds = Some(10);
    base.spec.health.max_operator_restarts = 0;
    with_crash_at_every_step(
        &base,
        |s| {
            s.health = Health::AlwaysFails;
            s.spec.image = "runnel:broken".into();
            s.generation += 1;
        },
        |s, when| {
            let up = s.savepoints_of(SavepointTrigger::Upgrade);
            assert_eq!(up.len(), 1, "{when}: one upgrade savepoint");
            assert_eq!(s.stop_triggers(), 1, "{when}");
            let last = s.deploys.last().unwrap();
            assert_eq!(last.1, 1, "{when}: the stable spec: {:?}", s.deploys);
            assert_eq!(last.2, Restore::Savepoint(up[0].clone()), "{when}");
            assert_eq!(s.status.rolled_back_generation, Some(2), "{when}");
        },
    );
}

#[test]
fn final_savepoint_on_delete_survives_a_crash_at_every_step() {
    let mut base = running(UpgradeMode::Savepoint);
    base.spec.savepoints.savepoint_on_delete = true;
    base.settle();
    assert!(
        base.finalizer,
        "the finalizer is added while the option is on"
    );
    with_crash_at_every_step(
        &base,
        |s| s.deleting = true,
        |s, when| {
            assert!(!s.finalizer, "{when}: the finalizer goes");
            assert_eq!(
                s.finalizer_removed_after_savepoint,
                Some(true),
                "{when}: only after the savepoint"
            );
            assert_eq!(s.stop_triggers(), 1, "{when}: one final savepoint");
            assert_eq!(s.savepoints_of(SavepointTrigger::Delete).len(), 1, "{when}");
        },
    );
}

/// A stop savepoint completes, and the pod is evicted before the operator
/// reads the result. The upgrade falls back to the latest state, which the
/// runtime finds to be that savepoint (it records savepoints in the checkpoint
/// directory). Once the new runtime reports restoring from it, the savepoint
/// joins the history: shown, kept and disposed of like any other, not an
/// orphan.
#[test]
fn a_stop_savepoint_whose_result_was_lost_is_adopted_into_the_history() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.allow_checkpoint_fallback = true;
    change_parallelism(&mut s);
    while s.stop_triggers() == 0 {
        s.round(None);
    }
    s.tick(); // the savepoint completes
    let lost = s.latest.clone().unwrap();
    assert!(lost.contains("/savepoint-"), "{lost}");
    let cur = s.current().unwrap();
    s.pods.remove(&cur); // evicted, result unread
    s.round(None);
    assert!(
        s.status
            .unconfirmed_savepoint
            .as_ref()
            .is_some_and(|u| u.trigger == SavepointTrigger::Upgrade),
        "{:?}",
        s.status.unconfirmed_savepoint
    );
    assert!(s.status.savepoint_history.iter().all(|r| r.path != lost));
    s.settle();
    let (id, generation, restore) = s.deploys.last().unwrap().clone();
    assert_eq!(generation, s.generation, "the upgrade went through");
    assert_eq!(restore, Restore::LatestCheckpoint);
    assert_eq!(
        s.pods[&id].rt.as_ref().unwrap().restored_from.as_deref(),
        Some(lost.as_str())
    );
    let h: Vec<_> = s
        .status
        .savepoint_history
        .iter()
        .filter(|r| r.path == lost)
        .collect();
    assert_eq!(h.len(), 1, "{:?}", s.status.savepoint_history);
    assert_eq!(h[0].trigger, SavepointTrigger::Upgrade);
    assert_eq!(h[0].state, SavepointRecordState::Completed);
    assert!(
        s.events.iter().any(|e| e == "SavepointRecovered"),
        "{:?}",
        s.events
    );
    assert!(s.status.unconfirmed_savepoint.is_none());
    assert_eq!(s.stop_triggers(), 1, "no second stop savepoint");
}

/// `stateless` with `initialSavepointPath`: the first deployment and every
/// upgrade start from that savepoint (never from a checkpoint, never empty),
/// and no savepoint is taken on the way.
#[test]
fn stateless_with_an_initial_savepoint_always_starts_from_it() {
    let mut base = Sim::new(spec(UpgradeMode::Stateless));
    base.spec.initial_savepoint_path = Some("file:///sp/init".into());
    base.settle();
    assert_eq!(base.status.lifecycle_state, LifecycleState::Running);
    assert_eq!(
        base.final_restore(),
        Restore::Savepoint("file:///sp/init".into())
    );
    with_crash_at_every_step(&base, change_parallelism, |s, when| {
        assert!(s.accepted.is_empty(), "{when}");
        assert_eq!(s.deploys.len(), 2, "{when}");
        assert_eq!(
            s.final_restore(),
            Restore::Savepoint("file:///sp/init".into()),
            "{when}"
        );
        assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
    });
}

/// An annotation savepoint that fails: the failure is reported (status
/// error, a `SavepointFailed` Event), the annotation is removed so that it
/// does not trigger again and again, and the job keeps running untouched.
#[test]
fn a_failed_annotation_savepoint_is_reported_and_the_annotation_removed() {
    let mut s = running(UpgradeMode::Savepoint);
    s.savepoints_fail = true;
    s.annotation = Some("now".into());
    s.settle();
    assert_eq!(s.accepted.len(), 1, "one trigger: {:?}", s.accepted);
    assert_eq!(s.status.savepoint_failures, 1);
    assert_eq!(s.annotation, None);
    assert!(s.status.savepoint_in_progress.is_none());
    assert!(
        s.status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("savepoint failed")),
        "{:?}",
        s.status.error
    );
    assert!(
        s.events.iter().any(|e| e == "SavepointFailed"),
        "{:?}",
        s.events
    );
    assert!(s.savepoints_of(SavepointTrigger::Annotation).is_empty());
    assert_eq!(s.deploys.len(), 1, "nothing redeployed");
    assert_eq!(s.status.lifecycle_state, LifecycleState::Running);
}

#[test]
fn suspend_and_resume_survive_a_crash_at_every_step() {
    for mode in [UpgradeMode::Savepoint, UpgradeMode::LastState] {
        let base = running(mode);
        with_crash_at_every_step(
            &base,
            |s| {
                s.spec.state = DesiredState::Suspended;
                s.generation += 1;
            },
            |s, when| {
                assert_eq!(s.stop_triggers(), 1, "{mode:?} {when}");
                assert!(s.pods.is_empty(), "{when}");
                assert_eq!(
                    s.status.lifecycle_state,
                    LifecycleState::Suspended,
                    "{when}"
                );
                let sp = s.savepoints_of(SavepointTrigger::Suspend);
                assert_eq!(sp.len(), 1);
                assert_eq!(
                    s.status.resume_restore,
                    Some(Restore::Savepoint(sp[0].clone()))
                );
            },
        );
        let mut suspended = base.clone();
        suspended.spec.state = DesiredState::Suspended;
        suspended.generation += 1;
        suspended.settle();
        let sp = suspended.savepoints_of(SavepointTrigger::Suspend)[0].clone();
        with_crash_at_every_step(
            &suspended,
            |s| {
                s.spec.state = DesiredState::Running;
                s.generation += 1;
            },
            |s, when| {
                assert_eq!(s.final_restore(), Restore::Savepoint(sp.clone()), "{when}");
                assert_eq!(s.deploys.len(), 2, "{when}");
                // The resumed deployment gets a new id, never deployment 1
                // again, although suspend cleared `deployment`.
                let ids: Vec<u64> = s.deploys.iter().map(|d| d.0).collect();
                assert_eq!(ids, [1, 2], "{when}");
                assert_eq!(s.status.deploy_seq, 2, "{when}");
                assert_eq!(s.current(), Some(2), "{when}");
                assert_eq!(s.stop_triggers(), 1, "{when}: resuming takes no savepoint");
                assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{when}");
            },
        );
    }
}

#[test]
fn annotation_savepoint_triggers_once_and_removes_the_annotation() {
    let base = running(UpgradeMode::Savepoint);
    with_crash_at_every_step(
        &base,
        |s| s.annotation = Some("now".into()),
        |s, when| {
            assert_eq!(s.accepted.len(), 1, "{when}: {:?}", s.accepted);
            assert!(!s.accepted[0].1, "not a stop");
            assert_eq!(s.annotation, None, "{when}");
            assert_eq!(
                s.savepoints_of(SavepointTrigger::Annotation).len(),
                1,
                "{when}"
            );
            assert_eq!(s.deploys.len(), 1, "{when}: nothing redeployed");
            assert!(s.status.savepoint_in_progress.is_none());
        },
    );
}

#[test]
fn annotation_while_a_savepoint_is_in_progress_does_not_trigger_again() {
    let mut s = running(UpgradeMode::Savepoint);
    s.annotation = Some("a".into());
    s.round(None);
    assert_eq!(s.accepted.len(), 1);
    // Re-annotated (same and then another value) before it completes.
    s.round(None);
    s.annotation = Some("b".into());
    s.round(None);
    assert_eq!(s.accepted.len(), 1, "in progress: no second trigger");
    s.settle();
    // "b" arrived while "a" was in progress: the completed savepoint removed it.
    assert_eq!(s.accepted.len(), 1);
    assert_eq!(s.annotation, None);
}

/// A request that arrives while savepoints are backing off after a failure
/// is kept, not dropped: it triggers once the back-off is over, and only then
/// is the annotation removed.
#[test]
fn requests_during_a_savepoint_backoff_are_served_after_it() {
    for via_nonce in [false, true] {
        let mut s = running(UpgradeMode::Savepoint);
        s.savepoints_fail = true;
        s.annotation = Some("first".into());
        // The first savepoint fails; the back-off starts.
        while s.status.savepoint_failures == 0 {
            s.round(None);
            s.tick();
        }
        s.savepoints_fail = false;
        let tried = s.accepted.len();
        assert_eq!(tried, 1);
        // A new request within the back-off.
        if via_nonce {
            s.spec.savepoint_trigger_nonce = Some(9);
            s.generation += 1;
        } else {
            s.annotation = Some("second".into());
        }
        s.round(None);
        s.tick();
        assert_eq!(s.accepted.len(), tried, "no trigger during the back-off");
        if !via_nonce {
            assert_eq!(
                s.annotation.as_deref(),
                Some("second"),
                "kept while waiting"
            );
        }
        assert!(
            s.status
                .conditions
                .iter()
                .any(|c| c.reason == "SavepointBackoff"),
            "{:?}",
            s.status.conditions
        );
        s.settle();
        let want = if via_nonce {
            SavepointTrigger::Nonce
        } else {
            SavepointTrigger::Annotation
        };
        assert_eq!(
            s.savepoints_of(want).len(),
            1,
            "via nonce: {via_nonce}; history {:?}",
            s.status.savepoint_history
        );
        assert_eq!(s.annotation, None);
        assert_eq!(s.status.savepoint_failures, 0);
    }
}

#[test]
fn nonce_and_periodic_savepoints() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.savepoint_trigger_nonce = Some(7);
    s.generation += 1;
    s.settle();
    assert_eq!(s.savepoints_of(SavepointTrigger::Nonce).len(), 1);
    assert_eq!(s.deploys.len(), 1, "a nonce change is no upgrade");
    s.settle();
    assert_eq!(s.accepted.len(), 1, "the same nonce does not trigger again");

    let mut p = running(UpgradeMode::Savepoint);
    p.spec.savepoints.periodic_interval_seconds = Some(10);
    p.spec.savepoints.history_max_count = 100;
    p.settle(); // 60 s
    let n = p.savepoints_of(SavepointTrigger::Periodic).len();
    assert!(
        (5..=6).contains(&n),
        "{n} periodic savepoints in 60 s at 10 s"
    );
}

#[test]
fn history_is_bounded_and_files_go_before_entries() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.savepoints.periodic_interval_seconds = Some(5);
    s.spec.savepoints.history_max_count = 2;
    s.settle();
    s.settle();
    let h = &s.status.savepoint_history;
    let completed: Vec<_> = h
        .iter()
        .filter(|r| r.state == SavepointRecordState::Completed)
        .collect();
    assert_eq!(completed.len(), 2, "{h:?}");
    let taken = s.accepted.len();
    assert!(taken > 10);
    // Every savepoint no longer in the history had its files deleted first.
    let gone: Vec<_> = s
        .accepted
        .iter()
        .filter(|(t, _)| !h.iter().any(|r| r.path.starts_with(t.as_str())))
        .collect();
    for (t, _) in &gone {
        assert!(
            s.deleted_files.iter().any(|f| f.starts_with(t.as_str())),
            "{t} forgotten without deleting its files"
        );
    }
    assert!(gone.len() >= taken - 3);

    // By age: all old ones go, the newest stays.
    let mut a = s.clone();
    a.spec.savepoints.periodic_interval_seconds = None;
    a.spec.savepoints.history_max_age_seconds = Some(1);
    a.now += 3_600_000;
    a.settle();
    let left: Vec<_> = a.status.savepoint_history.iter().collect();
    assert_eq!(left.len(), 1, "at least one is kept: {left:?}");
    assert_eq!(left[0].state, SavepointRecordState::Completed);
}

#[test]
fn savepoint_mode_when_the_job_is_not_running() {
    // Deployed spec never ran (every pod fails): the upgrade restores from
    // the same point the failed deployment did — nothing was lost.
    let mut s = Sim::new(spec(UpgradeMode::Savepoint));
    s.health = Health::AlwaysFails;
    s.settle();
    assert_eq!(s.status.lifecycle_state, LifecycleState::Failed);
    assert!(s.status.given_up);
    s.health = Health::Good;
    change_parallelism(&mut s);
    s.settle();
    assert_eq!(s.status.lifecycle_state, LifecycleState::Running);
    // Never checkpointed: the last state is still the empty start.
    assert_eq!(s.final_restore(), Restore::Empty);
    assert!(s.accepted.is_empty());
    // Same with an initial savepoint: it is still the exact restore point.
    let mut i = Sim::new(spec(UpgradeMode::Savepoint));
    i.spec.initial_savepoint_path = Some("file:///sp/init".into());
    i.health = Health::AlwaysFails;
    i.settle();
    i.health = Health::Good;
    change_parallelism(&mut i);
    i.settle();
    assert_eq!(
        i.final_restore(),
        Restore::Savepoint("file:///sp/init".into())
    );
    assert!(i.accepted.is_empty());

    // A job that ran, then its pod keeps failing: no savepoint possible;
    // without fallback the upgrade waits and says so, and the new spec is
    // not deployed.
    let mut w = running(UpgradeMode::Savepoint);
    w.health = Health::AlwaysFails;
    let cur = w.current().unwrap();
    w.pods.get_mut(&cur).unwrap().phase = PodPhase::Failed;
    w.pods.get_mut(&cur).unwrap().rt = None;
    change_parallelism(&mut w);
    w.settle();
    assert!(w.deploys.iter().all(|d| d.1 == 1), "{:?}", w.deploys);
    let prog = w
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (prog.status.as_str(), prog.reason.as_str()),
        ("False", "WaitingForRunningJob")
    );

    // With fallback: upgrade from the latest checkpoint.
    let mut f = w.clone();
    f.spec.allow_checkpoint_fallback = true;
    f.status.given_up = false;
    f.health = Health::Good;
    f.settle();
    assert_eq!(f.final_restore(), Restore::LatestCheckpoint);
    assert_eq!(f.status.deployment.as_ref().unwrap().spec_generation, 2);
    assert_eq!(f.status.lifecycle_state, LifecycleState::Running);
}

#[test]
fn failed_pod_restarts_from_last_state_with_degraded() {
    let mut s = running(UpgradeMode::Savepoint);
    let cur = s.current().unwrap();
    s.pods.get_mut(&cur).unwrap().phase = PodPhase::Failed;
    s.pods.get_mut(&cur).unwrap().rt = None;
    s.round(None);
    let deg = s
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .clone();
    assert_eq!(
        (deg.status.as_str(), deg.reason.as_str()),
        ("True", "Restarted")
    );
    assert!(s.events.contains(&"Unhealthy".to_string()));
    s.settle();
    assert_eq!(s.deploys.len(), 2);
    assert_eq!(s.final_restore(), Restore::LatestCheckpoint);
    assert_eq!(s.status.lifecycle_state, LifecycleState::Running);
    let deg = s
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(deg.status, "False");
}

#[test]
fn a_deployment_that_ran_restarts_from_its_runs_latest_snapshot() {
    // Deployed from a savepoint, seen RUNNING, but no checkpoint observed
    // before its pod died: it may still have written snapshots (a checkpoint
    // the operator did not poll in time, or a stop savepoint whose result was
    // lost), and the runtime's lineage marker scopes "latest" to this run, so
    // the last state is the runtime's to find, not the savepoint it started
    // from.
    let mut s = Sim::new(spec(UpgradeMode::LastState));
    s.spec.initial_savepoint_path = Some("file:///sp/init".into());
    s.checkpoints_stall = true;
    s.settle();
    assert_eq!(s.status.lifecycle_state, LifecycleState::Running);
    assert!(s.status.deployment.as_ref().is_some_and(|d| d.stable));
    assert!(s.status.last_checkpoint.is_none());
    let cur = s.current().unwrap();
    s.pods.get_mut(&cur).unwrap().phase = PodPhase::Failed;
    s.pods.get_mut(&cur).unwrap().rt = None;
    s.settle();
    assert_eq!(s.deploys.len(), 2);
    assert_eq!(s.final_restore(), Restore::LatestCheckpoint);
}

#[test]
fn too_many_runtime_restarts_or_no_checkpoints_is_unhealthy() {
    let mut s = running(UpgradeMode::LastState);
    let cur = s.current().unwrap();
    s.pods.get_mut(&cur).unwrap().rt.as_mut().unwrap().restarts = 4;
    s.round(None);
    assert_eq!(
        s.status.operation.as_ref().map(|o| o.kind),
        Some(runnel_operator::crd::OperationKind::Restart)
    );

    let mut c = running(UpgradeMode::LastState);
    c.spec.health.checkpoint_progress_timeout_seconds = Some(30);
    let cur = c.current().unwrap();
    // Checkpoints stop completing (the job is stuck).
    c.pods.get_mut(&cur).unwrap().rt.as_mut().unwrap().state = JobState::Running;
    for _ in 0..25 {
        c.round(None);
        c.now += 2000;
    }
    assert_eq!(
        c.deploys.len(),
        2,
        "restarted once for no checkpoint progress"
    );
    assert!(c.events.contains(&"Unhealthy".to_string()));
}

#[test]
fn restart_nonce_restarts_from_last_state() {
    let base = running(UpgradeMode::Savepoint);
    with_crash_at_every_step(
        &base,
        |s| {
            s.spec.restart_nonce = Some(1);
            s.generation += 1;
        },
        |s, when| {
            assert_eq!(s.deploys.len(), 2, "{when}");
            assert_eq!(s.final_restore(), Restore::LatestCheckpoint, "{when}");
            assert!(s.accepted.is_empty(), "{when}");
        },
    );
}

#[test]
fn invalid_spec_reports_and_tears_nothing_down() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.job["sources"] = serde_json::json!("not a list");
    s.generation += 1;
    s.round(None);
    assert!(s.events.contains(&"ValidationFailed".to_string()));
    assert!(
        s.status.error.as_deref().unwrap().contains("spec.job"),
        "{:?}",
        s.status.error
    );
    s.settle();
    assert_eq!(s.deploys.len(), 1);
    assert_eq!(s.pods.len(), 1);
    assert!(s.accepted.is_empty());
    assert_eq!(
        s.events.iter().filter(|e| *e == "ValidationFailed").count(),
        1
    );
    // Fixed: the upgrade goes ahead and the error clears.
    s.spec.job = job();
    s.spec.parallelism = Some(3);
    s.generation += 1;
    s.settle();
    assert_eq!(s.status.error, None);
    assert_eq!(s.deploys.len(), 2);
}

#[test]
fn rollback_to_the_last_stable_spec_from_the_upgrade_savepoint() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.rollback.enabled = true;
    s.spec.rollback.timeout_seconds = Some(10);
    s.health = Health::AlwaysFails;
    s.spec.image = "runnel:broken".into();
    s.generation += 1;
    s.spec.health.max_operator_restarts = 0;
    s.settle();
    let up = s.savepoints_of(SavepointTrigger::Upgrade);
    assert_eq!(up.len(), 1);
    // Rollback deploys the stable spec (generation 1) from that savepoint.
    let last = s.deploys.last().unwrap().clone();
    assert_eq!(last.1, 1, "{:?}", s.deploys);
    assert_eq!(last.2, Restore::Savepoint(up[0].clone()));
    assert_eq!(s.status.rolled_back_generation, Some(2));
    s.health = Health::Good;
    // The rollback pod failed in this sim too; fix the world and settle.
    let cur = s.current().unwrap();
    s.pods.remove(&cur);
    s.spec.health.max_operator_restarts = 3;
    s.status.given_up = false;
    s.settle();
    assert_eq!(s.status.lifecycle_state, LifecycleState::RolledBack);
    assert_eq!(
        s.stop_triggers(),
        1,
        "no second upgrade attempt of the same generation"
    );
}

#[test]
fn table_spec_change_by_job_state_by_savepoint_state_by_mode() {
    #[derive(Debug, Clone, Copy)]
    enum JobSt {
        Running,
        FailedOnce,
    }
    for mode in [
        UpgradeMode::Stateless,
        UpgradeMode::Savepoint,
        UpgradeMode::LastState,
    ] {
        for job_st in [JobSt::Running, JobSt::FailedOnce] {
            for sp_in_progress in [false, true] {
                for change in ["parallelism", "image", "suspend"] {
                    let mut s = running(mode);
                    if sp_in_progress {
                        s.annotation = Some("x".into());
                        s.round(None);
                        assert_eq!(s.accepted.len(), 1);
                    }
                    if let JobSt::FailedOnce = job_st {
                        let cur = s.current().unwrap();
                        s.pods.get_mut(&cur).unwrap().phase = PodPhase::Failed;
                        s.pods.get_mut(&cur).unwrap().rt = None;
                    }
                    match change {
                        "parallelism" => s.spec.parallelism = Some(5),
                        "image" => s.spec.image = "runnel:2".into(),
                        _ => s.spec.state = DesiredState::Suspended,
                    }
                    s.generation += 1;
                    s.settle();
                    let case = format!("{mode:?} {job_st:?} sp={sp_in_progress} {change}");
                    let stops = s.stop_triggers();
                    let annotation_sps = s.savepoints_of(SavepointTrigger::Annotation).len();
                    // A savepoint in progress on a pod that then failed is lost.
                    let expect_annotation =
                        usize::from(sp_in_progress && matches!(job_st, JobSt::Running));
                    assert_eq!(annotation_sps, expect_annotation, "{case}");
                    assert!(s.status.savepoint_in_progress.is_none(), "{case}");
                    assert!(s.status.operation.is_none(), "{case}");
                    if change == "suspend" {
                        assert!(s.pods.is_empty(), "{case}");
                        assert_eq!(
                            s.status.lifecycle_state,
                            LifecycleState::Suspended,
                            "{case}"
                        );
                        continue;
                    }
                    assert_eq!(s.status.lifecycle_state, LifecycleState::Running, "{case}");
                    let d = s.status.deployment.clone().unwrap();
                    assert_eq!(d.spec_generation, 2, "{case}");
                    let expected = match (mode, job_st) {
                        (UpgradeMode::Stateless, _) => Restore::Empty,
                        (UpgradeMode::LastState, _) => Restore::LatestCheckpoint,
                        // Restarted from last state, ran, then savepoint-upgraded.
                        (UpgradeMode::Savepoint, _) => {
                            let up = s.savepoints_of(SavepointTrigger::Upgrade);
                            assert_eq!(up.len(), 1, "{case}");
                            Restore::Savepoint(up[0].clone())
                        }
                    };
                    assert_eq!(d.restore, expected, "{case}");
                    let expected_stops = usize::from(mode == UpgradeMode::Savepoint);
                    assert_eq!(stops, expected_stops, "{case}");
                }
            }
        }
    }
}

#[test]
fn final_savepoint_on_delete_then_the_finalizer_goes() {
    let mut s = running(UpgradeMode::Savepoint);
    s.spec.savepoints.savepoint_on_delete = true;
    let d = s.decide();
    assert!(d.actions.contains(&Action::AddFinalizer));
    // Deleted (with the finalizer on it).
    let decide_deleting = |s: &Sim| {
        let world = s.world();
        decide(&Input {
            key: "ns-demo",
            generation: s.generation,
            spec: &s.spec,
            savepoint_annotation: None,
            deleting: true,
            has_finalizer: true,
            status: &s.status,
            world: &world,
            now_ms: s.now,
        })
    };
    let mut removed = false;
    for _ in 0..10 {
        let d = decide_deleting(&s);
        s.status = d.status.clone();
        for a in &d.actions {
            if *a == Action::RemoveFinalizer {
                removed = true;
            }
            if let Some((t, id)) = s.act(a)
                && let Some(sp) = s.status.savepoint_in_progress.as_mut()
                && sp.target_directory == t
            {
                sp.trigger_id = Some(id);
            }
        }
        if removed {
            break;
        }
        assert!(
            s.status.savepoint_in_progress.is_some(),
            "the finalizer stays until the savepoint is done"
        );
        s.tick();
    }
    assert!(removed);
    assert_eq!(s.stop_triggers(), 1);
    assert_eq!(s.savepoints_of(SavepointTrigger::Delete).len(), 1);

    // Without the option, the finalizer (if any) goes at once.
    let mut n = running(UpgradeMode::Savepoint);
    n.spec.savepoints.savepoint_on_delete = false;
    let d = decide_deleting(&n);
    assert!(d.actions.contains(&Action::RemoveFinalizer));
    assert!(n.accepted.is_empty());
}

/// A savepoint that keeps failing during a savepoint-mode upgrade is retried
/// with back-off (10 s, 20 s, 40 s, ...), not in a hot loop; once savepoints
/// work again the upgrade completes through one.
#[test]
fn failing_upgrade_savepoints_back_off_then_the_upgrade_completes() {
    let mut s = running(UpgradeMode::Savepoint);
    let before = s.stop_triggers();
    s.savepoints_fail = true;
    change_parallelism(&mut s);
    s.settle(); // 60 simulated seconds
    let tries = s.stop_triggers() - before;
    // t = 0, 10, 30 s (and never more than one per back-off period).
    assert!(
        (2..=4).contains(&tries),
        "{tries} triggers in 60 s; events {:?}; status {:?}",
        s.events,
        s.status.conditions
    );
    assert!(s.status.savepoint_failures >= 2);
    assert!(
        s.status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("savepoint failed: storage unreachable")),
        "{:?}",
        s.status.error
    );
    assert!(s.events.iter().any(|e| e == "SavepointFailed"));
    assert_eq!(runnel_operator::machine::savepoint_backoff_ms(1), 10_000);
    assert_eq!(runnel_operator::machine::savepoint_backoff_ms(3), 40_000);
    assert_eq!(runnel_operator::machine::savepoint_backoff_ms(30), 300_000);
    // Savepoints work again: the upgrade goes through one.
    s.savepoints_fail = false;
    for _ in 0..4 {
        s.settle();
    }
    assert_eq!(s.status.savepoint_failures, 0);
    assert!(
        s.deploys
            .iter()
            .any(|(_, g, r)| *g == s.generation && matches!(r, Restore::Savepoint(_))),
        "{:?}",
        s.deploys
    );
}

/// A CEL typo is caught by the operator's validation, with its path, for
/// every expression at once, and a valid job still passes.
#[test]
fn invalid_cel_is_a_validation_error_with_its_path() {
    let mut s = spec(UpgradeMode::Savepoint);
    s.job["steps"] = serde_json::json!([
        { "filter": "n % 2 == 0" },
        { "map": { "fields": { "m": "n +", "k": "n * 2" } } },
        { "dedup": { "key": "m ==", "ttl": "1m" } }
    ]);
    let e = runnel_operator::machine::validate(&s).unwrap_err();
    assert!(
        e.contains("spec.job.steps[1].map.fields.m: invalid CEL"),
        "{e}"
    );
    assert!(
        e.contains("spec.job.steps[2].dedup.key: invalid CEL"),
        "{e}"
    );
    assert!(!e.contains("steps[0]") && !e.contains("fields.k"), "{e}");
    s.job["steps"][1]["map"]["fields"]["m"] = serde_json::json!("n + 1");
    s.job["steps"][2]["dedup"]["key"] = serde_json::json!("m == 1");
    runnel_operator::machine::validate(&s).unwrap();
}
