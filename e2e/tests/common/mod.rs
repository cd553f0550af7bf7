//! The scenario harness: a target (the local control plane started here, or
//! a cluster from `RUNNEL_E2E_KUBECONFIG`), the S3 server, the operator, and
//! kubectl. Everything is a real process; synchronisation is by polling
//! status with deadlines.
#![allow(dead_code)]

pub mod s3;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Scenarios run one at a time: each starts several processes on a small machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    match M.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace, built (once per test process) so that it is
/// never stale.
pub fn bin(package: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let path = target.join("debug").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        // Both binaries in one build: built separately, cargo would unify
        // features differently and rebuild the shared dependencies each time.
        let _ = package;
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "runnel-runtime",
                "--bin",
                "runnel",
                "-p",
                "runnel-operator",
                "--bin",
                "runnel-operator",
            ])
            .current_dir(workspace())
            .status()
            .expect("cargo runs");
        assert!(
            st.success(),
            "building the runnel and runnel-operator binaries failed"
        );
        built.push("runnel".into());
        built.push("runnel-operator".into());
    }
    path
}

/// `which kubectl`, or the skip/fail rule when it is missing.
fn kubectl_path() -> Option<PathBuf> {
    let p = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubectl"));
    match Command::new(&p).args(["version", "--client"]).output() {
        Ok(o) if o.status.success() => Some(p),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "kubectl is not installed (it ships with the machine image; see docs/e2e.md)"
                );
            }
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\nSKIPPING: kubectl is not installed. This scenario did NOT run.\nUnder CI=1 this is a failure.\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// Where the scenarios run.
pub struct Stack {
    pub kubeconfig: PathBuf,
    pub ns: String,
    pub dir: tempfile::TempDir,
    pub local: bool,
    kubectl: PathBuf,
    kube_local: Option<Child>,
    operator: Option<Child>,
    operator_starts: u32,
    pub moto: Option<s3::Moto>,
    /// `s3://bucket/prefix?...` every job of this stack writes under.
    pub s3_base: String,
    pub bucket: String,
    pub image: String,
    /// On a cluster: the kind node whose `NODE_OUT` the runtime pods write
    /// their file-sink output to, and this stack's directory under it.
    kind_node: String,
    node_out: String,
}

/// On a kind cluster, runtime pods write file-sink output to this hostPath
/// of the (single) node, which outlives the pods; the test reads it back with
/// `docker exec`, so exactly-once is checked there as it is locally.
/// `e2e/kind/run.sh` creates it, writable for the runtime's non-root user.
const NODE_OUT: &str = "/tmp/runnel-e2e";

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| d.to_string())
}

