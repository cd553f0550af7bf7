//! Asynchronous keyed-state snapshots: the keyed task freezes its heap state at
//! the barrier and the uploader encodes it later, while the task keeps counting.
//! Every completed checkpoint must still hold exactly the state at barrier time:
//! the keyed counts in it equal the records the sources had emitted at that
//! barrier, as recorded by the sources' own positions in the same checkpoint.
//! Failures are injected at random records so that attempts die while a frozen
//! snapshot is being encoded, and the job restores and finishes exactly once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::*;
use rand::{Rng, SeedableRng};
use runnel_runtime::checkpoint::{list_checkpoints, load_snapshot, read_metadata};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::{CheckpointMode, JobOutcome, StreamEnv};

/// Enough keys that encoding a snapshot takes a while, so the task mutates
/// state while its frozen view is being encoded.
const KEYS: u64 = 20_000;
const N: u64 = 400_000;
const SOURCE_P: u32 = 2;

/// Counts per key of the records the generator subtasks emitted before their
/// positions `(parallelism, subtask, next local index)`.
fn expected_counts(positions: &[(u32, u32, u64)]) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for &(p, s, next) in positions {
        for j in 0..next {
            let i = j * u64::from(p) + u64::from(s);
            *m.entry(i % KEYS).or_insert(0) += 1;
        }
    }
    m
}

/// Checks one completed checkpoint; returns the number of records it covers.
fn check_checkpoint(uri: &str) -> u64 {
    let snap = load_snapshot(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    let mut positions = Vec::new();
    for (_, st) in &snap.states["numbers"] {
        for list in &st.operator_states {
            for item in &list.items {
                positions.push(postcard::from_bytes::<(u32, u32, u64)>(item).unwrap());
            }
        }
    }
    // Union state: every subtask wrote its own position; keep one per subtask.
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), SOURCE_P as usize, "{uri}: {positions:?}");
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut entries = 0u64;
    for (_, st) in &snap.states["count"] {
        for g in &st.key_groups {
            for t in &g.tables {
                assert_eq!(t.name, "count");
                for (k, v) in &t.entries {
                    let k: u64 = postcard::from_bytes(k).unwrap();
                    let v: u64 = postcard::from_bytes(v).unwrap();
                    assert!(counts.insert(k, v).is_none(), "{uri}: key {k} twice");
                    entries += 1;
                }
            }
        }
    }
    let recorded: u64 = snap
        .metadata
        .operators
        .iter()
        .find(|o| o.uid == "count")
        .map_or(0, |o| o.subtasks.iter().map(|s| s.keyed_entries).sum());
    assert_eq!(recorded, entries, "{uri}: keyed_entries in _metadata");
    let want = expected_counts(&positions);
    assert_eq!(counts.len(), want.len(), "{uri}: keys at barrier time");
    for (k, n) in &want {
        assert_eq!(
            counts.get(k),
            Some(n),
            "{uri}: count of key {k} at barrier time"
        );
    }
    want.values().sum()
}

fn run(keyed_p: u32, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cfg = config("async-snapshot", dir.path(), 10);
    cfg.parallelism = keyed_p;
    cfg.checkpoint.mode = CheckpointMode::ExactlyOnce;
    cfg.checkpoint.retained = 10_000;
    cfg.checkpoint.tolerable_failures = 100;
    let plan = FailPlan::at((0..3).map(|_| rng.random_range(1..N)).collect());
    let env = StreamEnv::new(cfg);
    let sink = LatestSink::default();
    let latest = sink.latest.clone();
    env.add_source(
        "numbers",
        GeneratorSource::new(|i| i).count(N).rate(200_000.0),
    )
    .set_parallelism(SOURCE_P)
    .key_by(|v: &u64| v % KEYS)
    .process(
        "count",
        CountPerKey {
            state: None,
            plan: Some(plan.clone()),
        },
    )
    .sink("latest", sink);
    assert_eq!(env.execute().unwrap(), JobOutcome::Finished);
    assert_eq!(plan.failures.load(Ordering::SeqCst), 3, "failures injected");

    // Exactly once in the end, across the restores.
    let latest = lock(&latest).clone();
    assert_eq!(latest, expected_counts(&[(2, 0, N / 2), (2, 1, N / 2)]));

    // Every completed checkpoint holds exactly the barrier-time state.
    let mut checked = 0;
    let mut covered = Vec::new();
    for (_, uri) in list_checkpoints(&file_uri(dir.path())).unwrap() {
        if read_metadata(&uri).is_err() {
            continue; // never completed (e.g. its attempt failed): not a checkpoint
        }
        covered.push(check_checkpoint(&uri));
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} completed checkpoints to check"
    );
    assert!(
        covered.iter().any(|&n| n > 0 && n < N),
        "some checkpoint was taken mid-stream: {covered:?}"
    );
}

#[test]
fn checkpoints_hold_barrier_time_state_at_keyed_parallelism_1() {
    run(1, 11);
}

#[test]
fn checkpoints_hold_barrier_time_state_at_keyed_parallelism_2() {
    run(2, 12);
}
