//! Seed 003: CounterSource. The source checkpoints its offset as list state;
//! after an injected failure it resumes from the checkpointed offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::seeds::CounterSource;
use runnel_runtime::sinks::DiscardSink;
use runnel_runtime::{CheckpointConfig, JobConfig, StreamEnv};

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("runnel-counter-source-{}", std::process::id()));
    let mut cfg = JobConfig::new("counter-source");
    cfg.checkpoint = CheckpointConfig {
        interval_ms: Some(10),
        storage: Some(format!("file://{}", dir.display())),
        ..Default::default()
    };
    let fired = Arc::new(AtomicBool::new(false));
    cfg.faults = FaultInjector::new(move |p| {
        if let FaultPoint::AfterMetadata { checkpoint_id } = p
            && *checkpoint_id >= 3
            && !fired.swap(true, Ordering::SeqCst)
        {
            println!("injecting a failure after checkpoint {checkpoint_id}");
            return true;
        }
        false
    });
    let env = StreamEnv::new(cfg);
    let source = CounterSource::new(2_000_000);
    let resumed = source.resumed_from.clone();
    env.add_source("counter", source)
        .sink("discard", DiscardSink);
    env.execute()?;
    for offset in resumed.lock().map(|r| r.clone()).unwrap_or_default() {
        println!("counter source resumed from checkpointed offset {offset}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
