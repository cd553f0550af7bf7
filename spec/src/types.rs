//! The job spec: one set of types with serde and schemars. The JSON schema they
//! generate is what the StreamJob CRD embeds, so field names, defaults and doc
//! comments here are user-facing.
//!
//! Mutually exclusive alternatives (the kind of a source, sink or step) are
//! optional fields of one struct rather than a Rust enum: that keeps
//! `deny_unknown_fields` working, keeps the schema structural (which Kubernetes
//! requires), and lets validation say exactly which fields clash. The schema
//! still says "exactly one" (a `oneOf` of `required`, which is structural),
//! so the API server refuses a source, step or sink without a kind, or with
//! two, when the job is applied (a kind written as an explicit `null`
//! counts as set there, though serde reads it as absent).
//!
//! Numeric bounds (`range`) repeat validation's, for the same reason; the
//! validation keeps them too, for `runnel run` and for the exact message.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DurationSpec;

/// A free-form JSON value inside the spec (records, operator configuration).
/// Kubernetes must be told to keep its unknown fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct AnyValue(pub serde_json::Value);

impl JsonSchema for AnyValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Any JSON value.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// A declarative streaming job: sources, a linear chain of steps, and sinks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// Version of this spec format. A runtime runs every version from its
    /// minimum supported one up to its own, and refuses newer ones.
    pub version: u32,
    /// Job name (logs, checkpoint metadata).
    pub name: String,
    /// Default parallelism of every source and step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<u32>,
    /// Number of key groups: the upper bound for rescaling keyed state. Fixed
    /// once state has been written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::validate::MAX_MAX_PARALLELISM))]
    pub max_parallelism: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// How often sources emit watermarks (default 200ms; 0s = whenever they
    /// advance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_interval: Option<DurationSpec>,
    /// Sources; with more than one, their records are merged (union).
    pub sources: Vec<SourceSpec>,
    /// Steps applied in order to every record.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Sinks; each receives the output of the last step, or a named side output.
    pub sinks: Vec<SinkSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointModeSpec {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Interval between checkpoints, e.g. `10s`.
    pub interval: DurationSpec,
    /// Checkpoint directory URI (`file:///...` or `s3://bucket/prefix`).
    pub storage: String,
    #[serde(default)]
    pub mode: CheckpointModeSpec,
    #[serde(default)]
    pub unaligned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pause: Option<DurationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retained: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerable_failures: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(rename = "type")]
    pub kind: RestartKind,
    /// fixed-delay: attempts before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// fixed-delay: pause between attempts; exponential-backoff: initial pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DurationSpec>,
    /// exponential-backoff: upper bound of the pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<DurationSpec>,
    /// failure-rate: failures allowed within `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartKind {
    None,
    FixedDelay,
    ExponentialBackoff,
    FailureRate,
}

// ---- sources -----------------------------------------------------------------

/// A source. Set exactly one of `generator`, `elements` or `kafka`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{ "required": ["generator"] }, { "required": ["elements"] }, { "required": ["kafka"] }]))]
pub struct SourceSpec {
    /// Identifies the source's state (offsets) across job versions; unique.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorSpec>,
    /// Inline records, emitted once in order, one per poll so that watermarks
    /// advance between them (tests and examples). With parallelism p, subtask
    /// s emits the records at indices i with i % p == s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<Vec<AnyValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceSpec>,
    /// Event time and watermarks. Required by event-time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
}

/// Event time: where a record's timestamp comes from, and how far out of order
/// records may arrive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatermarkSpec {
    /// CEL expression giving the event time in epoch milliseconds (an int) or
    /// a timestamp. When absent, the timestamp the source attaches is used
    /// (Kafka's record timestamp, the generator's `eventTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Watermark = max timestamp seen - maxOutOfOrderness - 1 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_out_of_orderness: Option<DurationSpec>,
    /// A source subtask without records for this long is idle and does not
    /// hold back the watermark downstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idleness: Option<DurationSpec>,
}

/// A deterministic data generator: record i is a pure function of i, so a
/// restore replays exactly the same records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Total number of records (unbounded when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Records per second, across all subtasks (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    /// Key cardinality used by `key` fields.
    #[serde(default = "default_keys")]
    #[schemars(range(min = 1))]
    pub keys: u64,
    /// Record timestamp of record i: `startMs + i * stepMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeGen>,
    /// The event shape: field name -> how to generate it.
    pub fields: BTreeMap<String, FieldGen>,
}

