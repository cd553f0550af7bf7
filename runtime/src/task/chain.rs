//! Operator chains. Operators of one task are nested `Downstream`s called
//! directly (no channel, no copy); a chain ends in network outputs, a fan-out,
//! or nothing. Barriers travel the chain like records, so each operator
//! snapshots exactly when the barrier passes it.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};

use crate::checkpoint::format::{KeyGroupData, KeyedStateMeta, SubtaskState};
use crate::error::SnapshotError;
use crate::error::{FnResult, TaskError};
use crate::event::{Barrier, Batch, Event, MAX_WATERMARK, StreamRecord};
use crate::functions::{
    Collector, InitContext, KeyedContext, KeyedProcessFunction, ProcessContext, ProcessFunction,
    SinkContext, SinkFunction, SnapshotContext, TimeDomain,
};
use crate::keygroup::{KeyEncodeError, KeyGroupRange, subtask_for_key_group};
use crate::metrics::{CounterF64, JobMetrics};
use crate::state::keyed::{Key, KeyedBackend, KeyedSnapshot};
use crate::state::operator::OperatorStateStore;
use crate::timers::TimerService;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notification {
    Complete(u64),
    Aborted(u64),
}

/// One operator's part of a subtask snapshot.
#[derive(Debug)]
pub(crate) struct OperatorSnapshot {
    pub uid: String,
    pub key_groups: Option<KeyGroupRange>,
    pub keyed_metas: Vec<KeyedStateMeta>,
    /// Final once [`OperatorSnapshot::materialize`] ran.
    pub keyed_entries: u64,
    /// Until materialized, `key_groups` holds only the timers.
    pub state: SubtaskState,
    /// Keyed state frozen at the barrier, not yet encoded: encoding runs on the
    /// uploader thread so that the barrier passes the task without a pause.
    pub keyed: Option<KeyedSnapshot>,
}

impl OperatorSnapshot {
    /// Encodes the frozen keyed state into `state.key_groups` (merged with the
    /// timers already there) and sets `keyed_entries`. Idempotent.
    pub fn materialize(&mut self) -> Result<(), SnapshotError> {
        let Some(keyed) = self.keyed.take() else {
            return Ok(());
        };
        let mut groups = BTreeMap::new();
        self.keyed_entries = keyed.write(&mut groups)?;
        for g in std::mem::take(&mut self.state.key_groups) {
            groups
                .entry(g.key_group)
                .or_insert_with(|| KeyGroupData {
                    key_group: g.key_group,
                    ..Default::default()
                })
                .timers
                .extend(g.timers);
        }
        self.state.key_groups = groups.into_values().collect();
        Ok(())
    }
}

pub(crate) trait Downstream<T>: Send {
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError>;
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError>;
    fn idle(&mut self, idle: bool) -> Result<(), TaskError>;
    /// Snapshot (if stateful), then pass the barrier on.
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError>;
    fn notify(&mut self, n: Notification) -> Result<(), TaskError>;
    fn end(&mut self, drain: bool) -> Result<(), TaskError>;
    fn flush(&mut self) -> Result<(), TaskError>;
    fn processing_time(&mut self, now: i64) -> Result<(), TaskError>;
    fn next_processing_time(&self) -> Option<i64>;
}

pub(crate) type Out<T> = Box<dyn Downstream<T>>;

fn user(uid: &str) -> impl Fn(crate::error::UserError) -> TaskError + '_ {
    move |error| TaskError::User {
        task: uid.to_string(),
        error,
    }
}

fn check(uid: &str, r: FnResult, slot: Option<TaskError>) -> Result<(), TaskError> {
    if let Some(e) = slot {
        return Err(e);
    }
    r.map_err(user(uid))
}

/// Forwards the control-flow methods of `Downstream` to `self.out`.
macro_rules! forward_rest {
    () => {
        fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
            self.out.idle(idle)
        }
        fn flush(&mut self) -> Result<(), TaskError> {
            self.out.flush()
        }
        fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
            self.out.processing_time(now)
        }
        fn next_processing_time(&self) -> Option<i64> {
            self.out.next_processing_time()
        }
    };
}

