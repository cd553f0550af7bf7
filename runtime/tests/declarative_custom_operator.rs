//! A custom Rust operator registered by name, configured from the spec, keyed
//! and stateful; bad configuration is reported with the step's path.

#[path = "../examples/custom_operator.rs"]
#[allow(dead_code)]
mod custom_operator;

use runnel_runtime::declarative::{self, read_published};
use serde_json::json;

#[test]
fn a_registered_operator_runs_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
version: 1
name: totals
sources:
  - name: sales
    elements:
      - {{ shop: "a", amount: 5 }}
      - {{ shop: "b", amount: 7 }}
      - {{ shop: "a", amount: 10 }}
steps:
  - keyBy: "shop"
  - name: totals
    operator: {{ name: running-total, config: {{ field: amount, into: sum }} }}
sinks:
  - name: out
    file: {{ path: "{}" }}
"#,
        dir.path().display()
    );
    let job = declarative::load_and_build(&yaml, &custom_operator::registry()).unwrap();
    job.execute().unwrap();
    let mut out = read_published(dir.path()).unwrap();
    out.sort_by_key(|v| v.to_string());
    assert_eq!(
        out,
        vec![
            json!({"amount": 10, "shop": "a", "sum": 15}),
            json!({"amount": 5, "shop": "a", "sum": 5}),
            json!({"amount": 7, "shop": "b", "sum": 7}),
        ]
    );
}

#[test]
fn bad_operator_config_is_reported_with_its_path() {
    let yaml = r#"
version: 1
name: totals
sources:
  - name: sales
    elements: [{ shop: "a", amount: 5 }]
steps:
  - operator: { name: running-total, config: { into: x } }
sinks:
  - name: out
    stdout: {}
"#;
    let e = match declarative::load_and_build(yaml, &custom_operator::registry()) {
        Ok(_) => panic!("must be refused"),
        Err(e) => e,
    };
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "steps[0].operator.config: config.field (string) is required"
    );
}