fn default_keys() -> u64 {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTimeGen {
    #[serde(default)]
    pub start_ms: i64,
    pub step_ms: i64,
}

/// How one generated field is computed from the record index i.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum FieldGen {
    /// `i % keys` as an int, or `prefix + (i % keys)` as a string with a prefix.
    Key {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
    },
    /// `start + i * step`, wrapped by `modulo` when set.
    Sequence {
        #[serde(default)]
        start: i64,
        #[serde(default = "one")]
        step: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        modulo: Option<i64>,
    },
    /// Uniform pseudo-random int in [min, max], a hash of (seed, i).
    Random {
        min: i64,
        max: i64,
        #[serde(default)]
        seed: u64,
    },
    /// One of the listed values, picked by a hash of (seed, i).
    Choice {
        values: Vec<AnyValue>,
        #[serde(default)]
        seed: u64,
    },
    /// The same value in every record.
    Constant { value: AnyValue },
    /// Epoch milliseconds: `startMs + i * stepMs` (as in `eventTime`).
    Timestamp {
        #[serde(default)]
        start_ms: i64,
        step_ms: i64,
    },
}

fn one() -> i64 {
    1
}

/// Kafka source. Implemented by the Kafka connector (`runnel_runtime::kafka`);
/// a runtime built without it refuses the job with a clear error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Topics to read. Set this or `topicPattern`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// A regular expression over topic names. Set this or `topics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// Consumer group: offsets are committed to it on checkpoint completion, for
    /// monitoring only (checkpointed offsets win on restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default)]
    pub start: StartPositionSpec,
    /// How often to look for new partitions and topics (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_discovery_interval: Option<DurationSpec>,
    /// How record values (and keys) are decoded.
    #[serde(default)]
    pub format: FormatSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<FormatSpec>,
    /// What to do with a record that cannot be decoded.
    #[serde(default)]
    pub on_deserialization_error: DeserializationErrorSpec,
    /// Commit offsets to the group when a checkpoint completes.
    #[serde(default = "yes")]
    pub commit_offsets_on_checkpoint: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<KafkaCredentialsSpec>,
    /// Extra librdkafka properties (`fetch.max.bytes`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// Where a Kafka source starts when no checkpointed offsets exist.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartPositionSpec {
    #[serde(rename = "from", default)]
    pub from: StartFrom,
    /// `timestamp`: the first offset at or after this epoch-ms timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
    /// `specificOffsets`: an offset per topic partition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<PartitionOffsetSpec>,
    /// For `groupOffsets` and `specificOffsets`: where partitions without an
    /// offset start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<StartFallback>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    #[default]
    GroupOffsets,
    Earliest,
    Latest,
    Timestamp,
    SpecificOffsets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartFallback {
    Earliest,
    Latest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionOffsetSpec {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Serialization format of Kafka keys and values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FormatSpec {
    #[serde(rename = "type", default)]
    pub kind: FormatKind,
    /// `avro`: the writer/reader schema as Avro JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum FormatKind {
    /// Bytes, as they are.
    Raw,
    /// A UTF-8 string.
    Utf8,
    /// A JSON document; objects become records.
    #[default]
    Json,
    /// Avro binary with the schema given in `schema`.
    Avro,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeserializationErrorSpec {
    #[serde(default)]
    pub policy: DeserializationErrorPolicy,
    /// `deadLetter`: topic that receives the undecodable record unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum DeserializationErrorPolicy {
    /// Skip the record (counted in a metric).
    Skip,
    /// Produce it to the dead-letter topic and go on.
    DeadLetter,
    /// Fail the job, without restarting into the same record forever.
    #[default]
    Fail,
}

/// Kafka credentials, taken from Kubernetes Secrets (never inline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaCredentialsSpec {
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: String,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,
    /// PEM CA certificate for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<SecretKeyRef>,
}

/// A key of a Kubernetes Secret; the operator mounts it into the runtime pod
/// as the environment variable `RUNNEL_SECRET_<NAME>_<KEY>` (upper case, `-`
/// and `.` as `_`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl SecretKeyRef {
    /// The environment variable that carries this key in the runtime pod.
    /// Both the operator (which sets it) and the runtime (which reads it)
    /// use this one function, so the two cannot drift apart.
    pub fn env_var(&self) -> String {
        let norm = |s: &str| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        format!("RUNNEL_SECRET_{}_{}", norm(&self.name), norm(&self.key))
    }
}

impl KafkaCredentialsSpec {
    /// The Secret keys these credentials name.
    pub fn secret_refs(&self) -> impl Iterator<Item = &SecretKeyRef> {
        [&self.username, &self.password, &self.ca_certificate]
            .into_iter()
            .flatten()
    }
}

impl JobSpec {
    /// Every CEL expression in the job, with its path under `root`, so that
    /// a consumer with a CEL compiler (the runtime, the operator) can check
    /// them all and report each failure where it is written.
    pub fn expressions(&self, root: &crate::Path) -> Vec<(crate::Path, &str)> {
        let mut v: Vec<(crate::Path, &str)> = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(t) = s.watermark.as_ref().and_then(|w| w.timestamp.as_deref()) {
                let p = root.field("sources").index(i).field("watermark");
                v.push((p.field("timestamp"), t));
            }
        }
        for (i, st) in self.steps.iter().enumerate() {
            let p = root.field("steps").index(i);
            if let Some(f) = &st.filter {
                v.push((p.field("filter"), f));
            }
            if let Some(m) = &st.map {
                for (name, e) in &m.fields {
                    v.push((p.field("map").field("fields").field(name), e));
                }
            }
            if let Some(k) = &st.key_by {
                v.push((p.field("keyBy"), k));
            }
            if let Some(f) = &st.flat_map {
                v.push((p.field("flatMap").field("expr"), &f.expr));
            }
            if let Some(w) = &st.window {
                for (name, a) in &w.aggregates {
                    if let Some(of) = &a.of {
                        let ap = p.field("window").field("aggregates").field(name);
                        v.push((ap.field("of"), of));
                    }
                }
            }
            if let Some(d) = &st.dedup {
                v.push((p.field("dedup").field("key"), &d.key));
            }
        }
        for (i, s) in self.sinks.iter().enumerate() {
            if let Some(k) = s.kafka.as_ref().and_then(|k| k.key.as_deref()) {
                v.push((root.field("sinks").index(i).field("kafka").field("key"), k));
            }
        }
        v
    }

    /// Every Secret key the job's connectors name (the operator mounts them).
    pub fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let sources = self
            .sources
            .iter()
            .filter_map(|s| s.kafka.as_ref()?.credentials.as_ref());
        let sinks = self
            .sinks
            .iter()
            .filter_map(|s| s.kafka.as_ref()?.credentials.as_ref());
        let mut v: Vec<&SecretKeyRef> =
            sources.chain(sinks).flat_map(|c| c.secret_refs()).collect();
        v.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
        v.dedup();
        v
    }
}

