//! The generated JSON schema: checked in, valid JSON Schema, and it accepts
//! and rejects the same documents as the Rust types where a schema can tell.
//! The StreamJob CRD embeds the same types' schema for `spec.job`, made
//! structural by the operator (`operator/src/job_schema.rs`, tested there
//! and in `e2e/tests/crd_schema.rs`).

use runnel_spec::{job_schema, job_schema_json};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/job-schema.json");

#[test]
fn the_checked_in_schema_is_up_to_date() {
    let generated = job_schema_json() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(GOLDEN, &generated).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap_or_default();
    assert!(
        golden == generated,
        "spec/job-schema.json is out of date: run `UPDATE_SCHEMA=1 cargo test -p runnel-spec --test schema` and commit it"
    );
}

#[test]
fn the_schema_is_valid_json_schema_and_checks_documents() {
    let schema = job_schema();
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the generated schema is not valid JSON Schema"
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let good: serde_json::Value = serde_yaml::from_str(
        r#"
version: 1
name: j
sources: [{ name: s, generator: { count: 3, fields: { n: { sequence: { step: 2 } } } } }]
steps:
  - keyBy: "n % 2"
  - window: { type: count, count: 2, aggregates: { avg: { op: avg, of: "n" } } }
sinks: [{ name: out, file: { path: /tmp/out } }]
"#,
    )
    .unwrap();
    assert!(
        validator.is_valid(&good),
        "{:?}",
        validator
            .iter_errors(&good)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let bad: serde_json::Value = serde_json::json!({
        "version": 1, "name": "j", "sources": [], "sinks": [],
        "steps": [{ "window": { "type": "hopping", "aggregates": {} } }],
        "unknown": true
    });
    let errs: Vec<String> = validator
        .iter_errors(&bad)
        .map(|e| e.instance_path().to_string())
        .collect();
    assert!(
        errs.iter().any(|p| p.starts_with("/steps/0/window")),
        "{errs:?}"
    );
    assert!(
        errs.contains(&"".to_string()),
        "additional property at the root: {errs:?}"
    );
}

#[test]
fn free_form_values_keep_unknown_fields_in_kubernetes() {
    let s = job_schema_json();
    assert!(s.contains("x-kubernetes-preserve-unknown-fields"));
}
