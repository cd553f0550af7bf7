//! The Kafka sink: key/value serialization, partitioning by key (librdkafka's
//! Java-compatible murmur2 partitioner), and three delivery guarantees. The
//! exactly-once mode is a write-ahead design: see docs/kafka-exactly-once.md.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_bytes::ByteBuf;

use super::client::{self, LOOKUP_TIMEOUT};
use super::config::{DeliveryGuarantee, KafkaSinkConfig, check_broker_max_timeout};
use super::eos::{self, OutRecord, PendingEpoch, SinkTxnState};
use super::error::KafkaError;
use super::format::Serializer;
use super::producer::{DeliveryTracker, TrackedContext, plain_producer, send_blocking};
use crate::config::JobConfig;
use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, SinkContext, SinkFunction, SnapshotContext,
};
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};

/// Points inside the exactly-once commit where a test can kill the process
/// (the hook is called on the sink's thread; it may abort).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkFaultPoint {
    /// About half of the transaction's records have been handed to librdkafka.
    MidProduce { checkpoint_id: u64 },
    /// All records are sent; `commit_transaction` has not been called.
    BeforeCommit { checkpoint_id: u64 },
    /// The transaction is committed; the epochs are not yet dropped.
    AfterCommit { checkpoint_id: u64 },
}

type FaultHook = Arc<dyn Fn(SinkFaultPoint) + Send + Sync>;

/// Counters shared by all subtasks of one sink.
#[derive(Debug, Default)]
pub struct KafkaSinkMetrics {
    pub records: AtomicU64,
    pub transactions_committed: AtomicU64,
    /// Records in committed transactions (commits after checkpoints; what
    /// recovery writes is `recovered_produced`). With `records` it tells a
    /// sink that never committed its input apart from output the broker lost.
    pub records_committed: AtomicU64,
    /// Records of recovered epochs that were already visible after a crash.
    pub recovered_visible: AtomicU64,
    /// Records of recovered epochs that had to be written again.
    pub recovered_produced: AtomicU64,
}

/// A sink writing `T` to one topic.
pub struct KafkaSink<T> {
    config: Arc<KafkaSinkConfig>,
    value: Arc<dyn Serializer<T>>,
    key: Option<Arc<dyn Serializer<T>>>,
    fault: Option<FaultHook>,
    metrics: Arc<KafkaSinkMetrics>,
    rt: Option<Runtime>,
}

impl<T> Clone for KafkaSink<T> {
    /// A fresh, unconnected instance (one per subtask and attempt).
    fn clone(&self) -> Self {
        KafkaSink {
            config: self.config.clone(),
            value: self.value.clone(),
            key: self.key.clone(),
            fault: self.fault.clone(),
            metrics: self.metrics.clone(),
            rt: None,
        }
    }
}

enum Runtime {
    Plain {
        producer: ThreadedProducer<TrackedContext>,
        tracker: Arc<DeliveryTracker>,
    },
    Exactly(Box<EosRuntime>),
}

struct EosRuntime {
    producer: ThreadedProducer<TrackedContext>,
    tracker: Arc<DeliveryTracker>,
    state: OperatorListState<SinkTxnState>,
    subtask: u32,
    current: Vec<OutRecord>,
    pending: Vec<PendingEpoch>,
    /// Looks up partitions and end offsets when an epoch is sealed.
    meta: BaseConsumer,
    /// Restored epochs not yet recovered, with the producers (their ids
    /// already initialised, so no dead transaction of ours blocks anyone)
    /// that commit them. Recovery runs on the task thread, at the first call
    /// after `initialize_state`, not inside it: the executor opens subtasks
    /// one after another, and a subtask waiting in its read-back for the
    /// last stable offset to pass another subtask's dead transaction would
    /// otherwise keep that subtask from ever being opened and ending it.
    recovery: Option<Recovery>,
}

/// A transactional producer and its delivery tracker.
type TxnProducer = (ThreadedProducer<TrackedContext>, Arc<DeliveryTracker>);

