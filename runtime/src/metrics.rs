//! Per-job metrics in the Prometheus/OpenMetrics text format.
//!
//! Every handle here is a cheap clone of a shared atomic, so tasks keep their
//! own copies and never take a lock on the record path. Record counters are
//! additionally batched by the task (see `task::counted`), so the cost per
//! record is a plain add.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Content type of [`JobMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub type CounterF64 = Counter<f64, AtomicU64>;
pub type GaugeF64 = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorLabels {
    pub operator: String,
    pub subtask: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub operator: String,
    pub kind: String,
}

/// All metrics of one job.
pub struct JobMetrics {
    registry: Mutex<Registry>,
    records_in: Family<OperatorLabels, Counter>,
    records_out: Family<OperatorLabels, Counter>,
    backpressure: Family<TaskLabels, CounterF64>,
    kafka_lag: Family<PartitionLabels, Gauge>,
    record_errors: Family<ErrorLabels, Counter>,
    pub checkpoints_completed: Counter,
    pub checkpoints_failed: Counter,
    pub checkpoint_duration: Histogram,
    pub last_checkpoint_duration: GaugeF64,
    pub last_checkpoint_size: Gauge,
    pub last_checkpoint_alignment: GaugeF64,
    pub last_checkpoint_id: Gauge,
    pub restarts: Counter,
    pub running: Gauge,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl JobMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("runnel");
        let records_in = Family::<OperatorLabels, Counter>::default();
        r.register(
            "records_in",
            "Records received by an operator subtask",
            records_in.clone(),
        );
        let records_out = Family::<OperatorLabels, Counter>::default();
        r.register(
            "records_out",
            "Records emitted by an operator subtask",
            records_out.clone(),
        );
        let backpressure = Family::<TaskLabels, CounterF64>::default();
        r.register(
            "backpressured_seconds",
            "Time a task spent blocked because a downstream channel was full",
            backpressure.clone(),
        );
        let kafka_lag = Family::<PartitionLabels, Gauge>::default();
        r.register(
            "kafka_consumer_lag_records",
            "High watermark minus the next offset to read, per partition",
            kafka_lag.clone(),
        );
        let record_errors = Family::<ErrorLabels, Counter>::default();
        r.register(
            "record_errors",
            "Records an operator could not process, by kind (skipped, dead_lettered, expression, aggregate_value)",
            record_errors.clone(),
        );
        let checkpoints_completed = Counter::default();
        r.register(
            "checkpoints_completed",
            "Completed checkpoints and savepoints",
            checkpoints_completed.clone(),
        );
        let checkpoints_failed = Counter::default();
        r.register(
            "checkpoints_failed",
            "Failed, expired or declined checkpoints and savepoints",
            checkpoints_failed.clone(),
        );
        let checkpoint_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        r.register(
            "checkpoint_duration_seconds",
            "Time from trigger to the committed _metadata",
            checkpoint_duration.clone(),
        );
        let last_checkpoint_duration = GaugeF64::default();
        r.register(
            "last_checkpoint_duration_seconds",
            "Duration of the last completed checkpoint",
            last_checkpoint_duration.clone(),
        );
        let last_checkpoint_size = Gauge::default();
        r.register(
            "last_checkpoint_size_bytes",
            "Size of the last completed checkpoint",
            last_checkpoint_size.clone(),
        );
        let last_checkpoint_alignment = GaugeF64::default();
        r.register(
            "last_checkpoint_alignment_seconds",
            "Longest barrier alignment of any subtask in the last completed checkpoint",
            last_checkpoint_alignment.clone(),
        );
        let last_checkpoint_id = Gauge::default();
        r.register(
            "last_checkpoint_id",
            "Id of the last completed checkpoint",
            last_checkpoint_id.clone(),
        );
        let restarts = Counter::default();
        r.register("restarts", "Job restarts after failures", restarts.clone());
        let running = Gauge::default();
        r.register(
            "job_running",
            "1 while the job is running, 0 otherwise",
            running.clone(),
        );
        JobMetrics {
            registry: Mutex::new(r),
            records_in,
            records_out,
            backpressure,
            kafka_lag,
            record_errors,
            checkpoints_completed,
            checkpoints_failed,
            checkpoint_duration,
            last_checkpoint_duration,
            last_checkpoint_size,
            last_checkpoint_alignment,
            last_checkpoint_id,
            restarts,
            running,
        }
    }

    fn op(operator: &str, subtask: u32) -> OperatorLabels {
        OperatorLabels {
            operator: operator.to_string(),
            subtask: subtask.to_string(),
        }
    }

    pub fn records_in(&self, operator: &str, subtask: u32) -> Counter {
        self.records_in
            .get_or_create(&Self::op(operator, subtask))
            .clone()
    }

    pub fn records_out(&self, operator: &str, subtask: u32) -> Counter {
        self.records_out
            .get_or_create(&Self::op(operator, subtask))
            .clone()
    }

    pub fn backpressure(&self, task: &str) -> CounterF64 {
        self.backpressure
            .get_or_create(&TaskLabels {
                task: task.to_string(),
            })
            .clone()
    }

    /// Lag gauge of one partition; the Kafka source owns its value.
    pub fn kafka_lag(&self, topic: &str, partition: i32) -> Gauge {
        self.kafka_lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .clone()
    }

    /// Counter of records an operator could not process, e.g. kind `skipped`
    /// or `dead_lettered` for undeserializable input.
    pub fn record_errors(&self, operator: &str, kind: &str) -> Counter {
        self.record_errors
            .get_or_create(&ErrorLabels {
                operator: operator.to_string(),
                kind: kind.to_string(),
            })
            .clone()
    }

    /// Records of a completed snapshot.
    pub fn checkpoint_completed(&self, id: u64, duration_ms: u64, size: u64, alignment_ms: u64) {
        self.checkpoints_completed.inc();
        let secs = duration_ms as f64 / 1000.0;
        self.checkpoint_duration.observe(secs);
        self.last_checkpoint_duration.set(secs);
        self.last_checkpoint_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.last_checkpoint_alignment
            .set(alignment_ms as f64 / 1000.0);
        self.last_checkpoint_id
            .set(i64::try_from(id).unwrap_or(i64::MAX));
    }

    /// The text exposition, OpenMetrics flavour (which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_share_values_and_encode() {
        let m = JobMetrics::new();
        m.records_in("map", 0).inc_by(3);
        m.records_in("map", 0).inc_by(2);
        m.kafka_lag("t", 7).set(42);
        m.checkpoint_completed(5, 1500, 2048, 20);
        let text = m.encode();
        assert!(
            text.contains("runnel_records_in_total{operator=\"map\",subtask=\"0\"} 5"),
            "{text}"
        );
        assert!(text.contains("runnel_kafka_consumer_lag_records{topic=\"t\",partition=\"7\"} 42"));
        assert!(text.contains("runnel_last_checkpoint_size_bytes 2048"));
        assert!(text.contains("runnel_last_checkpoint_id 5"));
        assert!(text.ends_with("# EOF\n"));
    }
}
