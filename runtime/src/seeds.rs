//! The examples from the project's seed notes (Flink's state documentation),
//! written against the Runnel API. The runnable examples and the tests share
//! them.

use std::sync::{Arc, Mutex};

use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, KeyedContext, KeyedProcessFunction, SinkContext, SinkFunction,
    SnapshotContext, SourceFunction, SourceOutput, SourcePoll,
};
use crate::state::keyed::{ValueState, ValueStateDescriptor};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};

/// Flink's CountWindowAverage: keeps (count, sum) per key in a ValueState and
/// emits it every two elements, then clears it.
#[derive(Clone, Default)]
pub struct CountWindowAverage {
    sum: Option<ValueState<(u64, u64)>>,
}

impl CheckpointListener for CountWindowAverage {}

impl KeyedProcessFunction<u64, (u64, u64), (u64, u64)> for CountWindowAverage {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.sum = Some(ctx.value_state(&ValueStateDescriptor::new("average"))?);
        Ok(())
    }

    fn process_element(
        &mut self,
        value: (u64, u64),
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> FnResult {
        let sum = self
            .sum
            .clone()
            .ok_or_else(|| UserError::msg("state not initialized"))?;
        let (c, s) = sum.value(ctx)?.unwrap_or((0, 0));
        let next = (c + 1, s + value.1);
        sum.update(ctx, next)?;
        if next.0 >= 2 {
            ctx.collect(next);
            sum.clear(ctx)?;
        }
        Ok(())
    }
}

/// Formats a pair the way the seed prints Flink's Tuple2: `(2,8)`.
pub fn tuple(t: &(u64, u64)) -> String {
    format!("({},{})", t.0, t.1)
}

/// Flink's BufferingSink: buffers elements and flushes them in groups of
/// `threshold`; the buffer is operator list state (even-split), so buffered
/// elements survive a failure.
#[derive(Clone)]
pub struct BufferingSink {
    threshold: usize,
    buffered: Vec<String>,
    state: Option<OperatorListState<String>>,
    /// Every flushed group, shared with the caller.
    pub flushed: Arc<Mutex<Vec<Vec<String>>>>,
    /// What `initialize_state` found when restored, shared with the caller.
    pub restored: Arc<Mutex<Vec<Vec<String>>>>,
    pub print: bool,
}

impl BufferingSink {
    pub fn new(threshold: usize) -> Self {
        BufferingSink {
            threshold,
            buffered: Vec::new(),
            state: None,
            flushed: Arc::default(),
            restored: Arc::default(),
            print: false,
        }
    }
}

impl CheckpointListener for BufferingSink {}

impl SinkFunction<String> for BufferingSink {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        let st = ctx.list_state(&OperatorListStateDescriptor::<String>::even_split(
            "buffered-elements",
        ))?;
        if ctx.is_restored() {
            let items = st.get(ctx.operator_state())?.to_vec();
            if self.print {
                println!("restored buffered elements: {items:?}");
            }
            lock(&self.restored).push(items.clone());
            self.buffered.extend(items);
        }
        self.state = Some(st);
        Ok(())
    }

    fn invoke(&mut self, value: String, _ctx: &SinkContext) -> FnResult {
        self.buffered.push(value);
        if self.buffered.len() >= self.threshold {
            let group = std::mem::take(&mut self.buffered);
            if self.print {
                println!("flush: {}", group.join(" "));
            }
            lock(&self.flushed).push(group);
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), self.buffered.clone())?;
        }
        Ok(())
    }
}

/// Flink's CounterSource: emits 0, 1, 2, ... and checkpoints its offset as
/// list state; on restore it resumes from the largest checkpointed offset.
#[derive(Clone)]
pub struct CounterSource {
    offset: u64,
    limit: u64,
    state: Option<OperatorListState<u64>>,
    /// Offsets this source resumed from, shared with the caller.
    pub resumed_from: Arc<Mutex<Vec<u64>>>,
}

impl CounterSource {
    /// Counts up to (excluding) `limit`, then finishes.
    pub fn new(limit: u64) -> Self {
        CounterSource {
            offset: 0,
            limit,
            state: None,
            resumed_from: Arc::default(),
        }
    }
}

impl CheckpointListener for CounterSource {}

impl SourceFunction<u64> for CounterSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        let st = ctx.list_state(&OperatorListStateDescriptor::<u64>::union("offset"))?;
        if ctx.is_restored() {
            self.offset = st
                .get(ctx.operator_state())?
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
            lock(&self.resumed_from).push(self.offset);
        }
        self.state = Some(st);
        Ok(())
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, u64>) -> Result<SourcePoll, UserError> {
        for _ in 0..64 {
            if self.offset >= self.limit {
                return Ok(SourcePoll::Finished);
            }
            out.collect(self.offset);
            self.offset += 1;
        }
        Ok(SourcePoll::MoreAvailable)
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![self.offset])?;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
