//! Issue 8's scenarios: the real `runnel-operator`, real `kubectl` and real
//! `runnel` runtime processes, with a real S3 server (moto). By default
//! against the local control plane (`runnel-kube-local`, started here);
//! with `RUNNEL_E2E_KUBECONFIG` against that cluster (kind, with the chart
//! and the dev stack installed; `RUNNEL_E2E_NAMESPACE` names the namespace).
//! See docs/e2e.md.

mod common;

use common::{Stack, assert_exactly_once, serial};
use serde_json::Value;

fn history(s: &Value) -> Vec<Value> {
    s["status"]["savepointHistory"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn deploy_id(s: &Value) -> u64 {
    s["status"]["deployment"]["deployId"].as_u64().unwrap_or(0)
}

#[test]
fn apply_brings_the_job_to_running_with_a_completed_checkpoint() {
    let _g = serial();
    let Some(st) = Stack::start("apply") else {
        return;
    };
    let s = st.deploy("walk");
    assert_eq!(
        s["status"]["observedGeneration"],
        s["metadata"]["generation"]
    );
    assert_eq!(s["status"]["deployment"]["restore"]["kind"], "empty");
    let chk = s["status"]["lastCheckpoint"]["path"].as_str().unwrap();
    assert!(
        chk.starts_with(
            &st.s3("walk/checkpoints")
                .split('?')
                .next()
                .unwrap()
                .to_string()
        ),
        "{chk}"
    );
    // The checkpoint is really in S3, with its metadata written last.
    if let Some(keys) = st.s3_keys("e2e-apply/walk/checkpoints/") {
        // Retention may already have subsumed the checkpoint the status
        // named by the time we list, so a complete checkpoint at least as
        // new as it must be there.
        let id = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap();
        let complete: Vec<u64> = keys
            .iter()
            .filter_map(|k| k.strip_suffix("/_metadata"))
            .filter_map(|d| d.rsplit_once("chk-"))
            .filter_map(|(_, n)| n.parse().ok())
            .collect();
        assert!(complete.iter().any(|&n| n >= id), "{id} {keys:?}");
    }
    // What kubectl shows: printer columns, the pod with its address, Events.
    let table = st.kubectl_ok(&["get", "sj", "walk"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], &["walk", "Running", "RUNNING", "2"], "{table}");
    let pods = st.pods("walk");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["metadata"]["name"], "walk-1");
    assert_eq!(pods[0]["status"]["phase"], "Running");
    assert!(pods[0]["status"]["podIP"].is_string());
    assert_eq!(
        pods[0]["metadata"]["ownerReferences"][0]["uid"],
        s["metadata"]["uid"]
    );
    let describe = st.kubectl_ok(&["describe", "sj", "walk"]);
    assert!(describe.contains("JobRunning"), "{describe}");
}

#[test]
fn annotating_takes_a_savepoint_into_the_history_and_removes_the_annotation() {
    let _g = serial();
    let Some(st) = Stack::start("annotate") else {
        return;
    };
    st.deploy("walk");
    let out = st.kubectl_ok(&["annotate", "sj", "walk", "runnel.dev/savepoint=first"]);
    assert_eq!(out.trim(), "streamjob.runnel.dev/walk annotated");
    let s = st.wait_sj("walk", "an annotation savepoint", 60, |s| {
        !history(s).is_empty()
            && s["metadata"]["annotations"]
                .get("runnel.dev/savepoint")
                .is_none()
    });
    let h = history(&s);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["trigger"], "annotation");
    assert_eq!(h[0]["state"], "Completed");
    let path = h[0]["path"].as_str().unwrap();
    assert_eq!(s["status"]["lastSavepoint"], path);
    assert!(
        path.contains("/walk/savepoints/e2e-walk-1/savepoint-"),
        "{path}"
    );
    if let Some(keys) = st.s3_keys("e2e-annotate/walk/savepoints/e2e-walk-1/") {
        assert!(keys.iter().any(|k| k.ends_with("/_metadata")), "{keys:?}");
    }
    // The job kept running in the same deployment.
    assert_eq!(deploy_id(&s), 1);
    assert_eq!(s["status"]["jobState"], "RUNNING");
}

