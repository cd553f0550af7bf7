//! The DataStream API and the logical job graph. Streams are typed; the graph
//! erases types behind factories so the executor can wire channels and chains
//! generically. Each factory is cloned per subtask and per attempt.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, bounded};
use prometheus_client::metrics::counter::Counter;

use crate::checkpoint::format::KeyGroupData;
use crate::config::JobConfig;
use crate::error::{JobError, TaskError};
use crate::event::{Batch, StreamRecord};
use crate::executor::{JobClient, JobOutcome};
use crate::functions::{
    Collector, Data, KeyedProcessFunction, ProcessFunction, SinkFunction, SourceFunction,
};
use crate::keygroup::{KeyGroupRange, key_group_for_typed_key};
use crate::metrics::{CounterF64, JobMetrics};
use crate::state::keyed::{Key, KeyedBackend};
use crate::state::operator::OperatorStateStore;
use crate::task::chain::{
    Discard, Fanout, FilterOp, FlatMapOp, KeyFn, KeyGroupFn, KeyedProcessOp, MapOp, NetworkOutput,
    Out, Partitioner, ProcessOp, SinkOp,
};
use crate::task::counted::Counted;
use crate::task::input::InputTask;
use crate::task::source::SourceTask;
use crate::task::{Restored, TaskRunner};
use crate::watermark::WatermarkStrategy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EdgeKind {
    Forward,
    Rebalance,
    Broadcast,
    Hash,
}

pub(crate) struct InputEdge {
    pub from: usize,
    pub kind: EdgeKind,
    /// `KeyGroupFn<T>` of the upstream type, for hash edges.
    pub key_group_fn: Option<Arc<dyn Any + Send + Sync>>,
}

/// What a subtask's builder needs to know.
pub(crate) struct BuildCtx<'a> {
    pub uid: &'a str,
    pub subtask: u32,
    pub parallelism: u32,
    pub config: &'a JobConfig,
    pub restored: Option<Restored>,
    /// Records in flight to this operator are restored (it heads its task;
    /// see `InitContext::restores_in_flight_records`).
    pub in_flight: bool,
    pub metrics: &'a Arc<JobMetrics>,
}

pub(crate) trait SourceFactory: Send + Sync {
    fn build_task(
        &self,
        out: Box<dyn Any>,
        ctx: BuildCtx<'_>,
    ) -> Result<Box<dyn TaskRunner>, TaskError>;
}

pub(crate) trait OperatorFactory: Send + Sync {
    /// Wraps this operator around its output (`Out<O>`), giving its input (`Out<In>`).
    fn build(&self, out: Box<dyn Any>, ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError>;
}

/// Operations that depend on a node's output type.
pub(crate) trait TypeOps: Send + Sync {
    fn channels(&self, n_up: usize, n_down: usize, forward: bool, cap: usize) -> Box<dyn Any>;
    #[allow(clippy::too_many_arguments)]
    fn writer(
        &self,
        chans: &mut Box<dyn Any>,
        up: usize,
        kind: EdgeKind,
        kg_fn: Option<&Arc<dyn Any + Send + Sync>>,
        task: &str,
        batch: usize,
        max_parallelism: u32,
        backpressure: CounterF64,
    ) -> Result<Box<dyn Any>, TaskError>;
    fn readers(&self, chans: &mut Box<dyn Any>, down: usize) -> Result<Box<dyn Any>, TaskError>;
    fn fanout(&self, outs: Vec<Box<dyn Any>>) -> Result<Box<dyn Any>, TaskError>;
    /// Wraps an `Out<T>` so that the records passing it are counted.
    fn counted(&self, out: Box<dyn Any>, counter: Counter) -> Result<Box<dyn Any>, TaskError>;
    /// Distributed execution: takes the (up, down) channel of an edge out of
    /// `chans` as the local half of a remote channel: its receiver when the
    /// upstream subtask runs here (`outbound`), else its sender.
    fn remote_end(
        &self,
        chans: &mut Box<dyn Any>,
        up: usize,
        down: usize,
        outbound: bool,
    ) -> Result<crate::distributed::exchange::RemoteEnd, TaskError>;
    /// Builds the task of a chain whose head consumes this type.
    fn input_task(
        &self,
        head: Box<dyn Any>,
        readers: Vec<Box<dyn Any>>,
        in_flight: Vec<serde_bytes::ByteBuf>,
        in_flight_filter: Option<(Arc<dyn Any + Send + Sync>, KeyGroupRange)>,
        name: &str,
    ) -> Result<Box<dyn TaskRunner>, TaskError>;
}

struct TypeOpsImpl<T>(PhantomData<fn() -> T>);

struct EdgeChannels<T> {
    senders: Vec<Vec<Option<Sender<Batch<T>>>>>,
    receivers: Vec<Vec<Option<Receiver<Batch<T>>>>>,
}

fn internal(msg: &str) -> TaskError {
    TaskError::Internal(msg.to_string())
}

fn downcast<T: 'static>(b: Box<dyn Any>, what: &str) -> Result<T, TaskError> {
    b.downcast::<T>()
        .map(|b| *b)
        .map_err(|_| internal(&format!("type mismatch wiring {what}")))
}

