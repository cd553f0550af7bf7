//! Job-level tests of three engine features that the other suites only touch
//! indirectly: broadcast and rebalance edges, processing-time timers in a
//! keyed function (with a manual clock, across a checkpoint and a restore),
//! and the checkpoint complete / aborted notifications of Flink's subsuming
//! contract.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use runnel_runtime::clock::{Clock, ManualClock};
use runnel_runtime::functions::{SourceFunction, SourceOutput, SourcePoll, TimeDomain};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::state::operator::{OperatorListState, OperatorListStateDescriptor};
use runnel_runtime::{
    CheckpointListener, FnResult, InitContext, JobOutcome, KeyedContext, KeyedProcessFunction,
    SinkContext, SinkFunction, SnapshotContext, StreamEnv, UserError,
};

/// Waits for a condition that a running job makes true; the timeout only
/// turns a hang into a failure, it is never what the test asserts.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---- broadcast and rebalance ---------------------------------------------------

/// Records every value it receives under the index of its subtask.
#[derive(Clone, Default)]
struct PerSubtaskSink {
    subtask: u32,
    seen: Arc<Mutex<BTreeMap<u32, Vec<u64>>>>,
}

impl CheckpointListener for PerSubtaskSink {}

impl SinkFunction<u64> for PerSubtaskSink {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.subtask = ctx.subtask_index();
        lock(&self.seen).entry(self.subtask).or_default();
        Ok(())
    }
    fn invoke(&mut self, v: u64, _ctx: &SinkContext) -> FnResult {
        lock(&self.seen).entry(self.subtask).or_default().push(v);
        Ok(())
    }
}

const EDGE_N: u64 = 3_000;

#[test]
fn broadcast_edge_delivers_every_record_to_every_subtask_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("broadcast", dir.path(), 20);
    cfg.parallelism = 3;
    let sink = PerSubtaskSink::default();
    let seen = sink.seen.clone();
    let env = StreamEnv::new(cfg);
    // Two source subtasks, three sink subtasks: a broadcast edge across a
    // change of parallelism, with barriers flowing through it.
    env.add_source("numbers", GeneratorSource::new(|i| i).count(EDGE_N))
        .set_parallelism(2)
        .broadcast()
        .sink("all", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let seen = lock(&seen).clone();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let all: Vec<u64> = (0..EDGE_N).collect();
    for (s, mut got) in seen {
        got.sort_unstable();
        assert_eq!(got.len(), EDGE_N as usize, "subtask {s}: record count");
        assert!(got == all, "subtask {s} did not see each record once");
    }
}

#[test]
fn rebalance_edge_spreads_records_round_robin_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("rebalance", dir.path(), 20);
    cfg.parallelism = 3;
    let sink = PerSubtaskSink::default();
    let seen = sink.seen.clone();
    let env = StreamEnv::new(cfg);
    // One source subtask emits 0..N in order, so round robin over three
    // targets gives each one every third value.
    env.add_source("numbers", GeneratorSource::new(|i| i).count(EDGE_N))
        .set_parallelism(1)
        .rebalance()
        .sink("spread", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let seen = lock(&seen).clone();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let mut residues = Vec::new();
    let mut union = Vec::new();
    for (s, got) in &seen {
        assert_eq!(
            got.len(),
            (EDGE_N / 3) as usize,
            "subtask {s} got an unfair share"
        );
        // In order, each one `parallelism` after the previous.
        let r = got[0] % 3;
        let want: Vec<u64> = (0..EDGE_N).filter(|v| v % 3 == r).collect();
        assert!(
            *got == want,
            "subtask {s} is not every third value from {r}"
        );
        residues.push(r);
        union.extend_from_slice(got);
    }
    residues.sort_unstable();
    assert_eq!(residues, vec![0, 1, 2], "two subtasks got the same share");
    union.sort_unstable();
    assert!(
        union == (0..EDGE_N).collect::<Vec<_>>(),
        "records lost or duplicated"
    );
}

// ---- processing-time timers ----------------------------------------------------

/// A key and how far ahead (processing time) to set its timer.
type Script = Arc<Mutex<Vec<(u64, i64)>>>;

/// Key of the record that makes the timer function fail once.
const POISON: u64 = u64::MAX;

/// Emits what the test appends to a shared script, one record per poll, and
/// checkpoints its position in it. Runs until `stop` is set and it is drained.
/// Records, per checkpoint, how many records preceded the barrier.
#[derive(Clone)]
struct ScriptSource {
    script: Script,
    stop: Arc<AtomicBool>,
    next: u64,
    state: Option<OperatorListState<u64>>,
    /// checkpoint id -> records emitted before its barrier.
    snapshots: Arc<Mutex<BTreeMap<u64, u64>>>,
}

