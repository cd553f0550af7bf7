//! S3 goes away mid-run (the moto process is killed) and comes back on the same
//! port. Checkpoints fail, within the tolerable count, while records keep
//! flowing and the job does not restart; once S3 is back the next checkpoint
//! completes and restores.
//!
//! moto keeps objects in memory, so the restarted server is empty: the test
//! re-creates the bucket, as an operator would after an S3 outage that lost
//! the bucket. The checkpoints taken before the outage are gone with it, which
//! is why the test restores from the checkpoint taken after it.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::s3::Moto;
use common::*;
use runnel_runtime::checkpoint;
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::{CheckpointConfig, JobConfig, JobOutcome, JobState, StreamEnv};

fn poll(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn checkpoints_fail_during_an_outage_processing_continues_and_recovers() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    moto.create_bucket("outage");
    let dir = moto.uri("outage", "jobs/o");
    let mut cfg = JobConfig::new("outage");
    cfg.parallelism = 2;
    cfg.batch_size = 64;
    cfg.checkpoint = CheckpointConfig {
        interval_ms: Some(100),
        storage: Some(dir.clone()),
        timeout_ms: 20_000,
        tolerable_failures: 1_000,
        retained: 2,
        retain_on_cancellation: true,
        ..Default::default()
    };
    let env = StreamEnv::new(cfg);
    let sink = LatestSink::default();
    let records = sink.records.clone();
    env.add_source(
        "numbers",
        GeneratorSource::new(|i| i).count(10_000_000).rate(5_000.0),
    )
    .key_by(|v: &u64| v % 31)
    .process("count", CountPerKey::default())
    .sink("latest", sink);
    let client = env.execute_async().unwrap();
    poll("a checkpoint before the outage", 60, || {
        !client.status().completed.is_empty()
    });

    moto.stop();
    let failed_before = client.status().failed_checkpoints;
    let last_before = client.status().completed.last().map(|c| c.id).unwrap();
    poll("three failed checkpoints", 120, || {
        client.status().failed_checkpoints >= failed_before + 3
    });
    // Processing went on while checkpoints failed.
    let r1 = records.load(Ordering::Relaxed);
    poll("records during the outage", 60, || {
        records.load(Ordering::Relaxed) > r1 + 1_000
    });
    let s = client.status();
    assert_eq!(s.state, JobState::Running);
    assert_eq!(
        s.restarts, 0,
        "checkpoint failures within the tolerable count"
    );
    assert_eq!(s.completed.last().map(|c| c.id), Some(last_before));

    moto.restart();
    moto.create_bucket("outage");
    poll("a checkpoint after the outage", 120, || {
        client
            .status()
            .completed
            .last()
            .is_some_and(|c| c.id > last_before)
    });
    let after = client.status().completed.last().cloned().unwrap();
    client.cancel().unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Cancelled);
    let snap = checkpoint::load_snapshot(&after.path).unwrap();
    assert_eq!(snap.metadata.checkpoint_id, after.id);
    assert_eq!(
        checkpoint::find_latest_checkpoint(&dir)
            .unwrap()
            .map(|c| c.id),
        Some(after.id)
    );
}
