//! The pod runner: the kubelet of the local control plane.
//!
//! Each Pod of the runtime image becomes a local process of the `runnel`
//! binary, started from the container's command, args and env (with `envFrom`
//! and `valueFrom` Secrets and ConfigMaps, and `$(VAR)` expansion). ConfigMap,
//! Secret and emptyDir volumes are materialised in a per-pod directory and
//! mount paths in the command line are rewritten to it. Each pod gets its own
//! loopback address (127.N.x.y; Linux routes all of 127/8 to `lo`) as
//! `status.podIP`, and a `0.0.0.0:PORT` bind address in the command line is
//! rewritten to it: the stand-in for a pod network namespace. A pod with
//! `spec.hostname` and `spec.subdomain` has the DNS name
//! `hostname.subdomain.namespace.svc.cluster.local` in Kubernetes; here that
//! name owns a fixed address, which every pod of that name gets (a
//! replacement included), and such names in any pod's command line are
//! rewritten to it: the stand-in for cluster DNS. Phases:
//! Pending → Running (process up; Ready when the readinessProbe's HTTP GET
//! passes) → Succeeded/Failed with the exit code; restartPolicy Always and
//! OnFailure restart the process. Deleting the pod sends SIGTERM to its
//! process group, then SIGKILL after the grace period, then removes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};

use crate::meta::{self, name_of, namespace_of, uid_of};
use crate::store::{ChangeKind, Store};

const MANAGER: &str = "runnel-kube-local-kubelet";

/// How the runner maps pods to local processes.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The binary that stands for the runtime image's `runnel`.
    pub runnel_bin: PathBuf,
    /// Per-pod directories (volumes, working directory) and logs.
    pub state_dir: PathBuf,
    /// Second octet of pod addresses: 127.<net>.x.y.
    pub pod_net: u8,
    pub node_name: String,
}

impl RunnerConfig {
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Graceful(i64),
    Kill,
}

