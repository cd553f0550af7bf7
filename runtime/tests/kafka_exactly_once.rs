//! Exactly-once end to end against a real broker, shown by killing the job
//! PROCESS (`std::process::abort` at chosen points, or SIGKILL at a random
//! moment) and restarting it from the latest checkpoint, with a different
//! parallelism each time. The committed output (read_committed) must equal
//! the fault-free output exactly. Also: the broker down for 30 s mid-run.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{Broker, broker_or_skip, free_port};
use rand::{Rng, SeedableRng};

fn example(name: &str) -> PathBuf {
    let exe = env!("CARGO_BIN_EXE_runnel");
    let p = Path::new(exe)
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "example {name} is not built: cargo build -p runnel-runtime --examples ({})",
        p.display()
    );
    p
}

/// The fault-free output of `kafka_eos_job` for ids 0..n with key = id % keys:
/// `"{id},{key},{running count of key}"`, as a sorted list.
fn expected_output(n: u64, keys: u64) -> Vec<String> {
    let mut count = vec![0u64; keys as usize];
    let mut v: Vec<String> = (0..n)
        .map(|id| {
            let k = id % keys;
            count[k as usize] += 1;
            format!("{id},{k},{}", count[k as usize])
        })
        .collect();
    v.sort();
    v
}

fn produce_input(b: &Broker, topic: &str, n: u64, keys: u64) {
    produce_range(b, topic, 0..n, keys)
}

fn produce_range(b: &Broker, topic: &str, ids: std::ops::Range<u64>, keys: u64) {
    // Keyed by the job's key, so each key's records sit in one partition in id order.
    let recs: Vec<(Option<Vec<u8>>, Vec<u8>)> = ids
        .map(|id| {
            let k = id % keys;
            (
                Some(k.to_string().into_bytes()),
                format!("{id},{k}").into_bytes(),
            )
        })
        .collect();
    for chunk in recs.chunks(50_000) {
        b.produce(topic, None, chunk);
    }
}

