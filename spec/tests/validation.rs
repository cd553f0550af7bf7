//! Invalid specs: each error with its exact path and message, all at once.

use runnel_spec::{SPEC_VERSION, SpecError, load_yaml};

fn errors(yaml: &str) -> Vec<String> {
    load_yaml(yaml)
        .expect_err("the spec must be refused")
        .iter()
        .map(SpecError::to_string)
        .collect()
}

const VALID: &str = r#"
version: 1
name: clicks
checkpoint: { interval: 1s, storage: "file:///tmp/chk" }
sources:
  - name: clicks
    generator:
      count: 100
      keys: 5
      eventTime: { stepMs: 10 }
      fields:
        user: { key: { prefix: "u" } }
        amount: { random: { min: 1, max: 10 } }
    watermark: { maxOutOfOrderness: 1s }
steps:
  - filter: "amount > 2"
  - keyBy: "user"
  - name: per-user
    window:
      type: tumbling
      size: 10s
      aggregates:
        n: { op: count }
        total: { op: sum, of: amount }
sinks:
  - name: out
    stdout: {}
"#;

#[test]
fn a_valid_spec_loads() {
    let spec = load_yaml(VALID).unwrap();
    assert_eq!(spec.name, "clicks");
    assert_eq!(spec.steps.len(), 3);
    assert_eq!(spec.steps[2].uid(2), "per-user");
    assert_eq!(spec.steps[0].uid(0), "filter-0");
}

#[test]
fn semantic_errors_are_all_reported_with_paths() {
    let yaml = r#"
version: 1
name: ""
parallelism: 0
sources:
  - name: a
    generator: { keys: 0, fields: {} }
  - name: a
    elements: []
    kafka: { bootstrapServers: "k:9092", topics: [t] }
steps:
  - filter: "x > 1"
    map: { fields: { y: "x" } }
  - keyBy: "user"
  - window:
      type: tumbling
      size: 0s
      slide: 1s
      allowedLateness: 5s
      aggregates:
        total: { op: sum }
        key: { op: count }
  - window:
      type: session
      time: processing
      aggregates: {}
sinks:
  - name: out
    from: late
    file: { path: "" }
"#;
    assert_eq!(
        errors(yaml),
        vec![
            "name: must not be empty",
            "parallelism: must be >= 1",
            "sources[0].generator.keys: must be >= 1",
            "sources[0].generator.fields: at least one field is required",
            "sources[1].name: name 'a' is already used by sources[0].name (names identify state and must be unique)",
            "sources[1]: set exactly one of generator, elements, kafka (found elements, kafka)",
            "sources[1].kafka.groupId: required to start from group offsets",
            "steps[0]: set exactly one of filter, map, keyBy, flatMap, window, dedup, operator (found filter, map)",
            "steps[2].window.slide: not used by tumbling windows",
            "steps[2].window.size: must be > 0",
            "steps[2].window.time: event-time windows need a watermark on every source (or use time: processing)",
            "steps[2].window.aggregates.key: 'key' is a field the window adds; choose another name",
            "steps[2].window.aggregates.total.of: required by sum",
            "steps[3].window.gap: required by session windows",
            "steps[3].window.aggregates: at least one aggregate is required",
            "steps[3].window: a window must directly follow a keyBy step",
            "sinks[0].from: unknown side output 'late' (none is declared; a window declares one with lateOutput)",
            "sinks[0].file.path: must not be empty",
        ]
    );
}

#[test]
fn structural_errors_in_several_steps_are_all_reported() {
    let yaml = r#"
version: 1
name: x
sources:
  - name: s
    generator: { fields: { n: { sequence: {} } } }
    colour: red
steps:
  - filter: "n > 1"
  - window: { type: hopping, size: 1s, aggregates: {} }
  - map: { fields: { a: 1 } , extra: true }
sinks:
  - name: out
    stdout: {}
"#;
    let e = errors(yaml);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("sources[0].colour: unknown field `colour`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("steps[1].window.type: unknown variant `hopping`, expected one of `tumbling`, `sliding`, `session`, `count`"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("steps[2].map.extra: unknown field `extra`"),
        "{}",
        e[2]
    );
}

#[test]
fn paths_inside_a_stream_job_start_with_spec_job() {
    let yaml = r#"
apiVersion: runnel.dev/v1alpha1
kind: StreamJob
metadata: { name: x }
spec:
  job:
    version: 1
    name: x
    sources:
      - name: s
        generator: { fields: { n: { sequence: {} } } }
    steps:
      - filter: "true"
      - keyBy: "n"
      - window: { type: tumbling, size: 0s, time: processing, aggregates: { c: { op: count } } }
    sinks:
      - name: out
        stdout: {}
"#;
    assert_eq!(
        errors(yaml),
        vec!["spec.job.steps[2].window.size: must be > 0"]
    );
}

