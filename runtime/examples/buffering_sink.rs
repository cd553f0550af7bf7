//! Seed 003: BufferingSink. The sink buffers elements in operator list state;
//! a failure is injected right after a checkpoint that holds buffered
//! elements, and the restored sink prints the elements it got back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::seeds::{BufferingSink, CounterSource};
use runnel_runtime::{CheckpointConfig, JobConfig, StreamEnv};

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("runnel-buffering-sink-{}", std::process::id()));
    let mut cfg = JobConfig::new("buffering-sink");
    cfg.checkpoint = CheckpointConfig {
        interval_ms: Some(5),
        storage: Some(format!("file://{}", dir.display())),
        ..Default::default()
    };
    let fired = Arc::new(AtomicBool::new(false));
    let d = dir.clone();
    cfg.faults = FaultInjector::new(move |p| {
        let FaultPoint::AfterMetadata { checkpoint_id } = p else {
            return false;
        };
        let uri = format!("file://{}/chk-{checkpoint_id}", d.display());
        let buffered = runnel_runtime::checkpoint::read_metadata(&uri)
            .map(|md| {
                md.operators.iter().any(|o| {
                    o.uid == "buffering-sink"
                        && o.subtasks.iter().any(|s| s.operator_state_items > 0)
                })
            })
            .unwrap_or(false);
        if buffered && !fired.swap(true, Ordering::SeqCst) {
            println!("injecting a failure after checkpoint {checkpoint_id}");
            return true;
        }
        false
    });
    let env = StreamEnv::new(cfg);
    let sink = BufferingSink::new(3);
    let (flushed, restored) = (sink.flushed.clone(), sink.restored.clone());
    env.add_source("counter", CounterSource::new(600_000))
        .map(|v: u64| v.to_string())
        .sink("buffering-sink", sink);
    env.execute()?;
    for items in restored.lock().map(|r| r.clone()).unwrap_or_default() {
        println!("restored buffered elements: {items:?}");
    }
    let groups = flushed.lock().map(|g| g.len()).unwrap_or(0);
    println!("done: {groups} groups flushed");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