impl<T: Data> TypeOps for TypeOpsImpl<T> {
    fn channels(&self, n_up: usize, n_down: usize, forward: bool, cap: usize) -> Box<dyn Any> {
        let mut senders: Vec<Vec<Option<Sender<Batch<T>>>>> = (0..n_up)
            .map(|_| (0..n_down).map(|_| None).collect())
            .collect();
        let mut receivers: Vec<Vec<Option<Receiver<Batch<T>>>>> = (0..n_down)
            .map(|_| (0..n_up).map(|_| None).collect())
            .collect();
        for u in 0..n_up {
            for d in 0..n_down {
                if forward && u != d {
                    continue;
                }
                let (s, r) = bounded(cap);
                senders[u][d] = Some(s);
                receivers[d][u] = Some(r);
            }
        }
        Box::new(EdgeChannels { senders, receivers })
    }

    fn writer(
        &self,
        chans: &mut Box<dyn Any>,
        up: usize,
        kind: EdgeKind,
        kg_fn: Option<&Arc<dyn Any + Send + Sync>>,
        task: &str,
        batch: usize,
        max_parallelism: u32,
        backpressure: CounterF64,
    ) -> Result<Box<dyn Any>, TaskError> {
        let chans = chans
            .downcast_mut::<EdgeChannels<T>>()
            .ok_or_else(|| internal("edge channels"))?;
        let senders: Vec<_> = chans.senders[up]
            .iter_mut()
            .filter_map(|s| s.take())
            .collect();
        let partitioner = match kind {
            EdgeKind::Forward => Partitioner::Forward,
            EdgeKind::Rebalance => Partitioner::Rebalance,
            EdgeKind::Broadcast => Partitioner::Broadcast,
            EdgeKind::Hash => {
                let f = kg_fn
                    .and_then(|f| f.downcast_ref::<KeyGroupFn<T>>())
                    .ok_or_else(|| internal("key group function"))?;
                Partitioner::Hash(f.clone())
            }
        };
        let out: Out<T> = Box::new(NetworkOutput::new(
            task.to_string(),
            senders,
            partitioner,
            batch,
            up,
            max_parallelism,
            backpressure,
        ));
        Ok(Box::new(out))
    }

    fn readers(&self, chans: &mut Box<dyn Any>, down: usize) -> Result<Box<dyn Any>, TaskError> {
        let chans = chans
            .downcast_mut::<EdgeChannels<T>>()
            .ok_or_else(|| internal("edge channels"))?;
        let rs: Vec<Receiver<Batch<T>>> = chans.receivers[down]
            .iter_mut()
            .filter_map(|r| r.take())
            .collect();
        Ok(Box::new(rs))
    }

    fn remote_end(
        &self,
        chans: &mut Box<dyn Any>,
        up: usize,
        down: usize,
        outbound: bool,
    ) -> Result<crate::distributed::exchange::RemoteEnd, TaskError> {
        use crate::distributed::exchange;
        let chans = chans
            .downcast_mut::<EdgeChannels<T>>()
            .ok_or_else(|| internal("edge channels"))?;
        let missing = || internal(&format!("no channel {up} -> {down} for a remote end"));
        if outbound {
            let r = chans.receivers[down][up].take().ok_or_else(missing)?;
            Ok(exchange::outbound(r))
        } else {
            let s = chans.senders[up][down].take().ok_or_else(missing)?;
            Ok(exchange::inbound(s))
        }
    }