/// Serializes transaction boundaries (`init_transactions`, which may roll
/// back a dead transaction, and `commit_transaction`) across the
/// exactly-once sinks of this process.
///
/// Why: nisshi 0.7.0, the test broker, races when two producers end
/// transactions on the same partitions at the same moment. One `EndTxn` can
/// finalize the other while the other still writes its markers, which leaves a
/// finished transaction holding offsets; if that was its producer epoch's last
/// transaction, every later one waits for it and the last stable offset never
/// moves again (docs/kafka-exactly-once.md). Across processes nothing can
/// prevent it; within one, this lock does. On Apache Kafka it costs at most one
/// `EndTxn` round trip per other sink subtask of the process per checkpoint.
static TXN_BOUNDARY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn txn_boundary() -> std::sync::MutexGuard<'static, ()> {
    TXN_BOUNDARY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Recovery {
    owned: Vec<SinkTxnState>,
    /// The producers of the taken-over ids, by old subtask index.
    others: Vec<(u32, TxnProducer)>,
}

impl<T: 'static> KafkaSink<T> {
    /// Builds a sink for a job; the configuration (including
    /// `transaction.timeout.ms` against the checkpoint settings) is checked
    /// here, so a misfit fails before the job starts.
    pub fn new(
        config: KafkaSinkConfig,
        value: impl Serializer<T>,
        job: &JobConfig,
    ) -> Result<Self, KafkaError> {
        config.validate(job)?;
        Ok(KafkaSink {
            config: Arc::new(config),
            value: Arc::new(value),
            key: None,
            fault: None,
            metrics: Arc::new(KafkaSinkMetrics::default()),
            rt: None,
        })
    }

    /// Serializes a key for each record; records are partitioned by it.
    pub fn with_key(mut self, key: impl Serializer<T>) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Installs a fault-injection hook for the exactly-once commit (tests).
    pub fn with_fault_hook(mut self, f: impl Fn(SinkFaultPoint) + Send + Sync + 'static) -> Self {
        self.fault = Some(Arc::new(f));
        self
    }

    pub fn metrics(&self) -> Arc<KafkaSinkMetrics> {
        self.metrics.clone()
    }

    fn encode(&self, value: &T, ts: Option<i64>) -> Result<OutRecord, KafkaError> {
        let enc = |reason: String| KafkaError::Encode {
            topic: self.config.topic.clone(),
            reason,
        };
        let v = self.value.serialize(value).map_err(enc)?;
        let k = match &self.key {
            Some(k) => k.serialize_key(value).map_err(enc)?.map(ByteBuf::from),
            None => None,
        };
        Ok(OutRecord {
            key: k,
            value: ByteBuf::from(v),
            timestamp: ts,
        })
    }
}

fn user(e: KafkaError) -> UserError {
    UserError::from(e)
}

fn record<'a>(topic: &'a str, r: &'a OutRecord) -> BaseRecord<'a, [u8], [u8]> {
    let mut b = BaseRecord::<[u8], [u8]>::to(topic).payload(r.value.as_slice());
    if let Some(k) = &r.key {
        b = b.key(k.as_slice());
    }
    if let Some(t) = r.timestamp {
        b = b.timestamp(t);
    }
    b
}

fn txn_producer(cfg: &KafkaSinkConfig, txn_id: &str) -> Result<TxnProducer, KafkaError> {
    let timeout = cfg.transaction_timeout.as_millis().to_string();
    let (p, t) = plain_producer(
        &cfg.bootstrap_servers,
        &cfg.properties,
        &[
            ("transactional.id", txn_id),
            ("transaction.timeout.ms", &timeout),
            ("enable.idempotence", "true"),
            ("acks", "all"),
        ],
    )?;
    // Ends whatever the previous holder of this id left open. On Apache Kafka
    // this aborts it; on nisshi 0.7 it does not (see the design note), which
    // is why recovery reads back what became visible instead of trusting it.
    {
        let _boundary = txn_boundary();
        p.init_transactions(cfg.flush_timeout)
            .map_err(KafkaError::client(format!(
                "init transactions for '{txn_id}'"
            )))?;
    }
    Ok((p, t))
}