impl Stack {
    /// Starts the stack, or returns None (after a loud message) when a
    /// component is missing and `CI` is unset.
    pub fn start(name: &str) -> Option<Stack> {
        let kubectl = kubectl_path()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("runnel-e2e-{name}-"))
            .tempdir()
            .unwrap();
        match std::env::var_os("RUNNEL_E2E_KUBECONFIG") {
            Some(kc) => {
                // A cluster (kind) with the chart and dev stack installed.
                let ns = env_or("RUNNEL_E2E_NAMESPACE", "runnel-e2e");
                let bucket = env_or("RUNNEL_E2E_S3_BUCKET", "runnel");
                let endpoint = env_or(
                    "RUNNEL_E2E_S3_ENDPOINT",
                    "http://s3.runnel-dev.svc.cluster.local:5000",
                );
                let s = Stack {
                    kubeconfig: PathBuf::from(kc),
                    ns,
                    s3_base: format!(
                        "s3://{bucket}/e2e-{name}-{}?endpoint={endpoint}&region=us-east-1&path_style=true",
                        std::process::id()
                    ),
                    bucket,
                    image: env_or("RUNNEL_E2E_IMAGE", "runnel:dev"),
                    kind_node: env_or("RUNNEL_E2E_KIND_NODE", "runnel-e2e-control-plane"),
                    node_out: format!("e2e-{name}-{}", std::process::id()),
                    dir,
                    local: false,
                    kubectl,
                    kube_local: None,
                    operator: None,
                    operator_starts: 0,
                    moto: None,
                };
                let _ = s.kubectl(&["create", "namespace", &s.ns]);
                s.secret();
                Some(s)
            }
            None => {
                let moto = s3::Moto::start()?;
                let bucket = "runnel".to_string();
                moto.create_bucket(&bucket);
                let kubeconfig = dir.path().join("kubeconfig");
                let state = dir.path().join("state");
                let log = std::fs::File::create(dir.path().join("kube-local.log")).unwrap();
                let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-kube-local"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--state-dir")
                    .arg(&state)
                    .arg("--runnel-bin")
                    .arg(bin("runnel-runtime", "runnel"))
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::piped())
                    .stderr(log)
                    .spawn()
                    .expect("runnel-kube-local starts");
                let mut line = String::new();
                BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert!(
                    line.starts_with("serving http://"),
                    "unexpected first line: {line:?}"
                );
                let mut s = Stack {
                    kubeconfig,
                    ns: "e2e".into(),
                    s3_base: moto.uri(&bucket, &format!("e2e-{name}")),
                    bucket,
                    image: "runnel:dev".into(),
                    kind_node: String::new(),
                    node_out: String::new(),
                    dir,
                    local: true,
                    kubectl,
                    kube_local: Some(child),
                    operator: None,
                    operator_starts: 0,
                    moto: Some(moto),
                };
                s.kubectl_ok(&[
                    "apply",
                    "-f",
                    workspace()
                        .join("crds/streamjobs.runnel.dev.yaml")
                        .to_str()
                        .unwrap(),
                ]);
                // `kubectl create namespace` would send protobuf, which the
                // local control plane refuses (docs/e2e.md); apply sends JSON.
                let o = s.kubectl_stdin(
                    &["apply", "-f", "-"],
                    "apiVersion: v1\nkind: Namespace\nmetadata: { name: e2e }\n",
                );
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                s.secret();
                s.start_operator();
                Some(s)
            }
        }
    }

    fn secret(&self) {
        let yaml = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: runnel-s3, namespace: {} }}\nstringData:\n  AWS_ACCESS_KEY_ID: runnel-test\n  AWS_SECRET_ACCESS_KEY: runnel-test-secret\n  AWS_EC2_METADATA_DISABLED: \"true\"\n",
            self.ns
        );
        let o = self.kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// Starts the real operator (local target only), with leader election
    /// on a Lease in the job namespace and a stable identity.
    pub fn start_operator(&mut self) {
        assert!(self.local, "the cluster's operator is managed by the chart");
        self.operator_starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("operator.log"))
            .unwrap();
        let child = Command::new(bin("runnel-operator", "runnel-operator"))
            .args([
                "run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "text",
                "--namespace",
                &self.ns,
                "--lease-namespace",
                &self.ns,
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", "e2e-operator")
            .env("RUST_LOG", "info,kube=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("runnel-operator starts");
        self.operator = Some(child);
    }

    /// Kills the operator without warning (SIGKILL locally; a forced pod
    /// delete on a cluster).
    pub fn kill_operator(&mut self) {
        if self.local {
            if let Some(mut c) = self.operator.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
        } else {
            let ns = env_or("RUNNEL_E2E_OPERATOR_NAMESPACE", "runnel-system");
            let sel = env_or(
                "RUNNEL_E2E_OPERATOR_SELECTOR",
                "app.kubernetes.io/name=runnel-operator",
            );
            self.kubectl_ok(&[
                "delete",
                "pod",
                "-n",
                &ns,
                "-l",
                &sel,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
        }
    }

    /// Restarts what `kill_operator` killed (a cluster's Deployment does it by itself).
    pub fn restart_operator(&mut self) {
        if self.local {
            self.start_operator();
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, "")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = Command::new(&self.kubectl)
            .args(args)
            .args(
                if args
                    .iter()
                    .any(|a| *a == "namespace" || *a == "-n" || a.starts_with("--namespace"))
                {
                    vec![]
                } else {
                    vec!["-n", self.ns.as_str()]
                },
            )
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("kubecache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    pub fn apply(&self, yaml: &str) -> Output {
        self.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    pub fn get(&self, what: &[&str]) -> Option<Value> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        let o = self.kubectl(&args);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    pub fn sj(&self, name: &str) -> Value {
        self.get(&["streamjob", name]).unwrap_or(Value::Null)
    }

    /// Polls the StreamJob until `pred` holds (or panics with `what` and the
    /// last object at the deadline).
    pub fn wait_sj(
        &self,
        name: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let sj = self.sj(name);
            if pred(&sj) {
                return sj;
            }
            if Instant::now() > deadline {
                self.dump();
                panic!(
                    "timed out waiting for {what}; last StreamJob:\n{}",
                    serde_json::to_string_pretty(&sj["status"]).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls until `f` gives Some.
    pub fn wait_for<T>(&self, what: &str, secs: u64, f: impl Fn() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                self.dump();
                panic!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The pods of a job.
    pub fn pods(&self, job: &str) -> Vec<Value> {
        self.get(&["pods", "-l", &format!("runnel.dev/job={job}")])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Kills the runtime process of a pod with SIGKILL (locally), or
    /// force-deletes the pod (on a cluster): the runtime dies without a
    /// chance to savepoint.
    pub fn kill_runtime(&self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        if !self.local {
            self.kubectl_ok(&[
                "delete",
                "pod",
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
            return;
        }
        let ip = pod["status"]["podIP"].as_str().expect("the pod has an IP");
        let needle = format!("{ip}:8081");
        let pid = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
            })
            .unwrap_or_else(|| panic!("no process listens for pod {name} on {needle}"));
        // SAFETY: kill(2) on the pid of the pod's runtime process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }

    pub fn s3(&self, sub: &str) -> String {
        let (base, query) = self.s3_base.split_once('?').unwrap_or((&self.s3_base, ""));
        if query.is_empty() {
            format!("{base}/{sub}")
        } else {
            format!("{base}/{sub}?{query}")
        }
    }

    /// The local output directory of a job's file sink.
    pub fn out_dir(&self, job: &str) -> PathBuf {
        self.dir.path().join(format!("out-{job}"))
    }

    /// Where a job's file sink writes, as the runtime pod sees it: a local
    /// directory, or on a cluster a directory of the node's hostPath.
    fn sink_path(&self, job: &str) -> String {
        if self.local {
            self.out_dir(job).display().to_string()
        } else {
            format!("/out/{}/{job}", self.node_out)
        }
    }

    /// On a cluster: the podTemplate that mounts the node's output hostPath.
    fn output_volume(&self) -> String {
        if self.local {
            return String::new();
        }
        format!(
            "  podTemplate:\n    spec:\n      volumes:\n        - name: out\n          hostPath: {{ path: {NODE_OUT}, type: Directory }}\n      containers:\n        - name: runtime\n          volumeMounts:\n            - {{ name: out, mountPath: /out }}\n"
        )
    }

    /// A StreamJob for seed 000's walk-through: a deterministic generator
    /// (record i of subtask s is n = 2i + s), checkpoints and savepoints in
    /// S3, the exactly-once file sink. `map` is the map step's fields.
    pub fn streamjob(&self, name: &str, map: &str, extra_spec: &str) -> String {
        format!(
            r#"apiVersion: runnel.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
  namespace: {ns}
spec:
  image: {image}
  parallelism: 2
  upgradeMode: savepoint
  checkpointing:
    interval: 1s
    storage: "{chk}"
  savepoints:
    directory: "{sp}"
  s3CredentialsSecret: runnel-s3
{volume}{extra_spec}  job:
    version: 1
    name: {name}
    sources:
      - name: numbers
        generator:
          ratePerSecond: 200
          fields:
            "n": {{ sequence: {{}} }}
    steps:
      - map:
          fields: {map}
    sinks:
      - name: out
        file: {{ path: "{out}" }}
"#,
            ns = self.ns,
            image = self.image,
            chk = self.s3(&format!("{name}/checkpoints")),
            sp = self.s3(&format!("{name}/savepoints")),
            out = self.sink_path(name),
            volume = self.output_volume(),
        )
    }

    /// Applies a walk-through StreamJob and waits until it runs with a completed checkpoint.
    pub fn deploy(&self, name: &str) -> Value {
        let o = self.apply(&self.streamjob(name, r#"{ "n": "n", "odd": "n % 2 == 1" }"#, ""));
        assert!(
            o.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("streamjob.runnel.dev/{name} created")
        );
        self.wait_sj(name, "Running with a completed checkpoint", 120, |s| {
            s["status"]["lifecycleState"] == "Running"
                && s["status"]["jobState"] == "RUNNING"
                && s["status"]["lastCheckpoint"]["path"].is_string()
        })
    }

    /// Suspends (stop with savepoint) and waits for it; returns the status.
    pub fn suspend(&self, name: &str) -> Value {
        self.kubectl_ok(&[
            "patch",
            "sj",
            name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"state":"suspended"}}"#,
        ]);
        // Suspended is shown as soon as the flow starts; it is done when no
        // operation and no deployment are left.
        let s = self.wait_sj(name, "Suspended", 120, |s| {
            s["status"]["lifecycleState"] == "Suspended"
                && s["status"]["operation"].is_null()
                && s["status"]["deployment"].is_null()
        });
        self.wait_for("the pods to be gone after suspend", 60, || {
            self.pods(name).is_empty().then_some(())
        });
        s
    }

    /// The records the file sink published (`part-*.jsonl` only). On a
    /// cluster they are read from the kind node's hostPath.
    pub fn output(&self, job: &str) -> Option<Vec<Value>> {
        if !self.local {
            let script = format!(
                "cd {NODE_OUT}/{}/{job} && for f in part-*.jsonl; do [ -f \"$f\" ] && cat \"$f\"; done; true",
                self.node_out
            );
            let o = Command::new("docker")
                .args(["exec", &self.kind_node, "sh", "-c", &script])
                .output()
                .expect("docker runs (the kind e2e needs it)");
            assert!(
                o.status.success(),
                "reading the output on node {}: {}",
                self.kind_node,
                String::from_utf8_lossy(&o.stderr)
            );
            return Some(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_str(l).expect("a published record"))
                    .collect(),
            );
        }
        let mut out = vec![];
        for e in std::fs::read_dir(self.out_dir(job)).ok()?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("part-") && n.ends_with(".jsonl") {
                for l in std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .filter(|l| !l.is_empty())
                {
                    out.push(serde_json::from_str(l).unwrap());
                }
            }
        }
        Some(out)
    }

    /// Keys under a prefix of the stack's bucket (local S3 only).
    pub fn s3_keys(&self, prefix: &str) -> Option<Vec<String>> {
        let m = self.moto.as_ref()?;
        Some(m.list(&self.bucket, prefix))
    }

    /// Prints the logs of the local processes (on a failure).
    pub fn dump(&self) {
        for f in ["operator.log", "kube-local.log"] {
            let p = self.dir.path().join(f);
            if let Ok(t) = std::fs::read_to_string(&p) {
                let lines: Vec<&str> = t.lines().collect();
                eprintln!(
                    "----- last lines of {f} -----\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
        }
        // Every pod's log (runtime pods, disposal Jobs' pods), last lines.
        let logs = self.dir.path().join("state/logs");
        for ns in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(t) = std::fs::read_to_string(f.path()) {
                    let lines: Vec<&str> = t.lines().collect();
                    eprintln!(
                        "----- last lines of pod log {} -----\n{}",
                        f.path().display(),
                        lines[lines.len().saturating_sub(20)..].join("\n")
                    );
                }
            }
        }
        if let Some(pods) = self.get(&["pods"]) {
            for p in pods["items"].as_array().into_iter().flatten() {
                eprintln!(
                    "pod {} {}: {}",
                    p["metadata"]["name"],
                    p["status"]["phase"],
                    p["status"]["containerStatuses"][0]["state"]
                );
            }
        }
        if let Some(e) = self.get(&["events"]) {
            for ev in e["items"].as_array().into_iter().flatten() {
                eprintln!(
                    "event {} {}: {}",
                    ev["involvedObject"]["name"], ev["reason"], ev["message"]
                );
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if let Some(mut c) = self.operator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.kube_local.take() {
            // SIGTERM: it kills its pod processes before exiting.
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Exactly once: per source subtask s, the published n form the gap-free
/// prefix s, s+2, s+4, ... and no value appears twice.
pub fn assert_exactly_once(records: &[Value]) -> Vec<i64> {
    let mut ns: Vec<i64> = records
        .iter()
        .map(|r| r["n"].as_i64().expect("n"))
        .collect();
    ns.sort_unstable();
    let before = ns.len();
    ns.dedup();
    assert_eq!(ns.len(), before, "duplicates in the output");
    for s in 0..2 {
        let mine: Vec<i64> = ns.iter().copied().filter(|n| n % 2 == s).collect();
        let expected: Vec<i64> = (0..mine.len() as i64).map(|k| k * 2 + s).collect();
        assert_eq!(mine, expected, "subtask {s}: records lost");
    }
    ns
}