    fn fanout(&self, outs: Vec<Box<dyn Any>>) -> Result<Box<dyn Any>, TaskError> {
        let mut v: Vec<Out<T>> = Vec::with_capacity(outs.len());
        for o in outs {
            v.push(downcast::<Out<T>>(o, "fan-out")?);
        }
        let out: Out<T> = match v.len() {
            0 => Box::new(Discard),
            1 => v.pop().ok_or_else(|| internal("fan-out"))?,
            _ => Box::new(Fanout(v)),
        };
        Ok(Box::new(out))
    }

    fn counted(&self, out: Box<dyn Any>, counter: Counter) -> Result<Box<dyn Any>, TaskError> {
        let inner = downcast::<Out<T>>(out, "counted output")?;
        let out: Out<T> = Box::new(Counted::new(inner, counter));
        Ok(Box::new(out))
    }

    fn input_task(
        &self,
        head: Box<dyn Any>,
        readers: Vec<Box<dyn Any>>,
        in_flight: Vec<serde_bytes::ByteBuf>,
        in_flight_filter: Option<(Arc<dyn Any + Send + Sync>, KeyGroupRange)>,
        name: &str,
    ) -> Result<Box<dyn TaskRunner>, TaskError> {
        let head = downcast::<Out<T>>(head, "chain head")?;
        let mut channels = Vec::new();
        for r in readers {
            channels.extend(downcast::<Vec<Receiver<Batch<T>>>>(r, "input channels")?);
        }
        let mut records = Vec::with_capacity(in_flight.len());
        for b in in_flight {
            let r: StreamRecord<T> = postcard::from_bytes(&b).map_err(|e| TaskError::State {
                task: name.to_string(),
                message: format!("cannot decode a restored in-flight record: {e}"),
            })?;
            records.push(r);
        }
        if let Some((f, range)) = in_flight_filter {
            let f = f
                .downcast_ref::<KeyGroupFn<T>>()
                .ok_or_else(|| internal("in-flight key group function"))?;
            let mut kept = Vec::new();
            for r in records {
                let kg = f(&r.value).map_err(|e| TaskError::State {
                    task: name.to_string(),
                    message: e.to_string(),
                })?;
                if range.contains(kg) {
                    kept.push(r);
                }
            }
            records = kept;
        }
        Ok(Box::new(InputTask {
            head,
            channels,
            restored_in_flight: records,
        }))
    }
}

pub(crate) enum NodeKind {
    Source(Arc<dyn SourceFactory>),
    Operator(Arc<dyn OperatorFactory>),
}

pub(crate) struct Node {
    pub id: usize,
    pub uid: String,
    pub parallelism: Option<u32>,
    pub keyed: bool,
    pub inputs: Vec<InputEdge>,
    pub out_ops: Arc<dyn TypeOps>,
    /// Type ops of the input type (= out_ops of any input node).
    pub in_ops: Option<Arc<dyn TypeOps>>,
    pub kind: NodeKind,
}

#[derive(Default)]
pub(crate) struct GraphBuilder {
    pub nodes: Vec<Node>,
    pub errors: Vec<String>,
}

/// The logical job graph handed to the executor.
pub struct JobGraph {
    pub(crate) nodes: Vec<Node>,
    /// Created with the graph, so that functions built into it can hold
    /// counters of the job's `/metrics` (e.g. declarative expression errors).
    pub(crate) metrics: Arc<JobMetrics>,
}

/// Builds a job: sources, transformations and sinks.
pub struct StreamEnv {
    g: Rc<RefCell<GraphBuilder>>,
    config: JobConfig,
    metrics: Arc<JobMetrics>,
}

impl StreamEnv {
    pub fn new(config: JobConfig) -> Self {
        StreamEnv {
            g: Rc::new(RefCell::new(GraphBuilder::default())),
            config,
            metrics: Arc::new(JobMetrics::new()),
        }
    }

    /// The metrics the job will serve on `/metrics`. Counters taken from it
    /// while building (e.g. for errors inside closures) are the job's.
    pub fn metrics(&self) -> &Arc<JobMetrics> {
        &self.metrics
    }

    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut JobConfig {
        &mut self.config
    }

    /// Adds a parallel source. `name` identifies its state across job versions.
    pub fn add_source<T: Data, S: SourceFunction<T> + Sync>(
        &self,
        name: &str,
        source: S,
    ) -> DataStream<T> {
        self.add_source_with_watermarks(name, source, None)
    }

