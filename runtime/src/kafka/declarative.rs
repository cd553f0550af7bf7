//! The Kafka connector of declarative (YAML) jobs: turns `KafkaSourceSpec`
//! and `KafkaSinkSpec` into the [`KafkaSource`] and [`KafkaSink`] of this
//! module, with records as declarative [`Value`]s.
//!
//! Record shapes (docs/job-spec.md, "Kafka records"):
//! - `json`: an object becomes the record; any other JSON value becomes
//!   `{value: ...}`;
//! - `avro`: the datum, as JSON, likewise;
//! - `utf8`: `{value: "text"}`; `raw`: `{value: bytes}`;
//! - with `keyFormat`, the decoded key is added as the field `_key`.
//!
//! The sink writes the record as JSON or Avro, or its `value` field as UTF-8
//! text or raw bytes; the key is the `key` CEL expression's result, encoded
//! by `keyFormat` (by default: strings as UTF-8, bytes as they are, anything
//! else as JSON).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use runnel_spec::{
    DeserializationErrorPolicy, FormatKind, FormatSpec, JobSpec, KafkaCredentialsSpec,
    KafkaSinkSpec, KafkaSourceSpec, SecretKeyRef, StartFallback, StartFrom,
};

use super::config::{
    DeliveryGuarantee, DeserializationPolicy, KafkaSinkConfig, KafkaSourceConfig, OffsetCommit,
    OffsetReset, StartPosition, TopicPartition, TopicSelector,
};
use super::format::{Avro, Deserializer, RecordView, Serializer};
use super::{KafkaSink, KafkaSource, KafkaWatermarks, SinkFaultPoint};
use crate::declarative::{Expr, KafkaConnector, Record, Value};
use crate::graph::{DataStream, StreamEnv};
use crate::watermark::WatermarkStrategy;

/// The field that holds a decoded key when the source has a `keyFormat`.
pub const KEY_FIELD: &str = "_key";
/// The field non-object values are wrapped in, and that `utf8`/`raw` sinks write.
pub const VALUE_FIELD: &str = "value";

/// Plugs the Kafka connector into a [`ConnectorRegistry`](crate::declarative::ConnectorRegistry).
#[derive(Clone, Default)]
pub struct DeclarativeKafka {
    sink_fault: Option<Arc<dyn Fn(SinkFaultPoint) + Send + Sync>>,
}

impl DeclarativeKafka {
    /// Installs a fault-injection hook on every exactly-once sink this
    /// connector builds. Fault tests need it in whole worker processes (a
    /// custom runtime binary), where the sinks are built from the YAML spec
    /// and there is no other handle on them.
    pub fn with_sink_fault_hook(f: impl Fn(SinkFaultPoint) + Send + Sync + 'static) -> Self {
        Self {
            sink_fault: Some(Arc::new(f)),
        }
    }
}

impl std::fmt::Debug for DeclarativeKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarativeKafka")
            .field("sink_fault", &self.sink_fault.is_some())
            .finish()
    }
}

/// One decoding or encoding format, with its Avro schema parsed once.
#[derive(Clone)]
enum Codec {
    Raw,
    Utf8,
    Json,
    Avro(Avro<serde_json::Value>),
}

impl Codec {
    fn from_spec(f: &FormatSpec) -> Result<Codec, String> {
        Ok(match f.kind {
            FormatKind::Raw => Codec::Raw,
            FormatKind::Utf8 => Codec::Utf8,
            FormatKind::Json => Codec::Json,
            FormatKind::Avro => {
                let schema = f
                    .schema
                    .as_deref()
                    .ok_or_else(|| "format avro needs a schema".to_string())?;
                Codec::Avro(Avro::new(schema).map_err(|e| e.to_string())?)
            }
        })
    }

