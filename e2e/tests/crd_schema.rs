//! The StreamJob CRD embeds the job spec's schema for `spec.job`: every
//! example job passes it, invalid jobs are refused with the field named,
//! both by the local control plane's validator and through `kubectl apply`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use runnel_e2e::schema::{FieldError, FieldValidation, validate};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn crd_file() -> PathBuf {
    workspace().join("crds/streamjobs.runnel.dev.yaml")
}

fn schema() -> Value {
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(crd_file()).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|d: &Value| !d.is_null())
        .collect()
}

fn streamjob(job: Value) -> Value {
    json!({
        "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob",
        "metadata": { "name": "j" },
        "spec": { "job": job }
    })
}

/// Validates under strict field validation; the object must come out
/// unchanged (nothing pruned).
fn check(obj: &Value) -> Vec<FieldError> {
    let mut o = obj.clone();
    let (errors, warnings) = validate(&mut o, &schema(), FieldValidation::Strict, false);
    assert!(warnings.is_empty(), "{warnings:?}");
    if errors.is_empty() {
        assert_eq!(&o, obj, "a valid object is stored as written");
    }
    errors
}

#[test]
fn every_example_job_and_streamjob_manifest_passes_the_crd_schema() {
    let mut streamjobs = 0;
    for f in yaml_files("manifests") {
        for d in docs(&f).into_iter().filter(|d| d["kind"] == "StreamJob") {
            assert_eq!(check(&d), vec![], "{}", f.display());
            streamjobs += 1;
        }
    }
    assert!(
        streamjobs >= 10,
        "found {streamjobs} StreamJobs in manifests/"
    );
    let jobs = yaml_files("examples/jobs");
    assert!(jobs.len() >= 4, "{jobs:?}");
    for f in jobs {
        let [job] = docs(&f).try_into().unwrap();
        assert_eq!(check(&streamjob(job)), vec![], "{}", f.display());
    }
}

fn base_job() -> Value {
    json!({
        "version": 1, "name": "j",
        "sources": [{ "name": "s", "generator": { "count": 3, "fields": { "n": { "sequence": {} } } } }],
        "steps": [{ "keyBy": "n % 2" }, { "window": { "type": "count", "count": 2, "aggregates": { "c": { "op": "count" } } } }],
        "sinks": [{ "name": "out", "stdout": {} }]
    })
}

fn errors_of(edit: impl FnOnce(&mut Value)) -> Vec<(String, String)> {
    let mut job = base_job();
    edit(&mut job);
    check(&streamjob(job))
}

fn one(path: &str, msg: &str) -> Vec<(String, String)> {
    vec![(path.to_string(), msg.to_string())]
}

