//! Shared test functions and helpers.
#![allow(dead_code)]

pub mod s3;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use runnel_runtime::checkpoint::format::SnapshotMetadata;
use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::state::{ValueState, ValueStateDescriptor};
use runnel_runtime::{
    CheckpointConfig, CheckpointListener, FnResult, InitContext, JobConfig, KeyedContext,
    KeyedProcessFunction, RestartStrategy, SinkContext, SinkFunction, UserError,
};

/// A binary of this package's examples (built by `cargo test`, not by
/// `cargo test --test X`: build them first then).
pub fn example(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_runnel"))
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "example {name} is not built: cargo build -p runnel-runtime --examples ({})",
        p.display()
    );
    p
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub fn file_uri(p: &std::path::Path) -> String {
    format!("file://{}", p.display())
}

/// Job config with checkpoints every `interval_ms` into `dir`.
pub fn config(name: &str, dir: &std::path::Path, interval_ms: u64) -> JobConfig {
    let mut c = JobConfig::new(name);
    c.checkpoint = CheckpointConfig {
        interval_ms: Some(interval_ms),
        storage: Some(file_uri(dir)),
        retained: 3,
        ..Default::default()
    };
    c.restart = RestartStrategy::FixedDelay {
        attempts: 50,
        delay_ms: 1,
    };
    c.batch_size = 64;
    c
}

/// Fails the processing of chosen records: `fail_at` holds values of a global
/// processed-record counter (shared across attempts, so replays move it on).
#[derive(Default)]
pub struct FailPlan {
    pub processed: AtomicU64,
    pub fail_at: Mutex<Vec<u64>>,
    pub failures: AtomicU64,
}

impl FailPlan {
    pub fn at(points: Vec<u64>) -> Arc<Self> {
        Arc::new(FailPlan {
            fail_at: Mutex::new(points),
            ..Default::default()
        })
    }
    fn tick(&self) -> FnResult {
        let n = self.processed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut f = lock(&self.fail_at);
        if let Some(i) = f.iter().position(|x| *x == n) {
            f.remove(i);
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(UserError::msg(format!(
                "injected failure at processed record {n}"
            )));
        }
        Ok(())
    }
}

/// Counts records per key in a ValueState and emits (key, count).
#[derive(Clone, Default)]
pub struct CountPerKey {
    pub state: Option<ValueState<u64>>,
    pub plan: Option<Arc<FailPlan>>,
}

impl CheckpointListener for CountPerKey {}

impl KeyedProcessFunction<u64, u64, (u64, u64)> for CountPerKey {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        _v: u64,
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> FnResult {
        if let Some(p) = &self.plan {
            p.tick()?;
        }
        let st = self
            .state
            .clone()
            .ok_or_else(|| UserError::msg("no state"))?;
        let c = st.value(ctx)?.unwrap_or(0) + 1;
        st.update(ctx, c)?;
        let k = *ctx.key();
        ctx.collect((k, c));
        Ok(())
    }
}

/// Keeps the latest value per key. With exactly-once state, the latest count
/// per key is the final state whatever was replayed.
#[derive(Clone, Default)]
pub struct LatestSink {
    pub latest: Arc<Mutex<HashMap<u64, u64>>>,
    pub records: Arc<AtomicU64>,
}

impl CheckpointListener for LatestSink {}

impl SinkFunction<(u64, u64)> for LatestSink {
    fn invoke(&mut self, v: (u64, u64), _ctx: &SinkContext) -> FnResult {
        self.records.fetch_add(1, Ordering::Relaxed);
        lock(&self.latest).insert(v.0, v.1);
        Ok(())
    }
}

/// Fails the attempt once, right after the first checkpoint whose metadata
/// satisfies `pred` was committed (before tasks are notified).
pub fn fail_once_after_checkpoint(
    dir: &std::path::Path,
    pred: impl Fn(&SnapshotMetadata) -> bool + Send + Sync + 'static,
) -> (FaultInjector, Arc<Mutex<Option<u64>>>) {
    let fired = Arc::new(AtomicBool::new(false));
    let which = Arc::new(Mutex::new(None));
    let w = which.clone();
    let dir = dir.to_path_buf();
    let inj = FaultInjector::new(move |p| {
        if let FaultPoint::AfterMetadata { checkpoint_id } = p {
            if fired.load(Ordering::SeqCst) {
                return false;
            }
            let uri = file_uri(&dir.join(format!("chk-{checkpoint_id}")));
            if let Ok(md) = runnel_runtime::checkpoint::read_metadata(&uri)
                && pred(&md)
            {
                fired.store(true, Ordering::SeqCst);
                *lock(&w) = Some(*checkpoint_id);
                return true;
            }
        }
        false
    });
    (inj, which)
}
pub mod broker;
