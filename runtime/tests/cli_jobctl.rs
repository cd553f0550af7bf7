//! The `runnel` binary's job commands against a running job: status,
//! checkpoints, savepoint (wait and detach), savepoint inspect and dispose,
//! stop with savepoint, cancel, and their exit codes.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{CountPerKey, config};
use runnel_runtime::control::{ControlOptions, ControlServer, serve};
use runnel_runtime::sinks::DiscardSink;
use runnel_runtime::sources::GeneratorSource;
use runnel_runtime::{JobClient, JobOutcome, JobState, StreamEnv};

fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runnel runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn start(
    dir: &std::path::Path,
    name: &str,
    default_sp: Option<String>,
) -> (JobClient, ControlServer) {
    let mut cfg = config(name, &dir.join("chk"), 100);
    cfg.parallelism = 2;
    let env = StreamEnv::new(cfg);
    env.add_source("numbers", GeneratorSource::new(|i: u64| i).rate(20_000.0))
        .key_by(|i: &u64| *i % 10)
        .process("count", CountPerKey::default())
        .sink("discard", DiscardSink);
    let job = env.execute_async().expect("job starts");
    let server = serve(
        job.handle(),
        ControlOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            default_savepoint_dir: default_sp,
        },
    )
    .expect("control server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while job.status().state != JobState::Running || job.status().completed.is_empty() {
        assert!(Instant::now() < deadline, "job did not checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    (job, server)
}

#[test]
fn status_checkpoints_savepoint_inspect_dispose_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let sp = format!("file://{}/sp", tmp.path().display());
    let (job, server) = start(tmp.path(), "cli-job", None);
    let url = server.url();

    let o = runnel(&["status", &url]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("job:          cli-job"), "{out}");
    assert!(out.contains("state:        RUNNING"), "{out}");
    let o = runnel(&["status", "--json", &url]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "RUNNING");

    let o = runnel(&["checkpoints", &url]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("CHECKPOINT") && out.contains("/chk/chk-"),
        "{out}"
    );

    // Savepoint, waiting: prints the path, which inspects cleanly.
    let o = runnel(&["savepoint", &url, &sp]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let path = out.trim().to_string();
    assert!(path.starts_with(&format!("{sp}/savepoint-")), "{out}");
    let o = runnel(&["savepoint", "inspect", &path]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("kind:            savepoint"), "{out}");
    assert!(out.contains("operator 'count' (parallelism 2)"), "{out}");
    assert!(out.contains("keyed state:   'count'"), "{out}");
    assert!(out.contains("key groups 0..=63"), "{out}");

    // Detached: prints a trigger id at once.
    let o = runnel(&["savepoint", "--detach", &url, &sp]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out.trim().len(), 32, "{out}");

    // Dispose refuses a checkpoint, deletes a savepoint.
    let chk = job
        .status()
        .completed
        .iter()
        .rev()
        .find(|c| c.kind == runnel_runtime::SnapshotKind::Checkpoint)
        .expect("a retained checkpoint")
        .path
        .clone();
    let o = runnel(&["savepoint", "dispose", &chk]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("not a savepoint"), "{err}");
    let o = runnel(&["savepoint", "dispose", &path]);
    assert!(o.status.success(), "{}", text(&o).1);
    let local = path.strip_prefix("file://").unwrap();
    assert!(!std::path::Path::new(local).exists());
    let o = runnel(&["savepoint", "inspect", &path]);
    assert!(!o.status.success());

    // Stop with savepoint ends the job with that savepoint.
    let arg = format!("--savepoint={sp}");
    let o = runnel(&["stop", &arg, &url]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let stop_path = out.trim().to_string();
    match job.wait().unwrap() {
        JobOutcome::Stopped(info) => assert_eq!(info.path, stop_path),
        other => panic!("expected a stop, got {other:?}"),
    }

    // A job that has ended: conflict, exit code 3.
    let o = runnel(&["cancel", &url]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("STOPPED"), "{err}");
    let o = runnel(&["savepoint", &url, &sp]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn cancel_and_error_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (job, server) = start(tmp.path(), "cli-cancel", None);
    let url = server.url();

    // No target directory and no default: the job rejects it (exit 5).
    let o = runnel(&["savepoint", &url]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("targetDirectory"), "{err}");

    let o = runnel(&["cancel", &url]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(job.wait().unwrap(), JobOutcome::Cancelled);
    drop(server);

    // Nobody listening: exit 4 with the address in the message.
    let o = runnel(&["status", &url]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("cannot reach the job"), "{err}");
    // Not a URL: usage-style rejection before any request.
    let o = runnel(&["status", "localhost:1"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("http://"));
    // Every command has --help.
    for cmd in [
        "status",
        "savepoint",
        "stop",
        "cancel",
        "checkpoints",
        "inspect",
    ] {
        let o = runnel(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage:"));
    }
    let o = runnel(&["savepoint", "inspect", "--help"]);
    assert!(o.status.success());
}
