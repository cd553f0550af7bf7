//! The programming model: the traits user code implements and the contexts the
//! engine hands to it. Functions are `Clone`: the engine clones a fresh instance
//! per subtask and per attempt, as Flink deserializes a fresh function object.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{FnResult, TaskError, UserError};
use crate::event::{SnapshotKind, StreamRecord};
use crate::metrics::JobMetrics;
use crate::state::keyed::{
    AggregatingState, AggregatingStateDescriptor, Key, KeyedBackend, KeyedStateAccess, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    StateValue, ValueState, ValueStateDescriptor,
};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor, OperatorStateStore};
use crate::task::chain::Downstream;
use crate::timers::TimerService;

/// A type that can flow through a stream. Serializable because unaligned
/// checkpoints persist in-flight records, and records cross the network in
/// distributed mode.
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// Handed to `initialize_state`: registers state and says whether it was restored.
pub struct InitContext<'a, K = ()> {
    pub(crate) operator_state: &'a mut OperatorStateStore,
    pub(crate) keyed: Option<&'a mut KeyedBackend<K>>,
    pub(crate) restored: bool,
    /// See [`InitContext::restores_in_flight_records`].
    pub(crate) in_flight: bool,
    pub(crate) subtask: u32,
    pub(crate) parallelism: u32,
    pub(crate) operator: &'a str,
    pub(crate) metrics: &'a Arc<JobMetrics>,
}

impl<K> InitContext<'_, K> {
    /// True when the job was restored from a snapshot that holds this operator.
    pub fn is_restored(&self) -> bool {
        self.restored
    }
    /// True when records that were in flight to this operator when an
    /// unaligned checkpoint was taken are restored, to be processed before
    /// any new input. They were sent by the job that wrote the checkpoint:
    /// an operator whose input changed shape since (a declarative window fed
    /// keys alone, now whole records) must refuse them. Savepoints hold none.
    pub fn restores_in_flight_records(&self) -> bool {
        self.in_flight
    }
    pub fn subtask_index(&self) -> u32 {
        self.subtask
    }
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }
    pub fn operator_name(&self) -> &str {
        self.operator
    }
    /// The job's metrics, for connectors that report their own (e.g. Kafka lag).
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.metrics.clone()
    }
    pub fn operator_state(&mut self) -> &mut OperatorStateStore {
        self.operator_state
    }
    pub fn list_state<T: StateValue>(
        &mut self,
        d: &OperatorListStateDescriptor<T>,
    ) -> Result<OperatorListState<T>, UserError> {
        self.operator_state.list_state(d)
    }
}

impl<K: Key> InitContext<'_, K> {
    fn backend(&mut self) -> Result<&mut KeyedBackend<K>, UserError> {
        let op = self.operator.to_string();
        self.keyed.as_deref_mut().ok_or_else(|| {
            UserError::msg(format!(
                "operator '{op}': keyed state is only available on a keyed stream (use key_by)"
            ))
        })
    }
    pub fn value_state<V: StateValue>(
        &mut self,
        d: &ValueStateDescriptor<V>,
    ) -> Result<ValueState<V>, UserError> {
        ValueState::register(self.backend()?, d)
    }
    pub fn keyed_list_state<V: StateValue>(
        &mut self,
        d: &ListStateDescriptor<V>,
    ) -> Result<ListState<V>, UserError> {
        ListState::register(self.backend()?, d)
    }
    pub fn map_state<UK: Key, UV: StateValue>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>, UserError> {
        MapState::register(self.backend()?, d)
    }
    pub fn reducing_state<V: StateValue>(
        &mut self,
        d: &ReducingStateDescriptor<V>,
    ) -> Result<ReducingState<V>, UserError> {
        ReducingState::register(self.backend()?, d)
    }
    pub fn aggregating_state<In: 'static, Acc: StateValue, Out: 'static>(
        &mut self,
        d: &AggregatingStateDescriptor<In, Acc, Out>,
    ) -> Result<AggregatingState<In, Acc, Out>, UserError> {
        AggregatingState::register(self.backend()?, d)
    }
}

/// Handed to `snapshot_state`.
pub struct SnapshotContext<'a> {
    pub(crate) operator_state: &'a mut OperatorStateStore,
    pub(crate) checkpoint_id: u64,
    pub(crate) kind: SnapshotKind,
}

impl SnapshotContext<'_> {
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }
    pub fn is_savepoint(&self) -> bool {
        self.kind.is_savepoint()
    }
    pub fn operator_state(&mut self) -> &mut OperatorStateStore {
        self.operator_state
    }
}

/// Emits records downstream. Errors from downstream (for example a cancelled
/// attempt) are kept and surface once the user function returns.
pub struct Collector<'a, T> {
    pub(crate) out: &'a mut dyn Downstream<T>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) error: &'a mut Option<TaskError>,
}

impl<T> Collector<'_, T> {
    /// Emits a record carrying the timestamp of the record being processed.
    pub fn collect(&mut self, value: T) {
        let ts = self.timestamp;
        self.collect_with_timestamp(value, ts);
    }
    pub fn collect_with_timestamp(&mut self, value: T, timestamp: Option<i64>) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.out.record(StreamRecord { value, timestamp }) {
            *self.error = Some(e);
        }
    }
}