// ---- steps -------------------------------------------------------------------

/// One step. Set exactly one of `filter`, `map`, `keyBy`, `flatMap`, `window`,
/// `dedup` or `operator`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{ "required": ["filter"] }, { "required": ["map"] }, { "required": ["keyBy"] }, { "required": ["flatMap"] }, { "required": ["window"] }, { "required": ["dedup"] }, { "required": ["operator"] }]))]
pub struct StepSpec {
    /// Identifies the step's state across job versions. Defaults to
    /// `<kind>-<index>`; set it on stateful steps you may reorder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<u32>,
    /// CEL predicate: records for which it is false are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapSpec>,
    /// CEL expression giving the key; the next keyed step (`window`,
    /// `operator`) runs per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat_map: Option<FlatMapSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupSpec>,
    /// A custom operator written in Rust and registered in the runtime binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<CustomOperatorSpec>,
}

/// Projects and computes fields: the output record has exactly `fields`
/// (plus every input field when `keep` is true).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MapSpec {
    /// Output field -> CEL expression.
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub keep: bool,
}

/// Emits one record per element of a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlatMapSpec {
    /// CEL expression giving a list.
    pub expr: String,
    /// Name of the field that holds the element in the output record (the
    /// input record's other fields are kept). When absent, each element must
    /// be a map and becomes the output record.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub as_field: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowKind {
    Tumbling,
    Sliding,
    Session,
    /// Fires every `count` records per key.
    Count,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum TimeKind {
    #[default]
    Event,
    Processing,
}