macro_rules! forward_stateless {
    () => {
        fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
            self.out.watermark(wm)
        }
        fn barrier(
            &mut self,
            b: &Barrier,
            snaps: &mut Vec<OperatorSnapshot>,
        ) -> Result<(), TaskError> {
            self.out.barrier(b, snaps)
        }
        fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
            self.out.notify(n)
        }
        fn end(&mut self, drain: bool) -> Result<(), TaskError> {
            self.out.end(drain)
        }
        forward_rest!();
    };
}

pub(crate) struct MapOp<F, In, O> {
    pub f: F,
    pub out: Out<O>,
    pub _p: PhantomData<fn(In)>,
}

impl<F, In, O> Downstream<In> for MapOp<F, In, O>
where
    F: FnMut(In) -> O + Send,
    O: 'static,
{
    fn record(&mut self, r: StreamRecord<In>) -> Result<(), TaskError> {
        let value = (self.f)(r.value);
        self.out.record(StreamRecord {
            value,
            timestamp: r.timestamp,
        })
    }
    forward_stateless!();
}

pub(crate) struct FilterOp<F, T> {
    pub f: F,
    pub out: Out<T>,
}

impl<F, T> Downstream<T> for FilterOp<F, T>
where
    F: FnMut(&T) -> bool + Send,
    T: 'static,
{
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError> {
        if (self.f)(&r.value) {
            self.out.record(r)
        } else {
            Ok(())
        }
    }
    forward_stateless!();
}

pub(crate) struct FlatMapOp<F, In, O> {
    pub f: F,
    pub out: Out<O>,
    pub _p: PhantomData<fn(In)>,
}

impl<F, In, O> Downstream<In> for FlatMapOp<F, In, O>
where
    F: FnMut(In, &mut Collector<'_, O>) + Send,
    O: 'static,
{
    fn record(&mut self, r: StreamRecord<In>) -> Result<(), TaskError> {
        let mut err = None;
        let mut c = Collector {
            out: &mut *self.out,
            timestamp: r.timestamp,
            error: &mut err,
        };
        (self.f)(r.value, &mut c);
        err.map_or(Ok(()), Err)
    }
    forward_stateless!();
}

/// Snapshot of an operator that has only operator state.
fn operator_snapshot(uid: &str, store: &OperatorStateStore) -> Result<OperatorSnapshot, TaskError> {
    Ok(OperatorSnapshot {
        uid: uid.to_string(),
        key_groups: None,
        keyed_metas: vec![],
        keyed_entries: 0,
        state: SubtaskState {
            operator_states: store.snapshot()?,
            ..Default::default()
        },
        keyed: None,
    })
}

pub(crate) struct ProcessOp<F, In, O> {
    pub uid: String,
    pub f: F,
    pub out: Out<O>,
    pub store: OperatorStateStore,
    pub watermark: i64,
    pub _p: PhantomData<fn(In)>,
}

impl<F, In, O> ProcessOp<F, In, O>
where
    F: ProcessFunction<In, O>,
{
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        uid: &str,
        mut f: F,
        out: Out<O>,
        mut store: OperatorStateStore,
        restored: bool,
        in_flight: bool,
        subtask: u32,
        parallelism: u32,
        metrics: &Arc<JobMetrics>,
    ) -> Result<Self, TaskError> {
        f.initialize_state(&mut InitContext::<()> {
            operator_state: &mut store,
            keyed: None,
            restored,
            in_flight,
            subtask,
            parallelism,
            operator: uid,
            metrics,
        })
        .map_err(user(uid))?;
        Ok(ProcessOp {
            uid: uid.to_string(),
            f,
            out,
            store,
            watermark: i64::MIN,
            _p: PhantomData,
        })
    }
}

