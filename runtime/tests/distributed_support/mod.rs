//! Helpers for the distributed tests: worker and coordinator processes on
//! loopback, the control API, and the exactly-once file sink's output.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runnel_api::{JobState, JobStatusResponse};

pub const BIN: &str = env!("CARGO_BIN_EXE_runnel");

/// A child process killed when dropped (a failing test leaves nothing behind).
pub struct Proc {
    pub child: Child,
    /// Worker: listen address; coordinator: control URL.
    pub addr: String,
    pub stdout: Option<BufReader<ChildStdout>>,
    /// The test ended it (kill or finish); any other exit is unexpected.
    pub ended: bool,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn kill(&mut self) {
        self.ended = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig})", self.pid());
    }
    /// Waits for the process to exit; returns its remaining stdout.
    pub fn finish(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        self.ended = true;
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut rest = String::new();
                if let Some(mut out) = self.stdout.take() {
                    use std::io::Read;
                    let _ = out.read_to_string(&mut rest);
                }
                return (st, rest);
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let status = self.child.try_wait();
        // A process that ended on its own before the test let it go is the
        // first thing to know when a test fails.
        if let (Ok(Some(st)), false) = (&status, self.ended) {
            eprintln!(
                "process {} ({}) had already exited: {st}",
                self.addr,
                self.pid()
            );
        }
        if let Ok(None) = status {
            // A stopped process must be continued to die promptly.
            // SAFETY: our own child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGCONT);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(args: &[&str], prefix: &str) -> Proc {
    spawn_with(Path::new(BIN), args, prefix, &[], None)
}

/// Starts `bin` (the `runnel` binary or a custom runtime binary built from the
/// library) with extra environment, and its stderr into `stderr` if given.
pub fn spawn_with(
    bin: &Path,
    args: &[&str],
    prefix: &str,
    envs: &[(&str, &str)],
    stderr: Option<&Path>,
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,runnel_runtime=info".into()),
        )
        .envs(envs.iter().copied())
        .stdout(Stdio::piped());
    if let Some(path) = stderr {
        cmd.stderr(std::fs::File::create(path).expect("stderr file"));
    }
    let mut child = cmd.spawn().expect("runnel starts");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    Proc {
        child,
        addr,
        stdout: Some(out),
        ended: false,
    }
}

/// `runnel worker JOB --listen 127.0.0.1:0`.
pub fn worker(job: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", job.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn(&args, "worker listening on ")
}

/// A worker running `bin`, a custom runtime binary, with extra environment
/// and its stderr into a file.
pub fn worker_with(
    bin: &Path,
    job: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
    stderr: &Path,
) -> Proc {
    let mut args = vec!["worker", job.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn_with(bin, &args, "worker listening on ", envs, Some(stderr))
}

/// Restarts a worker on a given address (after a kill), retrying while the
/// port is still held.
pub fn worker_at(job: &Path, addr: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", job.to_str().unwrap(), "--listen", addr];
    args.extend_from_slice(extra);
    spawn(&args, "worker listening on ")
}

/// `runnel coordinator JOB --workers ...`; `addr` is the control URL.
pub fn coordinator(job: &Path, workers: &[&str], extra: &[&str]) -> Proc {
    let list = workers.join(",");
    let mut args = vec![
        "coordinator",
        job.to_str().unwrap(),
        "--workers",
        &list,
        "--control-addr",
        "127.0.0.1:0",
        "--linger",
        "0s",
    ];
    args.extend_from_slice(extra);
    spawn(&args, "control API: ")
}

pub fn status(url: &str) -> JobStatusResponse {
    let mut r = ureq::get(&format!("{url}/v1/job")).call().expect("status");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Polls the job's status until `cond` holds.
pub fn wait_status(
    url: &str,
    what: &str,
    cond: impl Fn(&JobStatusResponse) -> bool,
) -> JobStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(url);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn last_checkpoint_id(s: &JobStatusResponse) -> u64 {
    s.last_checkpoint.as_ref().map_or(0, |c| c.id)
}

/// Waits until a checkpoint newer than `after` completed in a running job.
pub fn wait_checkpoint_after(url: &str, after: u64) -> JobStatusResponse {
    wait_status(url, &format!("a checkpoint after {after}"), |s| {
        s.state == JobState::Running && last_checkpoint_id(s) > after
    })
}

pub fn run_cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runnel runs")
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The published (committed) records of a file sink, as sorted JSON lines.
pub fn published(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = runnel_runtime::declarative::read_published(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    v.sort();
    v
}

/// The job's fault-free output: the same job in one process (`runnel run`).
pub fn fault_free(job_yaml: &str, dir: &Path) -> Vec<String> {
    let job = dir.join("reference.yaml");
    let yaml = job_yaml
        .replace("{out}", &dir.join("reference-out").display().to_string())
        .replace(
            "{chk}",
            &format!("file://{}", dir.join("reference-chk").display()),
        );
    std::fs::write(&job, yaml).unwrap();
    ok(&run_cli(&[
        "run",
        job.to_str().unwrap(),
        "--control-addr",
        "127.0.0.1:0",
        "--linger",
        "0s",
    ]));
    published(&dir.join("reference-out"))
}

/// Writes the job for the distributed run (output under `dir/out`).
pub fn write_job(job_yaml: &str, dir: &Path) -> std::path::PathBuf {
    let job = dir.join("job.yaml");
    let yaml = job_yaml
        .replace("{out}", &dir.join("out").display().to_string())
        .replace("{chk}", &format!("file://{}", dir.join("chk").display()));
    std::fs::write(&job, yaml).unwrap();
    job
}

/// A keyed job whose output depends on every key's state: count windows of
/// 10 records per key, summing a sequence. Source parallelism 1 keeps each
/// key's order, so the output is deterministic.
pub fn keyed_job(count: u64, rate: u64, parallelism: u32) -> String {
    format!(
        r#"version: 1
name: dist
parallelism: {parallelism}
checkpoint: {{ interval: 200ms, storage: "{{chk}}" }}
restart: {{ type: fixed-delay, attempts: 20, delay: 100ms }}
sources:
  - name: numbers
    parallelism: 1
    generator: {{ count: {count}, ratePerSecond: {rate}, keys: 50, fields: {{ k: {{ key: {{ prefix: "k" }} }}, n: {{ sequence: {{}} }} }} }}
steps:
  - keyBy: "k"
  - name: sums
    window:
      type: count
      count: 10
      aggregates:
        total: {{ op: sum, of: "n" }}
        c: {{ op: count }}
sinks:
  - name: out
    file: {{ path: "{{out}}" }}
"#
    )
}
