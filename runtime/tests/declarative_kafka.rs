//! Declarative (YAML) jobs with Kafka sources and sinks, against a real
//! broker: formats, keys, dead letters, and seed 000's savepoint-and-resume
//! with an exactly-once sink, all written as a job file.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::{Broker, broker_or_skip};
use runnel_runtime::RestoreSettings;
use runnel_runtime::declarative::{ConnectorRegistry, load_and_build};
use runnel_runtime::kafka::DeclarativeKafka;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn registry() -> ConnectorRegistry {
    ConnectorRegistry::new().with_kafka(DeclarativeKafka::default())
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON output")
}

#[test]
fn yaml_job_reads_json_filters_maps_and_writes_keyed_json_with_dead_letters() {
    let Some(b) = broker_or_skip("yaml_job_reads_json_filters_maps_and_writes_keyed_json") else {
        return;
    };
    b.create_topic("clicks", 2);
    b.create_topic("out", 2);
    b.create_topic("clicks-dlq", 1);
    let mut input: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..40)
        .map(|i| {
            let v = serde_json::json!({"user": format!("u{}", i % 4), "amount": i});
            (None, v.to_string().into_bytes())
        })
        .collect();
    input.insert(7, (None, b"{not json".to_vec()));
    b.produce("clicks", None, &input);

    let yaml = format!(
        r#"
version: 1
name: clicks
sources:
  - name: in
    kafka:
      bootstrapServers: "{bs}"
      topics: [clicks]
      groupId: clicks-job
      start: {{ from: earliest }}
      onDeserializationError: {{ policy: deadLetter, topic: clicks-dlq }}
steps:
  - filter: "amount % 2 == 0"
  - map:
      fields:
        user: "user"
        doubled: "amount * 2"
sinks:
  - name: out
    kafka:
      bootstrapServers: "{bs}"
      topic: out
      key: "user"
      delivery: at-least-once
"#,
        bs = b.bootstrap
    );
    let job = load_and_build(&yaml, &registry()).expect("job builds");
    let client = job.execute_async().expect("job starts");
    wait_until("20 output records", Duration::from_secs(60), || {
        b.read_all("out", false).len() >= 20
    });
    // /metrics: the dead letter is counted, and the lag of both input
    // partitions is known and drops to 0 once everything is read.
    let series = |text: &str, name: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    };
    wait_until("lag 0 on both partitions", Duration::from_secs(30), || {
        let lag = series(
            &client.metrics().encode(),
            "runnel_kafka_consumer_lag_records{",
        );
        lag.len() == 2
            && lag
                .iter()
                .all(|(k, v)| k.contains("topic=\"clicks\"") && *v == 0.0)
    });
    let mut errors = series(&client.metrics().encode(), "runnel_record_errors_total{");
    errors.sort_by(|a, b| b.0.cmp(&a.0));
    // Every series exists from the start (so alerts see 0, not "no data"):
    // the source's deserialization outcomes and each expression step's
    // failures; only the one poison record was dead-lettered.
    let series_of = |operator: &str, kind: &str, v: f64| {
        (
            format!("runnel_record_errors_total{{operator=\"{operator}\",kind=\"{kind}\"}}"),
            v,
        )
    };
    assert_eq!(
        errors,
        vec![
            series_of("map-1", "expression", 0.0),
            series_of("in", "skipped", 0.0),
            series_of("in", "dead_lettered", 1.0),
            series_of("filter-0", "expression", 0.0),
        ]
    );
    client.cancel().unwrap();
    let _ = client.wait();

    let mut got: Vec<(String, serde_json::Value)> = b
        .read_all("out", false)
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().expect("keyed")).unwrap(),
                json(&r.value),
            )
        })
        .collect();
    got.sort_by_key(|(k, v)| (k.clone(), v["doubled"].as_i64()));
    let mut want: Vec<(String, serde_json::Value)> = (0..40)
        .filter(|i| i % 2 == 0)
        .map(|i| {
            let user = format!("u{}", i % 4);
            (
                user.clone(),
                serde_json::json!({"user": user, "doubled": i * 2}),
            )
        })
        .collect();
    want.sort_by_key(|(k, v)| (k.clone(), v["doubled"].as_i64()));
    assert_eq!(
        got, want,
        "exactly the filtered, mapped records, keyed by user"
    );
    // Records of one key share a partition (partitioning by key).
    let mut by_key: BTreeMap<Vec<u8>, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for r in b.read_all("out", false) {
        by_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .insert(r.partition);
    }
    assert!(by_key.values().all(|p| p.len() == 1), "{by_key:?}");
    // The malformed record went to the dead-letter topic, unchanged.
    let dlq = b.read_all("clicks-dlq", false);
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, b"{not json");
}