#[test]
fn a_spec_change_upgrades_through_a_savepoint_exactly_once() {
    let _g = serial();
    let Some(st) = Stack::start("upgrade") else {
        return;
    };
    let before = st.deploy("walk");
    let generation = before["metadata"]["generation"].as_i64().unwrap();
    // The change: the map step adds a field; the source keeps its state.
    let o = st.apply(&st.streamjob("walk", r#"{ "n": "n", "odd": "n % 2 == 1", "v": "2" }"#, ""));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "streamjob.runnel.dev/walk configured"
    );
    let s = st.wait_sj("walk", "the upgraded deployment running", 120, |s| {
        s["status"]["lifecycleState"] == "Running"
            && s["status"]["deployment"]["specGeneration"].as_i64() == Some(generation + 1)
            && s["status"]["operation"].is_null()
            && s["status"]["jobState"] == "RUNNING"
    });
    let h = history(&s);
    assert_eq!(h.len(), 1, "one savepoint for the upgrade: {h:?}");
    assert_eq!(h[0]["trigger"], "upgrade");
    assert_eq!(s["status"]["deployment"]["restore"]["kind"], "savepoint");
    assert_eq!(s["status"]["deployment"]["restore"]["path"], h[0]["path"]);
    assert_eq!(deploy_id(&s), 2);
    let pods = st.pods("walk");
    assert_eq!(pods.len(), 1, "the old pod is gone");
    assert_eq!(pods[0]["metadata"]["name"], "walk-2");
    // Let the new version publish, then stop everything with a savepoint.
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0);
    st.wait_sj("walk", "a checkpoint of the new deployment", 60, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk + 1
    });
    st.suspend("walk");
    let Some(out) = st.output("walk") else { return };
    assert_exactly_once(&out);
    // Both versions wrote, and the new one continued where the old one stopped.
    for sub in 0..2 {
        let old: Vec<i64> = out
            .iter()
            .filter(|r| r.get("v").is_none())
            .map(|r| r["n"].as_i64().unwrap())
            .filter(|n| n % 2 == sub)
            .collect();
        let new: Vec<i64> = out
            .iter()
            .filter(|r| r["v"] == 2)
            .map(|r| r["n"].as_i64().unwrap())
            .filter(|n| n % 2 == sub)
            .collect();
        assert!(
            !old.is_empty() && !new.is_empty(),
            "subtask {sub}: {} old, {} new",
            old.len(),
            new.len()
        );
        assert_eq!(
            old.iter().max().unwrap() + 2,
            *new.iter().min().unwrap(),
            "subtask {sub}: the new version starts right after the savepoint"
        );
    }
}

