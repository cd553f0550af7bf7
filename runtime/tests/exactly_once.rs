//! Exactly-once state under failure (seed 002): a job counts N elements while
//! failures are injected at random points, some of them inside checkpoints.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::*;
use rand::{Rng, SeedableRng};
use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::{CheckpointMode, JobOutcome, StreamEnv};

const N: u64 = 40_000;
const KEYS: u64 = 97;

struct Run {
    latest: HashMap<u64, u64>,
    record_failures: u64,
    checkpoint_failures: u64,
}

fn run(mode: CheckpointMode, seed: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cfg = config("chaos", dir.path(), 15);
    cfg.parallelism = 2;
    cfg.checkpoint.mode = mode;
    cfg.checkpoint.tolerable_failures = 100;
    // Failures while processing records, at random points.
    let plan = FailPlan::at((0..3).map(|_| rng.random_range(1..N)).collect());
    // Failures inside checkpoints: before a task snapshots, after all acks but
    // before `_metadata`, and after `_metadata` but before notification.
    let cp_faults: Arc<Mutex<Vec<FaultPoint>>> = Arc::new(Mutex::new(vec![
        FaultPoint::BeforeSnapshot {
            task: String::new(),
            checkpoint_id: rng.random_range(2..8),
        },
        FaultPoint::BeforeMetadata {
            checkpoint_id: rng.random_range(8..14),
        },
        FaultPoint::AfterMetadata {
            checkpoint_id: rng.random_range(14..20),
        },
    ]));
    let cp_failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (f2, c2) = (cp_faults.clone(), cp_failed.clone());
    cfg.faults = FaultInjector::new(move |p| {
        let mut faults = lock(&f2);
        let hit = faults.iter().position(|f| match (f, p) {
            (
                FaultPoint::BeforeSnapshot {
                    checkpoint_id: a, ..
                },
                FaultPoint::BeforeSnapshot {
                    checkpoint_id: b, ..
                },
            ) => a == b,
            (a, b) => a == b,
        });
        if let Some(i) = hit {
            faults.remove(i);
            c2.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            false
        }
    });
    let env = StreamEnv::new(cfg);
    let sink = LatestSink::default();
    let latest = sink.latest.clone();
    env.add_source(
        "numbers",
        GeneratorSource::new(|i| i).count(N).rate(12_000.0),
    )
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
    let latest = lock(&latest).clone();
    Run {
        latest,
        record_failures: plan.failures.load(Ordering::SeqCst),
        checkpoint_failures: cp_failed.load(Ordering::SeqCst),
    }
}

fn expected() -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for i in 0..N {
        *m.entry(i % KEYS).or_insert(0) += 1;
    }
    m
}

#[test]
fn exactly_once_counts_equal_n_despite_failures() {
    for seed in [1, 2] {
        let r = run(CheckpointMode::ExactlyOnce, seed);
        assert_eq!(r.record_failures, 3, "all record failures were injected");
        assert!(
            r.checkpoint_failures >= 2,
            "checkpoint failures were injected"
        );
        assert_eq!(
            r.latest,
            expected(),
            "seed {seed}: every key counted exactly once"
        );
        assert_eq!(r.latest.values().sum::<u64>(), N);
    }
}

#[test]
fn at_least_once_counts_are_at_least_n() {
    let r = run(CheckpointMode::AtLeastOnce, 3);
    assert_eq!(r.record_failures, 3);
    let exp = expected();
    for (k, c) in &exp {
        assert!(r.latest[k] >= *c, "key {k}: {} < {c}", r.latest[k]);
    }
    assert!(r.latest.values().sum::<u64>() >= N);
}
