//! Exactly-once end to end against a real broker, shown by killing the job
//! PROCESS (`std::process::abort` at chosen points, or SIGKILL at a random
//! moment) and restarting it from the latest checkpoint, at a fixed
//! downscale (3 to 1) first and a random parallelism after. The committed
//! output (read_committed) must equal the fault-free output exactly. Also:
//! the broker down for 30 s mid-run, while output waits to commit.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::{Broker, broker_or_skip, free_port};
use common::example;
use rand::{Rng, SeedableRng};

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

/// The latest checkpoint and the parallelism it was written at (the highest
/// over its operators; all of this job's operators have the same).
/// The newest checkpoint with its `_metadata` written (`latest_checkpoint`
/// also sees one still being written).
fn latest_completed(dir: &Path) -> u64 {
    let chk = dir.join("chk");
    runnel_runtime::checkpoint::list_checkpoints(&common::file_uri(&chk))
        .ok()
        .and_then(|v| {
            v.iter()
                .map(|(id, _)| *id)
                .find(|id| chk.join(format!("chk-{id}")).join("_metadata").is_file())
        })
        .unwrap_or(0)
}

fn checkpoint_parallelism(dir: &Path) -> Option<(u64, u32)> {
    let chk = dir.join("chk");
    let (id, uri) = runnel_runtime::checkpoint::list_checkpoints(&common::file_uri(&chk))
        .ok()?
        .into_iter()
        .find(|(_, uri)| runnel_runtime::checkpoint::read_metadata(uri).is_ok())?;
    let md = runnel_runtime::checkpoint::read_metadata(&uri).ok()?;
    Some((id, md.operators.iter().map(|o| o.parallelism).max()?))
}

/// The checkpoint a job run's log says it restored, from the engine's
/// "restoring ... checkpoint=N" line.
fn restored_checkpoint(log: &str) -> Option<u64> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" restoring "))
        .find_map(|l| {
            let v = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("checkpoint="))?;
            v.parse().ok()
        })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn committed_count_at_least(b: &Broker, topic: &str, n: usize) -> bool {
    // No pre-check on end offsets: nisshi answers an end-offset query with
    // the base offset of the last batch, which with one batch per
    // transaction lies far below the real end.
    b.read_all(topic, true).len() >= n
}

