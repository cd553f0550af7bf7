//! Configuration types of the Kafka source and sink. Validation is pure so it
//! is unit-tested without a broker.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::KafkaError;
use crate::config::JobConfig;

/// A topic partition, printed as `topic-partition` like Kafka's tools do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Which topics the source reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicSelector {
    List(Vec<String>),
    /// A regular expression that must match the whole topic name.
    Pattern(String),
}

/// Where a partition starts when the job holds no restored offset for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail the job: no fallback was configured.
    Fail,
}

/// The configured start position (Flink's `OffsetsInitializer`). Restored
/// offsets always win over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The consumer group's committed offsets; partitions without one use `reset`.
    GroupOffsets {
        reset: OffsetReset,
    },
    Earliest,
    Latest,
    /// The first record whose timestamp is >= this (ms since the epoch);
    /// partitions with none start at their end.
    Timestamp(i64),
    /// Given offsets; partitions not listed use `fallback`.
    Specific {
        offsets: BTreeMap<TopicPartition, i64>,
        fallback: OffsetReset,
    },
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::GroupOffsets { reset } => {
                write!(f, "committed group offsets (reset: {reset:?})")
            }
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Timestamp(t) => write!(f, "timestamp {t}"),
            StartPosition::Specific { offsets, fallback } => {
                f.write_str("specific offsets {")?;
                for (i, (tp, o)) in offsets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{tp}: {o}")?;
                }
                write!(f, "}} (fallback: {fallback:?})")
            }
        }
    }
}

/// What happens to a record that does not deserialize.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeserializationPolicy {
    /// Count it in a metric, log its coordinates, go on.
    Skip,
    /// Send the original record and the error to this topic, go on.
    DeadLetter { topic: String },
    /// Fail the job without restarting (a restart would meet the same record).
    Fail,
}

/// When the source commits its offsets to the consumer group. Committed
/// offsets are for monitoring lag only; the job's position lives in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetCommit {
    /// On checkpoint completion when checkpointing is on, otherwise every 5 s.
    Auto,
    OnCheckpoint,
    Periodic(Duration),
    Disabled,
}

/// Resolves [`OffsetCommit::Auto`] against the job's checkpoint settings.
pub fn resolve_offset_commit(mode: OffsetCommit, job: &JobConfig) -> OffsetCommit {
    match mode {
        OffsetCommit::Auto if job.checkpoint.interval_ms.is_some() => OffsetCommit::OnCheckpoint,
        OffsetCommit::Auto => OffsetCommit::Periodic(Duration::from_secs(5)),
        m => m,
    }
}

/// Configuration of a [`KafkaSource`](super::KafkaSource).
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    /// Needed for `GroupOffsets` and for committing offsets.
    pub group_id: Option<String>,
    pub topics: TopicSelector,
    pub start: StartPosition,
    /// Look for new partitions and topics this often (off by default).
    pub discovery_interval: Option<Duration>,
    pub commit: OffsetCommit,
    pub policy: DeserializationPolicy,
    /// Most records emitted by one poll.
    pub max_batch: usize,
    /// Extra librdkafka properties (they override the connector's defaults).
    pub properties: BTreeMap<String, String>,
}

impl KafkaSourceConfig {
    pub fn new(bootstrap_servers: impl Into<String>, topics: TopicSelector) -> Self {
        KafkaSourceConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: None,
            topics,
            start: StartPosition::GroupOffsets {
                reset: OffsetReset::Earliest,
            },
            discovery_interval: None,
            commit: OffsetCommit::Auto,
            policy: DeserializationPolicy::Fail,
            max_batch: 4096,
            properties: BTreeMap::new(),
        }
    }

    /// Checks the configuration against itself and the job.
    pub fn validate(&self, job: &JobConfig) -> Result<(), KafkaError> {
        let mut errs = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errs.push("bootstrap servers are empty".to_string());
        }
        match &self.topics {
            TopicSelector::List(l) if l.is_empty() => errs.push("no topics given".into()),
            TopicSelector::List(l) if l.iter().any(|t| t.trim().is_empty()) => {
                errs.push("a topic name is empty".into())
            }
            TopicSelector::Pattern(p) => {
                if let Err(e) = regex::Regex::new(&format!("^(?:{p})$")) {
                    errs.push(format!("topic pattern '{p}' is not a valid regex: {e}"));
                }
            }
            TopicSelector::List(_) => {}
        }
        let commit = resolve_offset_commit(self.commit, job);
        if self.group_id.is_none() {
            if matches!(self.start, StartPosition::GroupOffsets { .. }) {
                errs.push("start position 'group offsets' needs a group id".into());
            }
            if matches!(
                commit,
                OffsetCommit::OnCheckpoint | OffsetCommit::Periodic(_)
            ) && self.commit != OffsetCommit::Auto
            {
                errs.push("committing offsets needs a group id".into());
            }
        }
        if commit == OffsetCommit::OnCheckpoint && job.checkpoint.interval_ms.is_none() {
            errs.push(
                "offsets are to be committed on checkpoints, but checkpointing is off".into(),
            );
        }
        if let OffsetCommit::Periodic(d) = commit
            && d.is_zero()
        {
            errs.push("periodic offset commit interval must be > 0".into());
        }
        if let Some(d) = self.discovery_interval
            && d.is_zero()
        {
            errs.push("partition discovery interval must be > 0".into());
        }
        if let DeserializationPolicy::DeadLetter { topic } = &self.policy
            && topic.trim().is_empty()
        {
            errs.push("dead-letter topic is empty".into());
        }
        if self.max_batch == 0 {
            errs.push("max batch must be >= 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(KafkaError::Config(errs.join("; ")))
        }
    }
}

