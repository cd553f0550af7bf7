//! A mock Kubernetes API (tower-test) plus a "kubelet" that runs a real
//! `runnel` process for each pod the operator creates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use runnel_operator::controller::{Context, reconcile};
use runnel_operator::crd::{StreamJob, StreamJobSpec, StreamJobStatus};
use runnel_operator::metrics::Metrics;
use serde_json::{Value, json};

/// What the mock API server holds and saw.
#[derive(Default)]
pub struct ApiState {
    pub pods: BTreeMap<String, Value>,
    pub configmaps: BTreeMap<String, Value>,
    /// Every status written, in order.
    pub statuses: Vec<Value>,
    /// Merge patches of the StreamJob itself.
    pub patches: Vec<Value>,
    pub events: Vec<String>,
    pub deleted_pods: Vec<String>,
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion":"v1","kind":kind,"metadata":{"resourceVersion":"1"},"items":items})
}

pub fn serve(state: Arc<Mutex<ApiState>>) -> Client {
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

pub fn spec(dir: &str, step_parallelism: u32) -> StreamJobSpec {
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
pub struct Harness {
    pub dir: String,
    pub api: Arc<Mutex<ApiState>>,
    pub client: Client,
    pub obj: StreamJob,
    pub runtimes: BTreeMap<String, super::Runtime>,
    pub starts: u32,
}

impl Harness {
    /// The kubelet: starts created pods, stops deleted ones.
    pub fn kubelet(&mut self) {
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
            let rt = super::start_args(&self.dir, &job, &args, self.starts);
            let p = api.pods.get_mut(&name).unwrap();
            p["status"] = json!({"phase": "Running", "podIP": "127.0.0.1"});
            p["metadata"]["annotations"]["test/port"] = json!(rt.port().to_string());
            self.runtimes.insert(name, rt);
        }
    }

    pub fn port(&self) -> u16 {
        self.runtimes.values().last().map(|r| r.port()).unwrap_or(1)
    }

    /// One reconcile; the object picks up the status it wrote.
    pub async fn reconcile(&mut self) {
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

    pub fn status(&self) -> StreamJobStatus {
        self.obj.status.clone().unwrap_or_default()
    }

    pub async fn until(&mut self, what: &str, f: impl Fn(&StreamJobStatus) -> bool) {
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

impl Harness {
    /// A StreamJob `demo` in namespace `ns`, nothing deployed yet.
    pub fn new(dir: &str, spec: StreamJobSpec) -> Harness {
        let api = Arc::new(Mutex::new(ApiState::default()));
        let client = serve(api.clone());
        let mut obj = StreamJob::new("demo", spec);
        obj.metadata.namespace = Some("ns".into());
        obj.metadata.uid = Some("uid-1".into());
        obj.metadata.generation = Some(1);
        Harness {
            dir: dir.to_string(),
            api,
            client,
            obj,
            runtimes: BTreeMap::new(),
            starts: 0,
        }
    }
}