/// A keyed window with aggregations; follows a `keyBy` step. Emits one record
/// per key and window: `key`, `windowStart`, `windowEnd` and one field per
/// aggregate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// tumbling, sliding: window length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<DurationSpec>,
    /// sliding: distance between window starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<DurationSpec>,
    /// session: inactivity that closes a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<DurationSpec>,
    /// count: records per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u64>,
    #[serde(default)]
    pub time: TimeKind,
    /// Event time: records up to this late still update their window (which
    /// fires again); later ones are late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<DurationSpec>,
    /// Name of the side output that receives late records; a sink reads it
    /// with `from`. Late records are dropped (and counted) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_output: Option<String>,
    /// Output field -> aggregation.
    pub aggregates: BTreeMap<String, AggregateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl: Option<StateTtlSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregateSpec {
    pub op: AggregateOp,
    /// CEL expression aggregated (every op except `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateOp {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    DistinctCount,
}

impl AggregateOp {
    pub fn name(self) -> &'static str {
        match self {
            AggregateOp::Count => "count",
            AggregateOp::Sum => "sum",
            AggregateOp::Min => "min",
            AggregateOp::Max => "max",
            AggregateOp::Avg => "avg",
            AggregateOp::First => "first",
            AggregateOp::Last => "last",
            AggregateOp::DistinctCount => "distinctCount",
        }
    }
}

/// Drops records whose `key` was already seen within `ttl` (processing time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DedupSpec {
    /// CEL expression giving the de-duplication key.
    pub key: String,
    pub ttl: DurationSpec,
}

/// Keyed state time-to-live (processing time), as Flink's StateTtlConfig.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateTtlSpec {
    pub ttl: DurationSpec,
    #[serde(default)]
    pub update: TtlUpdate,
    #[serde(default)]
    pub visibility: TtlVisibility,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum TtlUpdate {
    #[default]
    OnCreateAndWrite,
    OnReadAndWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum TtlVisibility {
    #[default]
    NeverReturnExpired,
    ReturnExpiredIfNotCleanedUp,
}

/// A user-written Rust operator, registered by name in the runtime binary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomOperatorSpec {
    /// Registered name.
    pub name: String,
    /// Configuration handed to the operator's factory.
    #[serde(default)]
    pub config: AnyValue,
}

// ---- sinks -------------------------------------------------------------------

/// A sink. Set exactly one of `stdout`, `file` or `kafka`. Sinks run at the
/// job's parallelism.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("oneOf" = [{ "required": ["stdout"] }, { "required": ["file"] }, { "required": ["kafka"] }]))]
pub struct SinkSpec {
    /// Identifies the sink's state; unique.
    pub name: String,
    /// A side output (a window's `lateOutput`) instead of the main output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<StdoutSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,
}

/// Prints one JSON document per line. Not transactional: after a restore,
/// records since the last checkpoint are printed again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StdoutSinkSpec {
    /// Prefix each line with the sink name.
    #[serde(default)]
    pub prefix: bool,
}

/// Writes JSON lines into a directory, exactly once: each subtask writes a
/// part file per checkpoint epoch and publishes it (an atomic rename) only
/// when the checkpoint completes. Readers must read `part-*.jsonl` only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSinkSpec {
    /// Output directory (a local path).
    pub path: String,
}

/// Kafka sink. Implemented by the Kafka connector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub bootstrap_servers: String,
    pub topic: String,
    /// CEL expression giving the record key (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_format: Option<FormatSpec>,
    #[serde(default)]
    pub value_format: FormatSpec,
    #[serde(default)]
    pub delivery: DeliveryGuarantee,
    /// exactly-once: the producer transaction timeout; must exceed the
    /// checkpoint interval plus the time a restart takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_timeout: Option<DurationSpec>,
    /// exactly-once: prefix of the transactional ids (default: job and sink name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<KafkaCredentialsSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    None,
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}
