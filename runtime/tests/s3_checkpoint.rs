//! Checkpoints and savepoints on S3 (moto on loopback), end to end:
//! - checkpoint, kill the process, restore: exactly-once counts;
//! - a process killed between the state-file upload and `_metadata` leaves no
//!   usable half-checkpoint, and restore picks the previous complete one;
//! - savepoint, relocate to another bucket, dispose the original, restore;
//! - retention keeps exactly the retained count;
//! - two coordinators working on one checkpoint number: only one commits.
//!
//! The killed jobs run in a child process: this test binary re-executed with
//! `RUNNEL_S3_CHILD` set, which runs only `child_process_job` (see there). It
//! gets its S3 endpoint, region and path style from the environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `RUNNEL_S3_PATH_STYLE`), so that route is
//! covered too.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::s3::{Moto, copy_tree};
use common::*;
use runnel_runtime::checkpoint::{self, find_latest_checkpoint, format::METADATA_FILE};
use runnel_runtime::error::SnapshotError;
use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::storage;
use runnel_runtime::{
    CheckpointConfig, JobClient, JobConfig, JobOutcome, RestoreSettings, StreamEnv,
};

const N: u64 = 60_000;
const KEYS: u64 = 53;
const CHILD_ENV: &str = "RUNNEL_S3_CHILD";

fn expected() -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for i in 0..N {
        *m.entry(i % KEYS).or_insert(0) += 1;
    }
    m
}

/// The counting job: N numbers, keyed by `n % KEYS`, counted in keyed state.
fn build(cfg: JobConfig, rate: Option<f64>) -> (StreamEnv, LatestSink) {
    let env = StreamEnv::new(cfg);
    let sink = LatestSink::default();
    let mut src = GeneratorSource::new(|i| i).count(N);
    if let Some(r) = rate {
        src = src.rate(r);
    }
    env.add_source("numbers", src)
        .key_by(|v: &u64| v % KEYS)
        .process("count", CountPerKey::default())
        .sink("latest", sink.clone());
    (env, sink)
}

fn s3_config(name: &str, storage_uri: &str, interval_ms: u64, retained: u32) -> JobConfig {
    let mut c = JobConfig::new(name);
    c.parallelism = 2;
    c.batch_size = 64;
    c.checkpoint = CheckpointConfig {
        interval_ms: Some(interval_ms),
        storage: Some(storage_uri.to_string()),
        retained,
        tolerable_failures: 100,
        ..Default::default()
    };
    c
}

/// Restores the latest complete checkpoint under `dir` and runs the job to the
/// end; returns the final counts and the snapshot restored from.
fn restore_and_finish(dir: &str) -> (HashMap<u64, u64>, Option<String>) {
    let mut cfg = JobConfig::new("restored");
    cfg.parallelism = 2;
    cfg.restore = Some(RestoreSettings {
        path: dir.to_string(),
        latest: true,
        allow_non_restored_state: false,
    });
    let (env, sink) = build(cfg, None);
    let client = env.execute_async().unwrap();
    let status = wait_end(client, JobOutcome::Finished);
    let latest = lock(&sink.latest).clone();
    (latest, status.restored_from[0].clone())
}

