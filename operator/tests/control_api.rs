//! The operator's control-API client against real `runnel run` processes,
//! started with the arguments and job file the operator renders for a pod.

mod common;

use std::time::{Duration, Instant};

use common::start;

use runnel_api::{JobState, SnapshotKind, TriggerState};
use runnel_operator::control::{ControlClient, ControlError};
use runnel_operator::crd::{Restore, StreamJobSpec};

fn spec(dir: &str) -> StreamJobSpec {
    serde_json::from_value(serde_json::json!({
        "image": "runnel:test",
        "parallelism": 2,
        "job": {
            "version": 1,
            "name": "numbers",
            // A generator's sequence is partitioned by subtask: it keeps its
            // parallelism when the rest of the job is rescaled.
            "sources": [{ "name": "numbers", "parallelism": 2,
                "generator": { "ratePerSecond": 2000, "fields": { "n": { "sequence": {} } } } }],
            "steps": [{ "filter": "n >= 0" }],
            "sinks": [{ "name": "out", "file": { "path": format!("{dir}/out") } }]
        },
        "checkpointing": { "interval": "200ms", "storage": format!("file://{dir}/chk") },
        "savepoints": { "directory": format!("file://{dir}/sp") }
    }))
    .unwrap()
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_stop_and_restore_through_the_control_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let spec = spec(&dir);
    let rt = start(&dir, &spec, &Restore::Empty, 1);
    let c = ControlClient::new(&rt.url, Duration::from_secs(5));

    let st = wait_for("RUNNING", async || {
        c.status()
            .await
            .ok()
            .filter(|s| s.state == JobState::Running)
    })
    .await;
    assert_eq!(st.name, "numbers");
    assert_eq!(st.restored_from, None);
    assert!(
        st.parallelism.values().all(|p| *p == 2),
        "{:?}",
        st.parallelism
    );
    wait_for("a checkpoint", async || {
        c.checkpoints().await.ok().filter(|r| r.completed_count > 0)
    })
    .await;

    // A savepoint into a unique directory: the operator finds it by that
    // directory in the checkpoint list, with or without the trigger id.
    let target = format!("file://{dir}/sp/ns-t-1");
    let t = c.trigger_savepoint(&target, false).await.unwrap();
    let done = wait_for("the savepoint", async || {
        c.savepoint_status(&t.trigger_id)
            .await
            .unwrap()
            .filter(|s| s.state != TriggerState::InProgress)
    })
    .await;
    assert_eq!(done.state, TriggerState::Completed, "{done:?}");
    assert!(!done.stop);
    let path = done.path.unwrap();
    assert!(path.starts_with(&format!("{target}/")), "{path}");
    let list = c.checkpoints().await.unwrap();
    let listed: Vec<_> = list
        .completed
        .iter()
        .filter(|s| s.kind == SnapshotKind::Savepoint)
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, path);

    // Unknown trigger ids are None (the machine's "runtime restarted").
    assert_eq!(c.savepoint_status("no-such-trigger").await.unwrap(), None);

    // Stop with savepoint: the stopped runtime keeps answering (linger)
    // with the savepoint in its checkpoint list until the result is read.
    let stop_target = format!("file://{dir}/sp/ns-t-2");
    let t = c.trigger_savepoint(&stop_target, true).await.unwrap();
    let stop_path = wait_for("the stop savepoint in the list", async || {
        let l = c.checkpoints().await.ok()?;
        l.completed
            .iter()
            .find(|s| s.kind == SnapshotKind::StopSavepoint)
            .map(|s| s.path.clone())
    })
    .await;
    assert!(
        stop_path.starts_with(&format!("{stop_target}/")),
        "{stop_path}"
    );
    let st = wait_for("STOPPED", async || {
        c.status()
            .await
            .ok()
            .filter(|s| s.state == JobState::Stopped)
    })
    .await;
    assert_eq!(st.state, JobState::Stopped);
    // A second trigger on a stopped job is refused with the runtime's reason.
    match c
        .trigger_savepoint(&format!("file://{dir}/sp/x"), false)
        .await
    {
        Err(ControlError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 409);
            assert!(message.contains("not RUNNING"), "{message}");
        }
        other => panic!("expected 409, got {other:?}"),
    }
    let r = c.savepoint_status(&t.trigger_id).await.unwrap().unwrap();
    assert_eq!(r.state, TriggerState::Completed);
    assert!(r.stop);
    assert_eq!(r.path.as_deref(), Some(stop_path.as_str()));
    drop(rt);

    // The upgrade's redeploy: restore from that savepoint at a new parallelism.
    let mut up = spec.clone();
    up.parallelism = Some(3);
    let rt2 = start(&dir, &up, &Restore::Savepoint(stop_path.clone()), 2);
    let c2 = ControlClient::new(&rt2.url, Duration::from_secs(5));
    let st = wait_for("RUNNING after restore", async || {
        c2.status()
            .await
            .ok()
            .filter(|s| s.state == JobState::Running)
    })
    .await;
    assert_eq!(st.restored_from.as_deref(), Some(stop_path.as_str()));
    assert_eq!(
        st.parallelism.values().filter(|p| **p == 3).count(),
        st.parallelism.len() - 1,
        "all but the source rescaled: {:?}",
        st.parallelism
    );
    assert_eq!(
        st.parallelism.get("numbers"),
        Some(&2),
        "{:?}",
        st.parallelism
    );
    wait_for("a checkpoint after restore", async || {
        c2.checkpoints()
            .await
            .ok()
            .filter(|r| r.completed_count > 0)
    })
    .await;
    drop(rt2);

    // Last state: the runtime finds the newest complete checkpoint itself.
    let rt3 = start(&dir, &up, &Restore::LatestCheckpoint, 3);
    let c3 = ControlClient::new(&rt3.url, Duration::from_secs(5));
    let st = wait_for("RUNNING from the latest checkpoint", async || {
        c3.status()
            .await
            .ok()
            .filter(|s| s.state == JobState::Running)
    })
    .await;
    let from = st.restored_from.expect("restored from a checkpoint");
    assert!(
        from.starts_with(&format!("file://{dir}/chk/chk-")),
        "{from}"
    );
}

#[tokio::test]
async fn unreachable_runtime_is_a_transport_error() {
    // A port nobody listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = ControlClient::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2));
    assert!(matches!(
        c.status().await,
        Err(ControlError::Transport { .. })
    ));
}
