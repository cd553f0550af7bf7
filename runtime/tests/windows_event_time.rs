//! Window edge cases through declarative jobs: boundaries, late records within
//! and beyond the allowed lateness (to a side output sink), session gaps and
//! merging, sliding windows without empty windows, and an idle source that
//! must not stall the watermark.

use std::time::{Duration, Instant};

use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use serde_json::{Value, json};

fn run(yaml: &str, sinks: &[&str]) -> Vec<Vec<Value>> {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{out}", &dir.path().display().to_string());
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    job.execute().unwrap();
    sinks
        .iter()
        .map(|s| read_published(&dir.path().join(s)).unwrap())
        .collect()
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

#[test]
fn tumbling_late_records_within_and_beyond_allowed_lateness() {
    let out = run(
        r#"
version: 1
name: tumbling-lateness
watermarkInterval: 0s
sources:
  - name: events
    elements:
      - { k: "a", ts: 1 }
      - { k: "a", ts: 12 }
      - { k: "a", ts: 3 }
      - { k: "a", ts: 16 }
      - { k: "a", ts: 4 }
      - { k: "a", ts: 9 }
    watermark: { timestamp: "ts" }
steps:
  - keyBy: "k"
  - name: counts
    window:
      type: tumbling
      size: 10ms
      allowedLateness: 5ms
      lateOutput: too-late
      aggregates:
        n: { op: count }
        first: { op: first, of: "ts" }
        last: { op: last, of: "ts" }
sinks:
  - name: results
    file: { path: "{out}/results" }
  - name: late
    from: too-late
    file: { path: "{out}/late" }
"#,
        &["results", "late"],
    );
    // ts 12 moves the watermark to 11: [0,10) fires with 1 record. ts 3 is
    // late but within the lateness (cleanup at 9 + 5 = 14 > 11): the window
    // fires again with 2. ts 16 moves the watermark to 15, past the cleanup
    // time: ts 4 and ts 9 are beyond the lateness and go to the side output.
    // [10,20) fires at end of input with 12 and 16.
    assert_eq!(
        out[0],
        vec![
            json!({"first": 1, "key": "a", "last": 1, "n": 1, "windowEnd": 10, "windowStart": 0}),
            json!({"first": 1, "key": "a", "last": 3, "n": 2, "windowEnd": 10, "windowStart": 0}),
            json!({"first": 12, "key": "a", "last": 16, "n": 2, "windowEnd": 20, "windowStart": 10}),
        ]
    );
    assert_eq!(
        out[1],
        vec![json!({"k": "a", "ts": 4}), json!({"k": "a", "ts": 9})]
    );
}

#[test]
fn sessions_merge_close_gaps_and_stay_apart_when_only_touching() {
    let out = run(
        r#"
version: 1
name: sessions
watermarkInterval: 0s
sources:
  - name: events
    elements:
      - { k: "a", ts: 100 }
      - { k: "a", ts: 105 }
      - { k: "b", ts: 200 }
      - { k: "a", ts: 108 }
      - { k: "b", ts: 210 }
      - { k: "c", ts: 300 }
      - { k: "c", ts: 315 }
      - { k: "c", ts: 308 }
    watermark: { timestamp: "ts", maxOutOfOrderness: 50ms }
steps:
  - keyBy: "k"
  - name: sessions
    window:
      type: session
      gap: 10ms
      lateOutput: late
      aggregates:
        n: { op: count }
        distinct: { op: distinctCount, of: "ts % 2" }
sinks:
  - name: results
    file: { path: "{out}/results" }
  - name: late
    from: late
    file: { path: "{out}/late" }
"#,
        &["results", "late"],
    );
    assert_eq!(
        sorted(out[0].clone()),
        sorted(vec![
            // a: 100 and 105 form [100,115), fired when b's 200 moved the
            // watermark to 149; 108 would extend it to [100,118), still late.
            json!({"distinct": 2, "key": "a", "n": 2, "windowEnd": 115, "windowStart": 100}),
            // b: [200,210) and [210,220) touch but do not overlap.
            json!({"distinct": 1, "key": "b", "n": 1, "windowEnd": 210, "windowStart": 200}),
            json!({"distinct": 1, "key": "b", "n": 1, "windowEnd": 220, "windowStart": 210}),
            // c: 308 bridges [300,310) and [315,325) into one session.
            json!({"distinct": 2, "key": "c", "n": 3, "windowEnd": 325, "windowStart": 300}),
        ])
    );
    assert_eq!(out[1], vec![json!({"k": "a", "ts": 108})]);
}

#[test]
fn sliding_windows_emit_every_window_a_record_is_in_and_no_empty_ones() {
    let out = run(
        r#"
version: 1
name: sliding
sources:
  - name: events
    elements:
      - { k: 1, ts: 1, v: 10 }
      - { k: 1, ts: 7, v: 20 }
      - { k: 2, ts: 31, v: 5 }
    watermark: { timestamp: "ts" }
steps:
  - keyBy: "k"
  - window:
      type: sliding
      size: 10ms
      slide: 5ms
      aggregates:
        sum: { op: sum, of: "v" }
        max: { op: max, of: "v" }
        min: { op: min, of: "v" }
sinks:
  - name: results
    file: { path: "{out}/results" }
"#,
        &["results"],
    );
    assert_eq!(
        sorted(out[0].clone()),
        sorted(vec![
            json!({"key": 1, "max": 10, "min": 10, "sum": 10, "windowEnd": 5, "windowStart": -5}),
            json!({"key": 1, "max": 20, "min": 10, "sum": 30, "windowEnd": 10, "windowStart": 0}),
            json!({"key": 1, "max": 20, "min": 20, "sum": 20, "windowEnd": 15, "windowStart": 5}),
            json!({"key": 2, "max": 5, "min": 5, "sum": 5, "windowEnd": 35, "windowStart": 25}),
            json!({"key": 2, "max": 5, "min": 5, "sum": 5, "windowEnd": 40, "windowStart": 30}),
        ])
    );
}

/// Two sources: one produces event time, the other never emits (an idle Kafka
/// partition). With idleness set on the silent one, windows still fire while
/// the job runs.
#[test]
fn an_idle_source_does_not_stall_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
version: 1
name: idle
watermarkInterval: 0s
checkpoint: {{ interval: 100ms, storage: "file://{d}/chk" }}
sources:
  - name: busy
    generator:
      ratePerSecond: 400
      keys: 1
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }} }}
    watermark: {{ idleness: 1h }}
  - name: silent
    generator:
      ratePerSecond: 0.0001
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }} }}
    watermark: {{ idleness: 200ms }}
steps:
  - keyBy: "k"
  - window: {{ type: tumbling, size: 100ms, aggregates: {{ n: {{ op: count }} }} }}
sinks:
  - name: out
    file: {{ path: "{d}/out" }}
"#,
        d = dir.path().display()
    );
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let client = job.execute_async().unwrap();
    let t0 = Instant::now();
    let first = loop {
        let out = read_published(&dir.path().join("out")).unwrap_or_default();
        if let Some(r) = out.iter().find(|r| r["windowStart"] == 0) {
            break r.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no window fired: the idle source stalls the watermark"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The silent source never emits (its rate allows its first record after
    // about 3 hours): [0,100) holds exactly the busy source's records 0..100.
    assert_eq!(
        first,
        json!({"key": 0, "n": 100, "windowEnd": 100, "windowStart": 0})
    );
    client.cancel().unwrap();
    client.wait().unwrap();
}
