//! Corrupt or truncated snapshots give clear errors; restoring "latest" falls
//! back to the previous complete checkpoint; a TTL mismatch fails fast.

mod common;

use std::time::Duration;

use common::*;
use runnel_runtime::checkpoint::{list_checkpoints, load_latest, load_snapshot};
use runnel_runtime::error::SnapshotError;
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::state::{TtlConfig, ValueState, ValueStateDescriptor};
use runnel_runtime::{
    CheckpointListener, FnResult, InitContext, JobError, JobOutcome, KeyedContext,
    KeyedProcessFunction, RestoreSettings, StreamEnv, UserError,
};

/// Runs a job until it has `n` retained checkpoints, then cancels it.
fn make_checkpoints(dir: &std::path::Path, n: usize) -> Vec<(u64, String)> {
    let mut cfg = config("corrupt", dir, 20);
    cfg.checkpoint.retained = n as u32;
    cfg.checkpoint.retain_on_cancellation = true;
    let env = StreamEnv::new(cfg);
    env.add_source("numbers", GeneratorSource::new(|i| i).rate(2_000.0))
        .key_by(|v: &u64| v % 10)
        .process("count", CountPerKey::default())
        .sink("latest", LatestSink::default());
    let client = env.execute_async().unwrap();
    while client.status().completed.len() < n {
        std::thread::sleep(Duration::from_millis(10));
    }
    client.cancel().unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Cancelled);
    let cps = list_checkpoints(&file_uri(dir)).unwrap();
    assert_eq!(cps.len(), n, "retention keeps exactly {n}");
    cps
}

fn state_file(dir_uri: &str) -> std::path::PathBuf {
    let p = std::path::PathBuf::from(dir_uri.trim_start_matches("file://"));
    std::fs::read_dir(&p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("count.0.state"))
        .unwrap()
}

#[test]
fn truncated_or_corrupt_files_give_clear_errors_and_latest_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let cps = make_checkpoints(dir.path(), 3);
    let (newest, middle, oldest) = (&cps[0], &cps[1], &cps[2]);
    let md =
        |uri: &str| std::path::PathBuf::from(uri.trim_start_matches("file://")).join("_metadata");

    // Truncated _metadata.
    let bytes = std::fs::read(md(&newest.1)).unwrap();
    std::fs::write(md(&newest.1), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_snapshot(&newest.1).unwrap_err();
    assert!(
        matches!(err, SnapshotError::CorruptMetadata { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(
        load_latest(&file_uri(dir.path()))
            .unwrap()
            .metadata
            .checkpoint_id,
        middle.0
    );

    // A flipped byte in a state file of the next one.
    let f = state_file(&middle.1);
    let mut b = std::fs::read(&f).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x40;
    std::fs::write(&f, &b).unwrap();
    let err = load_snapshot(&middle.1).unwrap_err();
    assert!(err.to_string().contains("checksum does not match"), "{err}");
    assert_eq!(
        load_latest(&file_uri(dir.path()))
            .unwrap()
            .metadata
            .checkpoint_id,
        oldest.0
    );

    // A truncated state file.
    let f = state_file(&oldest.1);
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() - 3]).unwrap();
    let err = load_snapshot(&oldest.1).unwrap_err();
    assert!(err.to_string().contains("truncated or replaced"), "{err}");
    let err = load_latest(&file_uri(dir.path())).unwrap_err();
    assert!(
        matches!(err, SnapshotError::NoCompleteCheckpoint(_)),
        "{err}"
    );
}

#[test]
fn restore_latest_skips_an_incomplete_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cps = make_checkpoints(dir.path(), 2);
    // A checkpoint whose _metadata was never written (a crash mid-checkpoint).
    std::fs::remove_file(
        std::path::PathBuf::from(cps[0].1.trim_start_matches("file://")).join("_metadata"),
    )
    .unwrap();
    let err = load_snapshot(&cps[0].1).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    let mut cfg = config("resume", &dir.path().join("next"), 20);
    cfg.restore = Some(RestoreSettings {
        path: file_uri(dir.path()),
        latest: true,
        allow_non_restored_state: false,
    });
    let env = StreamEnv::new(cfg);
    env.add_source("numbers", GeneratorSource::new(|i| i).count(1))
        .key_by(|v: &u64| v % 10)
        .process("count", CountPerKey::default())
        .sink("latest", LatestSink::default());
    let client = env.execute_async().unwrap();
    while client.status().restored_from.is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = client.status();
    assert_eq!(client.wait().unwrap(), JobOutcome::Finished);
    assert_eq!(
        st.restored_from.first().cloned().flatten(),
        Some(cps[1].1.clone())
    );
}

#[derive(Clone, Default)]
struct TtlCount {
    ttl: bool,
    s: Option<ValueState<u64>>,
}
impl CheckpointListener for TtlCount {}
impl KeyedProcessFunction<u64, u64, (u64, u64)> for TtlCount {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        let mut d = ValueStateDescriptor::new("count");
        if self.ttl {
            d = d.with_ttl(TtlConfig::new(Duration::from_secs(60)));
        }
        self.s = Some(ctx.value_state(&d)?);
        Ok(())
    }
    fn process_element(
        &mut self,
        _v: u64,
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> FnResult {
        let s = self.s.clone().ok_or_else(|| UserError::msg("no state"))?;
        let c = s.value(ctx)?.unwrap_or(0) + 1;
        s.update(ctx, c)
    }
}

#[test]
fn restoring_without_ttl_state_with_ttl_enabled_fails_fast_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cps = make_checkpoints(dir.path(), 1);
    let mut cfg = config("ttl", &dir.path().join("t"), 20);
    cfg.restore = Some(RestoreSettings {
        path: cps[0].1.clone(),
        latest: false,
        allow_non_restored_state: true,
    });
    let env = StreamEnv::new(cfg);
    env.add_source("numbers", GeneratorSource::new(|i| i).count(100))
        .key_by(|v: &u64| v % 10)
        .process("count", TtlCount { ttl: true, s: None })
        .sink("latest", LatestSink::default());
    let client = env.execute_async().unwrap();
    while client.status().state != runnel_runtime::JobState::Failed {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        client.status().restarts,
        0,
        "incompatible state is not retried"
    );
    let err = client.wait().unwrap_err();
    match &err {
        JobError::Failed { cause, .. } => {
            assert!(
                cause.contains("state 'count' was written without TTL but the job now enables TTL"),
                "{cause}"
            )
        }
        e => panic!("unexpected {e}"),
    }
}