/// Per partition of `topic`, its current log end offset.
fn end_offsets(meta: &BaseConsumer, topic: &str) -> Result<Vec<(i32, i64)>, KafkaError> {
    let md = meta
        .fetch_metadata(Some(topic), LOOKUP_TIMEOUT)
        .map_err(KafkaError::client(format!("metadata of topic '{topic}'")))?;
    let mut out = Vec::new();
    for t in md.topics() {
        if let Some(e) = t.error() {
            return Err(KafkaError::Config(format!(
                "sink topic '{topic}' is not available: {e:?}"
            )));
        }
        for p in t.partitions() {
            let (_, high) = meta
                .fetch_watermarks(topic, p.id(), LOOKUP_TIMEOUT)
                .map_err(KafkaError::client(format!(
                    "end offset of {topic}-{}",
                    p.id()
                )))?;
            out.push((p.id(), high));
        }
    }
    out.sort();
    Ok(out)
}

/// Produces `epochs` in one transaction with marker headers, calling the
/// fault hook at its points. `only` limits it to given (epoch, record) pairs.
fn produce_transaction(
    cfg: &KafkaSinkConfig,
    producer: &ThreadedProducer<TrackedContext>,
    tracker: &DeliveryTracker,
    epochs: &[PendingEpoch],
    only: Option<&[(usize, usize)]>,
    fault: Option<&FaultHook>,
) -> Result<u64, KafkaError> {
    let last_id = epochs.iter().map(|e| e.checkpoint_id).max().unwrap_or(0);
    let all: Vec<(usize, usize)>;
    let items: &[(usize, usize)] = match only {
        Some(o) => o,
        None => {
            all = epochs
                .iter()
                .enumerate()
                .flat_map(|(ei, e)| (0..e.records.len()).map(move |ri| (ei, ri)))
                .collect();
            &all
        }
    };
    if items.is_empty() {
        return Ok(0);
    }
    producer
        .begin_transaction()
        .map_err(KafkaError::client("begin transaction"))?;
    let half = items.len() / 2;
    for (n, (ei, ri)) in items.iter().enumerate() {
        if n == half
            && let Some(f) = fault
        {
            f(SinkFaultPoint::MidProduce {
                checkpoint_id: last_id,
            });
        }
        let e = &epochs[*ei];
        let r = &e.records[*ri];
        let marker = eos::encode_marker(e.uid, *ri as u64);
        let headers = OwnedHeaders::new().insert(Header {
            key: eos::MARKER_HEADER,
            value: Some(&marker[..]),
        });
        send_blocking(producer, record(&cfg.topic, r).headers(headers))?;
    }
    if let Some(f) = fault {
        producer
            .flush(cfg.flush_timeout)
            .map_err(KafkaError::client("flush transaction"))?;
        f(SinkFaultPoint::BeforeCommit {
            checkpoint_id: last_id,
        });
    }
    {
        let _boundary = txn_boundary();
        producer
            .commit_transaction(cfg.flush_timeout)
            .map_err(KafkaError::client("commit transaction"))?;
    }
    tracker.take_error()?;
    if let Some(f) = fault {
        f(SinkFaultPoint::AfterCommit {
            checkpoint_id: last_id,
        });
    }
    Ok(items.len() as u64)
}