impl<F, In, O> Downstream<In> for ProcessOp<F, In, O>
where
    F: ProcessFunction<In, O>,
    In: Send + 'static,
    O: 'static,
{
    fn record(&mut self, r: StreamRecord<In>) -> Result<(), TaskError> {
        let mut err = None;
        let mut ctx = ProcessContext {
            out: Collector {
                out: &mut *self.out,
                timestamp: r.timestamp,
                error: &mut err,
            },
            timestamp: r.timestamp,
            watermark: self.watermark,
        };
        let res = self.f.process_element(r.value, &mut ctx);
        check(&self.uid, res, err)
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        self.watermark = wm;
        self.out.watermark(wm)
    }
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.f
            .snapshot_state(&mut SnapshotContext {
                operator_state: &mut self.store,
                checkpoint_id: b.id,
                kind: b.kind,
            })
            .map_err(user(&self.uid))?;
        snaps.push(operator_snapshot(&self.uid, &self.store)?);
        self.out.barrier(b, snaps)
    }
    fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
        match n {
            Notification::Complete(id) => self.f.notify_checkpoint_complete(id),
            Notification::Aborted(id) => self.f.notify_checkpoint_aborted(id),
        }
        .map_err(user(&self.uid))?;
        self.out.notify(n)
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        self.out.end(drain)
    }
    forward_rest!();
}

pub(crate) type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

pub(crate) struct KeyedProcessOp<F, K, In, O> {
    pub uid: String,
    pub f: F,
    pub out: Out<O>,
    pub key_fn: KeyFn<In, K>,
    pub backend: KeyedBackend<K>,
    pub timers: TimerService<K>,
    pub store: OperatorStateStore,
    pub watermark: i64,
    pub max_parallelism: u32,
}

impl<F, K, In, O> KeyedProcessOp<F, K, In, O>
where
    F: KeyedProcessFunction<K, In, O>,
    K: Key,
{
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        uid: &str,
        mut f: F,
        out: Out<O>,
        key_fn: KeyFn<In, K>,
        mut backend: KeyedBackend<K>,
        mut store: OperatorStateStore,
        restored_groups: &[KeyGroupData],
        restored: bool,
        in_flight: bool,
        subtask: u32,
        parallelism: u32,
        max_parallelism: u32,
        metrics: &Arc<JobMetrics>,
    ) -> Result<Self, TaskError> {
        let mut timers = TimerService::default();
        timers
            .restore(backend.key_groups(), restored_groups)
            .map_err(|message| TaskError::State {
                task: uid.to_string(),
                message,
            })?;
        let init = f.initialize_state(&mut InitContext {
            operator_state: &mut store,
            keyed: Some(&mut backend),
            restored,
            in_flight,
            subtask,
            parallelism,
            operator: uid,
            metrics,
        });
        if let Err(e) = init {
            return Err(match backend.incompatible.take() {
                Some(msg) => TaskError::Incompatible(msg),
                None => user(uid)(e),
            });
        }
        Ok(KeyedProcessOp {
            uid: uid.to_string(),
            f,
            out,
            key_fn,
            backend,
            timers,
            store,
            watermark: i64::MIN,
            max_parallelism,
        })
    }

    fn fire(&mut self, domain: TimeDomain, upto: i64) -> Result<(), TaskError> {
        while let Some((ts, key)) = self.timers.pop_due(domain, upto) {
            let mut err = None;
            let mut ctx = KeyedContext {
                backend: &mut self.backend,
                key: &key,
                timers: &mut self.timers,
                out: Collector {
                    out: &mut *self.out,
                    timestamp: Some(ts),
                    error: &mut err,
                },
                timestamp: Some(ts),
                watermark: self.watermark,
                time_domain: Some(domain),
            };
            let res = self.f.on_timer(ts, &mut ctx);
            check(&self.uid, res, err)?;
        }
        Ok(())
    }
}