impl CheckpointListener for ScriptSource {}

impl SourceFunction<(u64, i64)> for ScriptSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        let st = ctx.list_state(&OperatorListStateDescriptor::<u64>::even_split("next"))?;
        self.next = st
            .get(ctx.operator_state())?
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        self.state = Some(st);
        Ok(())
    }
    fn poll(&mut self, out: &mut SourceOutput<'_, (u64, i64)>) -> Result<SourcePoll, UserError> {
        let item = lock(&self.script).get(self.next as usize).copied();
        match item {
            Some(v) => {
                out.collect(v);
                self.next += 1;
                Ok(SourcePoll::MoreAvailable)
            }
            None if self.stop.load(Ordering::SeqCst) => Ok(SourcePoll::Finished),
            None => Ok(SourcePoll::Idle(Duration::from_millis(1))),
        }
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        lock(&self.snapshots).insert(ctx.checkpoint_id(), self.next);
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![self.next])?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fired {
    key: u64,
    timestamp: i64,
    domain: Option<TimeDomain>,
    /// The clock when it fired (must not be before `timestamp`).
    now: i64,
}

#[derive(Default)]
struct TimerLog {
    processed: AtomicU64,
    fired: Mutex<Vec<Fired>>,
    completed: Mutex<Vec<u64>>,
    restored_inits: AtomicU64,
    failed_once: AtomicBool,
}

/// Registers a processing-time timer at `now + delay` for each record and
/// reports every timer that fires.
#[derive(Clone)]
struct TimerFn {
    log: Arc<TimerLog>,
}

impl CheckpointListener for TimerFn {
    fn notify_checkpoint_complete(&mut self, id: u64) -> FnResult {
        lock(&self.log.completed).push(id);
        Ok(())
    }
}

impl KeyedProcessFunction<u64, (u64, i64), (u64, i64)> for TimerFn {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        if ctx.is_restored() {
            self.log.restored_inits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn process_element(
        &mut self,
        (key, delay): (u64, i64),
        ctx: &mut KeyedContext<'_, u64, (u64, i64)>,
    ) -> FnResult {
        if key == POISON {
            if !self.log.failed_once.swap(true, Ordering::SeqCst) {
                return Err(UserError::msg("injected failure"));
            }
            return Ok(());
        }
        let at = ctx.current_processing_time() + delay;
        ctx.register_processing_time_timer(at);
        self.log.processed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn on_timer(&mut self, ts: i64, ctx: &mut KeyedContext<'_, u64, (u64, i64)>) -> FnResult {
        let f = Fired {
            key: *ctx.key(),
            timestamp: ts,
            domain: ctx.time_domain(),
            now: ctx.current_processing_time(),
        };
        lock(&self.log.fired).push(f);
        ctx.collect((*ctx.key(), ts));
        Ok(())
    }
}

#[derive(Clone, Default)]
struct Discard;
impl CheckpointListener for Discard {}
impl SinkFunction<(u64, i64)> for Discard {
    fn invoke(&mut self, _v: (u64, i64), _ctx: &SinkContext) -> FnResult {
        Ok(())
    }
}

fn fired(key: u64, timestamp: i64) -> (u64, i64) {
    (key, timestamp)
}

#[test]
fn processing_time_timers_fire_once_with_key_and_time_and_survive_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("ptimers", dir.path(), 20);
    cfg.parallelism = 2;
    let (clock, manual): (Clock, ManualClock) = Clock::manual(1_000);
    cfg.clock = clock;
    let script: Script = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(Mutex::new(BTreeMap::new()));
    let log = Arc::new(TimerLog::default());
    let env = StreamEnv::new(cfg);
    env.add_source(
        "script",
        ScriptSource {
            script: script.clone(),
            stop: stop.clone(),
            next: 0,
            state: None,
            snapshots: snapshots.clone(),
        },
    )
    .set_parallelism(1)
    .key_by(|v: &(u64, i64)| v.0)
    .process("timers", TimerFn { log: log.clone() })
    .sink("discard", Discard);
    let client = env.execute_async().unwrap();