/// Reads `topic` back (read_committed) from the epochs' start offsets to the
/// current end and returns the markers of these epochs that are visible.
fn visible_markers(
    cfg: &KafkaSinkConfig,
    epochs: &[PendingEpoch],
) -> Result<HashSet<(u64, u64)>, KafkaError> {
    let uids = eos::uids(epochs);
    let starts = eos::scan_start(epochs);
    let mut seen = HashSet::new();
    if starts.is_empty() {
        return Ok(seen);
    }
    let consumer: BaseConsumer = client::base_config(
        &cfg.bootstrap_servers,
        &cfg.properties,
        &[
            ("group.id", "runnel-eos-recovery"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
    )
    .create()
    .map_err(KafkaError::client("create recovery consumer"))?;
    // The target is the log end (read_uncommitted), asked now that every id
    // this subtask owns is ended: every record of our epochs is below it.
    // Not the read_committed end (the last stable offset): another subtask's
    // dead transaction, not yet ended by its new owner, holds the LSO below
    // our records, and stopping there misses records that are visible (or
    // about to be) — the cause of the duplicates the chaos test found. The
    // read_committed reader below waits at the LSO until that owner ends it.
    // (nisshi 0.7.0 also answers a read_committed end query with 0 while a
    // transaction is open.)
    let lookup = client::lookup_consumer(&cfg.bootstrap_servers, None, &cfg.properties)?;
    let mut targets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &starts {
        let (low, high) = lookup
            .fetch_watermarks(&cfg.topic, *p, LOOKUP_TIMEOUT)
            .map_err(KafkaError::client("recovery end offsets"))?;
        targets.insert(*p, high);
        tpl.add_partition_offset(&cfg.topic, *p, Offset::Offset((*o).max(low)))
            .map_err(KafkaError::client("recovery assignment"))?;
    }
    if targets.is_empty() {
        return Ok(seen);
    }
    consumer
        .assign(&tpl)
        .map_err(KafkaError::client("recovery assign"))?;
    // A read_committed reader stops at the last stable offset; it passes our
    // (now ended) transactions once every older open transaction on the
    // partition has ended too, which the broker guarantees within the
    // transaction timeout.
    let deadline = Instant::now() + cfg.transaction_timeout + Duration::from_secs(30);
    // Done when every partition reported end-of-partition at or past its
    // target. The target alone is not enough: the reported end may be the
    // base offset of the last batch (nisshi 0.7.0 for plain batches), so
    // records past it may exist; end-of-partition comes from the fetch, after
    // the whole batch.
    let mut at_eof: BTreeMap<i32, bool> = BTreeMap::new();
    let mut last_progress = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err(KafkaError::Timeout {
                op: format!("reading back '{}' for exactly-once recovery", cfg.topic),
                after_ms: (cfg.transaction_timeout + Duration::from_secs(30)).as_millis() as u64,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                at_eof.insert(m.partition(), false);
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        if hd.key == eos::MARKER_HEADER
                            && let Some((u, s)) = hd.value.and_then(eos::decode_marker)
                            && uids.contains(&u)
                        {
                            seen.insert((u, s));
                        }
                    }
                }
                continue;
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_eof.insert(p, true);
            }
            None => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "exactly-once recovery read-back");
            }
        }
        let pos = consumer
            .position()
            .map_err(KafkaError::client("recovery position"))?;
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let at: Vec<String> = targets
                .iter()
                .map(|(p, t)| {
                    let o = match pos.find_partition(&cfg.topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o.to_string(),
                        _ => "-".into(),
                    };
                    format!("{p}: {o} of {t}")
                })
                .collect();
            // A read_committed reader waits at the first open transaction: a
            // long wait here means some transactional id is not ended yet.
            tracing::info!(
                topic = %cfg.topic,
                "exactly-once recovery read-back still waiting: {{{}}}",
                at.join(", ")
            );
        }
        let done = targets.iter().all(|(p, target)| {
            let start = starts.get(p).copied().unwrap_or(0);
            at_eof.get(p).copied().unwrap_or(false)
                && match pos.find_partition(&cfg.topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o >= *target,
                    // Nothing consumed: at end-of-partition at the start offset.
                    _ => *target <= start,
                }
        });
        if done {
            let ranges: Vec<String> = targets
                .iter()
                .map(|(p, t)| {
                    let at = match pos.find_partition(&cfg.topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o.to_string(),
                        _ => "-".into(),
                    };
                    format!(
                        "{p}: {}..{at} (end {t})",
                        starts.get(p).copied().unwrap_or(0)
                    )
                })
                .collect();
            tracing::info!(
                topic = %cfg.topic,
                "exactly-once recovery read-back: {{{}}}; {} markers of {} epoch(s) visible",
                ranges.join(", "),
                seen.len(),
                uids.len()
            );
            return Ok(seen);
        }
    }
}

