//! What a window computes: an accumulator per key and window, merged when
//! session windows merge.

use crate::error::FnResult;
use crate::functions::Data;
use crate::state::keyed::StateValue;

use super::assigner::TimeWindow;

/// An incremental window aggregation (Flink's AggregateFunction plus the
/// window's result function). Only the accumulator is kept in state, never the
/// records.
pub trait WindowAggregator<K, In>: Clone + Send + Sync + 'static {
    type Acc: StateValue;
    type Out: Data;
    fn create(&self) -> Self::Acc;
    /// Adds a record; an error fails the task (the declarative layer turns
    /// per-record evaluation errors into dropped records before this).
    fn add(&self, acc: &mut Self::Acc, value: &In, timestamp: i64) -> FnResult;
    /// Combines two accumulators (session windows merging).
    fn merge(&self, into: &mut Self::Acc, other: Self::Acc);
    /// The output for a key and window (`None` for count windows).
    fn result(&self, key: &K, window: Option<TimeWindow>, acc: &Self::Acc) -> FnResult<Self::Out>;
    /// What the accumulator holds, for aggregators whose accumulator layout
    /// depends on configuration (the declarative one: one accumulator per
    /// aggregate, by position). The window operator keeps it with its state
    /// and refuses a restore written with another layout: the accumulators
    /// would decode, but as the wrong aggregates. `None`: the layout is fixed
    /// by the type (a change there is caught by decoding).
    fn state_layout(&self) -> Option<String> {
        None
    }
}

/// Counts records: emits `(key, window, count)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountAggregator;

impl<K: Data, In: 'static> WindowAggregator<K, In> for CountAggregator {
    type Acc = u64;
    type Out = (K, Option<TimeWindow>, u64);
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &In, _ts: i64) -> FnResult {
        *acc += 1;
        Ok(())
    }
    fn merge(&self, into: &mut u64, other: u64) {
        *into += other;
    }
    fn result(&self, key: &K, window: Option<TimeWindow>, acc: &u64) -> FnResult<Self::Out> {
        Ok((key.clone(), window, *acc))
    }
}
