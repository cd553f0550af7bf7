//! A minimal Job controller: one pod at a time to one completion, retried
//! up to `backoffLimit` (back-off 1 s doubling to 30 s), status
//! `active/succeeded/failed`, `Complete`/`Failed` conditions, and
//! `ttlSecondsAfterFinished`. Anything else about Jobs is refused at
//! admission (see `store.rs`). Enough for the operator's savepoint-disposal
//! Jobs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::meta::{self, name_of, namespace_of, uid_of};
use crate::store::{DeleteOpts, Store};

const MANAGER: &str = "runnel-kube-local-job-controller";

pub async fn run(store: Arc<Store>) {
    let mut rx = store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(c) if c.storage == "jobs" || c.storage == "pods" => reconcile_all(&store),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => reconcile_all(&store),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => reconcile_all(&store),
        }
    }
}

fn is_true(conds: &Value, t: &str) -> bool {
    conds
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == t && c["status"] == "True")
}

fn reconcile_all(store: &Store) {
    let reg = store.registry();
    let (Ok(jobs_rt), Ok(pods_rt)) = (
        reg.lookup("batch", "v1", "jobs"),
        reg.lookup("", "v1", "pods"),
    ) else {
        return;
    };
    let (jobs, _) = store.list(&jobs_rt, None, &|_| true);
    for job in jobs {
        if job["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let (ns, name, uid) = (
            namespace_of(&job).to_string(),
            name_of(&job).to_string(),
            uid_of(&job).to_string(),
        );
        let conds = &job["status"]["conditions"];
        if is_true(conds, "Complete") || is_true(conds, "Failed") {
            if let (Some(ttl), Some(done)) = (
                job["spec"]["ttlSecondsAfterFinished"].as_u64(),
                job["status"]["completionTime"]
                    .as_str()
                    .and_then(meta::parse_time),
            ) && SystemTime::now() >= done + Duration::from_secs(ttl)
            {
                let d = DeleteOpts {
                    propagation: Some("Background".into()),
                    ..Default::default()
                };
                let _ = store.delete(&jobs_rt, &ns, &name, &d);
            }
            continue;
        }
        let (pods, _) = store.list(&pods_rt, Some(&ns), &|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"].as_str() == Some(uid.as_str()))
        });
        let phase = |p: &Value| {
            p["status"]["phase"]
                .as_str()
                .unwrap_or("Pending")
                .to_string()
        };
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active = pods
            .iter()
            .filter(|p| {
                !matches!(phase(p).as_str(), "Succeeded" | "Failed")
                    && !p["metadata"]["deletionTimestamp"].is_string()
            })
            .count() as i64;
        let limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let now = meta::now_rfc3339();
        let last_failure = pods
            .iter()
            .filter(|p| phase(p) == "Failed")
            .filter_map(|p| {
                p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
                    .as_str()
                    .and_then(meta::parse_time)
            })
            .max();
        let mut create = false;
        store.update_internal("jobs", &ns, &name, &uid, MANAGER, |j| {
            let s = &mut j["status"];
            if s["startTime"].is_null() {
                s["startTime"] = json!(now);
            }
            s["active"] = json!(active);
            s["succeeded"] = json!(succeeded);
            s["failed"] = json!(failed);
            if succeeded > 0 {
                s["completionTime"] = json!(now);
                s["conditions"] = json!([
                    { "type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastTransitionTime": now },
                    { "type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastTransitionTime": now },
                ]);
            } else if failed > limit {
                s["completionTime"] = json!(now);
                s["conditions"] = json!([
                    { "type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastTransitionTime": now },
                    { "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastTransitionTime": now },
                ]);
            } else if active == 0 {
                let backoff = if failed == 0 { Duration::ZERO } else { Duration::from_secs((1u64 << (failed - 1).min(5)).min(30)) };
                create = last_failure.is_none_or(|t| SystemTime::now() >= t + backoff);
            }
        });
        if create {
            let tmpl = &job["spec"]["template"];
            let mut meta_ = tmpl["metadata"].clone();
            if !meta_.is_object() {
                meta_ = json!({});
            }
            meta_["generateName"] = json!(format!("{name}-"));
            meta_["ownerReferences"] = json!([{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
            let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta_, "spec": tmpl["spec"] });
            if let Err(e) = store.create_internal(&pods_rt, &ns, pod, MANAGER) {
                tracing::warn!(job = %name, error = %e, "cannot create the Job's pod");
            }
        }
    }
}