fn read_output(b: &Broker) -> Vec<String> {
    b.read_texts("eos-out", true)
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
    // Restarts that restored a checkpoint written at a higher parallelism:
    // (run, from, to, checkpoint). The sink's transactional ids of the
    // removed subtasks are then ended by the remaining ones.
    let mut downscales: Vec<(usize, u32, u32, u64)> = Vec::new();
    for (i, point) in points.iter().enumerate() {
        produce_range(&b, "eos-in", i as u64 * slice..(i as u64 + 1) * slice, KEYS);
        // Runs 0 and 1 are a fixed downscale from 3 to 1 (run 0 is killed in
        // its commit window, so subtasks 1 and 2 leave transactions behind);
        // the others are drawn at random.
        let parallelism = match i {
            0 => 3,
            1 => 1,
            _ => rng.random_range(1..=3u32),
        };
        let restoring = checkpoint_parallelism(dir.path());
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
        if let Some((id, from)) = restoring
            && from > parallelism
        {
            // It really restored that checkpoint (a random SIGKILL may come
            // before the restore: only the fixed downscale must get there).
            let restored = restored_checkpoint(&log);
            if i == 1 {
                assert_eq!(
                    restored,
                    Some(id),
                    "run {i} did not restore checkpoint {id}:\n{log}"
                );
            }
            if restored == Some(id) {
                downscales.push((i, from, parallelism, id));
            }
        }
    }
    eprintln!("downscales (run, from, to, checkpoint): {downscales:?}");
    assert!(
        downscales
            .iter()
            .any(|(run, from, to, _)| (*run, *from, *to) == (1, 3, 1)),
        "the fixed downscale from 3 to 1 at run 1 did not happen: {downscales:?}"
    );
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

/// The broker is down for 30 s in the middle of a run, while output is
/// waiting to commit, and comes back on the same port. nisshi keeps its data
/// in an S3 bucket (on a moto server) so that the restarted broker still has
/// the topics and records: with `memory://` storage the restart would lose
/// everything, and the test could show nothing about the job.
///
/// Input comes in three slices: the first is committed before the outage;
/// the second is produced right after a checkpoint completed and the broker
/// is stopped before the next one completes, so none of its output can have
/// been committed (the exactly-once sink writes a checkpoint's output when it
/// completes); the third is produced after the broker is back. Checkpoints
/// are 4 s apart to leave that window room on a loaded machine.
#[test]
fn broker_down_for_30_seconds_then_back_without_loss() {
    if nisshi_missing("broker_down_for_30_seconds_then_back_without_loss") {
        return;
    }
    const SLICE: u64 = 1_000;
    const KEYS: u64 = 7;
    let started = Instant::now();
    let moto = Moto::start();
    let env = moto.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut b = Broker::start_with_storage("s3://nisshi/", &env_refs);
    b.create_topic("down-in", 2);
    b.create_topic("down-out", 2);
    produce_range(&b, "down-in", 0..SLICE, KEYS);
    let dir = tempfile::tempdir().unwrap();
    let mut run = spawn_job_topics(&b, dir.path(), "down-in", "down-out", 4_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = |run: &Run| std::fs::read_to_string(&run.stderr).unwrap_or_default();
    while !committed_count_at_least(&b, "down-out", SLICE as usize) {
        assert!(
            Instant::now() < deadline,
            "first slice not committed (committed so far: {}):\n{}",
            b.read_all("down-out", true).len(),
            log(&run)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Right after the next checkpoint completes, the second slice goes in.
    let before = latest_completed(dir.path());
    while latest_completed(dir.path()) == before {
        assert!(Instant::now() < deadline, "no further checkpoint");
        std::thread::sleep(Duration::from_millis(10));
    }
    let last_before_outage = latest_completed(dir.path());
    produce_range(&b, "down-in", SLICE..2 * SLICE, KEYS);
    // Time for the job to read it (not an assertion: the check below is
    // what shows that its output was still waiting to commit).
    std::thread::sleep(Duration::from_millis(1_500));
    b.stop();
    assert_eq!(
        latest_completed(dir.path()),
        last_before_outage,
        "a checkpoint completed before the broker went down, so the second \
         slice's output may have been committed already: the test would not \
         show an outage with output waiting to commit"
    );
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the job died while the broker was down:\n{}",
            log(&run)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.restart(&env_refs);
    // More input after the outage; the job must pick it up and commit it.
    produce_range(&b, "down-in", 2 * SLICE..3 * SLICE, KEYS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !committed_count_at_least(&b, "down-out", 3 * SLICE as usize) {
        assert!(
            Instant::now() < deadline,
            "output after the outage never completed (committed so far: {}):\n{}",
            b.read_all("down-out", true).len(),
            log(&run)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // One more checkpoint: anything committed twice late would show.
    let c = latest_completed(dir.path());
    while latest_completed(dir.path()) < c + 1 {
        assert!(Instant::now() < deadline, "no further checkpoints");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.child.kill().unwrap();
    run.child.wait().unwrap();
    for l in log(&run)
        .lines()
        .filter(|l| l.contains("exactly-once recovery: committed"))
    {
        eprintln!("  {l}");
    }
    let mut got: Vec<String> = b
        .read_all("down-out", true)
        .iter()
        .map(|r| r.text())
        .collect();
    got.sort();
    let want = expected_output(3 * SLICE, KEYS);
    assert!(got == want, "{}", first_difference(&got, &want));
    eprintln!("took {:?}", started.elapsed());
}

fn nisshi_missing(test: &str) -> bool {
    if common::broker::nisshi_path().is_some() {
        return false;
    }
    broker_or_skip(test).is_none()
}

fn spawn_job_topics(b: &Broker, dir: &Path, input: &str, output: &str, checkpoint_ms: u64) -> Run {
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
        .env("CHECKPOINT_MS", checkpoint_ms.to_string())
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
