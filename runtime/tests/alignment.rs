//! Barrier alignment with two sources feeding one keyed operator. Each
//! checkpoint is checked for consistency: the keyed counts must match the
//! source positions recorded in the same checkpoint.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use runnel_runtime::checkpoint::{LoadedSnapshot, list_checkpoints, load_snapshot};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::state::{OperatorListState, OperatorListStateDescriptor};
use runnel_runtime::{
    CheckpointListener, CheckpointMode, FnResult, InitContext, JobOutcome, SnapshotContext,
    SourceFunction, SourceOutput, SourcePoll, StreamEnv, UserError,
};

/// Emits one record per poll and sleeps in between, so its barriers arrive
/// late and the fast source's barrier waits for alignment.
#[derive(Clone)]
struct SlowSource {
    next: u64,
    limit: u64,
    state: Option<OperatorListState<u64>>,
}

impl CheckpointListener for SlowSource {}

impl SourceFunction<u64> for SlowSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        let st = ctx.list_state(&OperatorListStateDescriptor::even_split("emitted"))?;
        self.next = st.get(ctx.operator_state())?.first().copied().unwrap_or(0);
        self.state = Some(st);
        Ok(())
    }
    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> Result<SourcePoll, UserError> {
        if self.next >= self.limit {
            return Ok(SourcePoll::Finished);
        }
        std::thread::sleep(Duration::from_millis(8));
        out.collect(1_000_000_000 + self.next);
        self.next += 1;
        Ok(SourcePoll::MoreAvailable)
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![self.next])?;
        }
        Ok(())
    }
}

struct Consistency {
    counted: u64,
    emitted: u64,
    in_flight: u64,
}

fn check(snap: &LoadedSnapshot) -> Consistency {
    let mut counted = 0;
    let mut in_flight = 0;
    for (_, st) in &snap.states["count"] {
        for g in &st.key_groups {
            for t in &g.tables {
                for (_, v) in &t.entries {
                    counted += postcard::from_bytes::<u64>(v).unwrap();
                }
            }
        }
        in_flight += st.in_flight.len() as u64;
    }
    let (_, fast) = &snap.states["fast"][0];
    let (_, _, fast_next): (u32, u32, u64) =
        postcard::from_bytes(&fast.operator_states[0].items[0]).unwrap();
    let (_, slow) = &snap.states["slow"][0];
    let slow_next: u64 = postcard::from_bytes(&slow.operator_states[0].items[0]).unwrap();
    Consistency {
        counted,
        emitted: fast_next + slow_next,
        in_flight,
    }
}

fn job(dir: &std::path::Path, mode: CheckpointMode, unaligned: bool, slow_limit: u64) -> StreamEnv {
    let mut cfg = config("align", dir, 20);
    cfg.checkpoint.mode = mode;
    cfg.checkpoint.unaligned = unaligned;
    cfg.checkpoint.retained = 10_000;
    cfg.checkpoint.retain_on_cancellation = true;
    cfg.batch_size = 16;
    let env = StreamEnv::new(cfg);
    let fast = env.add_source(
        "fast",
        GeneratorSource::new(|i| i).count(30_000).rate(20_000.0),
    );
    let slow = env.add_source(
        "slow",
        SlowSource {
            next: 0,
            limit: slow_limit,
            state: None,
        },
    );
    let sink = LatestSink::default();
    fast.union(slow)
        .key_by(|v: &u64| v % 7)
        .process("count", CountPerKey::default())
        .sink("latest", sink);
    env
}

fn checkpoints(dir: &std::path::Path, mode: CheckpointMode, unaligned: bool) -> Vec<Consistency> {
    let env = job(dir, mode, unaligned, 100);
    let client = env.execute_async().unwrap();
    while client.status().completed.len() < 12 {
        std::thread::sleep(Duration::from_millis(20));
    }
    client.cancel().unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Cancelled);
    let cps = list_checkpoints(&file_uri(dir)).unwrap();
    assert!(cps.len() >= 12);
    cps.iter()
        .map(|(_, uri)| check(&load_snapshot(uri).unwrap()))
        .collect()
}

#[test]
fn aligned_checkpoints_are_consistent_with_source_positions() {
    let dir = tempfile::tempdir().unwrap();
    for c in checkpoints(dir.path(), CheckpointMode::ExactlyOnce, false) {
        assert_eq!(
            c.counted, c.emitted,
            "aligned snapshot reflects exactly the records before the barrier"
        );
        assert_eq!(c.in_flight, 0);
    }
}