impl<F, K, In, O> Downstream<In> for KeyedProcessOp<F, K, In, O>
where
    F: KeyedProcessFunction<K, In, O>,
    K: Key,
    In: Send + 'static,
    O: 'static,
{
    fn record(&mut self, r: StreamRecord<In>) -> Result<(), TaskError> {
        let key = (self.key_fn)(&r.value);
        let mut err = None;
        let mut ctx = KeyedContext {
            backend: &mut self.backend,
            key: &key,
            timers: &mut self.timers,
            out: Collector {
                out: &mut *self.out,
                timestamp: r.timestamp,
                error: &mut err,
            },
            timestamp: r.timestamp,
            watermark: self.watermark,
            time_domain: None,
        };
        let res = self.f.process_element(r.value, &mut ctx);
        check(&self.uid, res, err)
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        if wm <= self.watermark {
            return Ok(());
        }
        self.watermark = wm;
        self.fire(TimeDomain::EventTime, wm)?;
        self.out.watermark(wm)
    }
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.f
            .snapshot_state(&mut SnapshotContext {
                operator_state: &mut self.store,
                checkpoint_id: b.id,
                kind: b.kind,
            })
            .map_err(user(&self.uid))?;
        let keyed = self.backend.snapshot();
        let mut timers = BTreeMap::new();
        self.timers.snapshot(self.max_parallelism, &mut timers)?;
        snaps.push(OperatorSnapshot {
            uid: self.uid.clone(),
            key_groups: Some(self.backend.key_groups()),
            keyed_metas: keyed.metas().to_vec(),
            keyed_entries: 0,
            state: SubtaskState {
                operator_states: self.store.snapshot()?,
                key_groups: timers.into_values().collect(),
                in_flight: vec![],
            },
            keyed: Some(keyed),
        });
        self.out.barrier(b, snaps)
    }
    fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
        match n {
            Notification::Complete(id) => self.f.notify_checkpoint_complete(id),
            Notification::Aborted(id) => self.f.notify_checkpoint_aborted(id),
        }
        .map_err(user(&self.uid))?;
        self.out.notify(n)
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        if drain && self.watermark < MAX_WATERMARK {
            self.watermark(MAX_WATERMARK)?;
        }
        self.out.end(drain)
    }
    fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        // As in Flink, a processing-time timer for `t` fires once the clock
        // is past `t`, not at `t`: a record processed during millisecond
        // `t` still belongs to a window ending at `t + 1`, so firing at `t`
        // would fire that window before its last records and then again.
        self.fire(TimeDomain::ProcessingTime, now - 1)?;
        self.out.processing_time(now)
    }
    fn next_processing_time(&self) -> Option<i64> {
        match (
            self.timers.next_processing_time(),
            self.out.next_processing_time(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
        self.out.idle(idle)
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.out.flush()
    }
}

pub(crate) struct SinkOp<F, T> {
    pub uid: String,
    pub f: F,
    pub store: OperatorStateStore,
    pub watermark: i64,
    pub _p: PhantomData<fn(T)>,
}

impl<F: SinkFunction<T>, T> SinkOp<F, T> {
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        uid: &str,
        mut f: F,
        mut store: OperatorStateStore,
        restored: bool,
        in_flight: bool,
        subtask: u32,
        parallelism: u32,
        metrics: &Arc<JobMetrics>,
    ) -> Result<Self, TaskError> {
        f.initialize_state(&mut InitContext::<()> {
            operator_state: &mut store,
            keyed: None,
            restored,
            in_flight,
            subtask,
            parallelism,
            operator: uid,
            metrics,
        })
        .map_err(user(uid))?;
        Ok(SinkOp {
            uid: uid.to_string(),
            f,
            store,
            watermark: i64::MIN,
            _p: PhantomData,
        })
    }
}

impl<F: SinkFunction<T>, T: Send + 'static> Downstream<T> for SinkOp<F, T> {
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError> {
        let ctx = SinkContext {
            timestamp: r.timestamp,
            watermark: self.watermark,
        };
        self.f.invoke(r.value, &ctx).map_err(user(&self.uid))
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        self.watermark = wm;
        Ok(())
    }
    fn idle(&mut self, _idle: bool) -> Result<(), TaskError> {
        Ok(())
    }
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.f
            .snapshot_state(&mut SnapshotContext {
                operator_state: &mut self.store,
                checkpoint_id: b.id,
                kind: b.kind,
            })
            .map_err(user(&self.uid))?;
        snaps.push(operator_snapshot(&self.uid, &self.store)?);
        Ok(())
    }
    fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
        match n {
            Notification::Complete(id) => self.f.notify_checkpoint_complete(id),
            Notification::Aborted(id) => self.f.notify_checkpoint_aborted(id),
        }
        .map_err(user(&self.uid))
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        if drain {
            self.f.finish().map_err(user(&self.uid))?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    fn processing_time(&mut self, _now: i64) -> Result<(), TaskError> {
        Ok(())
    }
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
}