impl<T: Send + 'static> KafkaSink<T> {
    fn connect(&mut self, ctx: &mut InitContext<'_>) -> Result<(), KafkaError> {
        let cfg = self.config.clone();
        if cfg.delivery != DeliveryGuarantee::ExactlyOnce {
            let acks = if cfg.delivery == DeliveryGuarantee::AtLeastOnce {
                "all"
            } else {
                "1"
            };
            let (producer, tracker) =
                plain_producer(&cfg.bootstrap_servers, &cfg.properties, &[("acks", acks)])?;
            self.rt = Some(Runtime::Plain { producer, tracker });
            return Ok(());
        }
        let prefix = cfg.transactional_id_prefix.clone().ok_or_else(|| {
            KafkaError::Config("exactly-once needs a transactional id prefix".into())
        })?;
        let (subtask, parallelism) = (ctx.subtask_index(), ctx.parallelism());
        match client::broker_max_transaction_timeout(&cfg.bootstrap_servers, &cfg.properties)? {
            Some(max) => check_broker_max_timeout(cfg.transaction_timeout, Some(max))?,
            None => tracing::info!(
                "the broker does not report transaction.max.timeout.ms; \
                 transaction.timeout.ms was checked against the checkpoint settings only"
            ),
        }
        let state = ctx
            .list_state(&OperatorListStateDescriptor::<SinkTxnState>::union(
                eos::EOS_STATE,
            ))
            .map_err(|e| KafkaError::State(e.to_string()))?;
        let restored: Vec<SinkTxnState> = if ctx.is_restored() {
            state
                .get(ctx.operator_state())
                .map_err(|e| KafkaError::State(e.to_string()))?
                .to_vec()
        } else {
            vec![]
        };
        let owned = eos::owned(&restored, subtask, parallelism);
        // First end every transactional id this subtask is responsible for,
        // so that no lingering transaction of ours holds back read_committed
        // readers (including the read-backs of this and other subtasks,
        // which come later, on the task threads: see `Recovery`).
        let (producer, tracker) = txn_producer(&cfg, &eos::transactional_id(&prefix, subtask))?;
        let mut others = Vec::new();
        for o in &owned {
            if o.subtask != subtask {
                let id = eos::transactional_id(&prefix, o.subtask);
                others.push((o.subtask, txn_producer(&cfg, &id)?));
            }
        }
        let recovery = owned
            .iter()
            .any(|o| !o.epochs.is_empty())
            .then(|| Recovery {
                owned: owned.to_vec(),
                others,
            });
        let meta = client::lookup_consumer(&cfg.bootstrap_servers, None, &cfg.properties)?;
        self.rt = Some(Runtime::Exactly(Box::new(EosRuntime {
            producer,
            tracker,
            state,
            subtask,
            current: Vec::new(),
            pending: Vec::new(),
            meta,
            recovery,
        })));
        Ok(())
    }
}

impl<T> KafkaSink<T> {
    /// Commits the restored epochs' output that is not yet visible (once,
    /// before anything else this attempt writes or checkpoints).
    fn recover(&mut self) -> Result<(), KafkaError> {
        let cfg = self.config.clone();
        let Some(Runtime::Exactly(rt)) = self.rt.as_mut() else {
            return Ok(());
        };
        let Some(recovery) = rt.recovery.as_ref() else {
            return Ok(());
        };
        let subtask = rt.subtask;
        for o in &recovery.owned {
            if o.epochs.is_empty() {
                continue;
            }
            let seen = visible_markers(&cfg, &o.epochs)?;
            let missing = eos::missing(&o.epochs, &seen);
            let (p, t) = if o.subtask == subtask {
                (&rt.producer, &rt.tracker)
            } else {
                match recovery.others.iter().find(|(x, _)| *x == o.subtask) {
                    Some((_, (p, t))) => (p, t),
                    None => (&rt.producer, &rt.tracker),
                }
            };
            let produced = produce_transaction(&cfg, p, t, &o.epochs, Some(&missing), None)?;
            let total: usize = o.epochs.iter().map(|e| e.records.len()).sum();
            self.metrics
                .recovered_visible
                .fetch_add((total - missing.len()) as u64, Ordering::Relaxed);
            self.metrics
                .recovered_produced
                .fetch_add(produced, Ordering::Relaxed);
            let ids: Vec<u64> = o.epochs.iter().map(|e| e.checkpoint_id).collect();
            tracing::info!(
                subtask,
                recovered_subtask = o.subtask,
                "exactly-once recovery: committed the output of checkpoints {ids:?}: \
                 {} records were already visible, {produced} written now",
                total - missing.len()
            );
        }
        // Only now: a failure above fails the attempt, and the restore
        // finds the epochs in the same checkpoint's state again.
        rt.recovery = None;
        Ok(())
    }
}