#[test]
fn yaml_job_decodes_keys_and_utf8_and_writes_utf8_values() {
    let Some(b) = broker_or_skip("yaml_job_decodes_keys_and_utf8_and_writes_utf8_values") else {
        return;
    };
    b.create_topic("words", 1);
    b.create_topic("upper", 1);
    let input: Vec<(Option<Vec<u8>>, Vec<u8>)> = ["a", "bb", "ccc"]
        .iter()
        .enumerate()
        .map(|(i, w)| (Some(format!("k{i}").into_bytes()), w.as_bytes().to_vec()))
        .collect();
    b.produce("words", Some(0), &input);
    let yaml = format!(
        r#"
version: 1
name: words
sources:
  - name: in
    kafka:
      bootstrapServers: "{bs}"
      topics: [words]
      start: {{ from: earliest }}
      commitOffsetsOnCheckpoint: false
      format: {{ type: utf8 }}
      keyFormat: {{ type: utf8 }}
steps:
  - map:
      fields:
        value: "_key + '=' + value + ':' + string(size(value))"
sinks:
  - name: out
    kafka:
      bootstrapServers: "{bs}"
      topic: upper
      valueFormat: {{ type: utf8 }}
      delivery: at-least-once
"#,
        bs = b.bootstrap
    );
    let job = load_and_build(&yaml, &registry()).expect("job builds");
    let client = job.execute_async().expect("job starts");
    wait_until("3 output records", Duration::from_secs(60), || {
        b.read_all("upper", false).len() >= 3
    });
    client.cancel().unwrap();
    let _ = client.wait();
    let got: Vec<String> = b
        .read_all("upper", false)
        .iter()
        .map(|r| r.text())
        .collect();
    assert_eq!(got, vec!["k0=a:1", "k1=bb:2", "k2=ccc:3"]);
}

/// Seed 000 as a job file: run with an exactly-once Kafka sink, take a
/// savepoint, cancel, produce more, resume from the savepoint. Every input
/// record appears in the committed output exactly once.
#[test]
fn yaml_exactly_once_job_resumes_from_a_savepoint_without_loss_or_duplicates() {
    let Some(b) = broker_or_skip("yaml_exactly_once_job_resumes_from_a_savepoint") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    b.create_topic("events", 4);
    b.create_topic("events-out", 2);
    let first: Vec<String> = (0..200).map(|i| format!("{{\"n\":{i}}}")).collect();
    b.produce_strings("events", 4, &first);
    let yaml = format!(
        r#"
version: 1
name: seed-000
parallelism: 2
checkpoint:
  interval: 200ms
  storage: "file://{chk}"
sources:
  - name: in
    kafka:
      bootstrapServers: "{bs}"
      topics: [events]
      groupId: seed-000
steps:
  - map:
      fields:
        n: "n"
        tag: "'seen'"
sinks:
  - name: out
    kafka:
      bootstrapServers: "{bs}"
      topic: events-out
      key: "string(n)"
      delivery: exactly-once
      transactionTimeout: 60s
"#,
        bs = b.bootstrap,
        chk = dir.path().join("chk").display()
    );
    let committed = |b: &Broker| -> Vec<i64> {
        let mut v: Vec<i64> = b
            .read_all("events-out", true)
            .iter()
            .map(|r| json(&r.value)["n"].as_i64().expect("n"))
            .collect();
        v.sort();
        v
    };
    let job = load_and_build(&yaml, &registry()).expect("job builds");
    let client = job.execute_async().expect("job starts");
    wait_until(
        "run 1 to commit 200 records",
        Duration::from_secs(60),
        || committed(&b).len() >= 200,
    );
    // Stop with a savepoint (seed 000 used savepoint + cancel; a cancel can
    // kill a sink inside its commit, and nisshi 0.7.0 may then hold
    // read_committed readers back: see docs/kafka-exactly-once.md, Status).
    let sp = client
        .stop_with_savepoint(&common::file_uri(&dir.path().join("sp")), false)
        .expect("stop with savepoint");
    let _ = client.wait();

    // `runnel savepoint inspect` shows where the source will resume.
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["savepoint", "inspect", &sp.path])
        .output()
        .expect("runnel savepoint inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success(), "{text}");
    assert!(
        text.contains(
            "kafka offsets: {events-0: 50, events-1: 50, events-2: 50, events-3: 50} (next to read)"
        ),
        "{text}"
    );

    let second: Vec<String> = (200..300).map(|i| format!("{{\"n\":{i}}}")).collect();
    b.produce_strings("events", 4, &second);

    let mut job = load_and_build(&yaml, &registry()).expect("job builds");
    job.config_mut().restore = Some(RestoreSettings {
        path: sp.path.clone(),
        latest: false,
        allow_non_restored_state: false,
    });
    let client = job.execute_async().expect("job resumes");
    wait_until(
        "run 2 to commit 300 in all",
        Duration::from_secs(60),
        || committed(&b).len() >= 300,
    );
    client.cancel().unwrap();
    let _ = client.wait();
    assert_eq!(
        committed(&b),
        (0..300).collect::<Vec<i64>>(),
        "every record exactly once across the savepoint"
    );
}