#[test]
fn invalid_jobs_are_refused_with_the_field_named() {
    assert_eq!(errors_of(|_| {}), vec![]);
    let oneof_none = |p: &str| {
        (
            p.to_string(),
            format!(
                "Invalid value: \"object\": {p} in body must validate one and only one schema (oneOf). Found none valid"
            ),
        )
    };
    assert_eq!(
        errors_of(|j| j["steps"][0] = json!({ "reduce": "n" })),
        vec![
            (
                "spec.job.steps[0].reduce".to_string(),
                "field not declared in schema".to_string()
            ),
            oneof_none("spec.job.steps[0]"),
        ],
        "a step of an unknown kind: an unknown field, and no kind"
    );
    // Exactly one kind per source, step and sink.
    assert_eq!(
        errors_of(|j| j["steps"][0]["filter"] = json!("n > 1")),
        one(
            "spec.job.steps[0]",
            "Invalid value: \"object\": spec.job.steps[0] in body must validate one and only one schema (oneOf). Found 2 valid alternatives"
        )
    );
    assert_eq!(
        errors_of(|j| j["sinks"][0] = json!({ "name": "out" })),
        vec![oneof_none("spec.job.sinks[0]")]
    );
    assert_eq!(
        errors_of(|j| j["sources"][0] = json!({ "name": "s" })),
        vec![oneof_none("spec.job.sources[0]")]
    );
    assert_eq!(
        errors_of(|j| j["steps"][0]["parallelism"] = json!(0)),
        one(
            "spec.job.steps[0].parallelism",
            "Invalid value: 0: spec.job.steps[0].parallelism in body should be greater than or equal to 1"
        )
    );
    assert_eq!(
        errors_of(|j| j["maxParallelism"] = json!(40000)),
        one(
            "spec.job.maxParallelism",
            "Invalid value: 40000: spec.job.maxParallelism in body should be less than or equal to 32768"
        )
    );
    assert_eq!(
        errors_of(|j| j["parallelism"] = json!("two")),
        one(
            "spec.job.parallelism",
            "Invalid value: \"two\": spec.job.parallelism in body must be of type integer"
        )
    );
    assert_eq!(
        errors_of(|j| j["steps"][1]["window"]["type"] = json!("hopping")),
        one(
            "spec.job.steps[1].window.type",
            "Unsupported value: \"hopping\": supported values: \"tumbling\", \"sliding\", \"session\", \"count\""
        )
    );
    assert_eq!(
        errors_of(|j| j["steps"][1]["window"]["aggregates"]["c"]["op"] = json!("median")),
        one(
            "spec.job.steps[1].window.aggregates.c.op",
            "Unsupported value: \"median\": supported values: \"count\", \"sum\", \"min\", \"max\", \"avg\", \"first\", \"last\", \"distinctCount\""
        )
    );
    assert_eq!(
        errors_of(|j| {
            j.as_object_mut().unwrap().remove("sinks");
        }),
        one("spec.job.sinks", "Required value")
    );
    assert_eq!(
        errors_of(|j| j["checkpoint"] = json!({ "interval": "ten", "storage": "file:///c" })),
        one(
            "spec.job.checkpoint.interval",
            "Invalid value: \"ten\": spec.job.checkpoint.interval in body should match '^\\s*[0-9]+\\s*[a-zA-Zµ]+(\\s*[0-9]+\\s*[a-zA-Zµ]+)*\\s*$'"
        )
    );
    assert_eq!(
        errors_of(|j| j["sources"][0]["generator"]["count"] = json!(-1)),
        one(
            "spec.job.sources[0].generator.count",
            "Invalid value: -1: spec.job.sources[0].generator.count in body should be greater than or equal to 0"
        )
    );
    // A generated field takes exactly one generator (a `oneOf` of `required`).
    let field = "spec.job.sources[0].generator.fields.n";
    assert_eq!(
        errors_of(|j| j["sources"][0]["generator"]["fields"]["n"] = json!({})),
        one(
            field,
            &format!(
                "Invalid value: \"object\": {field} in body must validate one and only one schema (oneOf). Found none valid"
            )
        )
    );
    assert_eq!(
        errors_of(
            |j| j["sources"][0]["generator"]["fields"]["n"] = json!({ "key": {}, "sequence": {} })
        ),
        one(
            field,
            &format!(
                "Invalid value: \"object\": {field} in body must validate one and only one schema (oneOf). Found 2 valid alternatives"
            )
        )
    );
    // Free-form values keep whatever they hold.
    assert_eq!(
        errors_of(|j| {
            j["sources"][0] = json!({ "name": "s", "elements": [1, "a", { "x": [null] }] });
            j["steps"][0] =
                json!({ "operator": { "name": "op", "config": { "any": { "thing": 1 } } } });
        }),
        vec![]
    );
}

// ---- through kubectl ----------------------------------------------------------

/// The local control plane, serving until dropped.
struct KubeLocal {
    child: Child,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KubeLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KubeLocal {
    fn start() -> KubeLocal {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-kube-local"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            // No operator runs here, so no pod is ever created; the flag
            // only needs an existing file.
            .arg("--runnel-bin")
            .arg("/bin/false")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runnel-kube-local starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("serving http://"), "{line:?}");
        KubeLocal {
            child,
            kubeconfig,
            _dir: dir,
        }
    }

    fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }
}

fn kubectl_installed() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is not installed (it ships with the machine image; see docs/e2e.md)"
        );
        eprintln!(
            "\n!!!!!!!!\nSKIPPING: kubectl is not installed. This test did NOT run.\nUnder CI=1 this is a failure.\n!!!!!!!!\n"
        );
    }
    ok
}

#[test]
fn kubectl_apply_refuses_an_invalid_job_and_stores_a_valid_one_as_written() {
    if !kubectl_installed() {
        return;
    }
    let k = KubeLocal::start();
    let crd = std::fs::read_to_string(crd_file()).unwrap();
    let o = k.kubectl(&["apply", "-f", "-"], &crd);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut bad = streamjob(base_job());
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["job"]["steps"][0] = json!({ "reduce": "n" });
    bad["spec"]["job"]["parallelism"] = json!("two");
    let o = k.kubectl(&["apply", "-f", "-"], &bad.to_string());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("spec.job.parallelism in body must be of type integer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.job.steps[0].reduce: field not declared in schema"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.job.steps[0] in body must validate one and only one schema (oneOf)"),
        "{stderr}"
    );
    let o = k.kubectl(&["get", "streamjob", "bad"], "");
    assert!(!o.status.success(), "nothing was stored");

    let example =
        std::fs::read_to_string(workspace().join("manifests/streamjob-example.yaml")).unwrap();
    let o = k.kubectl(&["apply", "-f", "-"], &example);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = k.kubectl(&["get", "streamjob", "orders", "-o", "json"], "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stored: Value = serde_json::from_slice(&o.stdout).unwrap();
    let written: Value = serde_yaml::from_str(&example).unwrap();
    assert_eq!(stored["spec"]["job"], written["spec"]["job"]);
}
