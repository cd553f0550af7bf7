//! The checked-in CRD must be exactly what the Rust types generate.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use kube::CustomResourceExt;
use runnel_operator::crd::{StreamJob, crd_yaml};
use runnel_operator::job_schema::{job_schema, structural_violations};

#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/streamjobs.runnel.dev.yaml"
    );
    let on_disk = std::fs::read_to_string(path).expect("crds/streamjobs.runnel.dev.yaml");
    let generated = crd_yaml().unwrap();
    assert!(
        on_disk == generated,
        "crds/streamjobs.runnel.dev.yaml is stale: regenerate it with \
         `cargo run -p runnel-operator -- crd > crds/streamjobs.runnel.dev.yaml`"
    );
}

#[test]
fn crd_has_short_name_status_and_printer_columns() {
    let crd = StreamJob::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("streamjobs.runnel.dev"));
    assert_eq!(crd.spec.group, "runnel.dev");
    assert_eq!(crd.spec.names.short_names, Some(vec!["sj".to_string()]));
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<&str> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        ["Lifecycle", "Job", "Parallelism", "Last Savepoint", "Age"]
    );
    // Structural schema: no $ref anywhere (the API server rejects them).
    let yaml = crd_yaml().unwrap();
    assert!(!yaml.contains("$ref"), "{yaml}");
}

/// The whole `openAPIV3Schema` (and so `spec.job`, which embeds the job
/// spec's schema) follows Kubernetes' structural-schema rules.
#[test]
fn the_crd_schema_is_structural_and_spec_job_is_the_job_schema() {
    let v = serde_json::to_value(StreamJob::crd()).unwrap();
    let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert_eq!(
        structural_violations(schema),
        Vec::<String>::new(),
        "not structural"
    );
    let job = &schema["properties"]["spec"]["properties"]["job"];
    assert_eq!(job["type"], "object");
    assert!(
        job.get("x-kubernetes-preserve-unknown-fields").is_none(),
        "spec.job is no longer free-form"
    );
    let mut expected = job_schema();
    // The field's doc comment replaces the type's description.
    expected["description"] = job["description"].clone();
    // As the CRD's types hold it (numbers are floats there).
    let expected: JSONSchemaProps = serde_json::from_value(expected).unwrap();
    assert!(
        job == &serde_json::to_value(expected).unwrap(),
        "spec.job is not the job schema"
    );
    assert_eq!(
        job["required"],
        serde_json::json!(["name", "sinks", "sources", "version"])
    );
}

#[test]
fn cel_validation_rules_compile() {
    let v = serde_json::to_value(StreamJob::crd()).unwrap();
    let rules = v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rules.len(), 2);
    for r in rules {
        let rule = r["rule"].as_str().unwrap();
        cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    }
}