/// Checkpoint hooks shared by all stateful functions. Notifications follow
/// Flink's subsuming contract: completion of checkpoint N implies that every
/// earlier checkpoint is subsumed, and a function may not be told about each one.
pub trait CheckpointListener {
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> FnResult {
        Ok(())
    }
    fn notify_checkpoint_aborted(&mut self, _checkpoint_id: u64) -> FnResult {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Call again right away.
    MoreAvailable,
    /// Nothing to emit now; the engine waits up to this long (handling checkpoints
    /// and control messages meanwhile) before polling again.
    Idle(Duration),
    /// The source is bounded and has emitted everything.
    Finished,
}

/// Buffers what a source emits in one poll.
pub struct SourceOutput<'a, T> {
    pub(crate) buf: &'a mut Vec<StreamRecord<T>>,
    /// A watermark the source computed itself (e.g. per Kafka partition); the
    /// task emits it after this poll's records if it advances.
    pub(crate) watermark: &'a mut Option<i64>,
}

impl<T> SourceOutput<'_, T> {
    pub fn collect(&mut self, value: T) {
        self.buf.push(StreamRecord {
            value,
            timestamp: None,
        });
    }
    pub fn collect_with_timestamp(&mut self, value: T, timestamp: i64) {
        self.buf.push(StreamRecord {
            value,
            timestamp: Some(timestamp),
        });
    }
    /// Emits a watermark after this poll's records. For sources that track
    /// event time finer than the subtask (per partition); ignored unless it
    /// advances the subtask's watermark.
    pub fn emit_watermark(&mut self, watermark: i64) {
        let w = self.watermark.get_or_insert(watermark);
        *w = (*w).max(watermark);
    }
}

/// A parallel source. The engine calls `poll` and, between polls, takes
/// snapshots, so position and emitted records are always consistent (the role of
/// Flink's checkpoint lock).
pub trait SourceFunction<T>: CheckpointListener + Clone + Send + 'static {
    fn initialize_state(&mut self, _ctx: &mut InitContext<'_>) -> FnResult {
        Ok(())
    }
    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll, UserError>;
    fn snapshot_state(&mut self, _ctx: &mut SnapshotContext<'_>) -> FnResult {
        Ok(())
    }
}

pub struct SinkContext {
    pub timestamp: Option<i64>,
    pub watermark: i64,
}

pub trait SinkFunction<T>: CheckpointListener + Clone + Send + 'static {
    fn initialize_state(&mut self, _ctx: &mut InitContext<'_>) -> FnResult {
        Ok(())
    }
    fn invoke(&mut self, value: T, ctx: &SinkContext) -> FnResult;
    fn snapshot_state(&mut self, _ctx: &mut SnapshotContext<'_>) -> FnResult {
        Ok(())
    }
    /// Input ended (a bounded job finished, or stop with drain).
    fn finish(&mut self) -> FnResult {
        Ok(())
    }
}

pub struct ProcessContext<'a, Out> {
    pub out: Collector<'a, Out>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) watermark: i64,
}

impl<Out> ProcessContext<'_, Out> {
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn collect(&mut self, v: Out) {
        self.out.collect(v)
    }
}

/// A non-keyed process function with operator state.
pub trait ProcessFunction<In, Out>: CheckpointListener + Clone + Send + 'static {
    fn initialize_state(&mut self, _ctx: &mut InitContext<'_>) -> FnResult {
        Ok(())
    }
    fn process_element(&mut self, value: In, ctx: &mut ProcessContext<'_, Out>) -> FnResult;
    fn snapshot_state(&mut self, _ctx: &mut SnapshotContext<'_>) -> FnResult {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

/// Context of a keyed function: the current key, its state, timers and output.
pub struct KeyedContext<'a, K, Out> {
    pub(crate) backend: &'a mut KeyedBackend<K>,
    pub(crate) key: &'a K,
    pub(crate) timers: &'a mut TimerService<K>,
    pub out: Collector<'a, Out>,
    pub(crate) timestamp: Option<i64>,
    pub(crate) watermark: i64,
    pub(crate) time_domain: Option<TimeDomain>,
}

impl<K: Key, Out> KeyedContext<'_, K, Out> {
    pub fn key(&self) -> &K {
        self.key
    }
    /// Event time of the current record, or of the timer that fired.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }
    pub fn current_processing_time(&self) -> i64 {
        self.backend.clock.now_ms()
    }
    /// In `on_timer`: which kind of timer fired.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.time_domain
    }
    pub fn register_event_time_timer(&mut self, ts: i64) {
        self.timers.register(TimeDomain::EventTime, self.key, ts);
    }
    pub fn register_processing_time_timer(&mut self, ts: i64) {
        self.timers
            .register(TimeDomain::ProcessingTime, self.key, ts);
    }
    pub fn delete_event_time_timer(&mut self, ts: i64) {
        self.timers.delete(TimeDomain::EventTime, self.key, ts);
    }
    pub fn delete_processing_time_timer(&mut self, ts: i64) {
        self.timers.delete(TimeDomain::ProcessingTime, self.key, ts);
    }
    pub fn collect(&mut self, v: Out) {
        self.out.collect(v)
    }
}

impl<K, Out> KeyedStateAccess<K> for KeyedContext<'_, K, Out> {
    fn keyed_parts(&mut self) -> (&mut KeyedBackend<K>, &K) {
        (self.backend, self.key)
    }
}

/// A function on a keyed stream with keyed state and timers (Flink's
/// KeyedProcessFunction, which also covers RichFlatMapFunction on a keyed stream).
pub trait KeyedProcessFunction<K, In, Out>: CheckpointListener + Clone + Send + 'static {
    fn initialize_state(&mut self, _ctx: &mut InitContext<'_, K>) -> FnResult {
        Ok(())
    }
    fn process_element(&mut self, value: In, ctx: &mut KeyedContext<'_, K, Out>) -> FnResult;
    fn on_timer(&mut self, _timestamp: i64, _ctx: &mut KeyedContext<'_, K, Out>) -> FnResult {
        Ok(())
    }
    fn snapshot_state(&mut self, _ctx: &mut SnapshotContext<'_>) -> FnResult {
        Ok(())
    }
}
