//! The pod runner (the kubelet stand-in) of `runnel-kube-local`, through its
//! HTTP API with the real `runnel` binary as the container: phases and exit
//! codes, restartPolicy, readiness probes and the pod's own address, deletion
//! (SIGTERM, then the pod goes), ConfigMap volumes, a missing Secret retried,
//! an unsupported volume refused with a message, and pod DNS names.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Plane {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Plane {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-kube-local"))
        .arg("--kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--runnel-bin")
        .arg(common::bin("runnel-runtime", "runnel"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runnel-kube-local starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .strip_prefix("serving ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Plane {
        url,
        child,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

impl Plane {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let a = agent();
        let mut r = match (method, body) {
            ("GET", _) => a.get(&url).call(),
            ("DELETE", _) => a.delete(&url).call(),
            ("POST", Some(b)) => a
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            other => panic!("unsupported {other:?}"),
        }
        .unwrap();
        let code = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn log(&self, pod: &str) -> String {
        let mut r = agent()
            .get(&format!(
                "{}/api/v1/namespaces/default/pods/{pod}/log",
                self.url
            ))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut().read_to_string().unwrap()
    }

    fn create(&self, plural: &str, obj: Value) {
        let (code, body) = self.call(
            "POST",
            &format!("/api/v1/namespaces/default/{plural}"),
            Some(obj),
        );
        assert_eq!(code, 201, "{body}");
    }

    fn pod(&self, name: &str) -> Option<Value> {
        match self.call(
            "GET",
            &format!("/api/v1/namespaces/default/pods/{name}"),
            None,
        ) {
            (200, p) => Some(p),
            (404, _) => None,
            (code, body) => panic!("GET pod {name}: {code} {body}"),
        }
    }

    /// Polls the pod until `f` holds (the runner reports through the API).
    fn wait_pod(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = self.pod(name)
                && f(&p)
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name}: timed out waiting for {what}: {:?}",
                self.pod(name).map(|p| p["status"].clone())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn pod(name: &str, args: &[&str], restart: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": restart,
            "containers": [{ "name": "runtime", "image": "runnel:dev", "args": args }],
        },
    })
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

#[test]
fn exit_codes_become_phases_and_restart_policy_restarts() {
    let k = start();
    k.create("pods", pod("ok", &["--version"], "Never"));
    k.create("pods", pod("bad", &["no-such-command"], "Never"));
    k.create("pods", pod("again", &["no-such-command"], "Always"));
    let ok = k.wait_pod("ok", "Succeeded", |p| phase(p) == "Succeeded");
    let t = &ok["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 0, "{ok}");
    let bad = k.wait_pod("bad", "Failed", |p| phase(p) == "Failed");
    let t = &bad["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 2, "clap's usage error: {bad}");
    assert_eq!(bad["status"]["containerStatuses"][0]["restartCount"], 0);
    // restartPolicy Always: the process is started again and again, with
    // its last exit kept in lastState, and the pod never ends.
    let again = k.wait_pod("again", "two restarts", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    });
    let cs = &again["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 2, "{again}");
    assert_ne!(phase(&again), "Failed");
    assert_ne!(phase(&again), "Succeeded");
}

#[test]
fn a_running_pod_listens_on_its_own_address_turns_ready_and_goes_on_delete() {
    let k = start();
    k.create(
        "configmaps",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "job" },
            "data": { "job.yaml": "version: 1\nname: endless\nsources:\n  - name: numbers\n    generator: { ratePerSecond: 100, fields: { n: { sequence: {} } } }\nsinks:\n  - name: out\n    stdout: {}\n" },
        }),
    );
    let mut p = pod(
        "job",
        &[
            "run",
            "/etc/runnel/job.yaml",
            "--control-addr",
            "0.0.0.0:8081",
        ],
        "Never",
    );
    p["spec"]["volumes"] = json!([{ "name": "job", "configMap": { "name": "job" } }]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{ "name": "job", "mountPath": "/etc/runnel" }]);
    p["spec"]["containers"][0]["readinessProbe"] =
        json!({ "httpGet": { "path": "/readyz", "port": 8081 }, "periodSeconds": 1 });
    k.create("pods", p);
    let running = k.wait_pod("job", "Ready", |p| {
        phase(p) == "Running"
            && p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let ip = running["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "{ip}");
    // `0.0.0.0:8081` was rewritten to the pod's address: the job's control
    // API answers there, with the job from the ConfigMap volume.
    let (code, st) = {
        let mut r = agent()
            .get(&format!("http://{ip}:8081/v1/job"))
            .call()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.body_mut().read_json::<Value>().unwrap())
    };
    assert_eq!(code, 200);
    assert_eq!(st["name"], "endless");

    // Delete: a deletion timestamp first, then the process gets SIGTERM, and
    // the pod is gone once it exited.
    let (code, body) = k.call("DELETE", "/api/v1/namespaces/default/pods/job", None);
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while k.pod("job").is_some() {
        assert!(Instant::now() < deadline, "the pod is not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::net::TcpStream::connect((ip.as_str(), 8081)).is_err(),
        "the runtime process is gone"
    );
}

#[test]
fn a_missing_secret_is_retried_and_an_unsupported_volume_is_refused() {
    let k = start();
    let mut waits = pod("waits", &["--version"], "Never");
    waits["spec"]["containers"][0]["envFrom"] = json!([{ "secretRef": { "name": "later" } }]);
    k.create("pods", waits);
    let p = k.wait_pod("waits", "CreateContainerConfigError", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    assert_eq!(phase(&p), "Pending");
    k.create(
        "secrets",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "later" }, "data": { "X": "eA==" } }),
    );
    k.wait_pod("waits", "Succeeded once the Secret exists", |p| {
        phase(p) == "Succeeded"
    });

    let mut host = pod("host", &["--version"], "Never");
    host["spec"]["volumes"] = json!([{ "name": "h", "hostPath": { "path": "/tmp" } }]);
    k.create("pods", host);
    let p = k.wait_pod("host", "a refusal", |p| phase(p) == "Failed");
    let text = p["status"].to_string();
    assert!(
        text.contains("hostPath") && text.contains("not supported by runnel-kube-local"),
        "{text}"
    );
}

#[test]
fn a_pod_dns_name_is_its_address_for_other_pods_and_for_its_replacement() {
    let k = start();
    let named = |name: &str| {
        let mut p = pod(name, &["worker", "/etc/none.yaml"], "Never");
        p["spec"]["hostname"] = json!("w0");
        p["spec"]["subdomain"] = json!("svc");
        p
    };
    // Another pod names it before it exists; its args are rewritten to the
    // address that the name owns from then on.
    k.create(
        "pods",
        pod(
            "client",
            &["status", "http://w0.svc.default.svc.cluster.local:7070"],
            "Never",
        ),
    );
    k.create("pods", named("first"));
    let first = k.wait_pod("first", "Failed", |p| phase(p) == "Failed");
    let ip = first["status"]["podIP"].as_str().unwrap().to_string();
    k.wait_pod("client", "Failed", |p| phase(p) == "Failed");
    let log = k.log("client");
    assert!(log.contains(&format!("{ip}:7070")), "{log}");
    assert!(!log.contains("cluster.local"), "{log}");
    let (code, _) = k.call("DELETE", "/api/v1/namespaces/default/pods/first", None);
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while k.pod("first").is_some() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    k.create("pods", named("second"));
    let second = k.wait_pod("second", "an address", |p| p["status"]["podIP"].is_string());
    assert_eq!(
        second["status"]["podIP"],
        ip.as_str(),
        "same name, same address"
    );
    let other = k.wait_pod("client", "an address", |p| p["status"]["podIP"].is_string());
    assert_ne!(other["status"]["podIP"], ip.as_str());
}
