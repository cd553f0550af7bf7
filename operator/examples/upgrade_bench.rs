//! Benchmark: the time a savepoint upgrade adds on top of the savepoint.
//!
//! Whole reconciles (`controller::reconcile`) at the controller's busy
//! requeue cadence (500 ms), the Kubernetes API mocked in-process, and real
//! `runnel run` processes playing the pods (started by the test "kubelet"
//! from the exact pod arguments and ConfigMap, like the reconcile tests).
//! Measured per upgrade: the stop-with-savepoint itself (trigger to
//! completion, as the runtime reports it) and the time from the savepoint's
//! completion until the new runtime reports RUNNING restored from it
//! (operator detection + pod deletion + new deployment + runtime start and
//! restore). Kubernetes scheduling and image start are not included: there
//! is no cluster here.
//!
//! ```sh
//! cargo build -p runnel-runtime --bin runnel
//! cargo run --release -p runnel-operator --example upgrade_bench -- 5
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::harness::{Harness, spec};
use runnel_api::{JobState, SnapshotKind};
use runnel_operator::control::ControlClient;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path().to_string_lossy().to_string();
    let mut h = Harness::new(&dir, spec(&dir, 2));
    h.until("running", |s| {
        s.deployment.as_ref().is_some_and(|d| d.stable) && s.last_checkpoint.is_some()
    })
    .await;
    let mut savepoint_ms = vec![];
    let mut added_ms = vec![];
    for r in 0..rounds {
        let old = h
            .runtimes
            .values()
            .last()
            .map(|rt| rt.url.clone())
            .unwrap_or_default();
        let old_c = ControlClient::new(&old, Duration::from_secs(5));
        h.obj.spec = spec(&dir, 3 + r % 2);
        h.obj.metadata.generation = Some(2 + i64::from(r));
        let gen_ = 2 + i64::from(r);
        let mut sp_done: Option<(i64, u64)> = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        let running_at = loop {
            h.reconcile().await;
            // Between reconciles (500 ms apart), watch both runtimes closely.
            let until = Instant::now() + Duration::from_millis(500);
            let mut found = None;
            while Instant::now() < until {
                if sp_done.is_none()
                    && let Ok(cp) = old_c.checkpoints().await
                    && let Some(s) = cp
                        .completed
                        .iter()
                        .find(|s| s.kind == SnapshotKind::StopSavepoint)
                {
                    sp_done = Some((s.completed_ms, s.duration_ms));
                }
                let deployed = h.status().deployment.filter(|d| d.spec_generation == gen_);
                if let Some(d) = deployed
                    && let Some(rt) = h.runtimes.get(&format!("demo-{}", d.deploy_id))
                {
                    let c = ControlClient::new(&rt.url, Duration::from_secs(5));
                    if let Ok(s) = c.status().await
                        && s.state == JobState::Running
                    {
                        found = Some(now_ms());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(t) = found {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "upgrade {r} did not finish: {:#?}",
                h.status()
            );
        };
        let Some((done, dur)) = sp_done else {
            panic!("upgrade {r}: the stop savepoint was not observed");
        };
        savepoint_ms.push(dur as f64);
        added_ms.push((running_at - done) as f64);
        // Let the upgrade finish in status before the next one.
        h.until("stable", |s| {
            s.operation.is_none() && s.deployment.as_ref().is_some_and(|d| d.stable)
        })
        .await;
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("upgrades                          {rounds}");
    println!(
        "stop-with-savepoint (median)      {:.0} ms",
        med(&mut savepoint_ms)
    );
    println!(
        "added by the upgrade (median)     {:.0} ms",
        med(&mut added_ms)
    );
    println!(
        "added by the upgrade (max)        {:.0} ms",
        added_ms.iter().cloned().fold(0.0, f64::max)
    );
}
