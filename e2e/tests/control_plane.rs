//! The local control plane itself, over HTTP: watch resume and 410,
//! garbage collection (background, foreground, orphan), finalizers, the
//! status subresource, patches and server-side apply, validation against a
//! CRD's schema and CEL rules, selectors, namespaces; and the kube-rs client
//! the operator uses (watcher, apply conflicts).

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;

use runnel_e2e::server::{AppState, router};
use runnel_e2e::store::Store;
use serde_json::{Value, json};

struct Server {
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn start(window: usize) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Store::new(window, regex::Regex::new("runnel").unwrap());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(AppState {
        store,
        addr: addr.to_string(),
        logs_dir: std::env::temp_dir(),
        bookmark_interval: Duration::from_millis(200),
    });
    rt.spawn(async move { axum::serve(listener, router(state)).await });
    Server {
        url: format!("http://{addr}"),
        _rt: rt,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Server {
    fn req(&self, method: &str, path: &str, ct: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let a = agent();
        let mut resp = match (method, body) {
            ("GET", _) => a.get(&url).call(),
            ("DELETE", None) => a.delete(&url).call(),
            ("DELETE", Some(b)) => a
                .delete(&url)
                .force_send_body()
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            ("POST", Some(b)) => a.post(&url).header("Content-Type", ct).send(b.to_string()),
            ("PUT", Some(b)) => a.put(&url).header("Content-Type", ct).send(b.to_string()),
            ("PATCH", Some(b)) => a.patch(&url).header("Content-Type", ct).send(b.to_string()),
            other => panic!("unsupported {other:?}"),
        }
        .unwrap();
        let code = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    fn get(&self, path: &str) -> (u16, Value) {
        self.req("GET", path, "", None)
    }
    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req("POST", path, "application/json", Some(body))
    }
    fn patch(&self, path: &str, ct: &str, body: Value) -> (u16, Value) {
        self.req("PATCH", path, ct, Some(body))
    }
    /// The watch events until the server ends the stream (`timeoutSeconds`).
    fn watch(&self, path: &str) -> Vec<Value> {
        let mut resp = agent().get(&format!("{}{path}", self.url)).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        BufReader::new(resp.body_mut().as_reader())
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect()
    }
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn cm(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": name, "labels": { "app": "t" } }, "data": { "k": "v" } })
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const MERGE: &str = "application/merge-patch+json";

fn names(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn watch_resumes_after_a_resource_version_and_versions_are_global() {
    let s = start(1000);
    let (c, a) = s.post(CMS, cm("a"));
    assert_eq!(c, 201);
    let (_, b) = s.post(CMS, cm("b"));
    assert!(rv(&b) > rv(&a));
    let (_, b2) = s.patch(&format!("{CMS}/b"), MERGE, json!({ "data": { "k": "w" } }));
    assert!(rv(&b2) > rv(&b));
    let (_, list) = s.get(CMS);
    assert_eq!(
        list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        rv(&b2)
    );
    // From a's version: b's creation and update, not a.
    let ev = s.watch(&format!(
        "{CMS}?watch=true&resourceVersion={}&timeoutSeconds=1",
        rv(&a)
    ));
    assert_eq!(
        names(&ev),
        vec![
            ("ADDED".into(), "b".into()),
            ("MODIFIED".into(), "b".into())
        ]
    );
    assert_eq!(ev[1]["object"]["data"]["k"], "w");
    // From "0" (or none): the current state as ADDED.
    let ev = s.watch(&format!("{CMS}?watch=1&resourceVersion=0&timeoutSeconds=1"));
    assert_eq!(
        names(&ev),
        vec![("ADDED".into(), "a".into()), ("ADDED".into(), "b".into())]
    );
    // Bookmarks when asked, carrying a version no older than the last event.
    let ev = s.watch(&format!(
        "{CMS}?watch=1&resourceVersion={}&timeoutSeconds=1&allowWatchBookmarks=true",
        rv(&b2)
    ));
    let bm = ev
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark");
    assert!(rv(&bm["object"]) >= rv(&b2));
    assert_eq!(bm["object"]["kind"], "ConfigMap");
    // A label selector transition is seen as ADDED / DELETED.
    let (_, c0) = s.post(CMS, json!({ "metadata": { "name": "c" } }));
    s.patch(
        &format!("{CMS}/c"),
        MERGE,
        json!({ "metadata": { "labels": { "app": "t" } } }),
    );
    s.patch(
        &format!("{CMS}/c"),
        MERGE,
        json!({ "metadata": { "labels": { "app": null } } }),
    );
    let ev = s.watch(&format!(
        "{CMS}?watch=1&resourceVersion={}&timeoutSeconds=1&labelSelector=app%3Dt",
        rv(&c0)
    ));
    assert_eq!(
        names(&ev),
        vec![("ADDED".into(), "c".into()), ("DELETED".into(), "c".into())]
    );
}

#[test]
fn an_expired_resource_version_is_410_gone() {
    let s = start(4);
    let (_, first) = s.post(CMS, cm("x0"));
    for i in 1..8 {
        s.post(CMS, cm(&format!("x{i}")));
    }
    let ev = s.watch(&format!(
        "{CMS}?watch=true&resourceVersion={}&timeoutSeconds=1",
        rv(&first)
    ));
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["type"], "ERROR");
    assert_eq!(ev[0]["object"]["code"], 410);
    assert_eq!(ev[0]["object"]["reason"], "Expired");
    // The newest versions are still served.
    let (_, list) = s.get(CMS);
    let cur: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ev = s.watch(&format!(
        "{CMS}?watch=true&resourceVersion={}&timeoutSeconds=1",
        cur - 2
    ));
    assert_eq!(names(&ev).len(), 2);
    // A list at an exact old version is gone too (no MVCC).
    let (c, st) = s.get(&format!(
        "{CMS}?resourceVersion={}&resourceVersionMatch=Exact",
        rv(&first)
    ));
    assert_eq!((c, st["reason"].as_str()), (410, Some("Expired")));
}

fn owned(name: &str, owner: &Value, block: bool) -> Value {
    let mut o = cm(name);
    o["metadata"]["ownerReferences"] = json!([{ "apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "blockOwnerDeletion": block }]);
    o
}

#[test]
fn garbage_collection_follows_owner_references() {
    let s = start(1000);
    // Background: the owner goes at once, then its dependents (and theirs).
    let (_, o) = s.post(CMS, cm("owner"));
    let (_, d) = s.post(CMS, owned("dep", &o, true));
    s.post(CMS, owned("dep-of-dep", &d, false));
    let (c, _) = s.req(
        "DELETE",
        &format!("{CMS}/owner"),
        "",
        Some(json!({ "propagationPolicy": "Background" })),
    );
    assert_eq!(c, 200);
    for n in ["owner", "dep", "dep-of-dep"] {
        assert_eq!(s.get(&format!("{CMS}/{n}")).0, 404, "{n}");
    }
    // A dependent with a second, live owner keeps living, without the dead reference.
    let (_, o1) = s.post(CMS, cm("o1"));
    let (_, o2) = s.post(CMS, cm("o2"));
    let mut two = cm("two");
    two["metadata"]["ownerReferences"] = json!([
        { "apiVersion": "v1", "kind": "ConfigMap", "name": "o1", "uid": o1["metadata"]["uid"] },
        { "apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": o2["metadata"]["uid"] },
    ]);
    s.post(CMS, two);
    s.req("DELETE", &format!("{CMS}/o1"), "", None);
    let (c, two) = s.get(&format!("{CMS}/two"));
    assert_eq!(c, 200);
    assert_eq!(
        two["metadata"]["ownerReferences"].as_array().unwrap().len(),
        1
    );
    // Orphan: dependents stay, without the reference.
    let (_, o) = s.post(CMS, cm("orphaner"));
    s.post(CMS, owned("orphan", &o, true));
    s.req(
        "DELETE",
        &format!("{CMS}/orphaner"),
        "",
        Some(json!({ "propagationPolicy": "Orphan" })),
    );
    assert_eq!(s.get(&format!("{CMS}/orphaner")).0, 404);
    let (c, orphan) = s.get(&format!("{CMS}/orphan"));
    assert_eq!(c, 200);
    assert!(
        orphan["metadata"]
            .get("ownerReferences")
            .is_none_or(|r| r.as_array().unwrap().is_empty())
    );
    // Foreground: the owner waits (deletionTimestamp + finalizer) while a
    // blocking dependent is held by its own finalizer.
    let (_, o) = s.post(CMS, cm("fg"));
    let mut held = owned("held", &o, true);
    held["metadata"]["finalizers"] = json!(["test/hold"]);
    s.post(CMS, held);
    let (c, fg) = s.req(
        "DELETE",
        &format!("{CMS}/fg"),
        "",
        Some(json!({ "propagationPolicy": "Foreground" })),
    );
    assert_eq!(c, 200);
    assert!(fg["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    let (_, h) = s.get(&format!("{CMS}/held"));
    assert!(
        h["metadata"]["deletionTimestamp"].is_string(),
        "the dependent is being deleted"
    );
    assert_eq!(s.get(&format!("{CMS}/fg")).0, 200, "the owner waits for it");
    // Removing the dependent's finalizer lets both go.
    s.patch(
        &format!("{CMS}/held"),
        MERGE,
        json!({ "metadata": { "finalizers": null } }),
    );
    assert_eq!(s.get(&format!("{CMS}/held")).0, 404);
    assert_eq!(s.get(&format!("{CMS}/fg")).0, 404);
}

#[test]
fn namespaces_scope_and_terminate() {
    let s = start(1000);
    let (c, st) = s.post("/api/v1/namespaces/nope/configmaps", cm("a"));
    assert_eq!((c, st["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(
        s.post(
            "/api/v1/namespaces",
            json!({ "metadata": { "name": "t1" } })
        )
        .0,
        201
    );
    assert_eq!(s.post("/api/v1/namespaces/t1/configmaps", cm("a")).0, 201);
    let (c, st) = s.post("/api/v1/namespaces/t1/configmaps", cm("a"));
    assert_eq!((c, st["reason"].as_str()), (409, Some("AlreadyExists")));
    s.req("DELETE", "/api/v1/namespaces/t1", "", None);
    assert_eq!(s.get("/api/v1/namespaces/t1/configmaps/a").0, 404);
    assert_eq!(s.get("/api/v1/namespaces/t1").0, 404);
    // Unsupported things are refused with a Status, never accepted.
    let (c, st) = s.req("DELETE", CMS, "", None);
    assert_eq!((c, st["kind"].as_str()), (405, Some("Status")));
    let (c, _) = s.get("/api/v1/namespaces/default/configmaps/x/scale");
    assert_eq!(c, 404);
    let (c, st) = s.post("/api/v1/namespaces/default/pods", json!({ "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "c", "image": "busybox" }] } }));
    assert_eq!(c, 403);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("runs only images matching /runnel/"),
        "{st}"
    );
    let (c, st) = s.post("/apis/batch/v1/namespaces/default/jobs", json!({ "metadata": { "name": "j" }, "spec": { "parallelism": 2, "template": { "spec": { "containers": [{ "name": "c", "image": "runnel:1" }] } } } }));
    assert_eq!(c, 422);
    assert!(
        st["message"].as_str().unwrap().contains("spec.parallelism"),
        "{st}"
    );
    let (c, _) = s.get("/api/v1/namespaces/default/configmaps?fieldSelector=spec.bogus%3D1");
    assert_eq!(c, 400);
}

#[test]
fn patches_merge_json_strategic_and_apply() {
    let s = start(1000);
    s.post(CMS, cm("p"));
    let path = format!("{CMS}/p");
    let (c, o) = s.patch(&path, MERGE, json!({ "data": { "k": null, "m": "1" } }));
    assert_eq!(c, 200);
    assert_eq!(o["data"], json!({ "m": "1" }));
    let (_, o) = s.patch(
        &path,
        "application/json-patch+json",
        json!([{ "op": "add", "path": "/data/n", "value": "2" }]),
    );
    assert_eq!(o["data"], json!({ "m": "1", "n": "2" }));
    let (c, _) = s.patch(
        &path,
        "application/json-patch+json",
        json!([{ "op": "test", "path": "/data/n", "value": "3" }]),
    );
    assert_eq!(c, 422);
    let (_, o) = s.patch(
        &path,
        "application/strategic-merge-patch+json",
        json!({ "metadata": { "finalizers": ["a/b"] } }),
    );
    assert_eq!(o["metadata"]["finalizers"], json!(["a/b"]));
    let (_, o) = s.patch(
        &path,
        "application/strategic-merge-patch+json",
        json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": ["a/b"] } }),
    );
    assert!(
        o["metadata"]
            .get("finalizers")
            .is_none_or(|f| f.as_array().unwrap().is_empty())
    );
    // A stale resourceVersion is a conflict.
    let (c, st) = s.patch(
        &path,
        MERGE,
        json!({ "metadata": { "resourceVersion": "1" }, "data": { "x": "1" } }),
    );
    assert_eq!((c, st["reason"].as_str()), (409, Some("Conflict")));
    // Apply: creates, owns, conflicts, forces.
    let apply = "application/apply-patch+yaml";
    let (c, _) = s.patch(&format!("{CMS}/ap?fieldManager=a"), apply, json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "ap" }, "data": { "x": "1", "y": "1" } }));
    assert_eq!(c, 201);
    let (c, st) = s.patch(
        &format!("{CMS}/ap?fieldManager=b"),
        apply,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "x": "2" } }),
    );
    assert_eq!(c, 409);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("conflict with \"a\": .data.x"),
        "{st}"
    );
    let (c, o) = s.patch(
        &format!("{CMS}/ap?fieldManager=b&force=true"),
        apply,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "x": "2" } }),
    );
    assert_eq!(c, 200);
    assert_eq!(o["data"], json!({ "x": "2", "y": "1" }));
    // a drops y from its config: removed; x now belongs to b and stays.
    let (_, o) = s.patch(
        &format!("{CMS}/ap?fieldManager=a"),
        apply,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": {} }),
    );
    assert_eq!(o["data"], json!({ "x": "2" }));
    let (c, _) = s.patch(
        &format!("{CMS}/ap"),
        apply,
        json!({ "apiVersion": "v1", "kind": "ConfigMap" }),
    );
    assert_eq!(c, 422, "apply needs a fieldManager");
    let (c, _) = s.patch(&path, "application/json", json!({}));
    assert_eq!(c, 415);
}

fn crd() -> Value {
    serde_yaml::from_str(include_str!("../../crds/streamjobs.runnel.dev.yaml")).unwrap()
}

const SJ: &str = "/apis/runnel.dev/v1alpha1/namespaces/default/streamjobs";

fn sj(name: &str) -> Value {
    json!({ "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob", "metadata": { "name": name },
            "spec": { "image": "runnel:dev", "job": { "version": 1, "name": name, "sources": [], "sinks": [] } },
            "status": { "lifecycleState": "Running" } })
}

#[test]
fn crds_serve_their_kind_with_a_status_subresource_and_validation() {
    let s = start(1000);
    assert_eq!(s.get(SJ).0, 404, "not served before the CRD exists");
    let (c, o) = s.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd(),
    );
    assert_eq!(c, 201, "{o}");
    assert_eq!(o["status"]["conditions"][1]["type"], "Established");
    let (_, disc) = s.get("/apis/runnel.dev/v1alpha1");
    assert_eq!(disc["resources"][0]["shortNames"], json!(["sj"]));
    // Status is not written through the main resource...
    let (c, o) = s.post(SJ, sj("a"));
    assert_eq!(c, 201);
    assert!(o.get("status").is_none(), "status dropped on create");
    assert_eq!(o["metadata"]["generation"], 1);
    let path = format!("{SJ}/a");
    let (_, o) = s.patch(
        &path,
        MERGE,
        json!({ "status": { "lifecycleState": "Failed" } }),
    );
    assert!(
        o.get("status").is_none(),
        "status ignored by the main resource"
    );
    assert_eq!(o["metadata"]["generation"], 1, "nothing changed");
    // ...and the status subresource writes nothing else.
    let (c, o) = s.patch(
        &format!("{path}/status"),
        MERGE,
        json!({ "spec": { "image": "evil" }, "status": { "lifecycleState": "Running" } }),
    );
    assert_eq!(c, 200);
    assert_eq!(o["status"]["lifecycleState"], "Running");
    assert_eq!(o["spec"]["image"], "runnel:dev");
    assert_eq!(
        o["metadata"]["generation"], 1,
        "a status write does not bump generation"
    );
    let (_, o) = s.patch(&path, MERGE, json!({ "spec": { "parallelism": 2 } }));
    assert_eq!(o["metadata"]["generation"], 2);
    assert_eq!(
        o["status"]["lifecycleState"], "Running",
        "a spec write keeps status"
    );
    // Server-side apply of the status by the operator's field manager.
    let (c, o) = s.patch(&format!("{path}/status?fieldManager=runnel-operator&force=true"), "application/apply-patch+yaml",
        json!({ "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob", "status": { "lifecycleState": "Upgrading", "jobState": "RUNNING" } }));
    assert_eq!(c, 200, "{o}");
    let (_, o) = s.patch(&format!("{path}/status?fieldManager=runnel-operator&force=true"), "application/apply-patch+yaml",
        json!({ "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob", "status": { "lifecycleState": "Running" } }));
    assert_eq!(
        o["status"],
        json!({ "lifecycleState": "Running" }),
        "fields left out of the apply are removed"
    );
    // A resourceVersion in the applied status is a precondition: a status
    // decided from an older version of the object is refused.
    let current = o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = (rv(&o) - 1).to_string();
    let (c, st) = s.patch(&format!("{path}/status?fieldManager=runnel-operator&force=true"), "application/apply-patch+yaml",
        json!({ "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob", "metadata": { "resourceVersion": stale }, "status": { "lifecycleState": "Failed" } }));
    assert_eq!(c, 409, "{st}");
    let (c, o) = s.patch(&format!("{path}/status?fieldManager=runnel-operator&force=true"), "application/apply-patch+yaml",
        json!({ "apiVersion": "runnel.dev/v1alpha1", "kind": "StreamJob", "metadata": { "resourceVersion": current }, "status": { "lifecycleState": "Running", "jobState": "RUNNING" } }));
    assert_eq!(c, 200, "{o}");
    assert_eq!(o["status"]["jobState"], "RUNNING");
    // Strategic merge is not for custom resources.
    assert_eq!(
        s.patch(&path, "application/strategic-merge-patch+json", json!({}))
            .0,
        415
    );
    // Schema and CEL validation.
    let mut bad = sj("bad");
    bad["spec"]["parallelism"] = json!(8);
    bad["spec"]["maxParallelism"] = json!(4);
    let (c, st) = s.post(SJ, bad);
    assert_eq!(c, 422);
    assert_eq!(
        st["message"],
        "StreamJob.runnel.dev \"bad\" is invalid: spec: Invalid value: \"object\": parallelism must not exceed maxParallelism"
    );
    let mut unknown = sj("unknown");
    unknown["spec"]["paralelism"] = json!(2);
    let (c, st) = s.post(&format!("{SJ}?fieldValidation=Strict"), unknown.clone());
    assert_eq!(c, 422);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("spec.paralelism: field not declared in schema"),
        "{st}"
    );
    let (c, o) = s.post(SJ, unknown);
    assert_eq!(c, 201, "Warn (the default) prunes");
    assert!(o["spec"].get("paralelism").is_none());
    // Deleting the CRD deletes its objects and stops serving the kind.
    s.req(
        "DELETE",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/streamjobs.runnel.dev",
        "",
        None,
    );
    assert_eq!(
        s.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/streamjobs.runnel.dev")
            .0,
        404
    );
    assert_eq!(s.get(SJ).0, 404);
}

#[test]
fn finalizers_hold_an_object_until_removed() {
    let s = start(1000);
    let mut o = cm("f");
    o["metadata"]["finalizers"] = json!(["runnel.dev/final-savepoint"]);
    s.post(CMS, o);
    let (c, o) = s.req("DELETE", &format!("{CMS}/f"), "", None);
    assert_eq!(c, 200);
    assert!(o["metadata"]["deletionTimestamp"].is_string());
    // Still there; a second delete changes nothing.
    assert_eq!(s.get(&format!("{CMS}/f")).0, 200);
    s.req("DELETE", &format!("{CMS}/f"), "", None);
    let (_, o2) = s.get(&format!("{CMS}/f"));
    assert_eq!(rv(&o2), rv(&o));
    s.patch(
        &format!("{CMS}/f"),
        MERGE,
        json!({ "metadata": { "finalizers": [] } }),
    );
    assert_eq!(s.get(&format!("{CMS}/f")).0, 404);
}

#[test]
fn events_are_one_store_with_two_views() {
    let s = start(1000);
    let ev = json!({ "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": { "name": "e1" }, "eventTime": "2026-01-01T00:00:00.000000Z",
        "regarding": { "kind": "StreamJob", "name": "a", "namespace": "default", "uid": "u" },
        "reason": "JobRunning", "note": "running", "type": "Normal", "action": "Reconcile",
        "reportingController": "runnel-operator", "reportingInstance": "x" });
    assert_eq!(
        s.post("/apis/events.k8s.io/v1/namespaces/default/events", ev)
            .0,
        201
    );
    let (c, l) = s.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Da,involvedObject.kind%3DStreamJob");
    assert_eq!(c, 200);
    assert_eq!(l["items"].as_array().unwrap().len(), 1);
    assert_eq!(l["items"][0]["message"], "running");
    assert_eq!(l["items"][0]["involvedObject"]["uid"], "u");
    let (_, l) = s.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Db");
    assert!(l["items"].as_array().unwrap().is_empty());
}

#[test]
fn the_kube_client_lists_watches_and_applies() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
    let s = start(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = kube::Config::new(s.url.parse().unwrap());
        let client = kube::Client::try_from(cfg).unwrap();
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(cm("k")).unwrap(),
            )
            .await
            .unwrap();
        let v = created.metadata.resource_version.clone().unwrap();
        api.patch(
            "k",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "z": "1" } })),
        )
        .await
        .unwrap();
        let err = api
            .patch(
                "k",
                &PatchParams::apply("other"),
                &Patch::Apply(
                    json!({ "apiVersion": "v1", "kind": "ConfigMap", "data": { "z": "2" } }),
                ),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
            "{err:?}"
        );
        use futures::StreamExt;
        let mut w = api
            .watch(&WatchParams::default().timeout(1), &v)
            .await
            .unwrap()
            .boxed();
        match w.next().await.unwrap().unwrap() {
            WatchEvent::Modified(o) => assert_eq!(o.data.unwrap()["z"], "1"),
            other => panic!("{other:?}"),
        }
        let list = api.list(&Default::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
    });
}