pub struct PodRunner {
    store: Arc<Store>,
    cfg: RunnerConfig,
    pods: Mutex<HashMap<String, watch::Sender<Option<Stop>>>>,
    next_ip: AtomicU32,
    /// Pod DNS names (`hostname.subdomain.ns.svc.cluster.local`) and the
    /// address each owns, given when the name is first seen.
    names: Mutex<HashMap<String, String>>,
    /// Process groups of running pods, for shutdown.
    pgids: Arc<Mutex<HashMap<String, i32>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Sends `sig` to a process group.
fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group; no
        // memory is involved. The group is one this runner created.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl PodRunner {
    pub fn new(store: Arc<Store>, cfg: RunnerConfig) -> Arc<PodRunner> {
        Arc::new(PodRunner {
            store,
            cfg,
            pods: Mutex::new(HashMap::new()),
            next_ip: AtomicU32::new(0),
            names: Mutex::new(HashMap::new()),
            pgids: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Kills every pod process (the control plane is going away).
    pub fn shutdown(&self) {
        for pgid in lock(&self.pgids).values() {
            signal_group(*pgid, libc::SIGKILL);
        }
    }

    fn alloc_ip(&self) -> String {
        let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
        format!(
            "127.{}.{}.{}",
            self.cfg.pod_net,
            (n / 250) % 256,
            n % 250 + 2
        )
    }

    /// The address a pod DNS name owns.
    fn ip_of_name(&self, fqdn: &str) -> String {
        if let Some(ip) = lock(&self.names).get(fqdn) {
            return ip.clone();
        }
        let ip = self.alloc_ip();
        lock(&self.names)
            .entry(fqdn.to_string())
            .or_insert(ip)
            .clone()
    }

    /// Follows the pods until the store goes away.
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.store.subscribe();
        self.scan();
        loop {
            match rx.recv().await {
                Ok(c) if c.storage == "pods" => {
                    self.on_pod(&c.object, c.kind == ChangeKind::Deleted)
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.scan(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn scan(self: &Arc<Self>) {
        let Ok(rt) = self.store.registry().lookup("", "v1", "pods") else {
            return;
        };
        let (pods, _) = self.store.list(&rt, None, &|_| true);
        let live: Vec<String> = pods.iter().map(|p| uid_of(p).to_string()).collect();
        let gone: Vec<String> = lock(&self.pods)
            .keys()
            .filter(|u| !live.contains(u))
            .cloned()
            .collect();
        for u in gone {
            if let Some(tx) = lock(&self.pods).remove(&u) {
                let _ = tx.send(Some(Stop::Kill));
            }
        }
        for p in pods {
            self.on_pod(&p, false);
        }
    }

    fn on_pod(self: &Arc<Self>, pod: &Value, deleted: bool) {
        let uid = uid_of(pod).to_string();
        if deleted {
            if let Some(tx) = lock(&self.pods).remove(&uid) {
                let _ = tx.send(Some(Stop::Kill));
            }
            return;
        }
        if pod["metadata"]["deletionTimestamp"].is_string() {
            if let Some(tx) = lock(&self.pods).get(&uid) {
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30);
                let _ = tx.send(Some(if grace <= 0 {
                    Stop::Kill
                } else {
                    Stop::Graceful(grace)
                }));
            }
            return;
        }
        if lock(&self.pods).contains_key(&uid) || pod["spec"]["nodeName"].is_string() {
            return;
        }
        let ip = match pod_dns_name(pod) {
            Some(fqdn) => self.ip_of_name(&fqdn),
            None => self.alloc_ip(),
        };
        let (ns, name) = (namespace_of(pod).to_string(), name_of(pod).to_string());
        let node = self.cfg.node_name.clone();
        let now = meta::now_rfc3339();
        let cname = pod["spec"]["containers"][0]["name"].clone();
        let image = pod["spec"]["containers"][0]["image"].clone();
        let taken = self.store.update_internal("pods", &ns, &name, &uid, MANAGER, |p| {
            p["spec"]["nodeName"] = json!(node);
            p["status"] = json!({
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "hostIPs": [{ "ip": "127.0.0.1" }],
                "podIP": ip,
                "podIPs": [{ "ip": ip }],
                "startTime": now,
                "qosClass": "BestEffort",
                "conditions": conditions(&now, false),
                "containerStatuses": [{
                    "name": cname, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                    "started": false, "state": { "waiting": { "reason": "ContainerCreating" } },
                }],
            });
        });
        let Some(pod) = taken else { return };
        let (tx, rx) = watch::channel(None);
        lock(&self.pods).insert(uid.clone(), tx);
        let me = self.clone();
        tokio::spawn(async move {
            me.run_pod(pod, ip, rx).await;
            lock(&me.pods).remove(&uid);
        });
    }

    fn set_status(&self, pod: &Value, f: impl FnOnce(&mut Value)) {
        self.store.update_internal(
            "pods",
            namespace_of(pod),
            name_of(pod),
            uid_of(pod),
            MANAGER,
            |p| f(&mut p["status"]),
        );
    }

    async fn run_pod(&self, pod: Value, ip: String, mut stop: watch::Receiver<Option<Stop>>) {
        let (ns, name, uid) = (
            namespace_of(&pod).to_string(),
            name_of(&pod).to_string(),
            uid_of(&pod).to_string(),
        );
        let container = pod["spec"]["containers"][0].clone();
        let policy = pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_string();
        let workdir = self
            .cfg
            .state_dir
            .join("pods")
            .join(&ns)
            .join(format!("{name}-{}", &uid[..8.min(uid.len())]));
        let log_path = self.cfg.logs_dir().join(&ns).join(format!("{name}.log"));
        let mut restarts = 0i64;
        loop {
            // Prepare: env and volumes (retried while a Secret or ConfigMap is missing).
            let prepared = loop {
                match prepare(
                    &|n: &str| self.ip_of_name(n),
                    &self.store,
                    &pod,
                    &container,
                    &workdir,
                    &ip,
                    &self.cfg.runnel_bin,
                ) {
                    Ok(p) => break p,
                    Err(Prepare::Retry(msg)) => {
                        self.set_status(&pod, |s| waiting(s, "CreateContainerConfigError", &msg));
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = stop.changed() => { self.store.finish_pod_deletion(&ns, &name, &uid); return; }
                        }
                    }
                    Err(Prepare::Fatal(msg)) => {
                        tracing::warn!(pod = %name, "cannot start: {msg}");
                        self.set_status(&pod, |s| {
                            terminated(s, 128, "StartError", &msg, restarts, true)
                        });
                        let _ = stop.changed().await;
                        self.store.finish_pod_deletion(&ns, &name, &uid);
                        return;
                    }
                }
            };
            let code = match self
                .run_process(
                    &pod, &prepared, &log_path, &workdir, &ip, restarts, &mut stop,
                )
                .await
            {
                Ok(Outcome::Exited(c)) => c,
                Ok(Outcome::Stopped(c)) => {
                    self.set_status(&pod, |s| {
                        terminated(
                            s,
                            c,
                            if c == 0 { "Completed" } else { "Error" },
                            "",
                            restarts,
                            true,
                        )
                    });
                    self.store.finish_pod_deletion(&ns, &name, &uid);
                    return;
                }
                Err(msg) => {
                    self.set_status(&pod, |s| {
                        terminated(s, 128, "StartError", &msg, restarts, true)
                    });
                    let _ = stop.changed().await;
                    self.store.finish_pod_deletion(&ns, &name, &uid);
                    return;
                }
            };
            let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
            self.set_status(&pod, |s| {
                terminated(
                    s,
                    code,
                    if code == 0 { "Completed" } else { "Error" },
                    "",
                    restarts,
                    !restart,
                )
            });
            if !restart {
                let _ = stop.changed().await;
                self.store.finish_pod_deletion(&ns, &name, &uid);
                return;
            }
            restarts += 1;
            // Back-off before a restart (upstream: 10 s doubling to 5 min;
            // here 1 s doubling to 30 s, to keep tests short).
            let backoff = Duration::from_secs((1u64 << (restarts - 1).min(5)).min(30));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => { self.store.finish_pod_deletion(&ns, &name, &uid); return; }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_process(
        &self,
        pod: &Value,
        p: &Prepared,
        log_path: &Path,
        workdir: &Path,
        ip: &str,
        restarts: i64,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<Outcome, String> {
        if let Some(dir) = log_path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("cannot create the log directory: {e}"))?;
        }
        // The pod's working directory (its HOME) exists even when it has no
        // volumes: a missing current directory makes the spawn fail with
        // "No such file or directory", blamed on the program.
        tokio::fs::create_dir_all(workdir)
            .await
            .map_err(|e| format!("cannot create the pod's directory: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let mut cmd = tokio::process::Command::new(&p.program);
        cmd.args(&p.args)
            .env_clear()
            .envs(p.env.iter().cloned())
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", p.program.display()))?;
        let pgid = child.id().map(|i| i as i32).unwrap_or(0);
        let key = uid_of(pod).to_string();
        lock(&self.pgids).insert(key.clone(), pgid);
        let now = meta::now_rfc3339();
        let probe = p.probe.clone();
        let ready_now = probe.is_none();
        self.set_status(pod, |s| {
            s["phase"] = json!("Running");
            s["conditions"] = conditions(&now, ready_now);
            s["containerStatuses"][0]["state"] = json!({ "running": { "startedAt": now } });
            s["containerStatuses"][0]["ready"] = json!(ready_now);
            s["containerStatuses"][0]["started"] = json!(true);
            s["containerStatuses"][0]["restartCount"] = json!(restarts);
        });
        let mut ready = ready_now;
        let (period, initial) = probe
            .as_ref()
            .map(|pr| (pr.period, pr.initial))
            .unwrap_or((Duration::from_secs(3600), Duration::from_secs(3600)));
        let mut next_probe = tokio::time::Instant::now() + initial;
        let outcome = loop {
            tokio::select! {
                st = child.wait() => {
                    let code = st.map(|s| s.code().unwrap_or(137)).unwrap_or(137);
                    break Outcome::Exited(code);
                }
                _ = tokio::time::sleep_until(next_probe), if probe.is_some() => {
                    next_probe = tokio::time::Instant::now() + period;
                    if let Some(pr) = &probe {
                        let ok = http_probe(ip, pr).await;
                        if ok != ready {
                            ready = ok;
                            let t = meta::now_rfc3339();
                            self.set_status(pod, |s| {
                                s["conditions"] = conditions(&t, ok);
                                s["containerStatuses"][0]["ready"] = json!(ok);
                            });
                        }
                    }
                }
                _ = stop.changed() => {
                    let how = *stop.borrow();
                    let grace = match how { Some(Stop::Graceful(g)) => g, _ => 0 };
                    if grace > 0 {
                        signal_group(pgid, libc::SIGTERM);
                        if let Ok(st) = tokio::time::timeout(Duration::from_secs(grace as u64), child.wait()).await {
                            break Outcome::Stopped(st.map(|s| s.code().unwrap_or(143)).unwrap_or(143));
                        }
                    }
                    signal_group(pgid, libc::SIGKILL);
                    let st = child.wait().await;
                    break Outcome::Stopped(st.map(|s| s.code().unwrap_or(137)).unwrap_or(137));
                }
            }
        };
        // Anything the process left in its group goes with it.
        signal_group(pgid, libc::SIGKILL);
        lock(&self.pgids).remove(&key);
        Ok(outcome)
    }
}

enum Outcome {
    Exited(i32),
    /// Ended because the pod was deleted.
    Stopped(i32),
}

fn conditions(now: &str, ready: bool) -> Value {
    let r = if ready { "True" } else { "False" };
    json!([
        { "type": "PodScheduled", "status": "True", "lastTransitionTime": now },
        { "type": "Initialized", "status": "True", "lastTransitionTime": now },
        { "type": "ContainersReady", "status": r, "lastTransitionTime": now },
        { "type": "Ready", "status": r, "lastTransitionTime": now },
    ])
}

fn waiting(s: &mut Value, reason: &str, msg: &str) {
    s["containerStatuses"][0]["state"] = json!({ "waiting": { "reason": reason, "message": msg } });
}

fn terminated(s: &mut Value, code: i32, reason: &str, msg: &str, restarts: i64, final_: bool) {
    let now = meta::now_rfc3339();
    let started = s["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    let mut t =
        json!({ "exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now });
    if !msg.is_empty() {
        t["message"] = json!(msg);
    }
    let cs = &mut s["containerStatuses"][0];
    cs["ready"] = json!(false);
    cs["started"] = json!(false);
    cs["restartCount"] = json!(restarts);
    if final_ {
        cs["state"] = json!({ "terminated": t });
        s["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
        s["conditions"] = conditions(&now, false);
    } else {
        cs["lastState"] = json!({ "terminated": t });
        cs["state"] = json!({ "waiting": { "reason": "CrashLoopBackOff", "message": format!("back-off restarting the container (exit code {code})") } });
    }
}

#[derive(Clone, Debug)]
struct Probe {
    path: String,
    port: u16,
    period: Duration,
    initial: Duration,
    timeout: Duration,
}

/// What a container runs, resolved.
#[derive(Debug)]
struct Prepared {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    probe: Option<Probe>,
}

enum Prepare {
    /// A Secret or ConfigMap is missing: retried (upstream's CreateContainerConfigError).
    Retry(String),
    /// Something this runner does not support: the pod fails.
    Fatal(String),
}

fn decode(data: &Value, base64: bool) -> Vec<(String, String)> {
    data.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let s = v.as_str()?;
                    let s = if base64 {
                        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).ok()?)
                            .ok()?
                    } else {
                        s.to_string()
                    };
                    Some((k.clone(), s))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `$(VAR)` expansion as the kubelet does it (`$$` escapes; unknown stays).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites a mount path to its local directory, and `0.0.0.0:PORT` to the
/// pod's address.
pub fn rewrite_arg(arg: &str, mounts: &[(String, PathBuf)], ip: &str) -> String {
    let mut a = arg.replace("0.0.0.0:", &format!("{ip}:"));
    for (mp, dir) in mounts {
        let mp = mp.trim_end_matches('/');
        let local = dir.display().to_string();
        // The path may stand alone or follow `--flag=`.
        let (prefix, path) = match a.split_once('=') {
            Some((f, p)) if f.starts_with('-') => (format!("{f}="), p.to_string()),
            _ => (String::new(), a.clone()),
        };
        if path == mp {
            a = format!("{prefix}{local}");
        } else if let Some(tail) = path.strip_prefix(&format!("{mp}/")) {
            a = format!("{prefix}{local}/{tail}");
        }
    }
    a
}

/// `hostname.subdomain.namespace.svc.cluster.local` of a pod that sets both.
fn pod_dns_name(pod: &Value) -> Option<String> {
    let h = pod["spec"]["hostname"].as_str()?;
    let sub = pod["spec"]["subdomain"].as_str()?;
    Some(format!("{h}.{sub}.{}.svc.cluster.local", namespace_of(pod)))
}

/// Rewrites every pod DNS name (`a.b.c.svc.cluster.local`, three labels
/// before the cluster suffix) in `arg` to its address. Other names, such as
/// a Service's own name, are left alone: there is no cluster DNS here, and
/// the process will report them as unresolvable.
pub fn rewrite_pod_names(arg: &str, resolve: &dyn Fn(&str) -> String) -> String {
    const SUFFIX: &str = ".svc.cluster.local";
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while !rest.is_empty() {
        let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        match token.strip_suffix(SUFFIX) {
            Some(head) if head.split('.').count() == 3 && !head.split('.').any(str::is_empty) => {
                out.push_str(&resolve(token))
            }
            _ => out.push_str(token),
        }
        let sep = tail.chars().next().map_or(0, char::len_utf8);
        out.push_str(&tail[..sep]);
        rest = &tail[sep..];
    }
    out
}

fn get_obj(store: &Store, plural: &str, ns: &str, name: &str) -> Option<Value> {
    let rt = store.registry().lookup("", "v1", plural).ok()?;
    store.get(&rt, ns, name).ok()
}

fn prepare(
    resolve: &dyn Fn(&str) -> String,
    store: &Store,
    pod: &Value,
    c: &Value,
    workdir: &Path,
    ip: &str,
    runnel_bin: &Path,
) -> Result<Prepared, Prepare> {
    let ns = namespace_of(pod);
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), workdir.display().to_string()),
        ("HOSTNAME".into(), name_of(pod).into()),
    ];
    for ef in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = ef["prefix"].as_str().unwrap_or("");
        let (src, plural, b64) = if ef["secretRef"].is_object() {
            (&ef["secretRef"], "secrets", true)
        } else if ef["configMapRef"].is_object() {
            (&ef["configMapRef"], "configmaps", false)
        } else {
            return Err(Prepare::Fatal(
                "envFrom: only secretRef and configMapRef are supported".into(),
            ));
        };
        let name = src["name"].as_str().unwrap_or("");
        match get_obj(store, plural, ns, name) {
            Some(o) => env.extend(
                decode(&o["data"], b64)
                    .into_iter()
                    .map(|(k, v)| (format!("{prefix}{k}"), v)),
            ),
            None if src["optional"] == true => {}
            None => {
                return Err(Prepare::Retry(format!(
                    "{} \"{name}\" not found",
                    &plural[..plural.len() - 1]
                )));
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        if let Some(v) = e["value"].as_str() {
            let v = expand(v, &env);
            env.push((name, v));
            continue;
        }
        let vf = &e["valueFrom"];
        let value = if vf["secretKeyRef"].is_object() || vf["configMapKeyRef"].is_object() {
            let (r, plural, b64) = if vf["secretKeyRef"].is_object() {
                (&vf["secretKeyRef"], "secrets", true)
            } else {
                (&vf["configMapKeyRef"], "configmaps", false)
            };
            let (on, key) = (
                r["name"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
            );
            let found = get_obj(store, plural, ns, on).and_then(|o| {
                decode(&o["data"], b64)
                    .into_iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v)
            });
            match found {
                Some(v) => v,
                None if r["optional"] == true => continue,
                None => {
                    return Err(Prepare::Retry(format!(
                        "couldn't find key {key} in {} {ns}/{on}",
                        &plural[..plural.len() - 1]
                    )));
                }
            }
        } else if let Some(fp) = vf["fieldRef"]["fieldPath"].as_str() {
            match fp {
                "metadata.name" => name_of(pod).into(),
                "metadata.namespace" => ns.into(),
                "metadata.uid" => uid_of(pod).into(),
                "status.podIP" => ip.into(),
                "status.hostIP" => "127.0.0.1".into(),
                "spec.nodeName" => pod["spec"]["nodeName"].as_str().unwrap_or("").into(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .into(),
                other => {
                    return Err(Prepare::Fatal(format!(
                        "env {name}: fieldRef {other:?} is not supported by runnel-kube-local"
                    )));
                }
            }
        } else {
            return Err(Prepare::Fatal(format!(
                "env {name}: only value, secretKeyRef, configMapKeyRef and fieldRef are supported by runnel-kube-local"
            )));
        };
        env.push((name, value));
    }
    // Volumes.
    let vol_root = workdir.join("volumes");
    let mut volumes: HashMap<String, PathBuf> = HashMap::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or("").to_string();
        let dir = vol_root.join(&vname);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Prepare::Fatal(format!("cannot create volume {vname}: {e}")))?;
        let (src, plural, b64, obj_name) = if v["configMap"].is_object() {
            (
                &v["configMap"],
                "configmaps",
                false,
                v["configMap"]["name"].as_str().unwrap_or(""),
            )
        } else if v["secret"].is_object() {
            (
                &v["secret"],
                "secrets",
                true,
                v["secret"]["secretName"].as_str().unwrap_or(""),
            )
        } else if v["emptyDir"].is_object() {
            volumes.insert(vname, dir);
            continue;
        } else {
            let kind = v
                .as_object()
                .and_then(|m| m.keys().find(|k| *k != "name").cloned())
                .unwrap_or_default();
            return Err(Prepare::Fatal(format!(
                "volume {vname}: type {kind:?} is not supported by runnel-kube-local (configMap, secret, emptyDir are)"
            )));
        };
        let data = match get_obj(store, plural, ns, obj_name) {
            Some(o) => decode(&o["data"], b64),
            None if src["optional"] == true => vec![],
            None => {
                return Err(Prepare::Retry(format!(
                    "{} \"{obj_name}\" not found (volume {vname})",
                    &plural[..plural.len() - 1]
                )));
            }
        };
        let items: Option<Vec<(String, String)>> = src["items"].as_array().map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i["key"].as_str()?.to_string(),
                        i["path"].as_str()?.to_string(),
                    ))
                })
                .collect()
        });
        for (k, val) in &data {
            let rel = match &items {
                Some(list) => match list.iter().find(|(ik, _)| ik == k) {
                    Some((_, p)) => p.clone(),
                    None => continue,
                },
                None => k.clone(),
            };
            if rel.contains("..") || rel.starts_with('/') {
                return Err(Prepare::Fatal(format!(
                    "volume {vname}: invalid path {rel:?}"
                )));
            }
            let f = dir.join(&rel);
            if let Some(parent) = f.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            std::fs::write(&f, val)
                .map_err(|e| Prepare::Fatal(format!("cannot write {}: {e}", f.display())))?;
        }
        volumes.insert(vname, dir);
    }
    let mut mounts = vec![];
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or("");
        let mp = m["mountPath"].as_str().unwrap_or("").to_string();
        if m["subPath"].is_string() {
            return Err(Prepare::Fatal(format!(
                "volumeMount {mp}: subPath is not supported by runnel-kube-local"
            )));
        }
        let dir = volumes.get(vname).cloned().ok_or_else(|| {
            Prepare::Fatal(format!("volumeMount {mp}: no volume named {vname:?}"))
        })?;
        mounts.push((mp, dir));
    }
    // Command line.
    let command: Vec<String> = c["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let args: Vec<String> = c["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut argv: Vec<String> = match command.first() {
        // The runtime image's entrypoint is `runnel`.
        None => args,
        Some(p) if p == "runnel" || p.ends_with("/runnel") => {
            command[1..].iter().cloned().chain(args).collect()
        }
        Some(p) => {
            return Err(Prepare::Fatal(format!(
                "command {p:?}: runnel-kube-local runs only the runtime image's `runnel` binary"
            )));
        }
    };
    argv = argv
        .iter()
        .map(|a| rewrite_pod_names(&rewrite_arg(&expand(a, &env), &mounts, ip), resolve))
        .collect();
    let probe = match &c["readinessProbe"] {
        Value::Null => None,
        p if p["httpGet"].is_object() => {
            let hg = &p["httpGet"];
            let port = match &hg["port"] {
                Value::Number(n) => n.as_u64().unwrap_or(0) as u16,
                Value::String(named) => c["ports"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|x| x["name"].as_str() == Some(named)))
                    .and_then(|x| x["containerPort"].as_u64())
                    .unwrap_or(0) as u16,
                _ => 0,
            };
            Some(Probe {
                path: hg["path"].as_str().unwrap_or("/").into(),
                port,
                period: Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10).max(1)),
                initial: Duration::from_secs(p["initialDelaySeconds"].as_u64().unwrap_or(0)),
                timeout: Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1).max(1)),
            })
        }
        _ => {
            return Err(Prepare::Fatal(
                "readinessProbe: only httpGet is supported by runnel-kube-local".into(),
            ));
        }
    };
    if !c["livenessProbe"].is_null() || !c["startupProbe"].is_null() {
        return Err(Prepare::Fatal(
            "livenessProbe and startupProbe are not supported by runnel-kube-local".into(),
        ));
    }
    Ok(Prepared {
        program: runnel_bin.to_path_buf(),
        args: argv,
        env,
        probe,
    })
}