#[test]
fn a_newer_spec_version_is_refused_with_the_reason() {
    let yaml = VALID.replace("version: 1", &format!("version: {}", SPEC_VERSION + 1));
    assert_eq!(
        errors(&yaml),
        vec![format!(
            "version: spec version {} is newer than this runtime supports (versions 1 to {SPEC_VERSION}); \
             upgrade the runtime image or write the job for version {SPEC_VERSION}",
            SPEC_VERSION + 1
        )]
    );
    // The reason is given even when the newer spec uses fields this runtime
    // does not know.
    let yaml = yaml.replace("name: clicks\n", "name: clicks\nfutureField: 1\n");
    assert_eq!(errors(&yaml).len(), 1);
}

#[test]
fn an_older_unsupported_or_missing_version_is_refused() {
    let e = errors(&VALID.replace("version: 1", "version: 0"));
    assert_eq!(
        e,
        vec![format!(
            "version: spec version 0 is no longer supported (this runtime runs versions 1 to \
             {SPEC_VERSION}); see docs/job-spec.md for how to migrate"
        )]
    );
    let e = errors(&VALID.replace("version: 1\n", ""));
    assert_eq!(e, vec!["version: required (the spec version, e.g. 1)"]);
    let e = errors(&VALID.replace("version: 1", "version: \"one\""));
    assert_eq!(e, vec!["version: must be a positive integer"]);
}

#[test]
fn invalid_yaml_and_non_mappings_never_panic() {
    assert!(errors("{")[0].starts_with("not valid YAML"));
    assert_eq!(errors("- 1\n- 2"), vec!["must be a mapping (the job spec)"]);
    assert_eq!(errors(""), vec!["must be a mapping (the job spec)"]);
}

#[test]
fn kafka_specs_are_checked() {
    let yaml = r#"
version: 1
name: k
sources:
  - name: in
    kafka:
      bootstrapServers: "localhost:9092"
      topics: [a]
      topicPattern: "a.*"
      start: { from: timestamp }
      format: { type: avro }
      onDeserializationError: { policy: deadLetter }
      credentials: { securityProtocol: sasl_ssl }
sinks:
  - name: out
    kafka:
      bootstrapServers: "localhost:9092"
      topic: out
      delivery: exactly-once
      valueFormat: { type: json, schema: "{}" }
"#;
    assert_eq!(
        errors(yaml),
        vec![
            "sources[0].kafka: set topics or topicPattern, not both",
            "sources[0].kafka.start.timestampMs: required by from: timestamp",
            "sources[0].kafka.format.schema: required by type avro",
            "sources[0].kafka.onDeserializationError.topic: required by policy deadLetter",
            "sources[0].kafka.credentials: SASL needs username and password secret references",
            "sinks[0].kafka.valueFormat.schema: only used by type avro",
            "sinks[0].kafka.delivery: exactly-once delivery commits a transaction per checkpoint: configure checkpoint",
        ]
    );
}

#[test]
fn a_full_kafka_spec_loads() {
    let yaml = r#"
version: 1
name: k
checkpoint: { interval: 5s, storage: "s3://bucket/chk" }
sources:
  - name: in
    kafka:
      bootstrapServers: "broker:9092"
      topicPattern: "orders-.*"
      groupId: g
      start: { from: specificOffsets, offsets: [{ topic: orders-1, partition: 0, offset: 42 }], fallback: earliest }
      format: { type: avro, schema: '{"type":"record","name":"r","fields":[]}' }
      onDeserializationError: { policy: deadLetter, topic: dlq }
      credentials:
        securityProtocol: sasl_ssl
        saslMechanism: SCRAM-SHA-512
        username: { name: kafka-user, key: username }
        password: { name: kafka-user, key: password }
      properties: { fetch.max.bytes: "1048576" }
    watermark: { maxOutOfOrderness: 2s, idleness: 30s }
sinks:
  - name: out
    kafka:
      bootstrapServers: "broker:9092"
      topic: totals
      key: "record.user"
      keyFormat: { type: utf8 }
      delivery: exactly-once
      transactionTimeout: 5m
"#;
    let spec = load_yaml(yaml).unwrap();
    let k = spec.sources[0].kafka.as_ref().unwrap();
    assert_eq!(k.start.offsets[0].offset, 42);
    assert_eq!(
        spec.sinks[0].kafka.as_ref().unwrap().delivery,
        runnel_spec::DeliveryGuarantee::ExactlyOnce
    );
}
