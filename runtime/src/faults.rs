//! Fault injection points. Guarantees are shown by failing the job at chosen points
//! (inside a checkpoint, between completion and notification) and checking that
//! recovery restores a consistent state. Costs one branch when unused.

use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// A task is about to snapshot its state for a checkpoint.
    BeforeSnapshot { task: String, checkpoint_id: u64 },
    /// All acknowledgements arrived; `_metadata` is not written yet.
    BeforeMetadata { checkpoint_id: u64 },
    /// `_metadata` is written; tasks have not been notified yet.
    AfterMetadata { checkpoint_id: u64 },
}

type Hook = dyn Fn(&FaultPoint) -> bool + Send + Sync;

/// Returns true from the hook to fail the attempt at that point.
#[derive(Clone, Default)]
pub struct FaultInjector(Option<Arc<Hook>>);

impl FaultInjector {
    pub fn none() -> Self {
        FaultInjector(None)
    }

    pub fn new(hook: impl Fn(&FaultPoint) -> bool + Send + Sync + 'static) -> Self {
        FaultInjector(Some(Arc::new(hook)))
    }

    pub fn should_fail(&self, point: &FaultPoint) -> bool {
        match &self.0 {
            None => false,
            Some(h) => h(point),
        }
    }
}

impl fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "FaultInjector(active)"
        } else {
            "FaultInjector(none)"
        })
    }
}
