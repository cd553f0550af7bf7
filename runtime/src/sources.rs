//! Built-in sources: a fixed collection and a data generator. Both checkpoint
//! their position, so they replay exactly what a restore needs.

use std::time::{Duration, Instant};

use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, Data, InitContext, SnapshotContext, SourceFunction, SourceOutput,
    SourcePoll,
};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};

/// Position of one subtask in a deterministic sequence: `(parallelism, subtask,
/// next local index)`. Kept as union state so a restore can check that the
/// partitioning of the sequence is unchanged.
type Position = (u32, u32, u64);

fn restore_position(
    ctx: &mut InitContext<'_>,
    what: &str,
) -> Result<(OperatorListState<Position>, u64), UserError> {
    let state = ctx.list_state(&OperatorListStateDescriptor::<Position>::union("position"))?;
    let (p, s) = (ctx.parallelism(), ctx.subtask_index());
    let saved: Vec<Position> = state.get(ctx.operator_state())?.to_vec();
    if saved.is_empty() {
        return Ok((state, 0));
    }
    if saved.iter().any(|(sp, _, _)| *sp != p) {
        return Err(UserError::msg(format!(
            "{what} '{}' was checkpointed at parallelism {} and cannot resume at parallelism {p}: \
             its sequence is partitioned by subtask (set the source's parallelism explicitly)",
            ctx.operator_name(),
            saved[0].0
        )));
    }
    let next = saved
        .iter()
        .filter(|(_, ss, _)| *ss == s)
        .map(|(_, _, n)| *n)
        .max()
        .unwrap_or(0);
    Ok((state, next))
}

/// Emits a fixed list of elements; subtask `s` of `p` emits indices `i` with
/// `i % p == s`, in order.
#[derive(Clone)]
pub struct FromElements<T> {
    items: std::sync::Arc<Vec<T>>,
    next: u64,
    p: u32,
    s: u32,
    state: Option<OperatorListState<Position>>,
}

impl<T> FromElements<T> {
    pub fn new(items: Vec<T>) -> Self {
        FromElements {
            items: std::sync::Arc::new(items),
            next: 0,
            p: 1,
            s: 0,
            state: None,
        }
    }
}

impl<T> CheckpointListener for FromElements<T> {}

impl<T: Data + Sync> SourceFunction<T> for FromElements<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.p = ctx.parallelism();
        self.s = ctx.subtask_index();
        let (st, next) = restore_position(ctx, "source")?;
        self.state = Some(st);
        self.next = next;
        Ok(())
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll, UserError> {
        for _ in 0..256 {
            let i = self.next * self.p as u64 + self.s as u64;
            match self.items.get(i as usize) {
                Some(v) => {
                    out.collect(v.clone());
                    self.next += 1;
                }
                None => return Ok(SourcePoll::Finished),
            }
        }
        Ok(SourcePoll::MoreAvailable)
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![(self.p, self.s, self.next)])?;
        }
        Ok(())
    }
}

/// Generates `f(i)` for a global sequence `i = 0, 1, 2, ...` (optionally
/// bounded and rate-limited). Subtask `s` of `p` generates `i = k * p + s`.
pub struct GeneratorSource<T, F> {
    f: std::sync::Arc<F>,
    count: Option<u64>,
    rate_per_subtask: Option<f64>,
    batch: usize,
    next: u64,
    p: u32,
    s: u32,
    started: Option<(Instant, u64)>,
    state: Option<OperatorListState<Position>>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T, F> Clone for GeneratorSource<T, F> {
    fn clone(&self) -> Self {
        GeneratorSource {
            f: self.f.clone(),
            count: self.count,
            rate_per_subtask: self.rate_per_subtask,
            batch: self.batch,
            next: self.next,
            p: self.p,
            s: self.s,
            started: None,
            state: self.state.clone(),
            _t: std::marker::PhantomData,
        }
    }
}

impl<T, F: Fn(u64) -> T> GeneratorSource<T, F> {
    pub fn new(f: F) -> Self {
        GeneratorSource {
            f: std::sync::Arc::new(f),
            count: None,
            rate_per_subtask: None,
            batch: 512,
            next: 0,
            p: 1,
            s: 0,
            started: None,
            state: None,
            _t: std::marker::PhantomData,
        }
    }
    /// Total number of elements across all subtasks (unbounded if not set).
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
    /// Elements per second per subtask.
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate_per_subtask = Some(per_second);
        self.batch = self.batch.min((per_second / 50.0).max(1.0) as usize);
        self
    }
}

impl<T, F> CheckpointListener for GeneratorSource<T, F> {}

impl<T: Data, F: Fn(u64) -> T + Send + Sync + 'static> SourceFunction<T> for GeneratorSource<T, F> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.p = ctx.parallelism();
        self.s = ctx.subtask_index();
        let (st, next) = restore_position(ctx, "generator")?;
        self.state = Some(st);
        self.next = next;
        Ok(())
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll, UserError> {
        let mut n = self.batch;
        if let Some(rate) = self.rate_per_subtask {
            let (t0, k0) = *self.started.get_or_insert((Instant::now(), self.next));
            let allowed = k0 + (t0.elapsed().as_secs_f64() * rate) as u64;
            if allowed <= self.next {
                return Ok(SourcePoll::Idle(Duration::from_millis(5)));
            }
            n = n.min((allowed - self.next) as usize);
        }
        let (p, s) = (self.p as u64, self.s as u64);
        for _ in 0..n {
            let i = self.next * p + s;
            if let Some(c) = self.count
                && i >= c
            {
                return Ok(SourcePoll::Finished);
            }
            out.collect((self.f)(i));
            self.next += 1;
        }
        Ok(SourcePoll::MoreAvailable)
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        if let Some(st) = &self.state {
            st.update(ctx.operator_state(), vec![(self.p, self.s, self.next)])?;
        }
        Ok(())
    }
}