#[test]
fn suspend_then_resume_from_the_suspend_savepoint() {
    let _g = serial();
    let Some(st) = Stack::start("suspend") else {
        return;
    };
    st.deploy("walk");
    let s = st.suspend("walk");
    let h = history(&s);
    assert_eq!(
        h.len(),
        1,
        "{}",
        serde_json::to_string_pretty(&s["status"]).unwrap()
    );
    assert_eq!(h[0]["trigger"], "suspend");
    assert_eq!(s["status"]["resumeRestore"]["kind"], "savepoint");
    assert_eq!(s["status"]["resumeRestore"]["path"], h[0]["path"]);
    let suspended_out = st.output("walk");
    // Resume: a new deployment from exactly that savepoint.
    st.kubectl_ok(&[
        "patch",
        "sj",
        "walk",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"state":"running"}}"#,
    ]);
    let sp = h[0]["path"].clone();
    let s = st.wait_sj(
        "walk",
        "the resumed job running from the suspend savepoint",
        120,
        |s| {
            s["status"]["lifecycleState"] == "Running"
                && s["status"]["jobState"] == "RUNNING"
                && s["status"]["operation"].is_null()
                && s["status"]["deployment"]["restore"]["path"] == sp
        },
    );
    assert_eq!(s["status"]["deployment"]["restore"]["kind"], "savepoint");
    assert_eq!(s["status"]["deployment"]["restore"]["path"], h[0]["path"]);
    let pods = st.pods("walk");
    assert_eq!(pods.len(), 1);
    // A new deployment id, never deployment 1 again.
    assert_eq!(s["status"]["deployment"]["deployId"], 2);
    assert_eq!(pods[0]["metadata"]["name"], "walk-2");
    assert_eq!(
        pods[0]["metadata"]["annotations"]["runnel.dev/restore"],
        serde_json::to_string(&s["status"]["deployment"]["restore"]).unwrap()
    );
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0);
    st.wait_sj("walk", "a checkpoint after the resume", 60, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk
    });
    st.suspend("walk");
    if let (Some(before), Some(after)) = (suspended_out, st.output("walk")) {
        assert_exactly_once(&before);
        assert!(after.len() > before.len(), "the resumed run published more");
        assert_exactly_once(&after);
    }
}

#[test]
fn a_killed_runtime_recovers_from_its_last_state() {
    let _g = serial();
    let Some(st) = Stack::start("kill-runtime") else {
        return;
    };
    let s = st.deploy("walk");
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap();
    st.wait_sj("walk", "one more checkpoint", 60, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk
    });
    let pod = st.pods("walk").pop().expect("the runtime pod");
    st.kill_runtime(&pod);
    // The operator sees the pod fail and redeploys from the latest checkpoint.
    let s = st.wait_sj("walk", "a new deployment running", 120, |s| {
        deploy_id(s) == 2
            && s["status"]["lifecycleState"] == "Running"
            && s["status"]["jobState"] == "RUNNING"
    });
    assert_eq!(
        s["status"]["deployment"]["restore"]["kind"],
        "latestCheckpoint"
    );
    let degraded = s["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .cloned()
        .unwrap_or_default();
    // Degraded=True (Restarted) while redeploying, back to False (Recovered) once running.
    assert!(
        degraded["reason"] == "Restarted" || degraded["reason"] == "Recovered",
        "{degraded}"
    );
    if st.local {
        let old = st.get(&["pod", "walk-1"]);
        assert!(old.is_none(), "the failed pod was deleted: {old:?}");
    }
    let events = st.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=walk,reason=Unhealthy",
        "-o",
        "json",
    ]);
    // Locally the runtime process is killed (the pod fails); on a cluster the
    // pod is force-deleted (it is gone).
    let why = if st.local {
        "the runtime pod failed"
    } else {
        "the runtime pod is gone"
    };
    assert!(events.contains(why), "{events}");
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0);
    st.wait_sj("walk", "a checkpoint after the recovery", 60, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk
    });
    st.suspend("walk");
    // Exactly once across the crash: the file sink publishes per completed checkpoint.
    if let Some(out) = st.output("walk") {
        assert!(!out.is_empty());
        assert_exactly_once(&out);
    }
}