    pub fn add_source_with_watermarks<T: Data, S: SourceFunction<T> + Sync>(
        &self,
        name: &str,
        source: S,
        watermarks: Option<WatermarkStrategy<T>>,
    ) -> DataStream<T> {
        let id = push_node(
            &self.g,
            name.to_string(),
            false,
            vec![],
            None,
            Arc::new(TypeOpsImpl::<T>(PhantomData)),
            NodeKind::Source(Arc::new(SourceNode {
                source,
                watermarks,
                _p: PhantomData,
            })),
        );
        DataStream::new(self.g.clone(), vec![id], self.config.max_parallelism)
    }

    /// Validates the graph and configuration.
    pub fn build(self) -> Result<(JobGraph, JobConfig), JobError> {
        let g = Rc::try_unwrap(self.g)
            .map_err(|_| {
                JobError::InvalidJob(
                    "streams of this job are still in use; drop them before executing".into(),
                )
            })?
            .into_inner();
        let mut errors = g.errors;
        if let Err(e) = self.config.validate() {
            errors.push(e);
        }
        let mut seen = std::collections::HashSet::new();
        for n in &g.nodes {
            if !seen.insert(crate::checkpoint::state_file_name(&n.uid, 0)) {
                errors.push(format!(
                    "operator name '{}' is used twice (names must be unique; they identify state)",
                    n.uid
                ));
            }
            if let Some(p) = n.parallelism
                && let Err(e) =
                    crate::keygroup::validate_parallelism(p, self.config.max_parallelism)
            {
                errors.push(format!("operator '{}': {e}", n.uid));
            }
        }
        if !g
            .nodes
            .iter()
            .any(|n| matches!(n.kind, NodeKind::Source(_)))
        {
            errors.push("the job has no source".into());
        }
        if !errors.is_empty() {
            return Err(JobError::InvalidJob(errors.join("; ")));
        }
        Ok((
            JobGraph {
                nodes: g.nodes,
                metrics: self.metrics,
            },
            self.config,
        ))
    }

    /// Runs the job to completion (bounded sources), cancellation or stop.
    pub fn execute(self) -> Result<JobOutcome, JobError> {
        self.execute_async()?.wait()
    }

    /// Starts the job and returns a client to trigger savepoints, stop or cancel.
    pub fn execute_async(self) -> Result<JobClient, JobError> {
        let (graph, config) = self.build()?;
        crate::executor::start(graph, config)
    }
}

#[allow(clippy::too_many_arguments)]
fn push_node(
    g: &Rc<RefCell<GraphBuilder>>,
    uid: String,
    keyed: bool,
    inputs: Vec<InputEdge>,
    in_ops: Option<Arc<dyn TypeOps>>,
    out_ops: Arc<dyn TypeOps>,
    kind: NodeKind,
) -> usize {
    let mut gb = g.borrow_mut();
    let id = gb.nodes.len();
    gb.nodes.push(Node {
        id,
        uid,
        parallelism: None,
        keyed,
        inputs,
        out_ops,
        in_ops,
        kind,
    });
    id
}

/// A stream of `T`, produced by one or more (union) operators.
pub struct DataStream<T> {
    g: Rc<RefCell<GraphBuilder>>,
    producers: Vec<usize>,
    partition: EdgeKind,
    max_parallelism: u32,
    _p: PhantomData<fn() -> T>,
}

impl<T: Data> DataStream<T> {
    fn new(g: Rc<RefCell<GraphBuilder>>, producers: Vec<usize>, max_parallelism: u32) -> Self {
        DataStream {
            g,
            producers,
            partition: EdgeKind::Forward,
            max_parallelism,
            _p: PhantomData,
        }
    }

    fn edges(&self, kind: EdgeKind, kg: Option<Arc<dyn Any + Send + Sync>>) -> Vec<InputEdge> {
        self.producers
            .iter()
            .map(|&from| InputEdge {
                from,
                kind,
                key_group_fn: kg.clone(),
            })
            .collect()
    }

    fn next_name(&self, what: &str) -> String {
        format!("{what}#{}", self.g.borrow().nodes.len())
    }

    fn add_op<O: Data>(self, uid: String, f: Arc<dyn OperatorFactory>) -> DataStream<O> {
        let edges = self.edges(self.partition, None);
        let id = push_node(
            &self.g,
            uid,
            false,
            edges,
            Some(Arc::new(TypeOpsImpl::<T>(PhantomData))),
            Arc::new(TypeOpsImpl::<O>(PhantomData)),
            NodeKind::Operator(f),
        );
        DataStream::new(self.g.clone(), vec![id], self.max_parallelism)
    }

