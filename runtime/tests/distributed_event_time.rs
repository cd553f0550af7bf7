//! Watermarks cross the network: an event-time tumbling window behind a
//! `key_by` that spans two worker processes fires while the input is still
//! running (only watermarks can make it fire then; the end of input would
//! flush every window anyway), and the whole output equals a single-process
//! run of the same job.

mod distributed_support;

use std::time::{Duration, Instant};

use distributed_support::*;
use runnel_api::JobState;

const JOB: &str = r#"version: 1
name: dist-event-time
parallelism: 2
checkpoint: { interval: 200ms, storage: "{chk}" }
watermarkInterval: 50ms
sources:
  - name: numbers
    parallelism: 1
    generator: { count: 30000, ratePerSecond: 5000, keys: 20, fields: { k: { key: { prefix: "k" } }, n: { sequence: {} } } }
    watermark: { timestamp: "n" }
steps:
  - keyBy: "k"
  - name: per-second
    window:
      type: tumbling
      size: 1s
      time: event
      aggregates:
        c: { op: count }
        first: { op: first, of: "n" }
sinks:
  - name: out
    file: { path: "{out}" }
"#;

#[test]
fn event_time_windows_fire_across_workers_before_the_end_of_input() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = fault_free(JOB, tmp.path());
    // 30,000 ms of event time in 1 s windows, 20 keys.
    assert_eq!(expected.len(), 30 * 20);
    let job = write_job(JOB, tmp.path());
    let args = ["--slots", "1"];
    let workers: Vec<Proc> = (0..2).map(|_| worker(&job, &args)).collect();
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let list: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let coord = coordinator(&job, &list, &[]);

    // Windows come out while the source is still producing: the keyed
    // subtasks on both workers saw watermarks from the other process.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = published(&tmp.path().join("out"));
        let st = status(&coord.addr);
        if !got.is_empty() {
            assert_eq!(st.state, JobState::Running, "{st:?}");
            // Only early windows: a flush at the end of input would bring
            // windows up to 29 s of event time.
            let latest = got
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["first"].as_u64())
                .max();
            assert!(
                latest.is_some_and(|n| n < 15_000),
                "first windows out: {latest:?} in {got:?}"
            );
            break;
        }
        assert!(
            st.state == JobState::Running && Instant::now() < deadline,
            "no window fired while the job ran: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, out) = coord.finish(Duration::from_secs(120));
    assert!(st.success(), "coordinator: {out}");
    assert_eq!(published(&tmp.path().join("out")), expected);
    drop(workers);
}
