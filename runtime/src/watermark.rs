//! Watermark generation at sources: bounded out-of-orderness and idleness.

use std::sync::Arc;
use std::time::Duration;

type TimestampFn<T> = Arc<dyn Fn(&T, Option<i64>) -> i64 + Send + Sync>;

/// How a source assigns event time and generates watermarks (Flink's
/// WatermarkStrategy). The watermark is `max timestamp - bound - 1`.
pub struct WatermarkStrategy<T> {
    pub(crate) bound_ms: i64,
    pub(crate) timestamp: Option<TimestampFn<T>>,
    pub(crate) idleness_ms: Option<i64>,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            bound_ms: self.bound_ms,
            timestamp: self.timestamp.clone(),
            idleness_ms: self.idleness_ms,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    pub fn bounded_out_of_orderness(bound: Duration) -> Self {
        WatermarkStrategy {
            bound_ms: bound.as_millis() as i64,
            timestamp: None,
            idleness_ms: None,
        }
    }

    pub fn monotonous() -> Self {
        Self::bounded_out_of_orderness(Duration::ZERO)
    }

    /// Extracts event time from a record (given the timestamp the source attached).
    pub fn with_timestamp_assigner(
        mut self,
        f: impl Fn(&T, Option<i64>) -> i64 + Send + Sync + 'static,
    ) -> Self {
        self.timestamp = Some(Arc::new(f));
        self
    }

    /// Marks the source subtask idle after this long without records, so that it
    /// does not hold back the watermark downstream.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness_ms = Some(timeout.as_millis() as i64);
        self
    }
}

/// Per-subtask watermark generator state.
pub(crate) struct WatermarkGen {
    pub max_ts: i64,
    pub emitted: i64,
    pub last_emit_ms: i64,
    pub last_record_ms: i64,
    pub idle: bool,
}

impl WatermarkGen {
    pub fn new(now: i64) -> Self {
        WatermarkGen {
            max_ts: i64::MIN,
            emitted: i64::MIN,
            last_emit_ms: i64::MIN,
            last_record_ms: now,
            idle: false,
        }
    }

    pub fn candidate(&self, bound_ms: i64) -> i64 {
        if self.max_ts == i64::MIN {
            i64::MIN
        } else {
            self.max_ts.saturating_sub(bound_ms).saturating_sub(1)
        }
    }
}