/// An operator output with no consumers.
pub(crate) struct Discard;

impl<T: 'static> Downstream<T> for Discard {
    fn record(&mut self, _r: StreamRecord<T>) -> Result<(), TaskError> {
        Ok(())
    }
    fn watermark(&mut self, _wm: i64) -> Result<(), TaskError> {
        Ok(())
    }
    fn idle(&mut self, _idle: bool) -> Result<(), TaskError> {
        Ok(())
    }
    fn barrier(&mut self, _b: &Barrier, _s: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        Ok(())
    }
    fn notify(&mut self, _n: Notification) -> Result<(), TaskError> {
        Ok(())
    }
    fn end(&mut self, _drain: bool) -> Result<(), TaskError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
    fn processing_time(&mut self, _now: i64) -> Result<(), TaskError> {
        Ok(())
    }
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
}

/// Several consumers of one output.
pub(crate) struct Fanout<T>(pub Vec<Out<T>>);

impl<T: Clone + Send + 'static> Downstream<T> for Fanout<T> {
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError> {
        let n = self.0.len();
        for (i, o) in self.0.iter_mut().enumerate() {
            if i + 1 == n {
                return o.record(r);
            }
            o.record(r.clone())?;
        }
        Ok(())
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.watermark(wm))
    }
    fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.idle(idle))
    }
    fn barrier(&mut self, b: &Barrier, snaps: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.barrier(b, snaps))
    }
    fn notify(&mut self, n: Notification) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.notify(n))
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.end(drain))
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.flush())
    }
    fn processing_time(&mut self, now: i64) -> Result<(), TaskError> {
        self.0.iter_mut().try_for_each(|o| o.processing_time(now))
    }
    fn next_processing_time(&self) -> Option<i64> {
        self.0.iter().filter_map(|o| o.next_processing_time()).min()
    }
}

pub(crate) type KeyGroupFn<T> = Arc<dyn Fn(&T) -> Result<u32, KeyEncodeError> + Send + Sync>;

pub(crate) enum Partitioner<T> {
    Forward,
    Rebalance,
    Broadcast,
    Hash(KeyGroupFn<T>),
}

impl<T> Clone for Partitioner<T> {
    fn clone(&self) -> Self {
        match self {
            Partitioner::Forward => Partitioner::Forward,
            Partitioner::Rebalance => Partitioner::Rebalance,
            Partitioner::Broadcast => Partitioner::Broadcast,
            Partitioner::Hash(f) => Partitioner::Hash(f.clone()),
        }
    }
}

/// The end of a chain that feeds another task: partitions records into per-target
/// batches and sends them over bounded channels (blocking when full, which is
/// how back-pressure reaches the sources).
pub(crate) struct NetworkOutput<T> {
    pub task: String,
    pub senders: Vec<Sender<Batch<T>>>,
    pub buffers: Vec<Batch<T>>,
    pub partitioner: Partitioner<T>,
    pub batch_size: usize,
    pub next: usize,
    pub max_parallelism: u32,
    pub backpressure: CounterF64,
    /// Hash edges: target subtask per key group, precomputed so that routing a
    /// record is a table lookup instead of a 64-bit division. Empty for very
    /// large max parallelism, where `subtask_for_key_group` is called instead.
    route: Vec<u32>,
}

/// Largest max parallelism whose routing table is precomputed (16 KiB).
const MAX_ROUTE_TABLE: u32 = 4096;