    /// Decodes bytes into a value (not yet wrapped into a record).
    fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        Ok(match self {
            Codec::Raw => Value::Bytes(bytes.to_vec()),
            Codec::Utf8 => Value::String(
                std::str::from_utf8(bytes)
                    .map_err(|e| format!("not valid UTF-8: {e}"))?
                    .to_string(),
            ),
            Codec::Json => Value::from_json(
                &serde_json::from_slice::<serde_json::Value>(bytes)
                    .map_err(|e| format!("invalid JSON: {e}"))?,
            ),
            Codec::Avro(a) => {
                let view = RecordView {
                    topic: "",
                    partition: 0,
                    offset: 0,
                    timestamp: None,
                    key: None,
                    payload: Some(bytes),
                    headers: &[],
                };
                Value::from_json(&a.deserialize(&view)?)
            }
        })
    }

    /// Encodes a value as this format.
    fn encode(&self, v: &Value) -> Result<Vec<u8>, String> {
        match self {
            Codec::Raw => match v {
                Value::Bytes(b) => Ok(b.clone()),
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                other => Err(format!(
                    "format raw writes bytes or a string, got {}",
                    other.type_name()
                )),
            },
            Codec::Utf8 => match v {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                Value::Bytes(b) => std::str::from_utf8(b)
                    .map(|s| s.as_bytes().to_vec())
                    .map_err(|e| format!("bytes are not valid UTF-8: {e}")),
                Value::Null | Value::List(_) | Value::Map(_) => Err(format!(
                    "format utf8 writes a string, got {}",
                    v.type_name()
                )),
                other => Ok(other.to_json().to_string().into_bytes()),
            },
            Codec::Json => serde_json::to_vec(&v.to_json()).map_err(|e| e.to_string()),
            Codec::Avro(a) => a.serialize(&v.to_json()),
        }
    }
}

/// Wraps a decoded value into a record: objects are records, anything else
/// goes under `value`.
fn as_record(v: Value) -> Value {
    match v {
        Value::Map(_) => v,
        other => Value::Map(Record::from([(VALUE_FIELD, other)])),
    }
}

/// Decodes consumed records into declarative records.
struct RecordDecoder {
    value: Codec,
    key: Option<Codec>,
}

impl Deserializer<Value> for RecordDecoder {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<Value, String> {
        let bytes = r
            .payload
            .ok_or_else(|| "record has no value (a tombstone)".to_string())?;
        let mut rec = as_record(self.value.decode(bytes)?);
        if let Some(k) = &self.key {
            let key = match r.key {
                Some(b) => k.decode(b).map_err(|e| format!("key: {e}"))?,
                None => Value::Null,
            };
            if let Value::Map(m) = &mut rec {
                if m.contains_key(KEY_FIELD) {
                    return Err(format!(
                        "the value already has a field '{KEY_FIELD}', where the decoded key goes"
                    ));
                }
                m.insert(KEY_FIELD.to_string(), key);
            }
        }
        Ok(rec)
    }
}

/// Encodes a record's value for the sink: the whole record for JSON and Avro,
/// its `value` field for UTF-8 and raw.
struct ValueEncoder(Codec);

impl Serializer<Value> for ValueEncoder {
    fn serialize(&self, v: &Value) -> Result<Vec<u8>, String> {
        match &self.0 {
            Codec::Json | Codec::Avro(_) => self.0.encode(v),
            c => {
                let inner = match v {
                    Value::Map(_) => v.get(VALUE_FIELD).ok_or_else(|| {
                        format!("the record has no field '{VALUE_FIELD}' to write")
                    })?,
                    other => other,
                };
                c.encode(inner)
            }
        }
    }
}

/// Encodes the key expression's result.
struct KeyEncoder {
    expr: Expr,
    codec: Option<Codec>,
}

impl Serializer<Value> for KeyEncoder {
    fn serialize(&self, v: &Value) -> Result<Vec<u8>, String> {
        Ok(self.serialize_key(v)?.unwrap_or_default())
    }