/// The sink's delivery guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    /// Fire and forget.
    None,
    /// Flush and await delivery before a checkpoint's snapshot returns.
    AtLeastOnce,
    /// Output of a checkpoint becomes visible (read_committed) once, after the
    /// checkpoint completes. See docs/kafka-exactly-once.md.
    ExactlyOnce,
}

/// Configuration of a [`KafkaSink`](super::KafkaSink).
#[derive(Clone, Debug)]
pub struct KafkaSinkConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub delivery: DeliveryGuarantee,
    /// Prefix of the transactional ids (`{prefix}-{subtask}`); must be unique
    /// per sink across all jobs on the cluster. Exactly-once only.
    pub transactional_id_prefix: Option<String>,
    /// librdkafka's `transaction.timeout.ms`.
    pub transaction_timeout: Duration,
    /// How long a flush or a commit may take before the checkpoint fails.
    pub flush_timeout: Duration,
    pub properties: BTreeMap<String, String>,
}

impl KafkaSinkConfig {
    pub fn new(
        bootstrap_servers: impl Into<String>,
        topic: impl Into<String>,
        delivery: DeliveryGuarantee,
    ) -> Self {
        KafkaSinkConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: topic.into(),
            delivery,
            transactional_id_prefix: None,
            transaction_timeout: Duration::from_secs(60),
            flush_timeout: Duration::from_secs(60),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the configuration against the job's checkpoint settings.
    ///
    /// With exactly-once, the output of a checkpoint is written in one
    /// transaction after the checkpoint completes, so that transaction carries
    /// about one checkpoint interval of output: `transaction.timeout.ms` must
    /// be at least the checkpoint interval and the flush timeout, or the
    /// broker could abort a commit in progress. (A shorter timeout would only
    /// shorten how long a crashed job's open transaction blocks
    /// `read_committed` readers; recovery ends it anyway.) The broker's
    /// maximum is checked when the sink starts.
    pub fn validate(&self, job: &JobConfig) -> Result<(), KafkaError> {
        let mut errs = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            errs.push("bootstrap servers are empty".to_string());
        }
        if self.topic.trim().is_empty() {
            errs.push("sink topic is empty".into());
        }
        if self.flush_timeout.is_zero() {
            errs.push("flush timeout must be > 0".into());
        }
        if self.delivery == DeliveryGuarantee::ExactlyOnce {
            match &self.transactional_id_prefix {
                None => errs.push("exactly-once needs a transactional id prefix".into()),
                Some(p) if p.trim().is_empty() => {
                    errs.push("transactional id prefix is empty".into())
                }
                Some(_) => {}
            }
            let txn_ms = self.transaction_timeout.as_millis() as u64;
            match job.checkpoint.interval_ms {
                None => errs.push(
                    "exactly-once delivery needs checkpointing (set a checkpoint interval)".into(),
                ),
                Some(interval) => {
                    if txn_ms < interval {
                        errs.push(format!(
                            "transaction.timeout.ms ({txn_ms}) is shorter than the checkpoint \
                             interval ({interval} ms): a commit carrying one interval's output \
                             could be aborted by the broker"
                        ));
                    }
                }
            }
            if txn_ms < self.flush_timeout.as_millis() as u64 {
                errs.push(format!(
                    "transaction.timeout.ms ({txn_ms}) is shorter than the flush timeout ({} ms)",
                    self.flush_timeout.as_millis()
                ));
            }
            if job.checkpoint.mode != crate::config::CheckpointMode::ExactlyOnce {
                errs.push(
                    "exactly-once delivery needs exactly-once (aligned) checkpoint mode".into(),
                );
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(KafkaError::Config(errs.join("; ")))
        }
    }
}

/// Checks the transaction timeout against the broker's
/// `transaction.max.timeout.ms` (when the broker reports one).
pub fn check_broker_max_timeout(
    transaction_timeout: Duration,
    broker_max_ms: Option<u64>,
) -> Result<(), KafkaError> {
    let ms = transaction_timeout.as_millis() as u64;
    match broker_max_ms {
        Some(max) if ms > max => Err(KafkaError::Config(format!(
            "transaction.timeout.ms ({ms}) exceeds the broker's transaction.max.timeout.ms ({max})"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CheckpointConfig;

    fn job(interval: Option<u64>) -> JobConfig {
        let mut j = JobConfig::new("t");
        j.checkpoint = CheckpointConfig {
            interval_ms: interval,
            storage: Some("file:///tmp/x".into()),
            ..Default::default()
        };
        j
    }

    #[test]
    fn topic_partition_prints_like_kafka() {
        assert_eq!(TopicPartition::new("orders", 3).to_string(), "orders-3");
    }

    #[test]
    fn source_validation() {
        let mut c = KafkaSourceConfig::new("127.0.0.1:9092", TopicSelector::List(vec![]));
        let e = c.validate(&job(Some(100))).unwrap_err().to_string();
        assert!(e.contains("no topics given"), "{e}");
        assert!(e.contains("needs a group id"), "{e}");
        c.topics = TopicSelector::Pattern("(".into());
        let e = c.validate(&job(Some(100))).unwrap_err().to_string();
        assert!(e.contains("not a valid regex"), "{e}");
        c.topics = TopicSelector::Pattern("in-.*".into());
        c.group_id = Some("g".into());
        c.validate(&job(Some(100))).unwrap();
        c.commit = OffsetCommit::OnCheckpoint;
        let e = c.validate(&job(None)).unwrap_err().to_string();
        assert!(e.contains("checkpointing is off"), "{e}");
        c.commit = OffsetCommit::Periodic(Duration::ZERO);
        let e = c.validate(&job(None)).unwrap_err().to_string();
        assert!(e.contains("interval must be > 0"), "{e}");
        c.commit = OffsetCommit::Auto;
        c.policy = DeserializationPolicy::DeadLetter { topic: " ".into() };
        let e = c.validate(&job(None)).unwrap_err().to_string();
        assert!(e.contains("dead-letter topic is empty"), "{e}");
    }

    #[test]
    fn auto_commit_follows_checkpointing() {
        assert_eq!(
            resolve_offset_commit(OffsetCommit::Auto, &job(Some(10))),
            OffsetCommit::OnCheckpoint
        );
        assert_eq!(
            resolve_offset_commit(OffsetCommit::Auto, &job(None)),
            OffsetCommit::Periodic(Duration::from_secs(5))
        );
        assert_eq!(
            resolve_offset_commit(OffsetCommit::Disabled, &job(Some(10))),
            OffsetCommit::Disabled
        );
    }

    #[test]
    fn sink_transaction_timeout_is_checked_against_checkpoints() {
        let mut c = KafkaSinkConfig::new("b:1", "out", DeliveryGuarantee::ExactlyOnce);
        let e = c.validate(&job(Some(1000))).unwrap_err().to_string();
        assert!(e.contains("transactional id prefix"), "{e}");
        c.transactional_id_prefix = Some("p".into());
        c.validate(&job(Some(1000))).unwrap();
        let e = c.validate(&job(None)).unwrap_err().to_string();
        assert!(e.contains("needs checkpointing"), "{e}");
        c.transaction_timeout = Duration::from_millis(500);
        c.flush_timeout = Duration::from_millis(400);
        let e = c.validate(&job(Some(1000))).unwrap_err().to_string();
        assert!(
            e.contains("transaction.timeout.ms (500) is shorter than the checkpoint interval"),
            "{e}"
        );
        c.flush_timeout = Duration::from_secs(1);
        let e = c.validate(&job(Some(100))).unwrap_err().to_string();
        assert!(e.contains("shorter than the flush timeout"), "{e}");
        let mut j = job(Some(100));
        j.checkpoint.mode = crate::CheckpointMode::AtLeastOnce;
        c.flush_timeout = Duration::from_millis(100);
        let e = c.validate(&j).unwrap_err().to_string();
        assert!(e.contains("aligned"), "{e}");
        // At-least-once needs none of this.
        let a = KafkaSinkConfig::new("b:1", "out", DeliveryGuarantee::AtLeastOnce);
        a.validate(&job(None)).unwrap();
    }

    #[test]
    fn broker_max_timeout() {
        check_broker_max_timeout(Duration::from_secs(60), None).unwrap();
        check_broker_max_timeout(Duration::from_secs(60), Some(60_000)).unwrap();
        let e = check_broker_max_timeout(Duration::from_secs(61), Some(60_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exceeds the broker's transaction.max.timeout.ms (60000)"),
            "{e}"
        );
    }
}