#[test]
fn an_operator_killed_in_the_middle_of_an_upgrade_completes_it() {
    let _g = serial();
    let Some(mut st) = Stack::start("kill-operator") else {
        return;
    };
    let before = st.deploy("walk");
    let generation = before["metadata"]["generation"].as_i64().unwrap();
    let o = st.apply(&st.streamjob("walk", r#"{ "n": "n", "odd": "n % 2 == 1", "v": "2" }"#, ""));
    assert!(o.status.success());
    // Kill it as soon as the upgrade is recorded (the savepoint is under way).
    st.wait_sj("walk", "the upgrade to start", 60, |s| {
        s["status"]["operation"]["kind"] == "Upgrade"
    });
    st.kill_operator();
    let mid = st.sj("walk");
    eprintln!("operator killed at {}", mid["status"]["operation"]);
    st.restart_operator();
    let s = st.wait_sj("walk", "the upgrade to complete", 180, |s| {
        s["status"]["lifecycleState"] == "Running"
            && s["status"]["deployment"]["specGeneration"].as_i64() == Some(generation + 1)
            && s["status"]["operation"].is_null()
            && s["status"]["jobState"] == "RUNNING"
    });
    let h = history(&s);
    assert_eq!(h.len(), 1, "exactly one upgrade savepoint: {h:?}");
    assert_eq!(h[0]["trigger"], "upgrade");
    assert_eq!(s["status"]["deployment"]["restore"]["path"], h[0]["path"]);
    assert_eq!(st.pods("walk").len(), 1);
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0);
    st.wait_sj("walk", "a checkpoint of the new deployment", 60, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk
    });
    st.suspend("walk");
    if let Some(out) = st.output("walk") {
        assert_exactly_once(&out);
        assert!(out.iter().any(|r| r["v"] == 2), "the new version ran");
    }
}

#[test]
fn invalid_specs_are_rejected_with_a_clear_message() {
    let _g = serial();
    let Some(st) = Stack::start("invalid") else {
        return;
    };
    // The CRD's CEL rule, by kubectl apply.
    let bad = st.streamjob("bad", r#"{ "n": "n" }"#, "  maxParallelism: 1\n");
    let o = st.apply(&bad);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("parallelism must not exceed maxParallelism"),
        "{err}"
    );
    assert!(
        // kubectl's wording for a 422, on kind and here alike.
        err.contains("The StreamJob \"bad\" is invalid"),
        "{err}"
    );
    assert!(st.get(&["sj", "bad"]).is_none(), "nothing was created");
    // The schema: a typo'd field under kubectl's strict validation.
    let typo = st.streamjob("typo", r#"{ "n": "n" }"#, "  paralelism: 3\n");
    let o = st.apply(&typo);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown field \"spec.paralelism\"")
            || err.contains("spec.paralelism: field not declared in schema"),
        "{err}"
    );
    // The job spec's schema, embedded in the CRD: a wrong type in spec.job.
    let o = st.apply(&st.streamjob("badtype", "42", ""));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("spec.job.steps[0].map.fields in body must be of type object"),
        "{err}"
    );
    // What only the operator can check (CEL that does not compile):
    // status.error, an Event, no pod.
    let o = st.apply(&st.streamjob("badjob", r#"{ "n": "n +" }"#, ""));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = st.wait_sj("badjob", "status.error", 60, |s| {
        s["status"]["error"].is_string()
    });
    let e = s["status"]["error"].as_str().unwrap();
    assert!(e.contains("steps[0]"), "{e}");
    let events = st.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=badjob,reason=ValidationFailed",
        "-o",
        "json",
    ]);
    assert!(events.contains("steps[0]"), "{events}");
    assert!(st.pods("badjob").is_empty(), "nothing was started");
}

#[test]
fn deleting_the_streamjob_removes_its_pods_and_keeps_its_savepoints() {
    let _g = serial();
    let Some(st) = Stack::start("delete") else {
        return;
    };
    st.deploy("walk");
    st.kubectl_ok(&["annotate", "sj", "walk", "runnel.dev/savepoint=keep"]);
    let s = st.wait_sj("walk", "the savepoint", 60, |s| !history(s).is_empty());
    let path = history(&s)[0]["path"].as_str().unwrap().to_string();
    let out = st.kubectl_ok(&["delete", "sj", "walk"]);
    assert_eq!(out.trim(), "streamjob.runnel.dev \"walk\" deleted");
    st.wait_for(
        "the pods, ConfigMaps and Service to be garbage-collected",
        60,
        || {
            let left: usize = ["pods", "configmaps", "services"]
                .iter()
                .map(|k| {
                    st.get(&[k, "-l", "runnel.dev/job=walk"])
                        .and_then(|l| l["items"].as_array().map(Vec::len))
                        .unwrap_or(0)
                })
                .sum();
            (left == 0).then_some(())
        },
    );
    assert!(st.get(&["sj", "walk"]).is_none());
    if st.local {
        // The runtime process is gone too (the pod object goes only after it).
        let pods_dir = st.path().join("state/pods").display().to_string();
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let c =
                    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
                        .replace('\0', " ");
                c.contains(&pods_dir).then(|| format!("{pid}: {c}"))
            })
            .collect();
        assert!(
            alive.is_empty(),
            "runtime processes outlived their pod: {alive:?}"
        );
    }
    if let Some(keys) = st.s3_keys("e2e-delete/walk/savepoints/") {
        let dir = path
            .split('?')
            .next()
            .unwrap()
            .trim_start_matches("s3://runnel/")
            .to_string();
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&dir) && k.ends_with("_metadata")),
            "the savepoint {dir} is kept: {keys:?}"
        );
    }
}