    /// Sets the parallelism of the operator that produces this stream.
    pub fn set_parallelism(self, p: u32) -> Self {
        {
            let mut g = self.g.borrow_mut();
            if self.producers.len() == 1 {
                g.nodes[self.producers[0]].parallelism = Some(p);
            } else {
                g.errors
                    .push("set_parallelism on a union: set it on each input instead".into());
            }
        }
        self
    }

    pub fn map<O: Data>(
        self,
        f: impl FnMut(T) -> O + Clone + Send + Sync + 'static,
    ) -> DataStream<O> {
        let name = self.next_name("map");
        self.add_op(name, Arc::new(MapNode { f, _p: PhantomData }))
    }

    pub fn filter(
        self,
        f: impl FnMut(&T) -> bool + Clone + Send + Sync + 'static,
    ) -> DataStream<T> {
        let name = self.next_name("filter");
        self.add_op(name, Arc::new(FilterNode { f, _p: PhantomData }))
    }

    pub fn flat_map<O: Data>(
        self,
        f: impl FnMut(T, &mut Collector<'_, O>) + Clone + Send + Sync + 'static,
    ) -> DataStream<O> {
        let name = self.next_name("flat_map");
        self.add_op(name, Arc::new(FlatMapNode { f, _p: PhantomData }))
    }

    /// [`DataStream::map`] applied after each producer of this stream
    /// separately, at that producer's parallelism, so that it chains to it
    /// instead of running as a task of its own (which a `map` after a union
    /// would). For maps the job's author did not write, e.g. the declarative
    /// builder's projections, which must not cost a channel.
    pub(crate) fn map_chained<O: Data>(
        self,
        f: impl FnMut(T) -> O + Clone + Send + Sync + 'static,
    ) -> DataStream<O> {
        let mut ids = Vec::with_capacity(self.producers.len());
        for &from in &self.producers {
            let uid = self.next_name("map");
            let parallelism = self.g.borrow().nodes[from].parallelism;
            let id = push_node(
                &self.g,
                uid,
                false,
                vec![InputEdge {
                    from,
                    kind: self.partition,
                    key_group_fn: None,
                }],
                Some(Arc::new(TypeOpsImpl::<T>(PhantomData))),
                Arc::new(TypeOpsImpl::<O>(PhantomData)),
                NodeKind::Operator(Arc::new(MapNode {
                    f: f.clone(),
                    _p: PhantomData,
                })),
            );
            self.g.borrow_mut().nodes[id].parallelism = parallelism;
            ids.push(id);
        }
        DataStream::new(self.g.clone(), ids, self.max_parallelism)
    }

    /// A non-keyed process function with operator state.
    pub fn process<O: Data, F: ProcessFunction<T, O> + Sync>(
        self,
        name: &str,
        f: F,
    ) -> DataStream<O> {
        self.add_op(
            name.to_string(),
            Arc::new(ProcessNode { f, _p: PhantomData }),
        )
    }

    pub fn sink<F: SinkFunction<T> + Sync>(self, name: &str, f: F) {
        let _ = self.add_op::<()>(name.to_string(), Arc::new(SinkNode { f, _p: PhantomData }));
    }

    /// Another handle to this stream, so that two consumers read it (each gets
    /// every record). Used to split an operator's output into side outputs.
    pub fn fork(&self) -> DataStream<T> {
        DataStream {
            g: self.g.clone(),
            producers: self.producers.clone(),
            partition: self.partition,
            max_parallelism: self.max_parallelism,
            _p: PhantomData,
        }
    }

    pub fn rebalance(mut self) -> Self {
        self.partition = EdgeKind::Rebalance;
        self
    }

    pub fn broadcast(mut self) -> Self {
        self.partition = EdgeKind::Broadcast;
        self
    }

    /// Merges streams of the same type.
    pub fn union(mut self, other: DataStream<T>) -> Self {
        self.producers.extend(other.producers);
        self
    }

    /// Partitions by key: records with equal keys go to the same subtask.
    pub fn key_by<K: Key>(self, f: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self,
            key_fn: Arc::new(f),
            route_fn: None,
            key_group: None,
        }
    }

