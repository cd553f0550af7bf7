//! Blocking librdkafka helpers shared by the source and sink: client configs,
//! partition listing, resolving logical start positions to offsets, and the
//! broker's transaction limit. The engine calls sources and sinks on their own
//! subtask threads (not an async executor), so blocking here is fine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::assign::Start;
use super::config::{OffsetReset, TopicPartition, TopicSelector};
use super::error::KafkaError;

/// Timeout of metadata and offset look-ups.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Base config of every client: the servers, then user properties on top.
pub(crate) fn base_config(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Remembers each partition's end as librdkafka's statistics report it (the
/// last stable offset, which is what a `read_committed` reader can reach),
/// for the lag gauges. The statistics come from librdkafka's own fetch state,
/// so lag costs no extra broker request; they are delivered inside `poll` on
/// the source's thread.
#[derive(Default)]
pub(crate) struct EndOffsets {
    ends: Mutex<HashMap<(String, i32), i64>>,
}

impl EndOffsets {
    /// The last reported end of a partition, if librdkafka knows one yet.
    pub(crate) fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        let g = match self.ends.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.get(&(topic.to_string(), partition)).copied()
    }
}

impl ClientContext for EndOffsets {
    fn stats(&self, s: Statistics) {
        let mut g = match self.ends.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for (topic, t) in s.topics {
            for (id, p) in t.partitions {
                // -1 is librdkafka's "internal UA partition" and "unknown".
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if id >= 0 && end >= 0 {
                    g.insert((topic.clone(), id), end);
                }
            }
        }
    }
}

impl ConsumerContext for EndOffsets {}

/// The source's consumer.
pub(crate) type SourceConsumer = BaseConsumer<EndOffsets>;

/// A consumer that is only assigned partitions (no group membership, no
/// automatic commits or offset storing: the job's position lives in its
/// checkpoints). It emits statistics every second for the lag gauges.
pub(crate) fn assign_consumer(
    bootstrap: &str,
    group: Option<&str>,
    properties: &BTreeMap<String, String>,
) -> Result<SourceConsumer, KafkaError> {
    let mut props = BTreeMap::from([("statistics.interval.ms".to_string(), "1000".to_string())]);
    props.extend(properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    consumer_config(bootstrap, group, &props, "read_committed")
        .create_with_context(EndOffsets::default())
        .map_err(KafkaError::client("create consumer"))
}

/// A consumer for offset look-ups: `read_uncommitted`, so that "latest" and
/// end offsets are the log end (nisshi 0.7.0 answers a `read_committed`
/// end-offset query with an offset below the end).
pub(crate) fn lookup_consumer(
    bootstrap: &str,
    group: Option<&str>,
    properties: &BTreeMap<String, String>,
) -> Result<BaseConsumer, KafkaError> {
    consumer_with(bootstrap, group, properties, "read_uncommitted")
}

fn consumer_with(
    bootstrap: &str,
    group: Option<&str>,
    properties: &BTreeMap<String, String>,
    isolation: &str,
) -> Result<BaseConsumer, KafkaError> {
    consumer_config(bootstrap, group, properties, isolation)
        .create()
        .map_err(KafkaError::client("create consumer"))
}

fn consumer_config(
    bootstrap: &str,
    group: Option<&str>,
    properties: &BTreeMap<String, String>,
    isolation: &str,
) -> ClientConfig {
    let mut c = base_config(
        bootstrap,
        properties,
        &[
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", isolation),
            ("enable.partition.eof", "false"),
        ],
    );
    // librdkafka needs a group id for the commit API even when only assigning.
    c.set("group.id", group.unwrap_or("runnel-unused-group"));
    c
}

/// Topic partitions the selector matches now (internal topics excluded).
pub(crate) fn list_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    selector: &TopicSelector,
    timeout: Duration,
) -> Result<Vec<TopicPartition>, KafkaError> {
    let mut out = Vec::new();
    match selector {
        TopicSelector::List(topics) => {
            for t in topics {
                let md = consumer
                    .fetch_metadata(Some(t), timeout)
                    .map_err(KafkaError::client(format!("metadata of topic '{t}'")))?;
                for mt in md.topics() {
                    if mt.error().is_some() {
                        // Missing topic: nothing to read yet (discovery may find it).
                        continue;
                    }
                    for p in mt.partitions() {
                        out.push(TopicPartition::new(mt.name(), p.id()));
                    }
                }
            }
        }
        TopicSelector::Pattern(p) => {
            let re = regex::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| KafkaError::Config(format!("topic pattern '{p}': {e}")))?;
            let md = consumer
                .fetch_metadata(None, timeout)
                .map_err(KafkaError::client("cluster metadata"))?;
            for mt in md.topics() {
                if mt.error().is_some() || mt.name().starts_with("__") || !re.is_match(mt.name()) {
                    continue;
                }
                for p in mt.partitions() {
                    out.push(TopicPartition::new(mt.name(), p.id()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Turns planned starts into concrete offsets, so that checkpoints always hold
/// real positions (a savepoint taken before a partition delivered anything
/// must not mean "latest" again after restore).
pub(crate) fn resolve_starts(
    consumer: &BaseConsumer,
    starts: &BTreeMap<TopicPartition, Start>,
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, i64>, KafkaError> {
    let mut out = BTreeMap::new();
    // Group offsets first: one request for all of them.
    let group: Vec<(&TopicPartition, OffsetReset)> = starts
        .iter()
        .filter_map(|(tp, s)| match s {
            Start::Group(r) => Some((tp, *r)),
            _ => None,
        })
        .collect();
    let mut committed: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    if !group.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (tp, _) in &group {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let res = consumer
            .committed_offsets(tpl, timeout)
            .map_err(KafkaError::client("committed group offsets"))?;
        for e in res.elements() {
            if let Offset::Offset(o) = e.offset() {
                committed.insert(TopicPartition::new(e.topic(), e.partition()), o);
            }
        }
    }
    for (tp, s) in starts {
        let (low, high) = consumer
            .fetch_watermarks(&tp.topic, tp.partition, timeout)
            .map_err(KafkaError::client(format!("watermarks of {tp}")))?;
        let o = match s {
            Start::Offset(o) => *o,
            Start::Earliest => low,
            Start::Latest => high,
            Start::Timestamp(t) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*t))
                    .map_err(KafkaError::client("offsets for times"))?;
                let r = consumer
                    .offsets_for_times(tpl, timeout)
                    .map_err(KafkaError::client(format!(
                        "offset for timestamp {t} of {tp}"
                    )))?;
                match r.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => high,
                }
            }
            Start::Group(reset) => match committed.get(tp) {
                Some(o) => *o,
                None => match reset {
                    OffsetReset::Earliest => low,
                    OffsetReset::Latest => high,
                    OffsetReset::Fail => {
                        return Err(KafkaError::Config(format!(
                            "{tp} has no committed offset in the group and no reset fallback is set"
                        )));
                    }
                },
            },
        };
        // An offset below the log start (deleted by retention) starts at the
        // log start. No upper clamp: nisshi 0.7.0 reports the last batch's
        // base offset as the end, below real offsets.
        out.insert(tp.clone(), o.max(low));
    }
    Ok(out)
}

/// The broker's `transaction.max.timeout.ms`, or `None` when the broker does
/// not report it (the caller logs that the check was skipped).
pub(crate) fn broker_max_transaction_timeout(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
) -> Result<Option<u64>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap, properties, &[])
        .create()
        .map_err(KafkaError::client("create admin client"))?;
    let md = admin
        .inner()
        .fetch_metadata(None, LOOKUP_TIMEOUT)
        .map_err(KafkaError::client("cluster metadata"))?;
    let brokers: BTreeSet<i32> = md.brokers().iter().map(|b| b.id()).collect();
    let Some(id) = brokers.first().copied() else {
        return Ok(None);
    };
    let opts = AdminOptions::new().request_timeout(Some(LOOKUP_TIMEOUT));
    let res =
        futures_executor::block_on(admin.describe_configs([&ResourceSpecifier::Broker(id)], &opts));
    let Ok(results) = res else {
        return Ok(None);
    };
    for r in results.into_iter().flatten() {
        if let Some(v) = r
            .get("transaction.max.timeout.ms")
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Ok(Some(v));
        }
    }
    Ok(None)
}