/// One HTTP GET; 200–399 passes, as the kubelet's probe.
async fn http_probe(ip: &str, p: &Probe) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((ip, p.port)).await.ok()?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {ip}:{}\r\nUser-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n",
            p.path, p.port
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        head.split_whitespace().nth(1)?.parse::<u16>().ok()
    };
    matches!(
        tokio::time::timeout(p.timeout, attempt).await,
        Ok(Some(200..=399))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dns_names_are_rewritten_to_their_addresses() {
        let resolve = |n: &str| match n {
            "d1-w0.j-workers.ns.svc.cluster.local" => "127.5.0.2".to_string(),
            "d1-w1.j-workers.ns.svc.cluster.local" => "127.5.0.3".to_string(),
            other => panic!("resolved {other}"),
        };
        assert_eq!(
            rewrite_pod_names(
                "d1-w0.j-workers.ns.svc.cluster.local:7070,d1-w1.j-workers.ns.svc.cluster.local:7070",
                &resolve
            ),
            "127.5.0.2:7070,127.5.0.3:7070"
        );
        assert_eq!(
            rewrite_pod_names("--workers=d1-w1.j-workers.ns.svc.cluster.local:1", &resolve),
            "--workers=127.5.0.3:1"
        );
        // A Service name (two labels) and other words are left alone.
        for keep in [
            "j-workers.ns.svc.cluster.local:7070",
            "coordinator",
            "/etc/runnel/job.yaml",
            "x.svc.cluster.localhost",
            "",
            "ü:1",
        ] {
            assert_eq!(rewrite_pod_names(keep, &resolve), keep);
        }
    }

    #[test]
    fn args_are_rewritten_to_the_pod() {
        let mounts = vec![(
            "/etc/runnel".to_string(),
            PathBuf::from("/tmp/p/volumes/job"),
        )];
        assert_eq!(
            rewrite_arg("/etc/runnel/job.yaml", &mounts, "127.9.0.2"),
            "/tmp/p/volumes/job/job.yaml"
        );
        assert_eq!(
            rewrite_arg("--file=/etc/runnel/job.yaml", &mounts, "127.9.0.2"),
            "--file=/tmp/p/volumes/job/job.yaml"
        );
        assert_eq!(
            rewrite_arg("/etc/runnelx", &mounts, "127.9.0.2"),
            "/etc/runnelx"
        );
        assert_eq!(
            rewrite_arg("0.0.0.0:8081", &mounts, "127.9.0.2"),
            "127.9.0.2:8081"
        );
        assert_eq!(rewrite_arg("run", &mounts, "127.9.0.2"), "run");
    }

    #[test]
    fn variables_expand() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }
}
