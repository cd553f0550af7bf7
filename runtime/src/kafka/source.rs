//! The Kafka source: assigned partitions (no group rebalancing), next-to-read
//! offsets in union operator state, start positions, discovery, offset commits
//! for monitoring, deserialization policies and per-partition watermarks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::assign::{self, Start};
use super::client::{self, LOOKUP_TIMEOUT, SourceConsumer};
use super::config::{
    DeserializationPolicy, KafkaSourceConfig, OffsetCommit, TopicPartition, resolve_offset_commit,
};
use super::error::KafkaError;
use super::format::{Deserializer, RecordView};
use super::producer::{DeliveryTracker, TrackedContext};
use super::watermarks::{KafkaWatermarks, PartitionWatermarks};
use crate::config::JobConfig;
use crate::error::{FnResult, UserError};
use crate::functions::{
    CheckpointListener, InitContext, SnapshotContext, SourceFunction, SourceOutput, SourcePoll,
};
use crate::metrics::JobMetrics;
use crate::state::operator::{OperatorListState, OperatorListStateDescriptor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Name of the union list state holding next-to-read offsets. The `v1` is the
/// version of [`OffsetEntry`]'s encoding; a new encoding gets a new name.
pub const OFFSETS_STATE: &str = "kafka-source-offsets-v1";

/// How often the lag gauges are refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// One partition's next-to-read offset, as checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Counters shared by all subtasks of one source (and across restarts).
#[derive(Debug, Default)]
pub struct KafkaSourceMetrics {
    pub records: AtomicU64,
    /// Malformed records skipped under the `skip` policy.
    pub skipped: AtomicU64,
    /// Malformed records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// The start decision each subtask logged, in order ("restored offsets
    /// {...}" or "no restored state, starting from ...").
    pub start_lines: Mutex<Vec<String>>,
    /// Partitions found by discovery.
    pub discovered: Mutex<Vec<TopicPartition>>,
}

impl KafkaSourceMetrics {
    pub fn start_lines(&self) -> Vec<String> {
        match self.start_lines.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    pub fn discovered(&self) -> Vec<TopicPartition> {
        match self.discovered.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn push<T>(m: &Mutex<Vec<T>>, v: T) {
    match m.lock() {
        Ok(mut g) => g.push(v),
        Err(p) => p.into_inner().push(v),
    }
}

/// How long `poll` lets the engine wait when no record was ready.
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// A parallel Kafka source emitting `T`.
pub struct KafkaSource<T> {
    config: Arc<KafkaSourceConfig>,
    commit: OffsetCommit,
    deser: Arc<dyn Deserializer<T>>,
    watermarks: Option<KafkaWatermarks<T>>,
    metrics: Arc<KafkaSourceMetrics>,
    rt: Option<Runtime>,
}

impl<T> Clone for KafkaSource<T> {
    /// A fresh, unconnected instance: the engine clones one per subtask and
    /// attempt, and each connects in `initialize_state`.
    fn clone(&self) -> Self {
        KafkaSource {
            config: self.config.clone(),
            commit: self.commit,
            deser: self.deser.clone(),
            watermarks: self.watermarks.clone(),
            metrics: self.metrics.clone(),
            rt: None,
        }
    }
}

struct Runtime {
    consumer: SourceConsumer,
    subtask: u32,
    parallelism: u32,
    assigned: Vec<TopicPartition>,
    next: BTreeMap<TopicPartition, i64>,
    state: OperatorListState<OffsetEntry>,
    pending_commits: BTreeMap<u64, BTreeMap<TopicPartition, i64>>,
    last_commit: Instant,
    last_discovery: Instant,
    dlq: Option<(
        String,
        ThreadedProducer<TrackedContext>,
        Arc<DeliveryTracker>,
    )>,
    partitions_wm: PartitionWatermarks,
    started: Instant,
    headers_buf: Vec<(String, Option<Vec<u8>>)>,
    job_metrics: JobSourceMetrics,
}

/// The job-wide Prometheus series this source feeds (`/metrics`), next to its
/// own [`KafkaSourceMetrics`] counters that tests read directly.
struct JobSourceMetrics {
    metrics: Arc<JobMetrics>,
    skipped: Counter,
    dead_lettered: Counter,
    lag: BTreeMap<TopicPartition, Gauge>,
    last_lag: Instant,
}

impl JobSourceMetrics {
    /// Lag = the partition's end (as librdkafka's statistics last reported
    /// it; no extra request) minus the next offset to read. Updated at most
    /// once a second, as often as the statistics arrive.
    fn update_lag(&mut self, consumer: &SourceConsumer, next: &BTreeMap<TopicPartition, i64>) {
        if self.last_lag.elapsed() < LAG_INTERVAL {
            return;
        }
        self.last_lag = Instant::now();
        for (tp, offset) in next {
            let Some(high) = consumer.context().end(&tp.topic, tp.partition) else {
                continue; // not reported yet
            };
            let g = self
                .lag
                .entry(tp.clone())
                .or_insert_with(|| self.metrics.kafka_lag(&tp.topic, tp.partition));
            g.set((high - offset).max(0));
        }
    }
}

impl<T: 'static> KafkaSource<T> {
    /// Builds a source for a job; the configuration is checked against the
    /// job's checkpoint settings (a misfit is an error here, not at run time).
    pub fn new(
        config: KafkaSourceConfig,
        deserializer: impl Deserializer<T>,
        job: &JobConfig,
    ) -> Result<Self, KafkaError> {
        config.validate(job)?;
        let commit = resolve_offset_commit(config.commit, job);
        let commit = if config.group_id.is_none() {
            OffsetCommit::Disabled
        } else {
            commit
        };
        Ok(KafkaSource {
            config: Arc::new(config),
            commit,
            deser: Arc::new(deserializer),
            watermarks: None,
            metrics: Arc::new(KafkaSourceMetrics::default()),
            rt: None,
        })
    }

    /// Event time and per-partition watermarks.
    pub fn with_watermarks(mut self, w: KafkaWatermarks<T>) -> Self {
        self.watermarks = Some(w);
        self
    }

    pub fn metrics(&self) -> Arc<KafkaSourceMetrics> {
        self.metrics.clone()
    }

    fn now_ms(&self) -> i64 {
        self.rt
            .as_ref()
            .map(|r| r.started.elapsed().as_millis() as i64)
            .unwrap_or(0)
    }
}

fn user(e: KafkaError) -> UserError {
    UserError::from(e)
}

fn assign_tpl(offsets: &BTreeMap<TopicPartition, i64>) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .map_err(KafkaError::client("build assignment"))?;
    }
    Ok(tpl)
}

impl<T: Send + 'static> KafkaSource<T> {
    fn connect(&mut self, ctx: &mut InitContext<'_>) -> Result<(), KafkaError> {
        let cfg = self.config.clone();
        let state = ctx
            .list_state(&OperatorListStateDescriptor::<OffsetEntry>::union(
                OFFSETS_STATE,
            ))
            .map_err(|e| KafkaError::State(e.to_string()))?;
        let restored = if ctx.is_restored() {
            let items = state
                .get(ctx.operator_state())
                .map_err(|e| KafkaError::State(e.to_string()))?;
            Some(
                items
                    .iter()
                    .map(|e| (TopicPartition::new(e.topic.clone(), e.partition), e.offset))
                    .collect::<BTreeMap<_, _>>(),
            )
        } else {
            None
        };
        let (subtask, parallelism) = (ctx.subtask_index(), ctx.parallelism());
        let consumer = client::assign_consumer(
            &cfg.bootstrap_servers,
            cfg.group_id.as_deref(),
            &cfg.properties,
        )?;
        let all = client::list_partitions(&consumer, &cfg.topics, LOOKUP_TIMEOUT)?;
        let mine = assign::assigned(&all, subtask, parallelism);
        let plan = assign::plan_starts(&mine, restored.as_ref(), &cfg.start);
        tracing::info!(operator = ctx.operator_name(), subtask, "{}", plan.log_line);
        push(&self.metrics.start_lines, plan.log_line.clone());
        let lookup = client::lookup_consumer(
            &cfg.bootstrap_servers,
            cfg.group_id.as_deref(),
            &cfg.properties,
        )?;
        let next = client::resolve_starts(&lookup, &plan.starts, LOOKUP_TIMEOUT)?;
        consumer
            .assign(&assign_tpl(&next)?)
            .map_err(KafkaError::client("assign partitions"))?;
        let dlq = match &cfg.policy {
            DeserializationPolicy::DeadLetter { topic } => {
                let (p, t) = super::producer::plain_producer(
                    &cfg.bootstrap_servers,
                    &cfg.properties,
                    &[("acks", "all"), ("enable.idempotence", "true")],
                )?;
                Some((topic.clone(), p, t))
            }
            _ => None,
        };
        let mut partitions_wm = PartitionWatermarks::default();
        for tp in &mine {
            partitions_wm.add_partition(tp.clone(), 0);
        }
        self.rt = Some(Runtime {
            consumer,
            subtask,
            parallelism,
            assigned: all,
            next,
            state,
            pending_commits: BTreeMap::new(),
            last_commit: Instant::now(),
            last_discovery: Instant::now(),
            dlq,
            partitions_wm,
            started: Instant::now(),
            headers_buf: Vec::new(),
            job_metrics: JobSourceMetrics {
                skipped: ctx.metrics().record_errors(ctx.operator_name(), "skipped"),
                dead_lettered: ctx
                    .metrics()
                    .record_errors(ctx.operator_name(), "dead_lettered"),
                metrics: ctx.metrics(),
                lag: BTreeMap::new(),
                last_lag: Instant::now() - LAG_INTERVAL,
            },
        });
        Ok(())
    }

    fn discover(&mut self) -> Result<(), KafkaError> {
        let Some(interval) = self.config.discovery_interval else {
            return Ok(());
        };
        let now_ms = self.now_ms();
        let cfg = self.config.clone();
        let Some(rt) = self.rt.as_mut() else {
            return Ok(());
        };
        if rt.last_discovery.elapsed() < interval {
            return Ok(());
        }
        rt.last_discovery = Instant::now();
        let all = client::list_partitions(&rt.consumer, &cfg.topics, LOOKUP_TIMEOUT)?;
        let new = assign::discovered(&rt.assigned, &all);
        rt.assigned = all;
        let mine: Vec<TopicPartition> = new
            .into_iter()
            .filter(|tp| assign::subtask_for(tp, rt.parallelism) == rt.subtask)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let starts: BTreeMap<TopicPartition, Start> = mine
            .iter()
            .map(|tp| (tp.clone(), Start::Earliest))
            .collect();
        let lookup = client::lookup_consumer(
            &cfg.bootstrap_servers,
            cfg.group_id.as_deref(),
            &cfg.properties,
        )?;
        let offsets = client::resolve_starts(&lookup, &starts, LOOKUP_TIMEOUT)?;
        rt.consumer
            .incremental_assign(&assign_tpl(&offsets)?)
            .map_err(KafkaError::client("assign discovered partitions"))?;
        let names: Vec<String> = mine.iter().map(|t| t.to_string()).collect();
        tracing::info!(
            subtask = rt.subtask,
            "discovered new partitions [{}], starting from earliest",
            names.join(", ")
        );
        for tp in mine {
            rt.partitions_wm.add_partition(tp.clone(), now_ms);
            push(&self.metrics.discovered, tp);
        }
        rt.next.extend(offsets);
        Ok(())
    }

    fn commit_offsets(rt: &Runtime, offsets: &BTreeMap<TopicPartition, i64>) {
        // Monitoring only: failures are logged, never fail the job.
        match assign_tpl(offsets) {
            Ok(tpl) if tpl.count() > 0 => {
                if let Err(e) = rt.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(subtask = rt.subtask, error = %e, "committing offsets to the group failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot build offsets to commit"),
        }
    }
}

impl<T> CheckpointListener for KafkaSource<T> {
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> FnResult {
        if self.commit != OffsetCommit::OnCheckpoint {
            return Ok(());
        }
        let Some(rt) = self.rt.as_mut() else {
            return Ok(());
        };
        let mut latest = None;
        while let Some((&id, _)) = rt.pending_commits.first_key_value() {
            if id > checkpoint_id {
                break;
            }
            latest = rt.pending_commits.pop_first().map(|(_, o)| o);
        }
        if let Some(offsets) = latest {
            match assign_tpl(&offsets) {
                Ok(tpl) if tpl.count() > 0 => {
                    if let Err(e) = rt.consumer.commit(&tpl, CommitMode::Async) {
                        tracing::warn!(subtask = rt.subtask, error = %e, "committing offsets to the group failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot build offsets to commit"),
            }
        }
        Ok(())
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> FnResult {
        if let Some(rt) = self.rt.as_mut() {
            rt.pending_commits.remove(&checkpoint_id);
        }
        Ok(())
    }
}

impl<T: crate::functions::Data> SourceFunction<T> for KafkaSource<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> FnResult {
        self.connect(ctx).map_err(user)
    }

    fn poll(&mut self, out: &mut SourceOutput<'_, T>) -> Result<SourcePoll, UserError> {
        self.discover().map_err(user)?;
        let now_ms = self.now_ms();
        let max_batch = self.config.max_batch;
        let policy = self.config.policy.clone();
        let commit = self.commit;
        let deser = self.deser.clone();
        let needs_headers = deser.needs_headers();
        let metrics = self.metrics.clone();
        let wm = self.watermarks.clone();
        let Some(rt) = self.rt.as_mut() else {
            return Err(UserError::msg(
                "Kafka source polled before initialize_state",
            ));
        };
        if let OffsetCommit::Periodic(d) = commit
            && rt.last_commit.elapsed() >= d
        {
            rt.last_commit = Instant::now();
            Self::commit_offsets(rt, &rt.next);
        }
        let mut n = 0usize;
        while n < max_batch {
            let Some(res) = rt.consumer.poll(Duration::ZERO) else {
                break;
            };
            let msg = match res {
                Ok(m) => m,
                Err(e) => {
                    // Transport errors are retried by librdkafka; the source
                    // goes on once the broker is back.
                    tracing::warn!(subtask = rt.subtask, error = %e, "Kafka consumer error");
                    break;
                }
            };
            n += 1;
            let tp = TopicPartition::new(msg.topic(), msg.partition());
            let offset = msg.offset();
            let ts = msg.timestamp().to_millis();
            rt.headers_buf.clear();
            if needs_headers && let Some(h) = msg.headers() {
                for hd in h.iter() {
                    rt.headers_buf
                        .push((hd.key.to_string(), hd.value.map(|v| v.to_vec())));
                }
            }
            let view = RecordView {
                topic: msg.topic(),
                partition: msg.partition(),
                offset,
                timestamp: ts,
                key: msg.key(),
                payload: msg.payload(),
                headers: &rt.headers_buf,
            };
            match deser.deserialize(&view) {
                Ok(v) => {
                    let et = match &wm {
                        Some(w) => w.event_time(&v, ts),
                        None => ts,
                    };
                    match et {
                        Some(t) => {
                            if wm.is_some() {
                                rt.partitions_wm.on_record(&tp, t, now_ms);
                            }
                            out.collect_with_timestamp(v, t)
                        }
                        None => out.collect(v),
                    }
                    metrics.records.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => match &policy {
                    DeserializationPolicy::Skip => {
                        metrics.skipped.fetch_add(1, Ordering::Relaxed);
                        rt.job_metrics.skipped.inc();
                        tracing::warn!(
                            topic = %tp.topic, partition = tp.partition, offset,
                            error = %reason,
                            "skipping a record that does not deserialize"
                        );
                    }
                    DeserializationPolicy::DeadLetter { .. } => {
                        if let Some((dl_topic, producer, _)) = &rt.dlq {
                            let headers = OwnedHeaders::new()
                                .insert(Header {
                                    key: "runnel.error",
                                    value: Some(reason.as_bytes()),
                                })
                                .insert(Header {
                                    key: "runnel.source.topic",
                                    value: Some(tp.topic.as_bytes()),
                                })
                                .insert(Header {
                                    key: "runnel.source.partition",
                                    value: Some(tp.partition.to_string().as_bytes()),
                                })
                                .insert(Header {
                                    key: "runnel.source.offset",
                                    value: Some(offset.to_string().as_bytes()),
                                });
                            let empty: &[u8] = &[];
                            let mut rec = BaseRecord::<[u8], [u8]>::to(dl_topic)
                                .payload(msg.payload().unwrap_or(empty))
                                .headers(headers);
                            if let Some(k) = msg.key() {
                                rec = rec.key(k);
                            }
                            super::producer::send_blocking(producer, rec).map_err(user)?;
                            metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            rt.job_metrics.dead_lettered.inc();
                            tracing::warn!(
                                topic = %tp.topic, partition = tp.partition, offset,
                                error = %reason, dead_letter_topic = %dl_topic,
                                "sent a record that does not deserialize to the dead-letter topic"
                            );
                        }
                    }
                    DeserializationPolicy::Fail => {
                        return Err(UserError::fatal(format!(
                            "record at {tp} offset {offset} does not deserialize: {reason} \
                             (policy: fail; the job stops instead of restarting into the \
                             same record)"
                        )));
                    }
                },
            }
            rt.next.insert(tp, offset + 1);
        }
        rt.job_metrics.update_lag(&rt.consumer, &rt.next);
        if let Some(w) = &wm
            && let Some(v) = rt.partitions_wm.current(w.bound_ms, w.idleness_ms, now_ms)
        {
            out.emit_watermark(v);
        }
        Ok(if n > 0 {
            SourcePoll::MoreAvailable
        } else {
            SourcePoll::Idle(IDLE_WAIT)
        })
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> FnResult {
        let commit = self.commit;
        let flush_timeout = Duration::from_secs(60);
        let Some(rt) = self.rt.as_mut() else {
            return Ok(());
        };
        // Dead-lettered records of this checkpoint's input must be durable
        // before the checkpoint can complete, or a restore would lose them.
        if let Some((_, p, tracker)) = &rt.dlq {
            p.flush(flush_timeout)
                .map_err(KafkaError::client("flush dead-letter records"))
                .map_err(user)?;
            tracker.take_error().map_err(user)?;
        }
        let entries: Vec<OffsetEntry> = rt
            .next
            .iter()
            .map(|(tp, o)| OffsetEntry {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: *o,
            })
            .collect();
        rt.state.update(ctx.operator_state(), entries)?;
        if commit == OffsetCommit::OnCheckpoint {
            rt.pending_commits
                .insert(ctx.checkpoint_id(), rt.next.clone());
        }
        Ok(())
    }
}