/// A record the sink cannot encode stops the job at once, with the reason,
/// although the job has a restart strategy: a restart would replay the same
/// record into the same error.
#[test]
fn unencodable_record_stops_the_job_without_restart_loop() {
    let Some(b) = broker_or_skip("unencodable_record_stops_the_job_without_restart_loop") else {
        return;
    };
    b.create_topic("plain-out", 1);
    let yaml = format!(
        r#"
version: 1
name: bad-sink
restart: {{ type: fixed-delay, attempts: 1000, delay: 10ms }}
sources:
  - name: in
    elements: [{{ "word": "a" }}]
sinks:
  - name: out
    kafka:
      bootstrapServers: "{bs}"
      topic: plain-out
      valueFormat: {{ type: utf8 }}
      delivery: at-least-once
"#,
        bs = b.bootstrap
    );
    let job = load_and_build(&yaml, &registry()).expect("job builds");
    let client = job.execute_async().expect("job starts");
    let err = client.wait().expect_err("the job must fail").to_string();
    assert!(err.contains("no field 'value' to write"), "{err}");
    assert!(err.contains("plain-out"), "{err}");
    assert!(b.read_all("plain-out", false).is_empty());
}

/// An Avro source tells the builder its field types: keyed by a `long`
/// field into a count window, the job runs on compact integer keys and count
/// accumulators (its plan says so) and counts exactly.
#[test]
fn avro_job_counts_on_typed_keys() {
    let Some(b) = broker_or_skip("avro_job_counts_on_typed_keys") else {
        return;
    };
    b.create_topic("avro-in", 2);
    b.create_topic("avro-counts", 1);
    let schema_json = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"},{"name":"n","type":"long"}]}"#;
    let schema = apache_avro::Schema::parse_str(schema_json).unwrap();
    let input: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..300i64)
        .map(|i| {
            let datum = apache_avro::types::Value::Record(vec![
                (
                    "user".into(),
                    apache_avro::types::Value::String(format!("u{i}")),
                ),
                ("n".into(), apache_avro::types::Value::Long(i % 3)),
            ]);
            (None, apache_avro::to_avro_datum(&schema, datum).unwrap())
        })
        .collect();
    b.produce("avro-in", None, &input);
    let yaml = format!(
        r#"
version: 1
name: avro-counts
parallelism: 2
sources:
  - name: in
    kafka:
      bootstrapServers: "{bs}"
      topics: [avro-in]
      start: {{ from: earliest }}
      commitOffsetsOnCheckpoint: false
      format: {{ type: avro, schema: '{schema_json}' }}
steps:
  - keyBy: "n"
  - name: tens
    window: {{ type: count, count: 10, aggregates: {{ c: {{ op: count }} }} }}
sinks:
  - name: out
    kafka:
      bootstrapServers: "{bs}"
      topic: avro-counts
      delivery: at-least-once
"#,
        bs = b.bootstrap
    );
    let job = load_and_build(&yaml, &registry()).expect("job builds");
    assert_eq!(
        job.plan,
        ["window 'tens': integer (compact) keys, count accumulators, keys only"]
    );
    let client = job.execute_async().expect("job starts");
    wait_until("30 window results", Duration::from_secs(60), || {
        b.read_all("avro-counts", false).len() >= 30
    });
    client.cancel().unwrap();
    let _ = client.wait();
    let mut per_key = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    for r in b.read_all("avro-counts", false) {
        let v = json(&r.value);
        per_key
            .entry(v["key"].as_i64().expect("an integer key"))
            .or_default()
            .push(v["c"].as_i64().expect("a count"));
    }
    let want: std::collections::BTreeMap<i64, Vec<i64>> =
        (0..3).map(|k| (k, vec![10; 10])).collect();
    assert_eq!(per_key, want, "every key's 100 records in windows of 10");
}
