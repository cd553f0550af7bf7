//! Seed 000's walk-through with the CLI, as separate processes: `runnel run`,
//! `runnel savepoint`, `runnel cancel`, `runnel run --from-savepoint`,
//! `runnel stop --savepoint`. The exactly-once file sink's output over both
//! runs holds every generated record exactly once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runnel_api::{JobState, JobStatusResponse};
use runnel_runtime::declarative::read_published;

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runnel runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Starts `runnel run` and returns it with its control URL (its first line).
fn start(args: &[&str]) -> (Child, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("run")
        .args(args)
        .args(["--control-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("runnel run starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("control API: ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    (child, url, out)
}

fn status(url: &str) -> JobStatusResponse {
    serde_json::from_str(&ok(&runnel(&["status", "--json", url]))).unwrap()
}

fn wait_running(url: &str) -> JobStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(url);
        if s.state == JobState::Running {
            return s;
        }
        assert!(Instant::now() < deadline, "job not running: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the source has emitted at least `n` more records than `from`
/// (read from the job's Prometheus metrics).
fn wait_records(url: &str, from: f64, n: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut r = ureq::get(&format!("{url}/metrics")).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        let emitted: f64 = text
            .lines()
            .filter(|l| l.starts_with("runnel_records_out_total{operator=\"numbers\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if emitted >= from + n {
            return emitted;
        }
        assert!(
            Instant::now() < deadline,
            "records are not flowing ({emitted})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exactly once, from the generator's `n` at source parallelism 2 (record i
/// of subtask s is n = 2i + s): per subtask a gap-free prefix of its
/// sequence, and no value twice.
fn assert_exactly_once_over_two_subtasks(all: &[serde_json::Value]) {
    let mut ns: Vec<i64> = all.iter().map(|v| v["n"].as_i64().unwrap()).collect();
    ns.sort_unstable();
    let before = ns.len();
    ns.dedup();
    assert_eq!(ns.len(), before, "duplicates across the restore");
    for s in 0..2 {
        let mine: Vec<i64> = ns.iter().copied().filter(|n| n % 2 == s).collect();
        let expected: Vec<i64> = (0..mine.len() as i64).map(|k| k * 2 + s).collect();
        assert_eq!(mine, expected, "subtask {s}: lost records");
    }
}

fn finish(mut child: Child, mut out: BufReader<std::process::ChildStdout>) -> String {
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(status.success(), "runnel run exited with {status}: {rest}");
    rest
}

#[test]
fn run_savepoint_cancel_resume_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let job = tmp.path().join("job.yaml");
    // No periodic checkpoint during the test: output is published exactly by
    // the savepoints, so the two runs' output must join without gap or overlap.
    std::fs::write(
        &job,
        format!(
            r#"
version: 1
name: walkthrough
parallelism: 2
checkpoint: {{ interval: 1h, storage: "file://{dir}/chk" }}
sources:
  - name: numbers
    generator: {{ ratePerSecond: 4000, fields: {{ n: {{ sequence: {{}} }} }} }}
steps:
  - map: {{ fields: {{ n: "n", odd: "n % 2 == 1" }} }}
sinks:
  - name: out
    file: {{ path: "{dir}/out" }}
"#
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let sp_dir = format!("file://{dir}/savepoints");

    // Validation only; also the documented walk-through job stays valid.
    assert!(ok(&runnel(&["run", job, "--dry-run"])).ends_with("valid"));
    let documented = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/walkthrough/job.yaml"
    );
    assert!(ok(&runnel(&["run", documented, "--dry-run"])).ends_with("valid"));

    // 1. run
    let (child, url, out) = start(&[job]);
    let s = wait_running(&url);
    assert_eq!(s.name, "walkthrough");
    assert_eq!(s.parallelism.get("numbers"), Some(&2));
    assert!(s.restored_from.is_none());
    wait_records(&url, 0.0, 500.0);
    // 2. savepoint
    let sp1 = ok(&runnel(&["savepoint", &url, &sp_dir]));
    assert!(sp1.starts_with(&format!("{sp_dir}/savepoint-")), "{sp1}");
    // 3. cancel
    ok(&runnel(&["cancel", &url]));
    let rest = finish(child, out);
    assert!(rest.contains("job walkthrough cancelled"), "{rest}");
    let first = read_published(&tmp.path().join("out")).unwrap();
    assert!(!first.is_empty(), "the savepoint published output");
    // A cancelled job's checkpoint directory no longer leads to its
    // savepoints (the savepoint itself stays: the user owns it).
    let chk_dir = format!("file://{dir}/chk");
    assert_eq!(
        runnel_runtime::checkpoint::find_latest_checkpoint(&chk_dir).unwrap(),
        None
    );
    assert!(runnel_runtime::checkpoint::read_metadata(&sp1).is_ok());

    // 4. run from the savepoint (with a parallelism override that the
    //    generator's per-subtask state must keep: same value)
    let (child, url, out) = start(&[job, "--from-savepoint", &sp1, "--parallelism", "2"]);
    let s = wait_running(&url);
    assert_eq!(s.restored_from.as_deref(), Some(sp1.as_str()));
    wait_records(&url, 0.0, 500.0);
    // 5. stop with savepoint
    let arg = format!("--savepoint={sp_dir}");
    let sp2 = ok(&runnel(&["stop", &arg, &url]));
    assert_ne!(sp1, sp2);
    let rest = finish(child, out);
    assert!(
        rest.contains(&format!("stopped with savepoint {sp2}")),
        "{rest}"
    );

    // Exactly once over both runs: per source subtask a gap-free prefix of
    // its sequence (i = next * 2 + subtask), and no value twice.
    let all = read_published(&tmp.path().join("out")).unwrap();
    assert!(all.len() > first.len(), "the resumed run published more");
    assert_exactly_once_over_two_subtasks(&all);
    for v in &all {
        assert_eq!(
            v["odd"],
            serde_json::json!(v["n"].as_i64().unwrap() % 2 == 1)
        );
    }
}

#[test]
fn invalid_jobs_are_reported_with_paths_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("bad.yaml");
    std::fs::write(
        &job,
        r#"
version: 1
name: bad
sources:
  - name: numbers
    generator: { fields: { n: { sequence: {} } } }
steps:
  - filter: "n >"
sinks:
  - name: out
    stdout: {}
"#,
    )
    .unwrap();
    let o = runnel(&["run", job.to_str().unwrap(), "--dry-run"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a valid job"), "{err}");
    assert!(err.contains("steps[0]"), "{err}");
    let o = runnel(&["run", "/nonexistent/job.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read the job file"));
    let o = runnel(&["run", job.to_str().unwrap(), "--parallelism", "0"]);
    assert_eq!(o.status.code(), Some(1));
}

/// A stop-with-savepoint whose result nobody read (the operator's view when
/// the pod is evicted right after the savepoint): the savepoint committed the
/// output up to it, so `--from-latest-checkpoint` must resume from the
/// savepoint, not from the older last checkpoint, or that output is produced
/// twice. Disposing the savepoint falls back to the latest checkpoint.
#[test]
fn from_latest_checkpoint_finds_a_stop_savepoint_whose_result_was_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"
version: 1
name: lost
parallelism: 2
checkpoint: {{ interval: 200ms, storage: "file://{dir}/chk" }}
sources:
  - name: numbers
    generator: {{ ratePerSecond: 4000, fields: {{ n: {{ sequence: {{}} }} }} }}
sinks:
  - name: out
    file: {{ path: "{dir}/out" }}
"#
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let chk = format!("file://{dir}/chk");
    let sp_dir = format!("file://{dir}/savepoints");

    let (child, url, out) = start(&[job]);
    wait_running(&url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        if let Some(c) = status(&url).last_checkpoint {
            break c;
        }
        assert!(Instant::now() < deadline, "no checkpoint completed");
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_records(&url, 0.0, 1000.0);
    let arg = format!("--savepoint={sp_dir}");
    let sp = ok(&runnel(&["stop", &arg, &url]));
    finish(child, out);
    // What the operator would fall back to: the latest snapshot the checkpoint
    // directory knows of. Checkpoints completed before the stop are older.
    let found = runnel_runtime::checkpoint::find_latest_checkpoint(&chk)
        .unwrap()
        .expect("a snapshot is found");
    assert_eq!(found.uri, sp, "{found:?}");
    assert!(found.id > last.id, "{found:?} vs {last:?}");
    let newest_chk = runnel_runtime::checkpoint::list_checkpoints(&chk).unwrap();
    assert!(newest_chk.first().is_some_and(|(id, _)| *id < found.id));

    let (child, url, out) = start(&[job, "--from-latest-checkpoint"]);
    let s = wait_running(&url);
    assert_eq!(s.restored_from.as_deref(), Some(sp.as_str()));
    wait_records(&url, 0.0, 500.0);
    let sp2 = ok(&runnel(&["stop", &arg, &url]));
    finish(child, out);

    let all = read_published(&tmp.path().join("out")).unwrap();
    assert_exactly_once_over_two_subtasks(&all);

    // The second savepoint replaced the first one's reference. Once it is
    // disposed, what remains of the second run is its own checkpoints if it
    // wrote any, else the snapshot it started from; never run 1's older ones.
    assert_eq!(
        runnel_runtime::checkpoint::find_latest_checkpoint(&chk)
            .unwrap()
            .map(|c| c.uri),
        Some(sp2.clone())
    );
    ok(&runnel(&["savepoint", "dispose", &sp2]));
    let after = runnel_runtime::checkpoint::find_latest_checkpoint(&chk)
        .unwrap()
        .expect("a snapshot remains");
    assert!(
        after.uri == sp || (after.uri.contains("/chk/chk-") && after.id > found.id),
        "{after:?}"
    );
    assert!(
        std::fs::read_dir(tmp.path().join("chk"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("_savepoint-"))
            .count()
            == 1,
        "older references are pruned"
    );
}

/// A run restored from an older savepoint shares the checkpoint directory
/// with the newer snapshots of the run before it. Until it writes its own,
/// "the latest checkpoint" is the savepoint it started from, never the older
/// run's newer checkpoints (the operator's last-state restore after the pod
/// of such a deployment died).
#[test]
fn from_latest_checkpoint_stays_in_the_current_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let job_with = |interval: &str| {
        let p = tmp.path().join(format!("job-{interval}.yaml"));
        std::fs::write(
            &p,
            format!(
                r#"
version: 1
name: lineage
checkpoint: {{ interval: {interval}, storage: "file://{dir}/chk" }}
sources:
  - name: numbers
    generator: {{ ratePerSecond: 4000, fields: {{ n: {{ sequence: {{}} }} }} }}
sinks:
  - name: out
    file: {{ path: "{dir}/out" }}
"#
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    let (fast, slow) = (job_with("200ms"), job_with("1h"));
    let chk = format!("file://{dir}/chk");
    let sp_dir = format!("file://{dir}/savepoints");
    let latest = || {
        runnel_runtime::checkpoint::find_latest_checkpoint(&chk)
            .unwrap()
            .map(|c| c.uri)
    };
    let wait_checkpoint_after = |url: &str, id: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = status(url).last_checkpoint
                && c.id > id
            {
                return c.id;
            }
            assert!(Instant::now() < deadline, "no checkpoint after {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Run 1: a savepoint, then newer checkpoints, then killed.
    let (mut child, url, _out) = start(&[&fast]);
    wait_running(&url);
    let sp_a = ok(&runnel(&["savepoint", &url, &sp_dir]));
    let sp_a_id = runnel_runtime::checkpoint::read_metadata(&sp_a)
        .unwrap()
        .checkpoint_id;
    wait_checkpoint_after(&url, sp_a_id);
    child.kill().unwrap();
    child.wait().unwrap();
    let newer = latest().unwrap();
    assert!(newer.contains("/chk/chk-"), "{newer}");

    // Run 2 (a rollback to the savepoint): killed before its first checkpoint.
    let (mut child, url, _out) = start(&[&slow, "--from-savepoint", &sp_a]);
    let s = wait_running(&url);
    assert_eq!(s.restored_from.as_deref(), Some(sp_a.as_str()));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(latest().as_deref(), Some(sp_a.as_str()), "not {newer}");

    // Its last state is that savepoint; once it checkpoints, its own.
    let (mut child, url, _out) = start(&[&fast, "--from-latest-checkpoint"]);
    let s = wait_running(&url);
    assert_eq!(s.restored_from.as_deref(), Some(sp_a.as_str()));
    let mine = wait_checkpoint_after(&url, 0);
    child.kill().unwrap();
    child.wait().unwrap();
    let found = runnel_runtime::checkpoint::find_latest_checkpoint(&chk)
        .unwrap()
        .unwrap();
    assert!(
        found.uri.contains("/chk/chk-") && found.id >= mine,
        "{found:?}"
    );
    assert_ne!(found.uri, newer);
}

/// `runnel stop --savepoint --drain` emits a final watermark before the
/// savepoint, so event-time windows that would stay open fire; a plain stop
/// leaves them in the savepoint. Hour-long windows over a stream whose event
/// time advances 1 ms per record never close on their own here, so every
/// window result comes from the drain, and over a plain stop, a restore and
/// a drained stop the counts add up to exactly the records produced.
#[test]
fn stop_with_drain_fires_open_event_time_windows_and_a_plain_stop_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let job = tmp.path().join("job.yaml");
    std::fs::write(
        &job,
        r#"
version: 1
name: drain
parallelism: 1
sources:
  - name: numbers
    generator:
      ratePerSecond: 3000
      keys: 5
      eventTime: { startMs: 0, stepMs: 1 }
      fields:
        n: { sequence: {} }
        k: { key: { prefix: "k" } }
    watermark: { maxOutOfOrderness: 0ms }
steps:
  - keyBy: "k"
  - name: hourly
    window:
      type: tumbling
      size: 1h
      aggregates:
        count: { op: count }
        maxN: { op: max, of: "n" }
sinks:
  - name: out
    stdout: {}
"#,
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let sp_arg = format!("--savepoint=file://{dir}/savepoints");
    let windows = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("count").is_some())
            .collect()
    };

    // A plain stop: the open windows stay in the savepoint, nothing fires.
    let (child, url, out) = start(&[job]);
    wait_running(&url);
    wait_records(&url, 0.0, 1000.0);
    let sp1 = ok(&runnel(&["stop", &sp_arg, &url]));
    let first = finish(child, out);
    assert!(
        first.contains(&format!("stopped with savepoint {sp1}")),
        "{first}"
    );
    assert_eq!(windows(&first), Vec::<serde_json::Value>::new(), "{first}");

    // Restored, then a drained stop: every open window fires, once, with the
    // records of both runs.
    let (child, url, out) = start(&[job, "--from-savepoint", &sp1]);
    wait_running(&url);
    wait_records(&url, 0.0, 1000.0);
    let sp2 = ok(&runnel(&["stop", &sp_arg, "--drain", &url]));
    let second = finish(child, out);
    assert!(
        second.contains(&format!("stopped with savepoint {sp2}")),
        "{second}"
    );
    let fired = windows(&second);
    assert_eq!(fired.len(), 5, "one window per key: {second}");
    let total: i64 = fired.iter().map(|w| w["count"].as_i64().unwrap()).sum();
    let max_n = fired
        .iter()
        .map(|w| w["maxN"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(total > 2000, "{total}");
    assert_eq!(
        total,
        max_n + 1,
        "every record of the gap-free sequence 0..=maxN counted exactly once"
    );
}

/// The README's walk-through as written: savepoints into `--savepoint-dir`
/// with no target on the command line (`savepoint URL`, bare `stop
/// --savepoint URL`); a restore that would drop an operator's state refused
/// (exit 1, the operator named) unless `--allow-non-restored-state`; and
/// `--help` for every command.
#[test]
fn default_savepoint_dir_bare_stop_allow_non_restored_state_and_help() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().display().to_string();
    let sp_dir = format!("file://{dir}/savepoints");
    let job = |steps: &str| {
        let p = tmp.path().join(format!("job-{}.yaml", steps.len()));
        std::fs::write(
            &p,
            format!(
                r#"
version: 1
name: defaults
parallelism: 1
sources:
  - name: numbers
    generator: {{ ratePerSecond: 2000, fields: {{ n: {{ sequence: {{}} }} }} }}
steps:
{steps}  - map: {{ fields: {{ n: "n" }} }}
sinks:
  - name: out
    file: {{ path: "{dir}/out" }}
"#
            ),
        )
        .unwrap();
        p.display().to_string()
    };
    let with_dedup = job("  - name: seen\n    dedup: { key: \"n\", ttl: 1h }\n");
    let without = job("");

    let (child, url, out) = start(&[&with_dedup, "--savepoint-dir", &sp_dir]);
    wait_running(&url);
    wait_records(&url, 0.0, 200.0);
    let sp1 = ok(&runnel(&["savepoint", &url]));
    assert!(sp1.starts_with(&format!("{sp_dir}/savepoint-")), "{sp1}");
    let sp2 = ok(&runnel(&["stop", "--savepoint", &url]));
    assert!(sp2.starts_with(&format!("{sp_dir}/savepoint-")), "{sp2}");
    assert_ne!(sp1, sp2);
    finish(child, out);

    // The dedup step's state has nowhere to go.
    let refused = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["run", &without, "--from-savepoint", &sp2])
        .args(["--control-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("operators the job no longer has") && err.contains("seen"),
        "{err}"
    );
    assert!(err.contains("--allow-non-restored-state"), "{err}");
    let (child, url, out) = start(&[
        &without,
        "--from-savepoint",
        &sp2,
        "--allow-non-restored-state",
    ]);
    let s = wait_running(&url);
    assert_eq!(s.restored_from.as_deref(), Some(sp2.as_str()));
    ok(&runnel(&["cancel", &url]));
    let _ = finish(child, out);

    for cmd in [
        &["run"][..],
        &["status"],
        &["savepoint"],
        &["savepoint", "inspect"],
        &["savepoint", "dispose"],
        &["stop"],
        &["cancel"],
        &["checkpoints"],
        &["inspect"],
        &["coordinator"],
        &["worker"],
        &["bench"],
        &["demo"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = runnel(&args);
        let text = ok(&o);
        assert!(text.contains("Usage: runnel"), "{cmd:?}: {text}");
    }
}

/// `runnel run` logs the physical choices the builder made for a job
/// (typed keys and accumulators, projection into the source), and the job's
/// results are the counts.
#[test]
fn run_logs_the_plan_of_a_typed_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"
version: 1
name: plan
sources:
  - name: events
    generator: {{ count: 300, keys: 3, eventTime: {{ stepMs: 1 }}, fields: {{ k: {{ key: {{}} }} }} }}
    watermark: {{}}
steps:
  - keyBy: "k"
  - name: counts
    window: {{ type: tumbling, size: 100ms, aggregates: {{ n: {{ op: count }} }} }}
sinks:
  - name: out
    file: {{ path: "{d}/out" }}
"#
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "run",
            job.to_str().unwrap(),
            "--control-addr",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("runnel runs");
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    for line in [
        "plan: source 'events' emits field 'k' alone (its only reader is the next window's key)",
        "plan: window 'counts': integer (compact) keys, count accumulators, keys only, from the source",
    ] {
        assert!(err.contains(line), "missing '{line}' in:\n{err}");
    }
    let out = read_published(&dir.path().join("out")).unwrap();
    assert_eq!(out.len(), 9, "3 keys x 3 windows: {out:?}");
    assert!(
        out.iter()
            .all(|r| r["n"] == 100 / 3 || r["n"] == 100 / 3 + 1)
    );
    let total: i64 = out.iter().map(|r| r["n"].as_i64().unwrap()).sum();
    assert_eq!(total, 300);
}