impl<T> CheckpointListener for KafkaSink<T> {
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> FnResult {
        self.recover().map_err(user)?;
        let cfg = self.config.clone();
        let fault = self.fault.clone();
        let Some(Runtime::Exactly(rt)) = self.rt.as_mut() else {
            return Ok(());
        };
        let ready = eos::take_committable(&mut rt.pending, checkpoint_id);
        if ready.is_empty() {
            return Ok(());
        }
        // A failure here fails the attempt; the restore finds these epochs in
        // the completed checkpoint's state and commits them then.
        let n = produce_transaction(
            &cfg,
            &rt.producer,
            &rt.tracker,
            &ready,
            None,
            fault.as_ref(),
        )
        .map_err(user)?;
        self.metrics
            .transactions_committed
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .records_committed
            .fetch_add(n, Ordering::Relaxed);
        tracing::debug!(
            subtask = rt.subtask,
            checkpoint_id,
            records = n,
            "committed"
        );
        Ok(())
    }
}

impl<T: Send + 'static> SinkFunction<T> for KafkaSink<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.connect(ctx).map_err(user)
    }

    fn invoke(&mut self, value: T, ctx: &SinkContext) -> FnResult {
        self.recover().map_err(user)?;
        // An unencodable record would fail again after every restart (it is
        // replayed from the checkpoint): fail the job instead of looping.
        let r = self.encode(&value, ctx.timestamp).map_err(|e| {
            UserError::fatal(format!(
                "{e} (the job stops instead of restarting into the same record)"
            ))
        })?;
        self.metrics.records.fetch_add(1, Ordering::Relaxed);
        match self.rt.as_mut() {
            None => Err(UserError::msg("Kafka sink invoked before initialize_state")),
            Some(Runtime::Plain { producer, .. }) => {
                send_blocking(producer, record(&self.config.topic, &r)).map_err(user)
            }
            Some(Runtime::Exactly(rt)) => {
                rt.current.push(r);
                Ok(())
            }
        }
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        self.recover().map_err(user)?;
        let cfg = self.config.clone();
        match self.rt.as_mut() {
            None => Ok(()),
            Some(Runtime::Plain { producer, tracker }) => {
                if cfg.delivery == DeliveryGuarantee::AtLeastOnce {
                    producer
                        .flush(cfg.flush_timeout)
                        .map_err(KafkaError::client("flush before checkpoint"))
                        .map_err(user)?;
                    tracker.take_error().map_err(user)?;
                }
                Ok(())
            }
            Some(Runtime::Exactly(rt)) => {
                if !rt.current.is_empty() {
                    let start_offsets = end_offsets(&rt.meta, &cfg.topic).map_err(user)?;
                    rt.pending.push(PendingEpoch {
                        checkpoint_id: ctx.checkpoint_id(),
                        uid: rand::random::<u64>(),
                        start_offsets,
                        records: std::mem::take(&mut rt.current),
                    });
                }
                rt.state.update(
                    ctx.operator_state(),
                    vec![SinkTxnState {
                        subtask: rt.subtask,
                        epochs: rt.pending.clone(),
                    }],
                )?;
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> FnResult {
        self.recover().map_err(user)?;
        let cfg = self.config.clone();
        if let Some(Runtime::Plain { producer, tracker }) = self.rt.as_mut() {
            producer
                .flush(cfg.flush_timeout)
                .map_err(KafkaError::client("flush at end of input"))
                .map_err(user)?;
            if cfg.delivery == DeliveryGuarantee::AtLeastOnce {
                tracker.take_error().map_err(user)?;
            }
        }
        Ok(())
    }
}