/// `historyMaxCount: 1`: the second savepoint pushes the first out of the
/// history, and the operator deletes its files through a disposal Job (the
/// runtime image's `runnel savepoint dispose`), run by the control plane's
/// Job controller as a real process, before the entry goes.
#[test]
fn a_savepoint_beyond_the_history_is_disposed_by_a_job() {
    let _g = serial();
    let Some(st) = Stack::start("dispose") else {
        return;
    };
    let yaml = st
        .streamjob("walk", r#"{ "n": "n" }"#, "")
        .replace("  savepoints:\n", "  savepoints:\n    historyMaxCount: 1\n");
    assert!(yaml.contains("historyMaxCount: 1"), "{yaml}");
    let o = st.apply(&yaml);
    assert!(
        o.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    st.wait_sj("walk", "Running", 120, |s| {
        s["status"]["jobState"] == "RUNNING" && s["status"]["lastCheckpoint"]["path"].is_string()
    });
    let key_prefix = |path: &str| {
        path.split('?')
            .next()
            .unwrap()
            .trim_start_matches("s3://runnel/")
            .to_string()
    };

    st.kubectl_ok(&["annotate", "sj", "walk", "runnel.dev/savepoint=one"]);
    let s = st.wait_sj("walk", "the first savepoint", 60, |s| {
        history(s).len() == 1
            && s["metadata"]["annotations"]
                .get("runnel.dev/savepoint")
                .is_none()
    });
    let first = history(&s)[0]["path"].as_str().unwrap().to_string();
    if let Some(keys) = st.s3_keys(&key_prefix(&first)) {
        assert!(keys.iter().any(|k| k.ends_with("/_metadata")), "{keys:?}");
    }

    st.kubectl_ok(&["annotate", "sj", "walk", "runnel.dev/savepoint=two"]);
    let s = st.wait_sj(
        "walk",
        "the second savepoint alone in the history",
        120,
        |s| {
            let h = history(s);
            h.len() == 1 && h[0]["path"].as_str() != Some(first.as_str())
        },
    );
    let second = history(&s)[0]["path"].as_str().unwrap().to_string();
    assert_eq!(history(&s)[0]["state"], "Completed");
    // The first one's files were deleted before its entry went, by a Job
    // that succeeded.
    if let Some(keys) = st.s3_keys(&key_prefix(&first)) {
        assert!(keys.is_empty(), "{first} still has {keys:?}");
    }
    if let Some(keys) = st.s3_keys(&key_prefix(&second)) {
        assert!(keys.iter().any(|k| k.ends_with("/_metadata")), "{keys:?}");
    }
    let events = st.kubectl_ok(&["get", "events"]);
    assert!(events.contains("SavepointDisposed"), "{events}");
    assert_eq!(s["status"]["jobState"], "RUNNING");
    assert_eq!(deploy_id(&s), 1, "nothing redeployed");
}

/// Issue 6 on Kubernetes: `spec.workers` runs the job as a coordinator pod
/// and worker pods found through their DNS names under a headless Service.
/// A deleted worker pod is replaced by the operator, and the coordinator
/// recovers the job onto it by itself (same deployment, from its last
/// checkpoint), with the output still exactly once.
#[test]
fn a_distributed_job_runs_on_worker_pods_and_survives_losing_one() {
    let _g = serial();
    let Some(st) = Stack::start("distributed") else {
        return;
    };
    // One slot per worker at parallelism 2: the job cannot run without both
    // workers, and the keyed dedup step's input crosses between them.
    let yaml = st
        .streamjob(
            "dist",
            r#"{ "n": "n" }"#,
            "  workers:\n    replicas: 2\n    slots: 1\n",
        )
        .replace(
            "    steps:\n      - map:",
            "    steps:\n      - dedup: { key: \"n\", ttl: 10m }\n      - map:",
        );
    let o = st.apply(&yaml);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = st.wait_sj("dist", "Running with a completed checkpoint", 120, |s| {
        s["status"]["lifecycleState"] == "Running"
            && s["status"]["jobState"] == "RUNNING"
            && s["status"]["lastCheckpoint"]["path"].is_string()
    });
    assert_eq!(deploy_id(&s), 1);
    let coordinator = st.pods("dist");
    assert_eq!(coordinator.len(), 1, "one coordinator pod");
    let args: Vec<&str> = coordinator[0]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "coordinator", "{args:?}");
    let ns = st.ns.clone();
    assert!(
        args.contains(&format!(
            "d1-w0.dist-workers.{ns}.svc.cluster.local:7070,d1-w1.dist-workers.{ns}.svc.cluster.local:7070"
        )
        .as_str()),
        "{args:?}"
    );
    let workers = |st: &Stack| -> Vec<Value> {
        st.get(&["pods", "-l", "runnel.dev/worker-of=dist"])
            .and_then(|l| l["items"].as_array().cloned())
            .unwrap_or_default()
    };
    let ws = workers(&st);
    let mut names: Vec<&str> = ws
        .iter()
        .filter_map(|w| w["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["dist-1-worker-0", "dist-1-worker-1"]);
    for w in &ws {
        assert_eq!(w["status"]["phase"], "Running", "{w}");
        assert_eq!(w["spec"]["subdomain"], "dist-workers");
        assert_eq!(w["spec"]["containers"][0]["args"][0], "worker");
    }
    let svc = st
        .get(&["service", "dist-workers"])
        .expect("the headless Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");

    // Lose a worker pod.
    let lost_uid = ws
        .iter()
        .find(|w| w["metadata"]["name"] == "dist-1-worker-0")
        .map(|w| w["metadata"]["uid"].clone())
        .unwrap();
    let chk = s["status"]["lastCheckpoint"]["id"].as_u64().unwrap();
    st.kubectl_ok(&["delete", "pod", "dist-1-worker-0", "--wait=false"]);
    st.wait_for("the operator to replace the worker pod", 60, || {
        workers(&st)
            .into_iter()
            .find(|w| {
                w["metadata"]["name"] == "dist-1-worker-0"
                    && w["metadata"]["uid"] != lost_uid
                    && w["status"]["phase"] == "Running"
            })
            .map(|_| ())
    });
    // The coordinator restarts the job from its last checkpoint on the
    // replacement: checkpoints continue, and the deployment is the same.
    let s = st.wait_sj("dist", "checkpoints after the worker loss", 120, |s| {
        s["status"]["lastCheckpoint"]["id"].as_u64().unwrap_or(0) > chk + 2
            && s["status"]["jobState"] == "RUNNING"
    });
    assert_eq!(deploy_id(&s), 1, "the operator did not redeploy");
    st.suspend("dist");
    st.wait_for("the worker pods to be gone after suspend", 60, || {
        workers(&st).is_empty().then_some(())
    });
    if let Some(out) = st.output("dist") {
        assert!(!out.is_empty());
        assert_exactly_once(&out);
    }
}