impl<T: Clone + Send + 'static> NetworkOutput<T> {
    pub fn new(
        task: String,
        senders: Vec<Sender<Batch<T>>>,
        partitioner: Partitioner<T>,
        batch_size: usize,
        start: usize,
        max_parallelism: u32,
        backpressure: CounterF64,
    ) -> Self {
        let n = senders.len();
        let route =
            if matches!(partitioner, Partitioner::Hash(_)) && max_parallelism <= MAX_ROUTE_TABLE {
                (0..max_parallelism)
                    .map(|kg| subtask_for_key_group(max_parallelism, n as u32, kg))
                    .collect()
            } else {
                Vec::new()
            };
        NetworkOutput {
            task,
            senders,
            buffers: (0..n).map(|_| Vec::with_capacity(batch_size)).collect(),
            partitioner,
            batch_size,
            next: start % n.max(1),
            max_parallelism,
            backpressure,
            route,
        }
    }

    fn send(&mut self, i: usize) -> Result<(), TaskError> {
        if self.buffers[i].is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buffers[i], Vec::with_capacity(self.batch_size));
        // A closed channel means the consumer is gone: the attempt is being torn down.
        match self.senders[i].try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(TaskError::Cancelled),
            Err(TrySendError::Full(batch)) => {
                // Back-pressure: only this slow path is timed.
                let t = Instant::now();
                let r = self.senders[i]
                    .send(batch)
                    .map_err(|_| TaskError::Cancelled);
                self.backpressure.inc_by(t.elapsed().as_secs_f64());
                r
            }
        }
    }

    #[inline]
    fn push(&mut self, i: usize, e: Event<T>) -> Result<(), TaskError> {
        self.buffers[i].push(e);
        if self.buffers[i].len() >= self.batch_size {
            self.send(i)?;
        }
        Ok(())
    }

    fn push_all(&mut self, e: Event<T>) -> Result<(), TaskError> {
        for i in 0..self.senders.len() {
            self.buffers[i].push(e.clone());
        }
        self.flush()
    }
}

impl<T: Clone + Send + 'static> Downstream<T> for NetworkOutput<T> {
    #[inline]
    fn record(&mut self, r: StreamRecord<T>) -> Result<(), TaskError> {
        let n = self.senders.len();
        match &self.partitioner {
            Partitioner::Forward => self.push(0, Event::Record(r)),
            Partitioner::Rebalance => {
                let i = self.next;
                self.next = if i + 1 == n { 0 } else { i + 1 };
                self.push(i, Event::Record(r))
            }
            Partitioner::Broadcast => {
                for i in 0..n - 1 {
                    self.push(i, Event::Record(r.clone()))?;
                }
                self.push(n - 1, Event::Record(r))
            }
            Partitioner::Hash(f) => {
                let kg = f(&r.value).map_err(|e| TaskError::State {
                    task: self.task.clone(),
                    message: e.to_string(),
                })?;
                let i = match self.route.get(kg as usize) {
                    Some(&i) => i,
                    None => subtask_for_key_group(self.max_parallelism, n as u32, kg),
                } as usize;
                self.push(i, Event::Record(r))
            }
        }
    }
    fn watermark(&mut self, wm: i64) -> Result<(), TaskError> {
        self.push_all(Event::Watermark(wm))
    }
    fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
        self.push_all(Event::Idle(idle))
    }
    fn barrier(&mut self, b: &Barrier, _s: &mut Vec<OperatorSnapshot>) -> Result<(), TaskError> {
        self.push_all(Event::Barrier(b.clone()))
    }
    fn notify(&mut self, _n: Notification) -> Result<(), TaskError> {
        Ok(())
    }
    fn end(&mut self, drain: bool) -> Result<(), TaskError> {
        self.push_all(Event::End { drain })
    }
    fn flush(&mut self) -> Result<(), TaskError> {
        for i in 0..self.senders.len() {
            self.send(i)?;
        }
        Ok(())
    }
    fn processing_time(&mut self, _now: i64) -> Result<(), TaskError> {
        Ok(())
    }
    fn next_processing_time(&self) -> Option<i64> {
        None
    }
}