    // At t=1000: key 1 at 1100 (registered twice: one timer, as in Flink),
    // key 2 at 1200 and 1250, key 3 at 1300, key 4 at 1100 and 1250. Keys 2
    // and 4 each have a timer that must wait while another of theirs fires.
    lock(&script).extend([
        (1, 100),
        (2, 200),
        (1, 100),
        (3, 300),
        (4, 100),
        (4, 250),
        (2, 250),
    ]);
    wait_until("all registrations processed", || {
        log.processed.load(Ordering::SeqCst) == 7
    });
    assert!(lock(&log.fired).is_empty(), "a timer fired before its time");
    let got = || -> Vec<(u64, i64)> {
        let mut v: Vec<(u64, i64)> = lock(&log.fired)
            .iter()
            .map(|f| (f.key, f.timestamp))
            .collect();
        v.sort_unstable();
        v
    };
    // A timer for t fires once the clock is past t (as in Flink).
    manual.set(1_101);
    wait_until("timers at 1100 fired", || lock(&log.fired).len() >= 2);
    manual.set(1_201);
    wait_until("timer at 1200 fired", || lock(&log.fired).len() >= 3);
    assert_eq!(got(), vec![fired(1, 1100), fired(2, 1200), fired(4, 1100)]);

    // A checkpoint whose barrier left the source after those three fired
    // holds exactly the timers at 1250 (two) and 1300.
    let after = lock(&snapshots).keys().max().copied().unwrap_or(0);
    wait_until("a later checkpoint completed", || {
        lock(&log.completed).iter().any(|c| *c > after)
    });
    let restored_from = *lock(&log.completed).iter().max().unwrap();
    assert_eq!(
        lock(&snapshots)[&restored_from],
        7,
        "it covers every registration"
    );

    // Fail the job; it restarts from that (or a later) checkpoint.
    lock(&script).push((POISON, 0));
    wait_until("the job restored", || {
        log.restored_inits.load(Ordering::SeqCst) == 2
    });
    // The restored timers fire at their time, once, for their keys.
    manual.set(1_251);
    wait_until("restored timers at 1250 fired", || {
        lock(&log.fired).len() >= 5
    });
    manual.set(1_400);
    wait_until("restored timer at 1300 fired", || {
        lock(&log.fired).len() >= 6
    });
    stop.store(true, Ordering::SeqCst);
    assert_eq!(client.wait().unwrap(), JobOutcome::Finished);

    assert_eq!(
        got(),
        vec![
            fired(1, 1100),
            fired(2, 1200),
            fired(2, 1250),
            fired(3, 1300),
            fired(4, 1100),
            fired(4, 1250)
        ],
        "each registration fired exactly once, also across the restore"
    );
    for f in lock(&log.fired).iter() {
        assert_eq!(f.domain, Some(TimeDomain::ProcessingTime), "{f:?}");
        assert!(f.now > f.timestamp, "fired early: {f:?}");
    }
    assert_eq!(log.processed.load(Ordering::SeqCst), 7, "nothing replayed");
}

// ---- checkpoint complete / aborted notifications --------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// Complete, and whether the checkpoint's `_metadata` existed then.
    Complete(u64, bool),
    Aborted(u64),
}

/// Counts records (so that it is a stateful function with work between
/// checkpoints) and logs the notifications each subtask receives.
#[derive(Clone)]
struct Listener {
    dir: PathBuf,
    subtask: u32,
    notes: Arc<Mutex<BTreeMap<u32, Vec<Note>>>>,
    /// On completion of `sabotage.0`, make checkpoint `sabotage.1` fail.
    sabotage: (u64, u64),
    sabotage_error: Arc<Mutex<Option<String>>>,
}

fn metadata_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("chk-{id}")).join("_metadata")
}

impl CheckpointListener for Listener {
    fn notify_checkpoint_complete(&mut self, id: u64) -> FnResult {
        let exists = metadata_path(&self.dir, id).is_file();
        lock(&self.notes)
            .entry(self.subtask)
            .or_default()
            .push(Note::Complete(id, exists));
        if self.subtask == 0 && id == self.sabotage.0 {
            // A storage failure: the checkpoint's directory cannot be created
            // because a plain file holds its name. Its trigger comes at least
            // one interval after the next checkpoint completes, so this file
            // is in place before any subtask writes there.
            let blocker = self.dir.join(format!("chk-{}", self.sabotage.1));
            if let Err(e) = std::fs::write(&blocker, b"not a dir") {
                *lock(&self.sabotage_error) = Some(format!("{}: {e}", blocker.display()));
            }
        }
        Ok(())
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) -> FnResult {
        lock(&self.notes)
            .entry(self.subtask)
            .or_default()
            .push(Note::Aborted(id));
        Ok(())
    }
}