    /// A null key (e.g. a missing field) writes the record without a key,
    /// as Kafka producers do, rather than the text `null`.
    fn serialize_key(&self, v: &Value) -> Result<Option<Vec<u8>>, String> {
        let k = self
            .expr
            .eval(v)
            .map_err(|e| format!("key `{}`: {e}", self.expr.source()))?;
        if matches!(k, Value::Null) {
            return Ok(None);
        }
        match &self.codec {
            Some(c) => c.encode(&k),
            None => match &k {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                Value::Bytes(b) => Ok(b.clone()),
                other => serde_json::to_vec(&other.to_json()).map_err(|e| e.to_string()),
            },
        }
        .map(Some)
    }
}

/// librdkafka security settings from the credentials spec. Secret values come
/// from the environment variables the operator mounts (`RUNNEL_SECRET_<NAME>_<KEY>`),
/// so they never appear in the job file.
pub fn credential_properties(
    c: &KafkaCredentialsSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut p = BTreeMap::new();
    p.insert("security.protocol".into(), c.security_protocol.clone());
    if let Some(m) = &c.sasl_mechanism {
        p.insert("sasl.mechanism".into(), m.clone());
    }
    let mut missing = Vec::new();
    let mut secret = |r: &SecretKeyRef, prop: &str, p: &mut BTreeMap<String, String>| {
        let var = r.env_var();
        match env(&var) {
            Some(v) => {
                p.insert(prop.to_string(), v);
            }
            None => missing.push(format!("{var} (Secret {}, key {})", r.name, r.key)),
        }
    };
    if let Some(u) = &c.username {
        secret(u, "sasl.username", &mut p);
    }
    if let Some(pw) = &c.password {
        secret(pw, "sasl.password", &mut p);
    }
    if let Some(ca) = &c.ca_certificate {
        secret(ca, "ssl.ca.pem", &mut p);
    }
    if missing.is_empty() {
        Ok(p)
    } else {
        Err(format!(
            "credentials: environment variable not set: {}",
            missing.join(", ")
        ))
    }
}

fn properties(
    extra: &BTreeMap<String, String>,
    creds: Option<&KafkaCredentialsSpec>,
) -> Result<BTreeMap<String, String>, String> {
    let mut p = match creds {
        Some(c) => credential_properties(c, &|k| std::env::var(k).ok())?,
        None => BTreeMap::new(),
    };
    // Explicit properties win over what the credentials imply.
    p.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(p)
}

fn reset(f: Option<StartFallback>) -> OffsetReset {
    match f {
        Some(StartFallback::Earliest) => OffsetReset::Earliest,
        Some(StartFallback::Latest) => OffsetReset::Latest,
        None => OffsetReset::Fail,
    }
}

