//! Job and checkpoint configuration, with Flink's knobs and defaults.

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::faults::FaultInjector;
use crate::restart::RestartStrategy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Barriers are aligned: every record is reflected exactly once in state.
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned: after recovery some records may be reflected twice.
    AtLeastOnce,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CheckpointConfig {
    /// Trigger interval; `None` disables periodic checkpoints (savepoints still work).
    pub interval_ms: Option<u64>,
    pub mode: CheckpointMode,
    /// Unaligned checkpoints: do not wait for barrier alignment; persist the records
    /// in flight instead. Requires exactly-once mode and max concurrent 1.
    pub unaligned: bool,
    pub timeout_ms: u64,
    pub min_pause_ms: u64,
    pub max_concurrent: u32,
    /// Consecutive checkpoint failures tolerated before the job fails over.
    pub tolerable_failures: u32,
    /// Completed checkpoints to keep; older ones are deleted once subsumed.
    pub retained: u32,
    /// Keep checkpoints when the job is cancelled (Flink's RETAIN_ON_CANCELLATION).
    pub retain_on_cancellation: bool,
    /// Checkpoint directory URI, e.g. `file:///var/lib/runnel/checkpoints/job-1`.
    pub storage: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: None,
            mode: CheckpointMode::ExactlyOnce,
            unaligned: false,
            timeout_ms: 10 * 60 * 1000,
            min_pause_ms: 0,
            max_concurrent: 1,
            tolerable_failures: 0,
            retained: 1,
            retain_on_cancellation: false,
            storage: None,
        }
    }
}

impl CheckpointConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut errs: Vec<String> = Vec::new();
        if self.interval_ms == Some(0) {
            errs.push("checkpoint interval must be > 0 (omit it to disable checkpoints)".into());
        }
        if self.interval_ms.is_some() && self.storage.is_none() {
            errs.push("checkpointing is enabled but no checkpoint storage is set".into());
        }
        if self.timeout_ms == 0 {
            errs.push("checkpoint timeout must be > 0".into());
        }
        if self.max_concurrent == 0 {
            errs.push("max concurrent checkpoints must be >= 1".into());
        }
        if self.retained == 0 {
            errs.push("retained checkpoints must be >= 1".into());
        }
        if self.unaligned && self.mode != CheckpointMode::ExactlyOnce {
            errs.push("unaligned checkpoints require exactly-once mode".into());
        }
        if self.unaligned && self.max_concurrent != 1 {
            errs.push("unaligned checkpoints require max concurrent checkpoints = 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

/// Where to restore from when the job starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSettings {
    /// A checkpoint (`.../chk-N`), a savepoint directory, or a checkpoint base
    /// directory with `latest: true` to pick its newest complete checkpoint.
    pub path: String,
    #[serde(default)]
    pub latest: bool,
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

#[derive(Clone, Debug)]
pub struct JobConfig {
    pub name: String,
    /// Default parallelism of operators that do not set their own.
    pub parallelism: u32,
    /// Number of key groups: the upper bound for rescaling keyed state. Fixed once
    /// state has been written.
    pub max_parallelism: u32,
    pub checkpoint: CheckpointConfig,
    pub restart: RestartStrategy,
    pub restore: Option<RestoreSettings>,
    /// Bounded channel capacity, in batches, per producer-consumer subtask pair.
    pub channel_capacity: usize,
    /// Records per network batch; a batch also flushes when the producer would
    /// otherwise wait, so small batches do not add latency.
    pub batch_size: usize,
    /// How often sources emit watermarks (0 = whenever they advance).
    pub watermark_interval_ms: u64,
    pub clock: Clock,
    pub faults: FaultInjector,
}

impl JobConfig {
    pub fn new(name: impl Into<String>) -> Self {
        JobConfig {
            name: name.into(),
            parallelism: 1,
            max_parallelism: 128,
            checkpoint: CheckpointConfig::default(),
            restart: RestartStrategy::FixedDelay {
                attempts: 3,
                delay_ms: 100,
            },
            restore: None,
            channel_capacity: 4,
            batch_size: 1024,
            watermark_interval_ms: 200,
            clock: Clock::System,
            faults: FaultInjector::none(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut errs: Vec<String> = Vec::new();
        if let Err(e) =
            crate::keygroup::validate_parallelism(self.parallelism, self.max_parallelism)
        {
            errs.push(e);
        }
        if let Err(e) = self.checkpoint.validate() {
            errs.push(e);
        }
        if let Err(e) = self.restart.validate() {
            errs.push(format!("restart strategy: {e}"));
        }
        if self.channel_capacity == 0 {
            errs.push("channel capacity must be >= 1".into());
        }
        if self.batch_size == 0 {
            errs.push("batch size must be >= 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}
