//! Long-running `runnel` processes ignore SIGPIPE. With the default
//! disposition, a vectored write (tokio, hyper) to a socket whose peer has
//! gone kills the process without a word: a worker died that way when its
//! coordinator was killed. Linux only (reads /proc).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_runnel");
/// SIGPIPE is signal 13: bit 12 of the /proc status masks.
const SIGPIPE_BIT: u64 = 1 << 12;

/// The SigIgn mask of a running process.
fn ignored_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("SigIgn line");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// Starts `runnel ARGS`, waits for its first stdout line (it is serving by
/// then), and returns the SigIgn mask.
fn ignored_while_serving(args: &[&str]) -> u64 {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mask = ignored_signals(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(!line.is_empty(), "{args:?} printed nothing");
    mask
}

#[test]
fn serving_processes_ignore_sigpipe() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    std::fs::write(
        &job,
        format!(
            r#"version: 1
name: slow
sources:
  - name: numbers
    generator: {{ ratePerSecond: 10, keys: 5, fields: {{ n: {{ sequence: {{}} }} }} }}
sinks:
  - name: out
    file: {{ path: "{}" }}
"#,
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    for args in [
        vec!["run", job, "--control-addr", "127.0.0.1:0"],
        vec!["worker", job, "--listen", "127.0.0.1:0"],
    ] {
        let mask = ignored_while_serving(&args);
        assert_ne!(mask & SIGPIPE_BIT, 0, "{args:?}: SigIgn {mask:x}");
    }
}
