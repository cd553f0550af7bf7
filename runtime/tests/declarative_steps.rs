//! Declarative steps end to end: each step's semantics, CountWindowAverage as
//! a count window, runtime validation (CEL, fields, operators) with paths.
//! Output goes through the exactly-once file sink and is read back.

use runnel_runtime::declarative::{self, ConnectorRegistry, read_published};
use serde_json::json;

/// Runs a job whose file sinks write under `{out}`; returns the published
/// records of the sink directory `name`, sorted by their JSON text.
fn run(yaml: &str, sinks: &[&str]) -> Vec<Vec<serde_json::Value>> {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("{out}", &dir.path().display().to_string());
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    job.execute().unwrap();
    sinks
        .iter()
        .map(|s| {
            let mut v = read_published(&dir.path().join(s)).unwrap();
            v.sort_by_key(|x| x.to_string());
            v
        })
        .collect()
}

fn errors(yaml: &str) -> Vec<String> {
    match declarative::load_and_build(yaml, &ConnectorRegistry::new()) {
        Ok(_) => panic!("the job must be refused"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn filter_map_flat_map_and_dedup() {
    let out = run(
        r#"
version: 1
name: steps
parallelism: 2
sources:
  - name: orders
    elements:
      - { id: 1, user: "a", amount: 5, items: ["x", "y"] }
      - { id: 2, user: "b", amount: 50, items: ["z"] }
      - { id: 1, user: "a", amount: 5, items: ["x", "y"] }
      - { id: 3, user: "a", amount: 70, items: [] }
      - { id: 4, user: "c", amount: "oops", items: ["w"] }
steps:
  - dedup: { key: "id", ttl: 1h }
  - filter: "amount > 10"
  - map:
      fields:
        user: "user"
        doubled: "amount * 2"
        items: "items"
        big: "amount >= 60"
  - flatMap: { expr: "items", as: "item" }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#,
        &["out"],
    );
    // id 1 is a duplicate and small anyway; id 3 has no items; id 4's amount
    // is not a number: the filter drops it (and counts it) instead of failing.
    assert_eq!(
        out[0],
        vec![json!({"big": false, "doubled": 100, "item": "z", "items": ["z"], "user": "b"})]
    );
}

#[test]
fn dedup_passes_the_first_record_per_key_only() {
    let out = run(
        r#"
version: 1
name: dedup
parallelism: 3
sources:
  - name: events
    generator:
      count: 300
      keys: 7
      fields: { k: { key: {} }, n: { sequence: {} } }
steps:
  - dedup: { key: "k", ttl: 1h }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#,
        &["out"],
    );
    let mut firsts: Vec<i64> = out[0].iter().map(|r| r["n"].as_i64().unwrap()).collect();
    firsts.sort();
    // Each key's first occurrence within its generator subtask... all 7 keys
    // exactly once, and always one of the records carrying that key.
    assert_eq!(firsts.len(), 7, "{firsts:?}");
    let keys: std::collections::BTreeSet<i64> =
        out[0].iter().map(|r| r["k"].as_i64().unwrap()).collect();
    assert_eq!(keys.len(), 7);
    for r in &out[0] {
        assert_eq!(r["n"].as_i64().unwrap() % 7, r["k"].as_i64().unwrap());
    }
}

#[test]
fn flat_map_without_as_emits_map_elements() {
    let out = run(
        r#"
version: 1
name: fm
sources:
  - name: s
    elements:
      - { lines: [{ sku: "a", qty: 1 }, { sku: "b", qty: 2 }, 7] }
steps:
  - flatMap: { expr: "lines" }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#,
        &["out"],
    );
    assert_eq!(
        out[0],
        vec![json!({"qty": 1, "sku": "a"}), json!({"qty": 2, "sku": "b"})]
    );
}

/// The seeds' CountWindowAverage: per key, every two elements, (count, sum)
/// and the average. Flink's example input (1,3),(1,5),(1,7),(1,4),(1,2)
/// gives (1,4) and (1,5) as averages.
#[test]
fn count_window_average_from_the_seeds() {
    let out = run(
        r#"
version: 1
name: count-window-average
sources:
  - name: input
    elements:
      - { key: 1, value: 3 }
      - { key: 1, value: 5 }
      - { key: 1, value: 7 }
      - { key: 1, value: 4 }
      - { key: 1, value: 2 }
steps:
  - keyBy: "key"
  - name: average
    window:
      type: count
      count: 2
      aggregates:
        n: { op: count }
        sum: { op: sum, of: "value" }
        avg: { op: avg, of: "value" }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#,
        &["out"],
    );
    assert_eq!(
        out[0],
        vec![
            json!({"avg": 4.0, "key": 1, "n": 2, "sum": 8}),
            json!({"avg": 5.5, "key": 1, "n": 2, "sum": 11}),
        ]
    );
}

#[test]
fn runtime_validation_reports_cel_field_and_operator_errors_with_paths() {
    let e = errors(
        r#"
version: 1
name: bad
sources:
  - name: s
    generator:
      fields: { user: { key: { prefix: "u" } }, amount: { random: { min: 1, max: 9 } } }
steps:
  - filter: "amount >"
  - filter: "amout > 3"
  - filter: "user"
  - map: { fields: { total: "amount * 2", who: "user", bad: "usr" } }
  - keyBy: "who"
  - window:
      type: tumbling
      size: 1s
      time: processing
      aggregates:
        s: { op: sum, of: "who" }
        m: { op: max, of: "total +" }
  - operator: { name: enrich }
sinks:
  - name: out
    stdout: {}
"#,
    );
    assert_eq!(e.len(), 7, "{e:#?}");
    assert!(e[0].starts_with("steps[0].filter: invalid CEL"), "{}", e[0]);
    assert_eq!(
        e[1],
        "steps[1].filter: unknown field 'amout' (records here have: amount, user)"
    );
    assert_eq!(
        e[2],
        "steps[2].filter: must give a bool, but the field is a string"
    );
    assert_eq!(
        e[3],
        "steps[3].map.fields.bad: unknown field 'usr' (records here have: amount, user)"
    );
    assert!(
        e[4].starts_with("steps[5].window.aggregates.m.of: invalid CEL"),
        "{}",
        e[4]
    );
    assert_eq!(
        e[5],
        "steps[5].window.aggregates.s.of: sum needs numbers, but the field is a string"
    );
    assert_eq!(
        e[6],
        "steps[6].operator.name: unknown operator 'enrich' (registered: none)"
    );
}

#[test]
fn kafka_without_a_connector_is_refused_clearly() {
    let e = errors(
        r#"
version: 1
name: k
sources:
  - name: in
    kafka: { bootstrapServers: "localhost:9092", topics: [t], start: { from: earliest } }
sinks:
  - name: out
    stdout: {}
"#,
    );
    assert_eq!(
        e,
        vec![
            "sources[0].kafka: this runtime has no Kafka connector (build it with one registered in ConnectorRegistry)"
        ]
    );
}

/// A record whose expression fails at run time is dropped, and counted on the
/// job's `/metrics` per step: exactly the failing records, summed over the
/// subtasks.
#[test]
fn expression_errors_are_counted_per_step_on_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
version: 1
name: errors
parallelism: 2
sources:
  - name: readings
    elements:
      - { id: 1, total: 10, n: 2 }
      - { id: 2, total: 9, n: 0 }
      - { id: 3, total: 8, n: 4 }
      - { id: 4, total: 7, n: 0 }
      - { id: 5, total: 6, n: 3 }
      - { id: 6, total: 5, n: 0 }
      - { id: 7, total: 4, n: 1 }
steps:
  - name: positive
    filter: "total > 0"
  - name: divide
    map: { fields: { id: "id", mean: "total / n" } }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#
    .replace("{out}", &dir.path().display().to_string());
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let metrics = job.metrics().clone();
    job.execute().unwrap();
    let mut out = read_published(&dir.path().join("out")).unwrap();
    out.sort_by_key(|x| x["id"].as_i64());
    assert_eq!(
        out,
        vec![
            json!({"id": 1, "mean": 5}),
            json!({"id": 3, "mean": 2}),
            json!({"id": 5, "mean": 2}),
            json!({"id": 7, "mean": 4}),
        ]
    );
    let text = metrics.encode();
    let value = |labels: &str| {
        let prefix = format!("runnel_record_errors_total{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    };
    assert_eq!(value(r#"operator="divide",kind="expression""#), "3");
    assert_eq!(value(r#"operator="positive",kind="expression""#), "0");
}

/// A key that fails gives the null key, and the record counts once although
/// the key is computed twice per record (to route it and in the keyed step).
#[test]
fn key_errors_count_once_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"
version: 1
name: key-errors
parallelism: 2
sources:
  - name: readings
    elements:
      - { id: 1, n: 2 }
      - { id: 2, n: 0 }
      - { id: 3, n: 4 }
      - { id: 4, n: 0 }
      - { id: 5, n: 3 }
      - { id: 6, n: 0 }
      - { id: 7, n: 1 }
steps:
  - name: once
    dedup: { key: "10 / n", ttl: 1h }
sinks:
  - name: out
    file: { path: "{out}/out" }
"#
    .replace("{out}", &dir.path().display().to_string());
    let job = declarative::load_and_build(&yaml, &ConnectorRegistry::new())
        .unwrap_or_else(|e| panic!("{}", runnel_spec::format_errors(&e)));
    let metrics = job.metrics().clone();
    job.execute().unwrap();
    let out = read_published(&dir.path().join("out")).unwrap();
    let mut ids: Vec<i64> = out.iter().filter_map(|r| r["id"].as_i64()).collect();
    ids.sort();
    // Keys 5, 2, 3 and 10 pass; ids 2, 4 and 6 share the null key: one passes.
    assert_eq!(ids.len(), 5, "{out:?}");
    assert_eq!(ids.iter().filter(|i| [1, 3, 5, 7].contains(i)).count(), 4);
    let text = metrics.encode();
    assert!(
        text.lines()
            .any(|l| l == r#"runnel_record_errors_total{operator="once",kind="expression"} 3"#),
        "{text}"
    );
}