#[test]
fn at_least_once_checkpoints_may_include_records_after_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let cs = checkpoints(dir.path(), CheckpointMode::AtLeastOnce, false);
    assert!(cs.iter().all(|c| c.counted >= c.emitted));
    assert!(
        cs.iter().any(|c| c.counted > c.emitted),
        "without alignment, records that overtook the slow barrier are in the snapshot"
    );
}

#[test]
fn unaligned_checkpoints_persist_in_flight_records() {
    let dir = tempfile::tempdir().unwrap();
    let cs = checkpoints(dir.path(), CheckpointMode::ExactlyOnce, true);
    for c in &cs {
        assert_eq!(
            c.counted + c.in_flight,
            c.emitted,
            "state plus in-flight data covers exactly the records before the barriers"
        );
    }
    assert!(
        cs.iter().any(|c| c.in_flight > 0),
        "some checkpoint persisted in-flight records"
    );
}

/// Savepoints are aligned whatever the mode (as in Flink): they never hold
/// in-flight records, and their state matches the source positions exactly,
/// while the same run's checkpoints do hold some. Requested back to back
/// while periodic checkpoints run every 20 ms, they never fail one.
#[test]
fn savepoints_are_aligned_in_unaligned_mode() {
    let dir = tempfile::tempdir().unwrap();
    let env = job(dir.path(), CheckpointMode::ExactlyOnce, true, 400);
    let client = env.execute_async().unwrap();
    let sp_dir = file_uri(&dir.path().join("savepoints"));
    let mut savepoints = Vec::new();
    while savepoints.len() < 8 {
        let sp = match client.trigger_savepoint(&sp_dir) {
            Ok(sp) => sp,
            Err(e) => panic!("{e}: {:?}", client.status()),
        };
        savepoints.push(sp.path);
    }
    // Checkpoints of the same run, with the same load, do carry in-flight
    // records: the slow source's barriers lag as for the savepoints.
    while list_checkpoints(&file_uri(dir.path())).unwrap().len() < 12 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Savepoints requested while a checkpoint is in progress wait for it
    // instead of overtaking it: none of them made a checkpoint fail (which
    // the default of 0 tolerable failures turns into a restart).
    let status = client.status();
    assert_eq!(status.failed_checkpoints, 0, "{status:?}");
    assert_eq!(status.restarts, 0, "{status:?}");
    client.cancel().unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Cancelled);
    for sp in &savepoints {
        let c = check(&load_snapshot(sp).unwrap());
        assert_eq!(c.in_flight, 0, "savepoint {sp} holds in-flight records");
        assert_eq!(c.counted, c.emitted, "savepoint {sp} is consistent");
    }
    let in_flight: u64 = list_checkpoints(&file_uri(dir.path()))
        .unwrap()
        .iter()
        .map(|(_, uri)| check(&load_snapshot(uri).unwrap()).in_flight)
        .sum();
    assert!(
        in_flight > 0,
        "the run's checkpoints held in-flight records"
    );
}

#[test]
fn unaligned_restore_replays_in_flight_records_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("align", dir.path(), 20);
    cfg.checkpoint.unaligned = true;
    cfg.checkpoint.retained = 10_000;
    cfg.batch_size = 16;
    let (faults, failed_after) = fail_once_after_checkpoint(dir.path(), |md| {
        md.operators
            .iter()
            .any(|o| o.subtasks.iter().any(|s| s.in_flight_records > 0))
    });
    cfg.faults = faults;
    let env = StreamEnv::new(cfg);
    let fast = env.add_source(
        "fast",
        GeneratorSource::new(|i| i).count(20_000).rate(20_000.0),
    );
    let slow = env.add_source(
        "slow",
        SlowSource {
            next: 0,
            limit: 60,
            state: None,
        },
    );
    let sink = LatestSink::default();
    let latest = sink.latest.clone();
    fast.union(slow)
        .key_by(|v: &u64| v % 7)
        .process("count", CountPerKey::default())
        .sink("latest", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    let cp = lock(&failed_after).expect("failed after a checkpoint with in-flight records");
    let snap = load_snapshot(&file_uri(&dir.path().join(format!("chk-{cp}")))).unwrap();
    assert!(check(&snap).in_flight > 0);
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for i in 0..20_000u64 {
        *expected.entry(i % 7).or_default() += 1;
    }
    for i in 0..60u64 {
        *expected.entry((1_000_000_000 + i) % 7).or_default() += 1;
    }
    assert_eq!(*lock(&latest), expected);
}
