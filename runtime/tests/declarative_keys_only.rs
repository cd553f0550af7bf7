//! A declarative window of field-less counts receives keys instead of whole
//! records (`keys_only` in the builder). What an unaligned checkpoint keeps in
//! flight on that edge is then keys: a failure right after a checkpoint that
//! holds some must restore them and still publish every window exactly once,
//! with the exact counts. (Two source subtasks, so that each window subtask
//! has two input channels: a barrier that arrives on one while records wait
//! on the other is what leaves records in flight.)

mod common;

use std::collections::BTreeMap;

use common::*;
use runnel_runtime::checkpoint::load_snapshot;
use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use runnel_runtime::{JobOutcome, RestartStrategy};

const N: i64 = 20_000;
const KEYS: i64 = 7;

#[test]
fn unaligned_restore_of_in_flight_keys_counts_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let yaml = format!(
        r#"
version: 1
name: keys-only
checkpoint: {{ interval: 20ms, storage: "file://{d}/chk", unaligned: true, retained: 10000 }}
sources:
  - name: events
    parallelism: 2
    generator:
      count: {N}
      ratePerSecond: 20000
      keys: {KEYS}
      eventTime: {{ stepMs: 1 }}
      fields: {{ k: {{ key: {{}} }}, v: {{ sequence: {{}} }} }}
    watermark: {{}}
steps:
  - keyBy: "k"
  - name: per-key
    parallelism: 2
    window: {{ type: tumbling, size: 100ms, aggregates: {{ n: {{ op: count }} }} }}
sinks:
  - name: out
    file: {{ path: "{d}/out" }}
"#
    );
    let mut job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let (faults, failed_after) = fail_once_after_checkpoint(&dir.path().join("chk"), |md| {
        md.operators
            .iter()
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

    let cp = lock(&failed_after).expect("failed after a checkpoint with in-flight records");
    let snap = load_snapshot(&file_uri(&dir.path().join(format!("chk/chk-{cp}")))).unwrap();
    let in_flight: Vec<_> = snap
        .states
        .values()
        .flatten()
        .flat_map(|(_, s)| s.in_flight.iter())
        .collect();
    assert!(
        !in_flight.is_empty(),
        "the checkpoint holds in-flight records"
    );
    // They are the keys alone, not whole records.
    for b in &in_flight {
        let r: runnel_runtime::event::StreamRecord<declarative::Value> =
            postcard::from_bytes(b).unwrap();
        assert!(
            matches!(r.value, declarative::Value::Int(k) if (0..KEYS).contains(&k)),
            "{r:?}"
        );
    }

    let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for r in read_published(&dir.path().join("out")).unwrap() {
        let k = (
            r["key"].as_i64().unwrap(),
            r["windowStart"].as_i64().unwrap(),
        );
        let prev = got.insert(k, r["n"].as_i64().unwrap());
        assert!(prev.is_none(), "window {k:?} published twice");
    }
    let mut want: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for i in 0..N {
        *want.entry((i % KEYS, i / 100 * 100)).or_default() += 1;
    }
    assert_eq!(got, want);
}