impl SinkFunction<u64> for Listener {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.subtask = ctx.subtask_index();
        Ok(())
    }
    fn invoke(&mut self, _v: u64, _ctx: &SinkContext) -> FnResult {
        Ok(())
    }
}

/// An unbounded generator that finishes once `stop` is set.
#[derive(Clone)]
struct UntilStopped {
    stop: Arc<AtomicBool>,
    next: u64,
}

impl CheckpointListener for UntilStopped {}

impl SourceFunction<u64> for UntilStopped {
    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> Result<SourcePoll, UserError> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(SourcePoll::Finished);
        }
        out.collect(self.next);
        self.next += 1;
        Ok(SourcePoll::Idle(Duration::from_millis(1)))
    }
}

#[test]
fn notifications_follow_the_subsuming_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("notify", dir.path(), 30);
    cfg.parallelism = 2;
    // Keep every checkpoint, so `_metadata` is still there when a late
    // notification is checked.
    cfg.checkpoint.retained = 1_000;
    cfg.checkpoint.tolerable_failures = 10;
    let notes = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (sabotaged, last) = (4, 8);
    let sabotage_error = Arc::new(Mutex::new(None));
    let env = StreamEnv::new(cfg);
    env.add_source(
        "numbers",
        UntilStopped {
            stop: stop.clone(),
            next: 0,
        },
    )
    .set_parallelism(1)
    .rebalance()
    .sink(
        "listener",
        Listener {
            dir: dir.path().to_path_buf(),
            subtask: 0,
            notes: notes.clone(),
            sabotage: (sabotaged - 2, sabotaged),
            sabotage_error: sabotage_error.clone(),
        },
    );
    let client = env.execute_async().unwrap();
    wait_until("both subtasks were told of a later completion", || {
        let n = lock(&notes);
        n.len() == 2
            && n.values().all(|v| {
                v.iter()
                    .any(|x| matches!(x, Note::Complete(id, _) if *id >= last))
            })
    });
    stop.store(true, Ordering::SeqCst);
    assert_eq!(client.wait().unwrap(), JobOutcome::Finished);

    assert_eq!(
        *lock(&sabotage_error),
        None,
        "could not make checkpoint {sabotaged} fail"
    );
    let notes = lock(&notes).clone();
    assert_eq!(notes.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    for (s, v) in &notes {
        // `_metadata` existed at every completion notification.
        for n in v {
            if let Note::Complete(id, exists) = n {
                assert!(
                    exists,
                    "subtask {s}: complete({id}) before its _metadata: {v:?}"
                );
            }
        }
        // Completions arrive in increasing order: none for a checkpoint older
        // than one already completed.
        let completed: Vec<u64> = v
            .iter()
            .filter_map(|n| match n {
                Note::Complete(id, _) => Some(*id),
                Note::Aborted(_) => None,
            })
            .collect();
        assert!(
            completed.windows(2).all(|w| w[0] < w[1]),
            "subtask {s}: completions out of order: {completed:?}"
        );
        // The sabotaged checkpoint was aborted once, never completed, and
        // the next one completed after the abort.
        let aborted: Vec<u64> = v
            .iter()
            .filter_map(|n| match n {
                Note::Aborted(id) => Some(*id),
                Note::Complete(..) => None,
            })
            .collect();
        assert_eq!(aborted, vec![sabotaged], "subtask {s}: aborts: {v:?}");
        assert!(!completed.contains(&sabotaged), "subtask {s}: {v:?}");
        let abort_at = v
            .iter()
            .position(|n| *n == Note::Aborted(sabotaged))
            .unwrap();
        assert!(
            v[..abort_at]
                .iter()
                .all(|n| matches!(n, Note::Complete(id, _) if *id < sabotaged)),
            "subtask {s}: notifications before the abort: {v:?}"
        );
        assert!(
            v[abort_at + 1..]
                .iter()
                .any(|n| matches!(n, Note::Complete(id, _) if *id > sabotaged)),
            "subtask {s}: no completion after the abort: {v:?}"
        );
        // Every completed checkpoint below the sabotaged one was notified to
        // this subtask (one checkpoint at a time, so none is subsumed).
        let below: Vec<u64> = completed
            .iter()
            .copied()
            .filter(|c| *c < sabotaged)
            .collect();
        assert_eq!(
            below,
            (1..sabotaged).collect::<Vec<_>>(),
            "subtask {s}: {v:?}"
        );
    }
    // And the aborted checkpoint left nothing usable behind.
    assert!(!metadata_path(dir.path(), sabotaged).exists());
}
