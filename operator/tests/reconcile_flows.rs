//! Whole reconciles (`controller::reconcile`) with the Kubernetes API served
//! by a `tower_test` mock and the runtime pods played by real `runnel`
//! processes started from the exact pod arguments and ConfigMap the
//! operator created: the annotation savepoint and a savepoint upgrade.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use runnel_api::JobState;
use runnel_operator::controller::{Context, reconcile};
use runnel_operator::crd::{
    DeploymentRecord, LifecycleState, Restore, SavepointTrigger, StreamJob, StreamJobSpec,
    StreamJobStatus,
};
use runnel_operator::metrics::Metrics;
use serde_json::{Value, json};

/// What the mock API server holds and saw.
#[derive(Default)]
struct ApiState {
    pods: BTreeMap<String, Value>,
    configmaps: BTreeMap<String, Value>,
    /// Every status written, in order.
    statuses: Vec<Value>,
    /// Merge patches of the StreamJob itself.
    patches: Vec<Value>,
    events: Vec<String>,
    deleted_pods: Vec<String>,
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion":"v1","kind":kind,"metadata":{"resourceVersion":"1"},"items":items})
}

fn serve(state: Arc<Mutex<ApiState>>) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or(Value::Null)
            };
            let mut st = state.lock().unwrap();
            let ok = |v: Value| (StatusCode::OK, v);
            let (code, answer) = match (method.clone(), path.as_str()) {
                (Method::GET, "/api/v1/namespaces/ns/pods") => {
                    ok(list("PodList", st.pods.values().cloned().collect()))
                }
                (Method::POST, "/api/v1/namespaces/ns/pods") => {
                    let name = body["metadata"]["name"].as_str().unwrap().to_string();
                    st.pods.entry(name).or_insert(body.clone());
                    (StatusCode::CREATED, body)
                }
                (Method::POST, "/api/v1/namespaces/ns/configmaps") => {
                    let name = body["metadata"]["name"].as_str().unwrap().to_string();
                    st.configmaps.insert(name, body.clone());
                    (StatusCode::CREATED, body)
                }
                (Method::GET, "/apis/batch/v1/namespaces/ns/jobs") => ok(list("JobList", vec![])),
                (
                    Method::PATCH,
                    "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo/status",
                ) => {
                    st.statuses.push(body["status"].clone());
                    ok(stream_job_json())
                }
                (Method::PATCH, "/apis/runnel.dev/v1alpha1/namespaces/ns/streamjobs/demo") => {
                    st.patches.push(body);
                    ok(stream_job_json())
                }
                (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events") => {
                    st.events
                        .push(body["reason"].as_str().unwrap_or("").to_string());
                    (StatusCode::CREATED, body)
                }
                (Method::PATCH, p) if p.starts_with("/api/v1/namespaces/ns/services/") => ok(body),
                (Method::DELETE, p) if p.starts_with("/api/v1/namespaces/ns/pods/") => {
                    let name = p.rsplit('/').next().unwrap().to_string();
                    st.deleted_pods.push(name.clone());
                    match st.pods.remove(&name) {
                        Some(p) => ok(p),
                        None => (StatusCode::NOT_FOUND, not_found()),
                    }
                }
                (Method::DELETE, p) if p.starts_with("/api/v1/namespaces/ns/configmaps/") => {
                    let name = p.rsplit('/').next().unwrap();
                    match st.configmaps.remove(name) {
                        Some(c) => ok(c),
                        None => (StatusCode::NOT_FOUND, not_found()),
                    }
                }
                (m, p) => panic!("unexpected call {m} {p}"),
            };
            drop(st);
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(svc, "ns")
}

fn not_found() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404})
}

fn stream_job_json() -> Value {
    json!({"apiVersion":"runnel.dev/v1alpha1","kind":"StreamJob",
           "metadata":{"name":"demo","namespace":"ns"},
           "spec":{"image":"runnel:1","job":{}}})
}

