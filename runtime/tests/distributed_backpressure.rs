//! Back-pressure across workers: an unbounded generator feeds a keyed step
//! on two workers; the sink on worker B writes to its stdout, a pipe this test
//! stops reading, so that sink stalls. The stall must reach the source on
//! worker A through the credit-based channel (A stops sending, its source
//! stops generating), memory must stay bounded (the receiver never holds more
//! than the credit window; RSS stays small), and reading again must resume
//! the flow.

mod distributed_support;

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distributed_support::*;
use runnel_runtime::distributed::{ExchangeStats, worker_stats};

const JOB: &str = r#"version: 1
name: pressure
parallelism: 2
sources:
  - name: numbers
    parallelism: 1
    generator: { keys: 64, fields: { k: { key: { prefix: "k" } }, n: { sequence: {} } } }
steps:
  - keyBy: "k"
  - name: each
    window:
      type: count
      count: 1
      aggregates:
        n: { op: max, of: "n" }
sinks:
  - name: out
    stdout: {}
"#;

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Polls until the statistic stops moving (two equal samples 300 ms apart).
fn settle(addr: &str, f: impl Fn(&ExchangeStats) -> u64) -> ExchangeStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = worker_stats(addr).unwrap();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = worker_stats(addr).unwrap();
        if f(&now) == f(&last) && f(&now) > 0 {
            return now;
        }
        assert!(Instant::now() < deadline, "{now:?} never settled");
        last = now;
    }
}

#[test]
fn a_stalled_sink_back_pressures_the_source_on_another_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.yaml");
    std::fs::write(&job, JOB).unwrap();
    let args = ["--slots", "1"];
    let mut a = worker(&job, &args);
    let mut b = worker(&job, &args);
    // Workers are ordered by address: slot 0 (the source) goes to the first.
    if a.addr > b.addr {
        std::mem::swap(&mut a, &mut b);
    }
    // Worker A's sink output is drained (counted); B's is not read at all.
    let a_lines = Arc::new(AtomicU64::new(0));
    {
        let out = a.stdout.take().unwrap();
        let n = a_lines.clone();
        std::thread::spawn(move || {
            for l in out.lines() {
                if l.is_err() {
                    return;
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let coord = coordinator(&job, &[&a.addr, &b.addr], &[]);
    wait_status(&coord.addr, "running", |s| {
        s.state == runnel_api::JobState::Running
    });

    // The pipe fills, B's sink blocks, and the stall reaches A's source.
    let sa = settle(&a.addr, |s| s.records_sent);
    let sb = worker_stats(&b.addr).unwrap();
    assert!(sa.credit_stalls > 0, "A never waited for credit: {sa:?}");
    assert_eq!(sb.records_sent, 0, "{sb:?}");
    // What A sent but B's sink has not printed is held by bounded buffers: A's
    // channel (8 batches), the credit window (8), B's channel (8), a partial
    // batch per side (512 records each), and the stdout pipe (64 KiB).
    assert!(
        sa.records_sent <= 30_000,
        "A sent {} records into a stalled receiver",
        sa.records_sent
    );
    // The receiver never held more undelivered frames than the window.
    assert!(
        sb.channel_queued_max <= 8,
        "B queued {} frames on one channel",
        sb.channel_queued_max
    );
    // The source is stopped as a whole: A's local sink stops growing too.
    let local = a_lines.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let local2 = a_lines.load(Ordering::Relaxed);
    assert_eq!(local, local2, "A's source kept producing");
    assert!(local2 <= 40_000, "{local2}");
    let (ra, rb) = (rss_kib(a.pid()), rss_kib(b.pid()));
    eprintln!("stalled: A {sa:?}, B {sb:?}, A's sink {local2} records, RSS {ra}/{rb} KiB");
    assert!(
        ra < 200 * 1024 && rb < 200 * 1024,
        "RSS {ra} KiB / {rb} KiB"
    );

    // Reading B's output again resumes the flow.
    let mut out_b = b.stdout.take().unwrap();
    let mut line = String::new();
    for _ in 0..20_000 {
        line.clear();
        out_b.read_line(&mut line).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = worker_stats(&a.addr).unwrap();
        if now.records_sent > sa.records_sent {
            break;
        }
        assert!(Instant::now() < deadline, "flow did not resume: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(coord);
    a.kill();
    b.kill();
}