    /// [`DataStream::key_by`] with a separate function for routing, which
    /// must give the same key as `key`. The key is computed twice per record
    /// (to route it, and again in the keyed operator); this lets side effects
    /// of computing it (counting errors) happen once, in the operator.
    pub(crate) fn key_by_routed<K: Key>(
        self,
        route: impl Fn(&T) -> K + Send + Sync + 'static,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self,
            key_fn: Arc::new(key),
            route_fn: Some(Arc::new(route)),
            key_group: None,
        }
    }
}

/// A key's key group for a max parallelism: a faster, byte-for-byte
/// equivalent of [`key_group_for_typed_key`] for one key type.
pub(crate) type KeyGroupOf<K> = fn(&K, u32) -> Result<u32, crate::keygroup::KeyEncodeError>;

/// A stream partitioned by key; keyed state and timers are available downstream.
pub struct KeyedStream<K, T> {
    stream: DataStream<T>,
    key_fn: KeyFn<T, K>,
    /// Routes records to subtasks instead of `key_fn` (same keys).
    route_fn: Option<KeyFn<T, K>>,
    /// Replaces `key_group_for_typed_key` when routing (same key groups).
    key_group: Option<KeyGroupOf<K>>,
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Routes with `group` instead of the generic key group function; it
    /// must give the same key group for every key (key groups are persisted).
    pub(crate) fn with_key_group(mut self, group: KeyGroupOf<K>) -> Self {
        self.key_group = Some(group);
        self
    }

    pub fn process<O: Data, F: KeyedProcessFunction<K, T, O> + Sync>(
        self,
        name: &str,
        f: F,
    ) -> DataStream<O> {
        let maxp = self.stream.max_parallelism;
        let kf = self.route_fn.unwrap_or_else(|| self.key_fn.clone());
        let kg: KeyGroupFn<T> = match self.key_group {
            Some(group) => Arc::new(move |v: &T| group(&kf(v), maxp)),
            None => Arc::new(move |v: &T| key_group_for_typed_key(&kf(v), maxp)),
        };
        let edges = self.stream.edges(
            EdgeKind::Hash,
            Some(Arc::new(kg) as Arc<dyn Any + Send + Sync>),
        );
        let id = push_node(
            &self.stream.g,
            name.to_string(),
            true,
            edges,
            Some(Arc::new(TypeOpsImpl::<T>(PhantomData))),
            Arc::new(TypeOpsImpl::<O>(PhantomData)),
            NodeKind::Operator(Arc::new(KeyedProcessNode {
                f,
                key_fn: self.key_fn,
                _p: PhantomData,
            })),
        );
        DataStream::new(self.stream.g.clone(), vec![id], maxp)
    }
}

// ---- factories -------------------------------------------------------------

struct SourceNode<T, S> {
    source: S,
    watermarks: Option<WatermarkStrategy<T>>,
    _p: PhantomData<fn() -> T>,
}

impl<T: Data, S: SourceFunction<T> + Sync> SourceFactory for SourceNode<T, S> {
    fn build_task(
        &self,
        out: Box<dyn Any>,
        ctx: BuildCtx<'_>,
    ) -> Result<Box<dyn TaskRunner>, TaskError> {
        let head = downcast::<Out<T>>(out, "source output")?;
        let restored = ctx.restored.is_some();
        let r = ctx.restored.unwrap_or_default();
        Ok(Box::new(SourceTask {
            uid: ctx.uid.to_string(),
            f: self.source.clone(),
            head,
            store: OperatorStateStore::new(ctx.uid, r.operator_states),
            restored,
            watermarks: self.watermarks.clone(),
            subtask: ctx.subtask,
            parallelism: ctx.parallelism,
            metrics: ctx.metrics.clone(),
        }))
    }
}

struct MapNode<F, T> {
    f: F,
    _p: PhantomData<fn(T)>,
}

impl<F, T, O> OperatorFactory for MapNode<F, T>
where
    F: FnMut(T) -> O + Clone + Send + Sync + 'static,
    T: Data,
    O: Data,
{
    fn build(&self, out: Box<dyn Any>, _ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let out = downcast::<Out<O>>(out, "map output")?;
        let op: Out<T> = Box::new(MapOp {
            f: self.f.clone(),
            out,
            _p: PhantomData,
        });
        Ok(Box::new(op))
    }
}

struct FilterNode<F, T> {
    f: F,
    _p: PhantomData<fn(T)>,
}

