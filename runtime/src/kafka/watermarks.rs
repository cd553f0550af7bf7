//! Per-partition watermarks. A subtask that reads several partitions must not
//! let a fast partition push the watermark past records a slow one has yet to
//! deliver, so the subtask's watermark is the minimum over its partitions
//! (Flink's per-partition watermarking). A partition that stays silent longer
//! than the idleness timeout stops holding the minimum back. Pure logic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::config::TopicPartition;

type EventTimeFn<T> = Arc<dyn Fn(&T, Option<i64>) -> Option<i64> + Send + Sync>;

/// How the Kafka source derives event time and watermarks.
pub struct KafkaWatermarks<T> {
    pub(crate) bound_ms: i64,
    pub(crate) idleness_ms: Option<i64>,
    pub(crate) event_time: Option<EventTimeFn<T>>,
}

impl<T> Clone for KafkaWatermarks<T> {
    fn clone(&self) -> Self {
        KafkaWatermarks {
            bound_ms: self.bound_ms,
            idleness_ms: self.idleness_ms,
            event_time: self.event_time.clone(),
        }
    }
}

impl<T> KafkaWatermarks<T> {
    /// Event time is the record's Kafka timestamp; watermark = min over
    /// partitions of (max timestamp - bound - 1).
    pub fn bounded_out_of_orderness(bound: Duration) -> Self {
        KafkaWatermarks {
            bound_ms: bound.as_millis() as i64,
            idleness_ms: None,
            event_time: None,
        }
    }

    /// Event time from a field of the value (given the Kafka timestamp too);
    /// `None` leaves the record without event time.
    pub fn with_event_time(
        mut self,
        f: impl Fn(&T, Option<i64>) -> Option<i64> + Send + Sync + 'static,
    ) -> Self {
        self.event_time = Some(Arc::new(f));
        self
    }

    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness_ms = Some(timeout.as_millis() as i64);
        self
    }

    pub(crate) fn event_time(&self, value: &T, kafka_ts: Option<i64>) -> Option<i64> {
        match &self.event_time {
            Some(f) => f(value, kafka_ts),
            None => kafka_ts,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartitionClock {
    max_ts: i64,
    last_record_ms: i64,
}

/// Tracks the per-partition maxima of one subtask.
#[derive(Debug, Default)]
pub struct PartitionWatermarks {
    parts: BTreeMap<TopicPartition, PartitionClock>,
}

impl PartitionWatermarks {
    /// A partition joins (assignment or discovery); it holds the watermark
    /// back until it has delivered a record or goes idle.
    pub fn add_partition(&mut self, tp: TopicPartition, now_ms: i64) {
        self.parts.entry(tp).or_insert(PartitionClock {
            max_ts: i64::MIN,
            last_record_ms: now_ms,
        });
    }

    pub fn on_record(&mut self, tp: &TopicPartition, ts: i64, now_ms: i64) {
        let c = self.parts.entry(tp.clone()).or_insert(PartitionClock {
            max_ts: i64::MIN,
            last_record_ms: now_ms,
        });
        c.max_ts = c.max_ts.max(ts);
        c.last_record_ms = now_ms;
    }

    /// The subtask's watermark now, or `None` while some active partition has
    /// no record yet (or the subtask reads nothing).
    pub fn current(&self, bound_ms: i64, idleness_ms: Option<i64>, now_ms: i64) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for c in self.parts.values() {
            let idle = idleness_ms
                .map(|i| now_ms.saturating_sub(c.last_record_ms) >= i)
                .unwrap_or(false);
            if idle {
                continue;
            }
            any_active = true;
            if c.max_ts == i64::MIN {
                return None;
            }
            let w = c.max_ts.saturating_sub(bound_ms).saturating_sub(1);
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        if !any_active {
            // Every partition is idle: the highest partition clock is safe to
            // publish (no partition will deliver older records unless it
            // wakes up, which idleness accepts by definition).
            return self
                .parts
                .values()
                .filter(|c| c.max_ts != i64::MIN)
                .map(|c| c.max_ts.saturating_sub(bound_ms).saturating_sub(1))
                .max();
        }
        min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn minimum_over_partitions() {
        let mut w = PartitionWatermarks::default();
        assert_eq!(w.current(0, None, 0), None);
        w.add_partition(tp(0), 0);
        w.add_partition(tp(1), 0);
        w.on_record(&tp(0), 100, 1);
        assert_eq!(
            w.current(10, None, 1),
            None,
            "partition 1 has no record yet"
        );
        w.on_record(&tp(1), 50, 2);
        assert_eq!(w.current(10, None, 2), Some(39));
        w.on_record(&tp(1), 300, 3);
        assert_eq!(w.current(10, None, 3), Some(89));
        // Older records never move a partition's clock back.
        w.on_record(&tp(0), 20, 4);
        assert_eq!(w.current(10, None, 4), Some(89));
    }

    #[test]
    fn idle_partitions_do_not_hold_back() {
        let mut w = PartitionWatermarks::default();
        w.add_partition(tp(0), 0);
        w.add_partition(tp(1), 0);
        w.on_record(&tp(0), 100, 0);
        assert_eq!(w.current(0, Some(50), 10), None);
        assert_eq!(w.current(0, Some(50), 60), Some(99), "p1 idle, p0 idle too");
        w.on_record(&tp(0), 200, 70);
        assert_eq!(w.current(0, Some(50), 80), Some(199), "p1 idle");
        w.on_record(&tp(1), 150, 90);
        assert_eq!(w.current(0, Some(50), 95), Some(149), "p1 woke up");
    }

    #[test]
    fn event_time_from_field() {
        let s = KafkaWatermarks::<(u32, i64)>::bounded_out_of_orderness(Duration::from_millis(5))
            .with_event_time(|v, _| Some(v.1));
        assert_eq!(s.event_time(&(1, 77), Some(5)), Some(77));
        let k = KafkaWatermarks::<(u32, i64)>::bounded_out_of_orderness(Duration::ZERO);
        assert_eq!(k.event_time(&(1, 77), Some(5)), Some(5));
        assert_eq!(s.bound_ms, 5);
    }
}