struct Run {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Run {
    /// A failing assertion must not leave the job process running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_job(b: &Broker, dir: &Path, parallelism: u32, fault: Option<&str>, run: usize) -> Run {
    let stderr = dir.join(format!("run-{run}.log"));
    let f = std::fs::File::create(&stderr).unwrap();
    let mut cmd = Command::new(example("kafka_eos_job"));
    cmd.env("BOOTSTRAP", &b.bootstrap)
        .env("IN_TOPIC", "eos-in")
        .env("OUT_TOPIC", "eos-out")
        .env("CHECKPOINTS", dir.join("chk"))
        .env("PARALLELISM", parallelism.to_string())
        .env("TXN_PREFIX", "chaos")
        .env("CHECKPOINT_MS", "300")
        .env("RESTORE", "latest")
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
    if let Some(f) = fault {
        cmd.env("FAULT", f);
    } else {
        cmd.env_remove("FAULT");
    }
    Run {
        child: cmd.spawn().expect("spawn kafka_eos_job"),
        stderr,
    }
}

fn latest_checkpoint(dir: &Path) -> u64 {
    runnel_runtime::checkpoint::list_checkpoints(&common::file_uri(&dir.join("chk")))
        .ok()
        .and_then(|v| v.first().map(|(id, _)| *id))
        .unwrap_or(0)
}

fn committed_count_at_least(b: &Broker, topic: &str, n: usize) -> bool {
    // No pre-check on end offsets: nisshi answers an end-offset query with
    // the base offset of the last batch, which with one batch per
    // transaction lies far below the real end.
    b.read_all(topic, true).len() >= n
}

fn read_output(b: &Broker) -> Vec<String> {
    let mut v: Vec<String> = b
        .read_all("eos-out", true)
        .iter()
        .map(|r| r.text())
        .collect();
    v.sort();
    v
}

fn first_difference(got: &[String], want: &[String]) -> String {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    for w in want {
        *counts.entry(w).or_default() -= 1;
    }
    let bad: Vec<String> = counts
        .iter()
        .filter(|(_, c)| **c != 0)
        .take(10)
        .map(|(k, c)| format!("{k} ({c:+})"))
        .collect();
    format!(
        "{} records differ; first: {}",
        counts.values().filter(|c| **c != 0).count(),
        bad.join(", ")
    )
}

#[test]
fn exactly_once_survives_process_kills_at_random_points() {
    let Some(b) = broker_or_skip("exactly_once_survives_process_kills_at_random_points") else {
        return;
    };
    const N: u64 = 200_000;
    const KEYS: u64 = 97;
    b.create_topic("eos-in", 4);
    b.create_topic("eos-out", 3);
    // Input arrives in 13 slices, one before each run, so that every run has
    // output to commit (and the commit-window faults have a window to hit).
    let slice = N / 13;
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed {seed} (set CHAOS_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Every point at least once (the commit window twice), then random ones.
    let mut points: Vec<&str> = vec![
        "sink-before-commit",
        "sink-mid-produce",
        "before-snapshot",
        "before-metadata",
        "after-metadata",
        "sink-after-commit",
        "sigkill",
        "sink-before-commit",
    ];
    let all = [
        "sink-before-commit",
        "sink-mid-produce",
        "sink-after-commit",
        "before-snapshot",
        "before-metadata",
        "after-metadata",
        "sigkill",
    ];
    while points.len() < 12 {
        points.push(all[rng.random_range(0..all.len())]);
    }
    let mut kills = Vec::new();
    for (i, point) in points.iter().enumerate() {
        produce_range(&b, "eos-in", i as u64 * slice..(i as u64 + 1) * slice, KEYS);
        let parallelism = rng.random_range(1..=3u32);
        // A run's slice of input may be all processed within one checkpoint,
        // so commit-window faults aim at the run's first commit; the others
        // at one of the next three checkpoints.
        let at = latest_checkpoint(dir.path())
            + if point.starts_with("sink-") {
                1
            } else {
                rng.random_range(1..=3u64)
            };
        let fault = (*point != "sigkill").then(|| format!("{point}:{at}"));
        let mut run = spawn_job(&b, dir.path(), parallelism, fault.as_deref(), i);
        let deadline = Instant::now()
            + if *point == "sigkill" {
                Duration::from_millis(rng.random_range(800..3000))
            } else {
                Duration::from_secs(60)
            };
        let mut how = "still running at the deadline: SIGKILL".to_string();
        loop {
            if let Some(st) = run.child.try_wait().unwrap() {
                how = format!("exited: {st}");
                break;
            }
            if Instant::now() > deadline {
                run.child.kill().unwrap();
                run.child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut log = String::new();
        std::fs::File::open(&run.stderr)
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(!log.contains("panicked"), "run {i} panicked:\n{log}");
        let faulted = log.contains("FAULT ");
        // What recovery decided in this run (the evidence when output differs).
        for l in log.lines().filter(|l| l.contains("exactly-once recovery")) {
            eprintln!("  run {i}: {l}");
        }
        if fault.is_some() && !faulted {
            // Its fault point never came: show how far it got.
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                eprintln!("  run {i} (tail): {l}");
            }
        }
        eprintln!(
            "run {i}: parallelism {parallelism}, {point} at checkpoint >= {at}: {how}, fault hit: {faulted}"
        );
        kills.push((point.to_string(), faulted));
    }
    // The kills that matter most really happened: inside the commit window
    // and in the middle of a checkpoint.
    for must in [
        "sink-before-commit",
        "sink-mid-produce",
        "before-snapshot",
        "before-metadata",
    ] {
        assert!(
            kills.iter().any(|(p, hit)| p == must && *hit),
            "no run was killed at {must}: {kills:?}"
        );
    }
    assert!(kills.len() >= 10);
    // Final run without faults, until all output is committed, plus two more
    // checkpoints (anything duplicated late would show).
    produce_range(&b, "eos-in", points.len() as u64 * slice..N, KEYS);
    let mut run = spawn_job(&b, dir.path(), 2, None, 99);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !committed_count_at_least(&b, "eos-out", N as usize) {
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "final run died: {}",
            std::fs::read_to_string(&run.stderr).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "output never reached {N} records"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let c = latest_checkpoint(dir.path());
    while latest_checkpoint(dir.path()) < c + 2 {
        assert!(Instant::now() < deadline, "no further checkpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let got = read_output(&b);
    let want = expected_output(N, KEYS);
    assert!(got == want, "{}", first_difference(&got, &want));
}

/// The broker is down for 30 s in the middle of a run and comes back on the
/// same port. nisshi keeps its data in an S3 bucket (on a moto server) so
/// that the restarted broker still has the topics and records: with
/// `memory://` storage the restart would lose everything, and the test could
/// show nothing about the job.
#[test]
fn broker_down_for_30_seconds_then_back_without_loss() {
    if nisshi_missing("broker_down_for_30_seconds_then_back_without_loss") {
        return;
    }
    let moto = Moto::start();
    let env = moto.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut b = Broker::start_with_storage("s3://nisshi/", &env_refs);
    b.create_topic("down-in", 2);
    b.create_topic("down-out", 2);
    produce_input(&b, "down-in", 2_000, 7);
    let dir = tempfile::tempdir().unwrap();
    let mut run = spawn_job_topics(&b, dir.path(), "down-in", "down-out");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !committed_count_at_least(&b, "down-out", 2_000) {
        assert!(
            Instant::now() < deadline,
            "first 2000 not committed (committed so far: {}):\n{}",
            b.read_all("down-out", true).len(),
            std::fs::read_to_string(&run.stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.stop();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the job died while the broker was down:\n{}",
            std::fs::read_to_string(&run.stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.restart(&env_refs);
    // More input after the outage; the job must pick it up and commit it.
    let more: Vec<(Option<Vec<u8>>, Vec<u8>)> = (2_000..3_000u64)
        .map(|id| {
            (
                Some((id % 7).to_string().into_bytes()),
                format!("{id},{}", id % 7).into_bytes(),
            )
        })
        .collect();
    b.produce("down-in", None, &more);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !committed_count_at_least(&b, "down-out", 3_000) {
        assert!(
            Instant::now() < deadline,
            "output after the outage never completed:\n{}",
            std::fs::read_to_string(&run.stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let c = latest_checkpoint(dir.path());
    while latest_checkpoint(dir.path()) < c + 2 {
        assert!(Instant::now() < deadline, "no further checkpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    let mut got: Vec<String> = b
        .read_all("down-out", true)
        .iter()
        .map(|r| r.text())
        .collect();
    got.sort();
    let want = expected_output(3_000, 7);
    assert!(got == want, "{}", first_difference(&got, &want));
}

fn nisshi_missing(test: &str) -> bool {
    if common::broker::nisshi_path().is_some() {
        return false;
    }
    broker_or_skip(test).is_none()
}

fn spawn_job_topics(b: &Broker, dir: &Path, input: &str, output: &str) -> Run {
    let stderr = dir.join("run.log");
    let f = std::fs::File::create(&stderr).unwrap();
    let child = Command::new(example("kafka_eos_job"))
        .env("BOOTSTRAP", &b.bootstrap)
        .env("IN_TOPIC", input)
        .env("OUT_TOPIC", output)
        .env("CHECKPOINTS", dir.join("chk"))
        .env("PARALLELISM", "2")
        .env("TXN_PREFIX", "down")
        .env("RESTART_ATTEMPTS", "1000")
        .env("CHECKPOINT_MS", "300")
        .env("RESTORE", "latest")
        .env("RUST_LOG", "info,rdkafka=warn")
        .env_remove("FAULT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .expect("spawn");
    Run { child, stderr }
}

/// A moto S3 server on a free loopback port with one bucket, `nisshi`.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("moto_server is needed (pip install \"moto[server]\"): {e}"),
        };
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("curl")
                .args([
                    "-sf",
                    "-X",
                    "PUT",
                    &format!("http://127.0.0.1:{port}/nisshi"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return m;
            }
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
