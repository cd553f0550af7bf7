//! Window and aggregate state restores from a savepoint taken mid-window, at a
//! different parallelism, with exact results: the union of what both runs
//! published through the exactly-once file sink is every window exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use runnel_runtime::{JobOutcome, RestoreSettings};

const N: u64 = 20_000;
const KEYS: u64 = 10;

const AGGREGATES: &str = r#"{ n: { op: count }, sum: { op: sum, of: "v" } }"#;

fn yaml(dir: &std::path::Path, window_parallelism: u32, bounded: bool) -> String {
    yaml_with(dir, window_parallelism, bounded, AGGREGATES)
}

fn yaml_with(
    dir: &std::path::Path,
    window_parallelism: u32,
    bounded: bool,
    aggregates: &str,
) -> String {
    yaml_keyed(dir, window_parallelism, bounded, aggregates, "k")
}

fn yaml_keyed(
    dir: &std::path::Path,
    window_parallelism: u32,
    bounded: bool,
    aggregates: &str,
    key: &str,
) -> String {
    let limit = if bounded {
        format!("count: {N}")
    } else {
        "ratePerSecond: 4000".to_string()
    };
    format!(
        r#"
version: 1
name: restore
checkpoint: {{ interval: 100ms, storage: "file://{d}/chk" }}
sources:
  - name: events
    parallelism: 1
    generator:
      {limit}
      keys: {KEYS}
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }}, v: {{ sequence: {{}} }} }}
    watermark: {{}}
steps:
  - keyBy: "{key}"
  - name: per-key
    parallelism: {window_parallelism}
    window:
      type: tumbling
      size: 100ms
      aggregates: {aggregates}
sinks:
  - name: out
    file: {{ path: "{d}/out" }}
"#,
        d = dir.display()
    )
}

/// Runs the unbounded job until its first checkpoint, then stops it with a
/// savepoint (mid-stream, windows open) and returns the savepoint's path.
fn savepoint_mid_stream(dir: &std::path::Path) -> String {
    savepoint_mid_stream_of(&yaml(dir, 2, false), dir)
}

fn savepoint_mid_stream_of(yaml: &str, dir: &std::path::Path) -> String {
    let job = declarative::load_and_build(yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let client = job.execute_async().unwrap();
    let t0 = Instant::now();
    while client.status().completed.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{:?}",
            client.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sp = client
        .stop_with_savepoint(&format!("file://{}/sp", dir.display()), false)
        .unwrap();
    assert_eq!(client.wait().unwrap(), JobOutcome::Stopped(sp.clone()));
    sp.path
}

fn restore(job: &mut declarative::BuiltJob, path: &str) {
    job.config_mut().restore = Some(RestoreSettings {
        path: path.to_string(),
        latest: false,
        allow_non_restored_state: false,
    });
}

#[test]
fn windows_restore_from_a_savepoint_at_a_different_parallelism_with_exact_results() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint_mid_stream(dir.path());
    let before = read_published(&dir.path().join("out"))
        .unwrap_or_default()
        .len();
    assert!(
        before < (N / 100 * KEYS) as usize,
        "the savepoint is taken mid-stream"
    );

    let mut job =
        declarative::load_and_build(&yaml(dir.path(), 3, true), &ConnectorRegistry::new())
            .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    restore(&mut job, &sp);
    job.execute().unwrap();

    let out = read_published(&dir.path().join("out")).unwrap();
    let mut got: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for r in &out {
        let k = (
            r["key"].as_i64().unwrap(),
            r["windowStart"].as_i64().unwrap(),
        );
        let prev = got.insert(k, (r["n"].as_i64().unwrap(), r["sum"].as_i64().unwrap()));
        assert!(prev.is_none(), "window {k:?} published twice");
    }
    let mut want: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    for i in 0..N as i64 {
        let e = want.entry((i % KEYS as i64, i / 100 * 100)).or_default();
        e.0 += 1;
        e.1 += i;
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

/// A window's accumulators are positional: restored into a job whose window
/// defines other aggregates, they would decode as the wrong ones (a count
/// read as a sum). The restore is refused with both layouts named, for a
/// removed aggregate and for an added one that sorts first.
#[test]
fn windows_refuse_a_savepoint_written_for_other_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint_mid_stream(dir.path());
    for (aggregates, defined) in [
        ("{ n: { op: count } }", "[n: count]"),
        (
            r#"{ a: { op: max, of: "v" }, n: { op: count }, sum: { op: sum, of: "v" } }"#,
            "[a: max, n: count, sum: sum]",
        ),
    ] {
        let mut job = declarative::load_and_build(
            &yaml_with(dir.path(), 3, true, aggregates),
            &ConnectorRegistry::new(),
        )
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
        restore(&mut job, &sp);
        let got = format!("{:?}", job.execute());
        let want = format!(
            "window 'per-key': the restored window state was written for the aggregates \
             [n: count, sum: sum], and this job defines {defined}"
        );
        assert!(got.contains(&want), "{got}");
    }
}

/// A window of counts keyed by a generated integer field runs typed (compact
/// integer keys, count accumulators, the source emitting keys alone); keyed
/// by an expression, the key's type is unknown and it runs on dynamic keys.
/// Both write the same state bytes, so a savepoint taken in either form
/// restores into the other, at another parallelism, with exact counts.
#[test]
fn count_windows_restore_across_typed_and_dynamic_keys() {
    const COUNTS: &str = "{ n: { op: count } }";
    const TYPED: &str =
        "window 'per-key': integer (compact) keys, count accumulators, keys only, from the source";
    for (first, then) in [("k", "k + 0"), ("k + 0", "k")] {
        let dir = tempfile::tempdir().unwrap();
        let plan_of = |key: &str, bounded: bool| {
            let yaml = yaml_keyed(dir.path(), 3, bounded, COUNTS, key);
            declarative::load_and_build(&yaml, &ConnectorRegistry::new())
                .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)))
        };
        for (key, typed) in [(first, first == "k"), (then, then == "k")] {
            let plan = plan_of(key, true).plan;
            assert_eq!(
                plan.iter().any(|l| l == TYPED),
                typed,
                "keyBy {key}: {plan:?}"
            );
        }
        let sp =
            savepoint_mid_stream_of(&yaml_keyed(dir.path(), 2, false, COUNTS, first), dir.path());
        let before = read_published(&dir.path().join("out"))
            .unwrap_or_default()
            .len();
        assert!(before < (N / 100 * KEYS) as usize, "mid-stream");
        let mut job = plan_of(then, true);
        restore(&mut job, &sp);
        job.execute().unwrap();

        let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for r in read_published(&dir.path().join("out")).unwrap() {
            let k = (
                r["key"].as_i64().unwrap(),
                r["windowStart"].as_i64().unwrap(),
            );
            let prev = got.insert(k, r["n"].as_i64().unwrap());
            assert!(
                prev.is_none(),
                "window {k:?} published twice ({first} then {then})"
            );
        }
        let mut want: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for i in 0..N as i64 {
            *want.entry((i % KEYS as i64, i / 100 * 100)).or_default() += 1;
        }
        assert_eq!(got, want, "keyBy {first}, then {then}");
    }
}