/// The source configuration a spec describes (pure, so it is unit-tested).
pub fn source_config(spec: &KafkaSourceSpec) -> Result<KafkaSourceConfig, String> {
    let topics = match (&spec.topics, &spec.topic_pattern) {
        (Some(t), None) => TopicSelector::List(t.clone()),
        (None, Some(p)) => TopicSelector::Pattern(p.clone()),
        _ => return Err("set exactly one of topics and topicPattern".into()),
    };
    let mut c = KafkaSourceConfig::new(spec.bootstrap_servers.clone(), topics);
    c.group_id = spec.group_id.clone();
    c.start = match spec.start.from {
        // Flink's default for committed offsets without one is to fail; the
        // spec's default fallback is earliest, as a new consumer group expects.
        StartFrom::GroupOffsets => StartPosition::GroupOffsets {
            reset: reset(spec.start.fallback.or(Some(StartFallback::Earliest))),
        },
        StartFrom::Earliest => StartPosition::Earliest,
        StartFrom::Latest => StartPosition::Latest,
        StartFrom::Timestamp => StartPosition::Timestamp(
            spec.start
                .timestamp_ms
                .ok_or("start.from timestamp needs start.timestampMs")?,
        ),
        StartFrom::SpecificOffsets => StartPosition::Specific {
            offsets: spec
                .start
                .offsets
                .iter()
                .map(|o| (TopicPartition::new(o.topic.clone(), o.partition), o.offset))
                .collect(),
            fallback: reset(spec.start.fallback),
        },
    };
    c.discovery_interval = match &spec.partition_discovery_interval {
        Some(d) => Some(Duration::from_millis(
            d.millis()
                .map_err(|e| format!("partitionDiscoveryInterval: {e}"))?,
        )),
        None => None,
    };
    c.commit = if spec.commit_offsets_on_checkpoint {
        OffsetCommit::Auto
    } else {
        OffsetCommit::Disabled
    };
    c.policy = match spec.on_deserialization_error.policy {
        DeserializationErrorPolicy::Skip => DeserializationPolicy::Skip,
        DeserializationErrorPolicy::Fail => DeserializationPolicy::Fail,
        DeserializationErrorPolicy::DeadLetter => DeserializationPolicy::DeadLetter {
            topic: spec
                .on_deserialization_error
                .topic
                .clone()
                .ok_or("onDeserializationError: deadLetter needs a topic")?,
        },
    };
    c.properties = properties(&spec.properties, spec.credentials.as_ref())?;
    Ok(c)
}

/// The sink configuration a spec describes.
pub fn sink_config(
    spec: &KafkaSinkSpec,
    job: &JobSpec,
    sink_name: &str,
) -> Result<KafkaSinkConfig, String> {
    let delivery = match spec.delivery {
        runnel_spec::DeliveryGuarantee::None => DeliveryGuarantee::None,
        runnel_spec::DeliveryGuarantee::AtLeastOnce => DeliveryGuarantee::AtLeastOnce,
        runnel_spec::DeliveryGuarantee::ExactlyOnce => DeliveryGuarantee::ExactlyOnce,
    };
    let mut c = KafkaSinkConfig::new(spec.bootstrap_servers.clone(), spec.topic.clone(), delivery);
    if delivery == DeliveryGuarantee::ExactlyOnce {
        c.transactional_id_prefix = Some(
            spec.transactional_id_prefix
                .clone()
                .unwrap_or_else(|| format!("{}-{sink_name}", job.name)),
        );
    }
    if let Some(t) = &spec.transaction_timeout {
        c.transaction_timeout =
            Duration::from_millis(t.millis().map_err(|e| format!("transactionTimeout: {e}"))?);
        // A commit must finish within the transaction timeout.
        c.flush_timeout = c.flush_timeout.min(c.transaction_timeout);
    }
    c.properties = properties(&spec.properties, spec.credentials.as_ref())?;
    Ok(c)
}

/// The Kafka source's event time from the builder's watermark strategy: the
/// same bound, idleness and timestamp expression, applied per partition.
fn kafka_watermarks(w: WatermarkStrategy<Value>) -> KafkaWatermarks<Value> {
    let mut k =
        KafkaWatermarks::bounded_out_of_orderness(Duration::from_millis(w.bound_ms.max(0) as u64));
    if let Some(idle) = w.idleness_ms {
        k = k.with_idleness(Duration::from_millis(idle.max(0) as u64));
    }
    if let Some(ts) = w.timestamp {
        k = k.with_event_time(move |v, kafka_ts| Some(ts(v, kafka_ts)));
    }
    k
}