fn wait_end(client: JobClient, outcome: JobOutcome) -> runnel_runtime::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(
        client.status().state,
        runnel_runtime::JobState::Finished
            | runnel_runtime::JobState::Cancelled
            | runnel_runtime::JobState::Failed
            | runnel_runtime::JobState::Stopped
    ) {
        assert!(Instant::now() < deadline, "job did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = client.status();
    assert_eq!(client.wait().unwrap(), outcome);
    status
}

fn poll(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Entry point of the child process (does nothing in a normal test run).
/// `RUNNEL_S3_CHILD` is `run:URI` (print each completed checkpoint) or
/// `hang-before-metadata:K:URI` (stop dead after checkpoint K's state files are
/// uploaded, before `_metadata`, and wait to be killed).
#[test]
fn child_process_job() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, rest) = spec.split_once(':').unwrap();
    let (hang_at, uri) = match mode {
        "run" => (None, rest.to_string()),
        "hang-before-metadata" => {
            let (k, uri) = rest.split_once(':').unwrap();
            (Some(k.parse::<u64>().unwrap()), uri.to_string())
        }
        other => panic!("unknown child mode {other}"),
    };
    let mut cfg = s3_config("child", &uri, 100, 10);
    if let Some(k) = hang_at {
        cfg.faults = FaultInjector::new(move |p| {
            if *p == (FaultPoint::BeforeMetadata { checkpoint_id: k }) {
                println!("AT_FAULT {k}");
                std::io::stdout().flush().unwrap();
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            false
        });
    }
    let (env, _sink) = build(cfg, Some(6_000.0));
    let client = env.execute_async().unwrap();
    let mut seen = 0;
    loop {
        for c in client.status().completed {
            if c.id > seen {
                seen = c.id;
                println!("COMPLETED {}", c.id);
                std::io::stdout().flush().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the child job; returns it and a channel of its stdout lines.
fn spawn_child(moto: &Moto, spec: &str) -> (Child, std::sync::mpsc::Receiver<String>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_process_job",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("RUNNEL_S3_PATH_STYLE", "true")
        .env("AWS_ACCESS_KEY_ID", "runnel-test")
        .env("AWS_SECRET_ACCESS_KEY", "runnel-test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if pred(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("child process: no expected line ({e})"),
        }
    }
}

#[test]
fn checkpoint_kill_the_process_restore_exactly_once() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("kill");
    let (mut child, rx) = spawn_child(&moto, "run:s3://kill/jobs/counter");
    wait_line(&rx, |l| {
        l.strip_prefix("COMPLETED ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 3)
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let dir = moto.uri("kill", "jobs/counter");
    let found = find_latest_checkpoint(&dir)
        .unwrap()
        .expect("a complete checkpoint");
    assert!(found.id >= 3, "{}", found.id);
    assert_eq!(found.metadata.job_name, "child");
    let (latest, from) = restore_and_finish(&dir);
    assert_eq!(from.as_deref(), Some(found.uri.as_str()));
    assert_eq!(latest, expected(), "every key counted exactly once");
}

#[test]
fn killed_between_state_upload_and_metadata_restores_the_previous_checkpoint() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("half");
    let (mut child, rx) = spawn_child(&moto, "hang-before-metadata:3:s3://half/jobs/counter");
    wait_line(&rx, |l| l == "AT_FAULT 3");
    child.kill().unwrap();
    child.wait().unwrap();

    let dir = moto.uri("half", "jobs/counter");
    let st = storage::open(&dir).unwrap();
    let files = st.list("chk-3").unwrap();
    assert!(!files.is_empty(), "state files of chk-3 were uploaded");
    assert!(!files.iter().any(|f| f == METADATA_FILE), "{files:?}");
    let err = checkpoint::load_snapshot(&storage::join(&dir, "chk-3")).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    let found = find_latest_checkpoint(&dir).unwrap().unwrap();
    assert_eq!(found.id, 2);
    let (latest, from) = restore_and_finish(&dir);
    assert_eq!(from, Some(storage::join(&dir, "chk-2")));
    assert_eq!(latest, expected(), "every key counted exactly once");
}

#[test]
fn savepoint_relocated_to_another_bucket_restores_and_dispose_deletes_the_original() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("sp-src");
    moto.create_bucket("sp-dst");
    let mut cfg = JobConfig::new("saver");
    cfg.parallelism = 2;
    let (env, sink) = build(cfg, Some(20_000.0));
    let records = sink.records.clone();
    let client = env.execute_async().unwrap();
    poll("records", 30, || records.load(Ordering::Relaxed) > 5_000);
    let sp = client
        .trigger_savepoint(&moto.uri("sp-src", "savepoints"))
        .unwrap();
    client.cancel().unwrap();
    wait_end(client, JobOutcome::Cancelled);
    assert!(
        sp.path.starts_with("s3://sp-src/savepoints/savepoint-"),
        "{}",
        sp.path
    );

    let (_, name) = storage::split_last(&sp.path);
    let moved = moto.uri("sp-dst", &format!("moved/elsewhere/{name}"));
    let copied = copy_tree(&sp.path, &moved);
    assert!(copied >= 4, "_metadata and state files: {copied}");
    let disposed = checkpoint::dispose(&sp.path).unwrap();
    assert_eq!(disposed.files, copied);
    assert!(
        storage::open(&moto.uri("sp-src", "savepoints"))
            .unwrap()
            .list("")
            .unwrap()
            .is_empty()
    );
    let err = checkpoint::load_snapshot(&sp.path).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");

    let mut cfg = JobConfig::new("restored");
    cfg.parallelism = 2;
    cfg.restore = Some(RestoreSettings {
        path: moved.clone(),
        latest: false,
        allow_non_restored_state: false,
    });
    let (env, sink) = build(cfg, None);
    let status = wait_end(env.execute_async().unwrap(), JobOutcome::Finished);
    assert_eq!(status.restored_from[0].as_deref(), Some(moved.as_str()));
    assert_eq!(*lock(&sink.latest), expected());
}

#[test]
fn retention_keeps_exactly_the_retained_count_on_s3() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("retain");
    let dir = moto.uri("retain", "jobs/r");
    let mut cfg = s3_config("retainer", &dir, 50, 2);
    cfg.checkpoint.retain_on_cancellation = true;
    let (env, _sink) = build(cfg, Some(5_000.0));
    let client = env.execute_async().unwrap();
    poll("six checkpoints", 60, || {
        client.status().completed.iter().any(|c| c.id >= 6)
    });
    client.cancel().unwrap();
    let status = wait_end(client, JobOutcome::Cancelled);
    let kept: Vec<u64> = status.completed.iter().map(|c| c.id).collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let mut listed: Vec<u64> = checkpoint::list_checkpoints(&dir)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, kept, "exactly the retained checkpoints are left");
    for id in kept {
        checkpoint::load_snapshot(&storage::join(&dir, &format!("chk-{id}"))).unwrap();
    }
}

#[test]
fn two_coordinators_on_one_checkpoint_number_only_one_commits() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("race");
    let dir = moto.uri("race", "jobs/shared");
    // Both coordinators hold all acknowledgements of checkpoint 1 (their state
    // files are interleaved in chk-1) before either writes `_metadata`. Then the
    // stale one, b, commits only after a has: moto checks If-None-Match and
    // stores the object without a lock, so two requests arriving in the same
    // instant could both pass its check (real S3 is atomic here). Ordering the
    // commits tests what matters: the late commit must fail and must not harm
    // the committed checkpoint.
    let barrier = Arc::new(Barrier::new(2));
    let start = |name: &str| {
        let mut cfg = s3_config(name, &dir, 50, 100);
        cfg.parallelism = 1;
        cfg.checkpoint.retain_on_cancellation = true;
        let b = barrier.clone();
        let late = name == "coordinator-b";
        let st = storage::open(&dir).unwrap();
        cfg.faults = FaultInjector::new(move |p| {
            if *p == (FaultPoint::BeforeMetadata { checkpoint_id: 1 }) {
                b.wait();
                if late {
                    poll("coordinator-a's commit", 60, || {
                        st.exists("chk-1/_metadata").unwrap()
                    });
                }
            }
            false
        });
        build(cfg, Some(5_000.0)).0.execute_async().unwrap()
    };
    let a = start("coordinator-a");
    let b = start("coordinator-b");
    let resolved = |c: &JobClient| {
        let s = c.status();
        s.completed.iter().any(|c| c.id == 1) || s.failed_checkpoints >= 1
    };
    poll("checkpoint 1 to resolve in both", 60, || {
        resolved(&a) && resolved(&b)
    });
    a.cancel().unwrap();
    b.cancel().unwrap();
    let sa = wait_end(a, JobOutcome::Cancelled);
    let sb = wait_end(b, JobOutcome::Cancelled);
    let won = |s: &runnel_runtime::JobStatus| s.completed.iter().any(|c| c.id == 1);
    assert!(won(&sa), "coordinator-a commits chk-1: {sa:?}");
    assert!(!won(&sb), "the stale coordinator-b cannot: {sb:?}");
    let winner = &sa;
    assert!(sb.failed_checkpoints >= 1);
    let chk1 = storage::join(&dir, "chk-1");
    let snap = checkpoint::load_snapshot(&chk1).unwrap();
    assert_eq!(snap.metadata.job_name, winner.name);
    // The loser removed only its own files: what is left is exactly the
    // winner's checkpoint.
    let mut expected_files: Vec<String> = snap
        .metadata
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter().map(|s| s.file.clone()))
        .collect();
    expected_files.push(METADATA_FILE.to_string());
    expected_files.sort();
    assert_eq!(
        storage::open(&chk1).unwrap().list("").unwrap(),
        expected_files
    );
    // And nobody can commit chk-1 again.
    let err = storage::open(&chk1)
        .unwrap()
        .write_new(METADATA_FILE, b"{}")
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(matches!(
        checkpoint::dispose(&dir).unwrap_err(),
        SnapshotError::NotASnapshot { .. }
    ));
}