fn spec(dir: &str, step_parallelism: u32) -> StreamJobSpec {
    serde_json::from_value(json!({
        "image": "runnel:test",
        "parallelism": step_parallelism,
        "job": {
            "version": 1,
            "name": "numbers",
            "sources": [{ "name": "numbers", "parallelism": 1,
                "generator": { "ratePerSecond": 2000, "fields": { "n": { "sequence": {} } } } }],
            "steps": [{ "filter": "n >= 0" }],
            "sinks": [{ "name": "out", "file": { "path": format!("{dir}/out") } }]
        },
        "checkpointing": { "interval": "200ms", "storage": format!("file://{dir}/chk") },
        "savepoints": { "directory": format!("file://{dir}/sp") }
    }))
    .unwrap()
}

/// Test harness: the StreamJob object, the API state, and the "kubelet"
/// that runs a real runtime for each pod the operator created.
struct Harness {
    dir: String,
    api: Arc<Mutex<ApiState>>,
    client: Client,
    obj: StreamJob,
    runtimes: BTreeMap<String, common::Runtime>,
    starts: u32,
}

impl Harness {
    /// The kubelet: starts created pods, stops deleted ones.
    fn kubelet(&mut self) {
        let mut api = self.api.lock().unwrap();
        let names: Vec<String> = api.pods.keys().cloned().collect();
        self.runtimes.retain(|n, _| names.contains(n));
        for name in names {
            if self.runtimes.contains_key(&name) {
                continue;
            }
            let pod = api.pods[&name].clone();
            let args: Vec<String> =
                serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).unwrap();
            let cm = pod["spec"]["volumes"][0]["configMap"]["name"]
                .as_str()
                .unwrap();
            let job = api.configmaps[cm]["data"]["job.yaml"]
                .as_str()
                .unwrap()
                .to_string();
            self.starts += 1;
            let rt = common::start_args(&self.dir, &job, &args, self.starts);
            let p = api.pods.get_mut(&name).unwrap();
            p["status"] = json!({"phase": "Running", "podIP": "127.0.0.1"});
            p["metadata"]["annotations"]["test/port"] = json!(rt.port().to_string());
            self.runtimes.insert(name, rt);
        }
    }

    fn port(&self) -> u16 {
        self.runtimes.values().last().map(|r| r.port()).unwrap_or(1)
    }

    /// One reconcile; the object picks up the status it wrote.
    async fn reconcile(&mut self) {
        let mut ctx = Context::new(self.client.clone(), Arc::new(Metrics::new()), "test".into());
        ctx.control_port = self.port();
        reconcile(Arc::new(self.obj.clone()), Arc::new(ctx))
            .await
            .unwrap();
        let api = self.api.lock().unwrap();
        if let Some(s) = api.statuses.last() {
            self.obj.status = Some(serde_json::from_value::<StreamJobStatus>(s.clone()).unwrap());
        }
        for p in &api.patches {
            if p["metadata"]["annotations"]["runnel.dev/savepoint"].is_null()
                && p["metadata"]["annotations"].is_object()
                && let Some(a) = self.obj.metadata.annotations.as_mut()
            {
                a.remove("runnel.dev/savepoint");
            }
        }
        drop(api);
        self.kubelet();
    }

    fn status(&self) -> StreamJobStatus {
        self.obj.status.clone().unwrap_or_default()
    }

    async fn until(&mut self, what: &str, f: impl Fn(&StreamJobStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.reconcile().await;
            if f(&self.status()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_annotation_savepoint_and_savepoint_upgrade_with_real_runtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let api = Arc::new(Mutex::new(ApiState::default()));
    let client = serve(api.clone());
    let mut obj = StreamJob::new("demo", spec(&dir, 2));
    obj.metadata.namespace = Some("ns".into());
    obj.metadata.uid = Some("uid-1".into());
    obj.metadata.generation = Some(1);
    let mut h = Harness {
        dir: dir.clone(),
        api: api.clone(),
        client,
        obj,
        runtimes: BTreeMap::new(),
        starts: 0,
    };

    // 1. First deployment.
    h.until("running", |s| {
        s.lifecycle_state == LifecycleState::Running
            && s.deployment.as_ref().is_some_and(|d| d.stable)
            && s.last_checkpoint.is_some()
    })
    .await;
    assert_eq!(
        h.status().deployment.map(|d| (d.deploy_id, d.restore)),
        Some((1, Restore::Empty))
    );
    assert_eq!(h.status().job_state.as_deref(), Some("RUNNING"));
    assert!(api.lock().unwrap().pods.contains_key("demo-1"));

    // 2. Savepoint by annotation.
    h.obj
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("runnel.dev/savepoint".into(), "please".into());
    h.reconcile().await;
    let sp = h.status().savepoint_in_progress.expect("in progress");
    assert_eq!(sp.target_directory, format!("file://{dir}/sp/ns-demo-1"));
    {
        // Written before the trigger (no id), then again with the id.
        let a = api.lock().unwrap();
        let n = a.statuses.len();
        assert!(
            a.statuses[n - 2]["savepointInProgress"]
                .get("triggerId")
                .is_none()
        );
        assert!(a.statuses[n - 1]["savepointInProgress"]["triggerId"].is_string());
    }
    h.until("annotation savepoint", |s| {
        s.savepoint_in_progress.is_none()
    })
    .await;
    let hist = h.status().savepoint_history;
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0].trigger, SavepointTrigger::Annotation);
    let sp_path = hist[0].path.clone();
    assert!(sp_path.starts_with(&sp.target_directory), "{sp_path}");
    assert!(
        std::path::Path::new(sp_path.trim_start_matches("file://"))
            .join("_metadata")
            .exists()
    );
    assert_eq!(
        h.obj.annotations().get("runnel.dev/savepoint"),
        None,
        "annotation removed"
    );
    // More rounds: no second savepoint.
    for _ in 0..3 {
        h.reconcile().await;
    }
    assert_eq!(h.status().savepoint_history.len(), 1);
    assert!(h.status().savepoint_in_progress.is_none());

    // 3. Upgrade (rescale the step to 3) in savepoint mode.
    h.obj.spec = spec(&dir, 3);
    h.obj.metadata.generation = Some(2);
    h.until("upgraded", |s| {
        s.operation.is_none()
            && s.deployment
                .as_ref()
                .is_some_and(|d| d.spec_generation == 2 && d.stable)
    })
    .await;
    let st = h.status();
    let up: Vec<_> = st
        .savepoint_history
        .iter()
        .filter(|r| r.trigger == SavepointTrigger::Upgrade)
        .collect();
    assert_eq!(up.len(), 1);
    let d: DeploymentRecord = st.deployment.clone().unwrap();
    assert_eq!(d.deploy_id, 2);
    assert_eq!(d.restore, Restore::Savepoint(up[0].path.clone()));
    assert_eq!(st.lifecycle_state, LifecycleState::Running);
    {
        let a = api.lock().unwrap();
        assert_eq!(a.deleted_pods.first().map(String::as_str), Some("demo-1"));
        assert_eq!(a.pods.keys().collect::<Vec<_>>(), ["demo-2"]);
        for r in [
            "SavepointTriggered",
            "SavepointCompleted",
            "UpgradeStarted",
            "UpgradeCompleted",
            "JobRunning",
        ] {
            assert!(
                a.events.iter().any(|e| e == r),
                "no {r} Event: {:?}",
                a.events
            );
        }
    }
    // The new runtime really restored from the upgrade savepoint, rescaled.
    let rt = h.runtimes.get("demo-2").unwrap();
    let c = runnel_operator::control::ControlClient::new(&rt.url, Duration::from_secs(5));
    let s = c.status().await.unwrap();
    assert_eq!(s.state, JobState::Running);
    assert_eq!(s.restored_from.as_deref(), Some(up[0].path.as_str()));
    assert!(
        s.parallelism.values().any(|p| *p == 3),
        "{:?}",
        s.parallelism
    );
}