/// The builder's type name (`Value::type_name`) of what an Avro schema
/// decodes to (through JSON, see [`Codec::decode`]), where that is certain:
/// `None` for types whose JSON form this does not pin down (bytes, fixed,
/// decimals, logical time types, named references). A union of null and
/// one type is that type (null is always possible).
fn avro_type(schema: &apache_avro::Schema) -> Option<&'static str> {
    use apache_avro::Schema as S;
    match schema {
        S::Null => Some("null"),
        S::Boolean => Some("bool"),
        S::Int | S::Long => Some("int"),
        S::Float | S::Double => Some("double"),
        S::String | S::Enum(_) => Some("string"),
        S::Record(_) | S::Map(_) => Some("map"),
        S::Array(_) => Some("list"),
        S::Union(u) => match u.variants() {
            [S::Null, t] | [t, S::Null] => avro_type(t),
            _ => None,
        },
        _ => None,
    }
}

/// The fields of the records a source with this spec emits, with their
/// types where known (see [`KafkaConnector::fields`]): from an Avro record
/// schema, or the `value` of a `utf8` or `raw` source; plus the decoded
/// `_key` (of unknown type: absent keys are null) with `keyFormat`. JSON
/// values and Avro schemas that are not records give their fields only at
/// run time.
fn source_fields(spec: &KafkaSourceSpec) -> Option<BTreeMap<String, Option<&'static str>>> {
    let mut fields: BTreeMap<String, Option<&'static str>> = match spec.format.kind {
        FormatKind::Json => return None,
        FormatKind::Utf8 => [(VALUE_FIELD.to_string(), Some("string"))].into(),
        FormatKind::Raw => [(VALUE_FIELD.to_string(), Some("bytes"))].into(),
        FormatKind::Avro => {
            let schema = apache_avro::Schema::parse_str(spec.format.schema.as_deref()?).ok()?;
            match &schema {
                apache_avro::Schema::Record(r) => r
                    .fields
                    .iter()
                    .map(|f| (f.name.clone(), avro_type(&f.schema)))
                    .collect(),
                // A map's keys, or a union's branch, are known per record.
                apache_avro::Schema::Map(_)
                | apache_avro::Schema::Union(_)
                | apache_avro::Schema::Ref { .. } => return None,
                other => [(VALUE_FIELD.to_string(), avro_type(other))].into(),
            }
        }
    };
    if spec.key_format.is_some() {
        fields.insert(KEY_FIELD.to_string(), None);
    }
    Some(fields)
}