impl<F, T> OperatorFactory for FilterNode<F, T>
where
    F: FnMut(&T) -> bool + Clone + Send + Sync + 'static,
    T: Data,
{
    fn build(&self, out: Box<dyn Any>, _ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let out = downcast::<Out<T>>(out, "filter output")?;
        let op: Out<T> = Box::new(FilterOp {
            f: self.f.clone(),
            out,
        });
        Ok(Box::new(op))
    }
}

struct FlatMapNode<F, T, O> {
    f: F,
    _p: PhantomData<fn(T) -> O>,
}

impl<F, T, O> OperatorFactory for FlatMapNode<F, T, O>
where
    F: FnMut(T, &mut Collector<'_, O>) + Clone + Send + Sync + 'static,
    T: Data,
    O: Data,
{
    fn build(&self, out: Box<dyn Any>, _ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let out = downcast::<Out<O>>(out, "flat_map output")?;
        let op: Out<T> = Box::new(FlatMapOp {
            f: self.f.clone(),
            out,
            _p: PhantomData,
        });
        Ok(Box::new(op))
    }
}

struct ProcessNode<F, T, O> {
    f: F,
    _p: PhantomData<fn(T) -> O>,
}

impl<F, T, O> OperatorFactory for ProcessNode<F, T, O>
where
    F: ProcessFunction<T, O> + Sync,
    T: Data,
    O: Data,
{
    fn build(&self, out: Box<dyn Any>, ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let out = downcast::<Out<O>>(out, "process output")?;
        let restored = ctx.restored.is_some();
        let r = ctx.restored.unwrap_or_default();
        let op: Out<T> = Box::new(ProcessOp::open(
            ctx.uid,
            self.f.clone(),
            out,
            OperatorStateStore::new(ctx.uid, r.operator_states),
            restored,
            ctx.in_flight,
            ctx.subtask,
            ctx.parallelism,
            ctx.metrics,
        )?);
        Ok(Box::new(op))
    }
}

struct KeyedProcessNode<F, K, T, O> {
    f: F,
    key_fn: KeyFn<T, K>,
    _p: PhantomData<fn(K, T) -> O>,
}

impl<F, K, T, O> OperatorFactory for KeyedProcessNode<F, K, T, O>
where
    F: KeyedProcessFunction<K, T, O> + Sync,
    K: Key,
    T: Data,
    O: Data,
{
    fn build(&self, out: Box<dyn Any>, ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let out = downcast::<Out<O>>(out, "keyed process output")?;
        let restored = ctx.restored.is_some();
        let mut r = ctx.restored.unwrap_or_default();
        let maxp = ctx.config.max_parallelism;
        let range = crate::keygroup::range_for_subtask(maxp, ctx.parallelism, ctx.subtask);
        // The timers go to the timer service and the tables move into the
        // backend: copying the tables for it held all keyed state twice.
        let timer_groups: Vec<KeyGroupData> = r
            .key_groups
            .iter_mut()
            .map(|g| KeyGroupData {
                key_group: g.key_group,
                tables: Vec::new(),
                timers: std::mem::take(&mut g.timers),
            })
            .collect();
        let backend = KeyedBackend::<K>::new(
            ctx.uid,
            ctx.config.clock.clone(),
            maxp,
            range,
            r.key_groups,
            r.keyed_metas,
        );
        let op: Out<T> = Box::new(KeyedProcessOp::open(
            ctx.uid,
            self.f.clone(),
            out,
            self.key_fn.clone(),
            backend,
            OperatorStateStore::new(ctx.uid, r.operator_states),
            &timer_groups,
            restored,
            ctx.in_flight,
            ctx.subtask,
            ctx.parallelism,
            maxp,
            ctx.metrics,
        )?);
        Ok(Box::new(op))
    }
}

struct SinkNode<F, T> {
    f: F,
    _p: PhantomData<fn(T)>,
}

impl<F, T> OperatorFactory for SinkNode<F, T>
where
    F: SinkFunction<T> + Sync,
    T: Data,
{
    fn build(&self, _out: Box<dyn Any>, ctx: BuildCtx<'_>) -> Result<Box<dyn Any>, TaskError> {
        let restored = ctx.restored.is_some();
        let r = ctx.restored.unwrap_or_default();
        let op: Out<T> = Box::new(SinkOp::open(
            ctx.uid,
            self.f.clone(),
            OperatorStateStore::new(ctx.uid, r.operator_states),
            restored,
            ctx.in_flight,
            ctx.subtask,
            ctx.parallelism,
            ctx.metrics,
        )?);
        Ok(Box::new(op))
    }
}
