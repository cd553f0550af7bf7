//! Whole reconciles (`controller::reconcile`) with the Kubernetes API served
//! by a `tower_test` mock and the runtime pods played by real `runnel`
//! processes started from the exact pod arguments and ConfigMap the
//! operator created: the annotation savepoint and a savepoint upgrade.

mod common;

use std::time::Duration;

use common::harness::{Harness, spec};
use kube::ResourceExt;
use runnel_api::JobState;
use runnel_operator::crd::{DeploymentRecord, LifecycleState, Restore, SavepointTrigger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_annotation_savepoint_and_savepoint_upgrade_with_real_runtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let mut h = Harness::new(&dir, spec(&dir, 2));
    let api = h.api.clone();

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