impl KafkaConnector for DeclarativeKafka {
    fn fields(&self, spec: &KafkaSourceSpec) -> Option<BTreeMap<String, Option<&'static str>>> {
        source_fields(spec)
    }

    fn source(
        &self,
        env: &StreamEnv,
        name: &str,
        spec: &KafkaSourceSpec,
        _job: &JobSpec,
        watermarks: Option<WatermarkStrategy<Value>>,
    ) -> Result<DataStream<Value>, String> {
        let config = source_config(spec)?;
        let decoder = RecordDecoder {
            value: Codec::from_spec(&spec.format).map_err(|e| format!("format: {e}"))?,
            key: match &spec.key_format {
                Some(f) => Some(Codec::from_spec(f).map_err(|e| format!("keyFormat: {e}"))?),
                None => None,
            },
        };
        let mut source =
            KafkaSource::new(config, decoder, env.config()).map_err(|e| e.to_string())?;
        if let Some(w) = watermarks {
            source = source.with_watermarks(kafka_watermarks(w));
        }
        Ok(env.add_source(name, source))
    }

    fn sink(
        &self,
        stream: DataStream<Value>,
        name: &str,
        spec: &KafkaSinkSpec,
        job: &JobSpec,
    ) -> Result<(), String> {
        let config = sink_config(spec, job, name)?;
        let value = ValueEncoder(
            Codec::from_spec(&spec.value_format).map_err(|e| format!("valueFormat: {e}"))?,
        );
        let job_config = crate::declarative::builder::job_config(job);
        let mut sink = KafkaSink::new(config, value, &job_config).map_err(|e| e.to_string())?;
        if let Some(k) = &spec.key {
            let expr = Expr::compile(k).map_err(|e| format!("key: {e}"))?;
            let codec = match &spec.key_format {
                Some(f) => Some(Codec::from_spec(f).map_err(|e| format!("keyFormat: {e}"))?),
                None => None,
            };
            sink = sink.with_key(KeyEncoder { expr, codec });
        }
        if let Some(f) = &self.sink_fault {
            let f = f.clone();
            sink = sink.with_fault_hook(move |p| f(p));
        }
        stream.sink(name, sink);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::value::record;

    fn fmt(kind: FormatKind) -> FormatSpec {
        FormatSpec { kind, schema: None }
    }

    fn view<'a>(key: Option<&'a [u8]>, payload: &'a [u8]) -> RecordView<'a> {
        RecordView {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp: None,
            key,
            payload: Some(payload),
            headers: &[],
        }
    }

    #[test]
    fn records_by_format() {
        let d = RecordDecoder {
            value: Codec::Json,
            key: None,
        };
        assert_eq!(
            d.deserialize(&view(None, br#"{"user":"a","n":2}"#))
                .unwrap(),
            record([("n", Value::Int(2)), ("user", Value::String("a".into()))])
        );
        assert_eq!(
            d.deserialize(&view(None, b"[1]")).unwrap(),
            record([("value", Value::List(vec![Value::Int(1)]))])
        );
        assert!(
            d.deserialize(&view(None, b"{"))
                .unwrap_err()
                .contains("invalid JSON")
        );
        let d = RecordDecoder {
            value: Codec::Utf8,
            key: Some(Codec::Utf8),
        };
        assert_eq!(
            d.deserialize(&view(Some(b"k1"), b"hello")).unwrap(),
            record([
                ("_key", Value::String("k1".into())),
                ("value", Value::String("hello".into()))
            ])
        );
        assert!(
            d.deserialize(&view(None, &[0xff]))
                .unwrap_err()
                .contains("UTF-8")
        );
        let d = RecordDecoder {
            value: Codec::Raw,
            key: None,
        };
        assert_eq!(
            d.deserialize(&view(None, &[1, 2])).unwrap(),
            record([("value", Value::Bytes(vec![1, 2]))])
        );
        let d = RecordDecoder {
            value: Codec::Json,
            key: Some(Codec::Json),
        };
        assert!(
            d.deserialize(&view(Some(b"1"), br#"{"_key":1}"#))
                .unwrap_err()
                .contains("already has a field '_key'")
        );
    }

    #[test]
    fn avro_round_trip() {
        let schema = r#"{"type":"record","name":"C","fields":[{"name":"user","type":"string"},{"name":"n","type":"long"}]}"#;
        let spec = FormatSpec {
            kind: FormatKind::Avro,
            schema: Some(schema.into()),
        };
        let enc = ValueEncoder(Codec::from_spec(&spec).unwrap());
        let rec = record([("n", Value::Int(7)), ("user", Value::String("u".into()))]);
        let bytes = enc.serialize(&rec).unwrap();
        let dec = RecordDecoder {
            value: Codec::from_spec(&spec).unwrap(),
            key: None,
        };
        assert_eq!(dec.deserialize(&view(None, &bytes)).unwrap(), rec);
        assert!(
            enc.serialize(&record([("n", Value::String("x".into()))]))
                .is_err()
        );
        let no_schema = Codec::from_spec(&fmt(FormatKind::Avro)).err().unwrap();
        assert!(no_schema.contains("needs a schema"), "{no_schema}");
    }

    /// The types `fields` claims for an Avro record are what decoded records
    /// hold (or null): the builder checks references and picks typed keys
    /// from them.
    #[test]
    fn avro_field_types_are_what_records_decode_to() {
        let schema = r#"{"type":"record","name":"T","fields":[
            {"name":"b","type":"boolean"},
            {"name":"i","type":"int"},
            {"name":"l","type":"long"},
            {"name":"f","type":"float"},
            {"name":"d","type":"double"},
            {"name":"s","type":"string"},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"r","type":{"type":"record","name":"R","fields":[{"name":"x","type":"long"}]}},
            {"name":"m","type":{"type":"map","values":"long"}},
            {"name":"a","type":{"type":"array","items":"long"}},
            {"name":"ol","type":["null","long"]},
            {"name":"u","type":["string","long"]}
        ]}"#;
        let format = FormatSpec {
            kind: FormatKind::Avro,
            schema: Some(schema.into()),
        };
        let spec = |key_format: Option<FormatSpec>| KafkaSourceSpec {
            format: format.clone(),
            key_format,
            ..serde_json::from_value(serde_json::json!({"bootstrapServers": "x", "topics": ["t"]}))
                .unwrap()
        };
        let fields = source_fields(&spec(None)).unwrap();
        let want: BTreeMap<String, Option<&str>> = [
            ("b", Some("bool")),
            ("i", Some("int")),
            ("l", Some("int")),
            ("f", Some("double")),
            ("d", Some("double")),
            ("s", Some("string")),
            ("e", Some("string")),
            ("r", Some("map")),
            ("m", Some("map")),
            ("a", Some("list")),
            ("ol", Some("int")),
            ("u", None),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
        assert_eq!(fields, want);
        let enc = ValueEncoder(Codec::from_spec(&format).unwrap());
        let dec = RecordDecoder {
            value: Codec::from_spec(&format).unwrap(),
            key: None,
        };
        for (ol, f, d) in [
            (serde_json::json!(5), 1.5, 2.0),
            (serde_json::Value::Null, 2.0, -0.5),
        ] {
            let json = serde_json::json!({
                "b": true, "i": 1, "l": 2, "f": f, "d": d, "s": "x", "e": "A",
                "r": {"x": 1}, "m": {"k": 1}, "a": [1], "ol": ol, "u": "y"
            });
            let bytes = enc.serialize(&Value::from_json(&json)).unwrap();
            let rec = dec.deserialize(&view(None, &bytes)).unwrap();
            for (name, t) in &fields {
                let got = rec.get(name).unwrap_or(&Value::Null);
                if let Some(t) = t
                    && !matches!(got, Value::Null)
                {
                    assert_eq!(got.type_name(), *t, "field {name}: {got:?}");
                }
            }
        }
        // With keyFormat the key is a field too, of unknown type.
        let with_key = source_fields(&spec(Some(fmt(FormatKind::Utf8)))).unwrap();
        assert_eq!(with_key.get(KEY_FIELD), Some(&None));
        // JSON tells nothing; utf8 a string value; an Avro map no fields.
        let mut json = spec(None);
        json.format = fmt(FormatKind::Json);
        assert_eq!(source_fields(&json), None);
        json.format = fmt(FormatKind::Utf8);
        assert_eq!(
            source_fields(&json),
            Some([(VALUE_FIELD.to_string(), Some("string"))].into())
        );
        json.format = FormatSpec {
            kind: FormatKind::Avro,
            schema: Some(r#"{"type":"map","values":"long"}"#.into()),
        };
        assert_eq!(source_fields(&json), None);
        json.format.schema = Some(r#""long""#.into());
        assert_eq!(
            source_fields(&json),
            Some([(VALUE_FIELD.to_string(), Some("int"))].into())
        );
    }

    /// A job reading Avro gets its field references checked and, keyed by
    /// a `long` field into a count window, the typed forms; the same job
    /// reading JSON gets neither.
    #[test]
    fn avro_sources_give_the_builder_their_types() {
        let registry =
            crate::declarative::ConnectorRegistry::new().with_kafka(DeclarativeKafka::default());
        let yaml = |format: &str, key: &str| {
            format!(
                r#"
version: 1
name: typed-kafka
sources:
  - name: in
    kafka:
      bootstrapServers: "127.0.0.1:1"
      topics: [t]
      groupId: g
      format: {format}
    watermark: {{ maxOutOfOrderness: 1s }}
steps:
  - keyBy: "{key}"
  - name: counts
    window: {{ type: tumbling, size: 1s, aggregates: {{ n: {{ op: count }} }} }}
sinks:
  - name: out
    stdout: {{}}
"#
            )
        };
        let avro = r#"{ type: avro, schema: '{"type":"record","name":"C","fields":[{"name":"user","type":"string"},{"name":"n","type":"long"}]}' }"#;
        let plan = |format: &str, key: &str| {
            crate::declarative::load_and_build(&yaml(format, key), &registry)
                .map(|j| j.plan)
                .map_err(|e| runnel_spec::format_errors(&e))
        };
        assert_eq!(
            plan(avro, "n").unwrap(),
            ["window 'counts': integer (compact) keys, count accumulators, keys only"]
        );
        assert_eq!(
            plan(avro, "user").unwrap(),
            ["window 'counts': dynamic keys, count accumulators, keys only"]
        );
        assert_eq!(
            plan("{ type: json }", "n").unwrap(),
            ["window 'counts': dynamic keys, count accumulators"]
        );
        let e = plan(avro, "nn").unwrap_err();
        assert!(
            e.contains("steps[0].keyBy: unknown field 'nn' (records here have: n, user)"),
            "{e}"
        );
    }

    #[test]
    fn sink_encoding() {
        let rec = record([("user", Value::String("a".into())), ("n", Value::Int(3))]);
        let json = ValueEncoder(Codec::Json).serialize(&rec).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"user":"a","n":3})
        );
        let utf8 = ValueEncoder(Codec::Utf8);
        assert!(
            utf8.serialize(&rec)
                .unwrap_err()
                .contains("no field 'value'")
        );
        assert_eq!(
            utf8.serialize(&record([("value", Value::Int(5))])).unwrap(),
            b"5"
        );
        let key = KeyEncoder {
            expr: Expr::compile("user").unwrap(),
            codec: None,
        };
        assert_eq!(key.serialize_key(&rec).unwrap(), Some(b"a".to_vec()));
        let key = KeyEncoder {
            expr: Expr::compile("n").unwrap(),
            codec: None,
        };
        assert_eq!(key.serialize_key(&rec).unwrap(), Some(b"3".to_vec()));
        let key = KeyEncoder {
            expr: Expr::compile("missing").unwrap(),
            codec: None,
        };
        assert_eq!(key.serialize_key(&rec).unwrap(), None, "null key = no key");
        let key = KeyEncoder {
            expr: Expr::compile("user + 1").unwrap(),
            codec: None,
        };
        assert!(
            key.serialize_key(&rec)
                .unwrap_err()
                .contains("key `user + 1`")
        );
    }

    #[test]
    fn credentials_come_from_env() {
        let c = KafkaCredentialsSpec {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            username: Some(SecretKeyRef {
                name: "kafka-creds".into(),
                key: "user".into(),
            }),
            password: Some(SecretKeyRef {
                name: "kafka-creds".into(),
                key: "pass.word".into(),
            }),
            ca_certificate: None,
        };
        let env = |k: &str| match k {
            "RUNNEL_SECRET_KAFKA_CREDS_USER" => Some("alice".to_string()),
            "RUNNEL_SECRET_KAFKA_CREDS_PASS_WORD" => Some("s3cret".to_string()),
            _ => None,
        };
        let p = credential_properties(&c, &env).unwrap();
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "alice");
        assert_eq!(p["sasl.password"], "s3cret");
        let e = credential_properties(&c, &|_| None).unwrap_err();
        assert!(
            e.contains("RUNNEL_SECRET_KAFKA_CREDS_USER (Secret kafka-creds, key user)"),
            "{e}"
        );
        assert!(e.contains("RUNNEL_SECRET_KAFKA_CREDS_PASS_WORD"), "{e}");
    }
}
