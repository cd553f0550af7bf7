//! Unaligned checkpoints on an event-time window: every window is published
//! exactly once, with exact counts, when a failure comes right after a
//! checkpoint that holds records in flight (they are restored and replayed),
//! and at the end of the job. The end used to lose windows: the final
//! checkpoint was unaligned too, so a window subtask snapshotted at the first
//! input's barrier and got the final watermark from the other input only
//! afterwards; the last windows it fired then went out after its barrier and
//! no checkpoint ever committed them (seen in about one run in four). The
//! final checkpoint and a draining stop are now always aligned
//! (`Barrier::must_align`). Two source subtasks, so that each window subtask
//! has two inputs.
//!
//! Run twice: with field-less counts only, the window gets the key alone
//! (`keys_only` in the builder) and what is in flight is keys; with a `sum`
//! as well, it is whole records.

mod common;

use std::collections::BTreeMap;

use common::*;
use runnel_runtime::checkpoint::load_snapshot;
use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use runnel_runtime::{JobOutcome, RestartStrategy};

const N: i64 = 100_000;
const KEYS: i64 = 7;
const WINDOW: &str = "per-key";

#[test]
fn unaligned_restore_of_in_flight_keys_publishes_every_window_once() {
    let _ = run(
        "{ n: { op: count } }",
        false,
        |v| matches!(v, declarative::Value::Int(k) if (0..KEYS).contains(k)),
    );
}

#[test]
fn unaligned_restore_of_in_flight_records_publishes_every_window_once() {
    let _ = run("{ n: { op: count }, s: { op: sum, of: v } }", true, |v| {
        v.get("k").is_some() && v.get("v").is_some()
    });
}

/// A window of counts gets keys alone; given a late output, the same window
/// (same aggregates, same state) reads whole records. Keys in flight in an
/// unaligned checkpoint of the first cannot be replayed into the second
/// (they would be keyed as records, wrongly): the restore is refused, with
/// what to do instead.
#[test]
fn keys_in_flight_are_refused_by_a_window_that_now_reads_records() {
    let (dir, cp) = run("{ n: { op: count } }", false, |v| {
        matches!(v, declarative::Value::Int(_))
    });
    let yaml = job_yaml(dir.path(), "{ n: { op: count } }", "lateOutput: late, ");
    let mut job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    assert_eq!(
        job.plan,
        ["window 'per-key': integer (compact) keys, count accumulators"],
        "whole records"
    );
    let cfg = job.config_mut();
    cfg.restart = RestartStrategy::None;
    cfg.restore = Some(runnel_runtime::RestoreSettings {
        path: file_uri(&dir.path().join(format!("chk/chk-{cp}"))),
        latest: false,
        allow_non_restored_state: false,
    });
    let got = format!("{:?}", job.execute());
    assert!(
        got.contains(
            "window 'per-key': the checkpoint holds records in flight to this window that were \
             sent as keys alone, and this job sends it whole records"
        ),
        "{got}"
    );
}

/// The job, with these window aggregates and more window settings (`extra`,
/// e.g. `lateOutput: late, `).
fn job_yaml(dir: &std::path::Path, aggregates: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
version: 1
name: keys-only
checkpoint: {{ interval: 20ms, storage: "file://{d}/chk", unaligned: true, retained: 10000 }}
sources:
  - name: events
    parallelism: 2
    generator:
      count: {N}
      ratePerSecond: 100000
      keys: {KEYS}
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }}, v: {{ sequence: {{}} }} }}
    watermark: {{}}
steps:
  - keyBy: "k"
  - name: {WINDOW}
    parallelism: 2
    window: {{ type: tumbling, size: 100ms, {extra}aggregates: {aggregates} }}
sinks:
  - name: out
    file: {{ path: "{d}/out" }}
"#
    )
}

/// Runs the job with these window aggregates, failing once right after a
/// checkpoint that holds records in flight; `in_flight_ok` says what an
/// element in flight must look like.
/// Returns the job's directory and the checkpoint it failed after.
fn run(
    aggregates: &str,
    with_sum: bool,
    in_flight_ok: impl Fn(&declarative::Value) -> bool,
) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = job_yaml(dir.path(), aggregates, "");
    let mut job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let (faults, failed_after) = fail_once_after_checkpoint(&dir.path().join("chk"), |md| {
        md.operators
            .iter()
            .filter(|o| o.uid == WINDOW)
            .any(|o| o.subtasks.iter().any(|s| s.in_flight_records > 0))
    });
    let cfg = job.config_mut();
    cfg.faults = faults;
    cfg.batch_size = 16;
    cfg.restart = RestartStrategy::FixedDelay {
        attempts: 5,
        delay_ms: 1,
    };
    assert_eq!(job.execute().unwrap(), JobOutcome::Finished);

    // 100 000 records at 100 000/s against a debug build's window subtask:
    // checkpoints with records in flight are the rule (every one of 16 runs).
    let cp = lock(&failed_after).expect("failed after a checkpoint with records in flight");
    let snap = load_snapshot(&file_uri(&dir.path().join(format!("chk/chk-{cp}")))).unwrap();
    // The window's input; what is in flight to the sink is results.
    let in_flight: Vec<_> = snap.states[WINDOW]
        .iter()
        .flat_map(|(_, s)| s.in_flight.iter())
        .collect();
    assert!(
        !in_flight.is_empty(),
        "the checkpoint holds in-flight records"
    );
    for b in &in_flight {
        let r: runnel_runtime::event::StreamRecord<declarative::Value> =
            postcard::from_bytes(b).unwrap();
        assert!(in_flight_ok(&r.value), "in flight: {r:?}");
    }
    let mut sums: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for i in 0..N {
        *sums.entry((i % KEYS, i / 100 * 100)).or_default() += i;
    }
    let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for r in read_published(&dir.path().join("out")).unwrap() {
        let k = (
            r["key"].as_i64().unwrap(),
            r["windowStart"].as_i64().unwrap(),
        );
        let prev = got.insert(k, r["n"].as_i64().unwrap());
        assert!(prev.is_none(), "window {k:?} published twice");
        if with_sum {
            assert_eq!(r["s"].as_i64(), Some(sums[&k]), "sum of window {k:?}");
        }
    }
    let mut want: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for i in 0..N {
        *want.entry((i % KEYS, i / 100 * 100)).or_default() += 1;
    }
    assert_eq!(got, want);
    (dir, cp)
}
