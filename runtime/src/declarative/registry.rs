//! What the declarative builder takes from outside: connector factories (the
//! Kafka connector lives in its own module and is plugged in here) and custom
//! operators written in Rust, registered by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_spec::{JobSpec, KafkaSinkSpec, KafkaSourceSpec};

use crate::graph::{DataStream, KeyedStream, StreamEnv};
use crate::watermark::WatermarkStrategy;

use super::value::Value;

/// Builds Kafka sources and sinks from their spec. Implemented by the Kafka
/// connector; a runtime without one refuses Kafka jobs with a clear error.
pub trait KafkaConnector: Send + Sync {
    /// Adds a source named `name` (its state identity) emitting records as
    /// `docs/job-spec.md` describes for each format.
    fn source(
        &self,
        env: &StreamEnv,
        name: &str,
        spec: &KafkaSourceSpec,
        job: &JobSpec,
        watermarks: Option<WatermarkStrategy<Value>>,
    ) -> Result<DataStream<Value>, String>;

    /// The fields every record of such a source has, with each one's type
    /// where the format tells it (an Avro record schema does; JSON does
    /// not), in the builder's type names (`Value::type_name`). `None` when
    /// unknown. The builder checks field references against them and picks
    /// typed forms from them (docs/job-spec.md, "Typed execution"), so a type
    /// given here must be what every decoded record holds (or null).
    fn fields(&self, _spec: &KafkaSourceSpec) -> Option<BTreeMap<String, Option<&'static str>>> {
        None
    }

    /// Adds a sink named `name` consuming `stream`.
    fn sink(
        &self,
        stream: DataStream<Value>,
        name: &str,
        spec: &KafkaSinkSpec,
        job: &JobSpec,
    ) -> Result<(), String>;
}

/// The input of a custom operator: keyed when the step follows `keyBy`.
pub enum OperatorInput {
    Stream(DataStream<Value>),
    Keyed(KeyedStream<Value, Value>),
}

/// What a custom operator is told about its step.
pub struct OperatorContext<'a> {
    /// The step's operator name (its state identity); use it for the
    /// operator's `process` name.
    pub name: &'a str,
    /// The step's `config`, as written in the spec.
    pub config: &'a serde_json::Value,
}

/// A user-written operator: turns its input stream into its output stream,
/// usually with `process` and a (keyed) process function. Returns a message
/// when the configuration is invalid; the builder reports it with the path of
/// the step.
pub trait CustomOperator: Send + Sync {
    fn apply(
        &self,
        input: OperatorInput,
        ctx: &OperatorContext<'_>,
    ) -> Result<DataStream<Value>, String>;
}

impl<F> CustomOperator for F
where
    F: Fn(OperatorInput, &OperatorContext<'_>) -> Result<DataStream<Value>, String> + Send + Sync,
{
    fn apply(
        &self,
        input: OperatorInput,
        ctx: &OperatorContext<'_>,
    ) -> Result<DataStream<Value>, String> {
        self(input, ctx)
    }
}

/// Connectors and custom operators available to declarative jobs.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    kafka: Option<Arc<dyn KafkaConnector>>,
    operators: BTreeMap<String, Arc<dyn CustomOperator>>,
}

impl ConnectorRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_kafka(mut self, k: impl KafkaConnector + 'static) -> Self {
        self.kafka = Some(Arc::new(k));
        self
    }

    /// Registers a custom operator under `name` (replacing one of that name).
    pub fn with_operator(mut self, name: &str, op: impl CustomOperator + 'static) -> Self {
        self.operators.insert(name.to_string(), Arc::new(op));
        self
    }

    pub fn kafka(&self) -> Option<&Arc<dyn KafkaConnector>> {
        self.kafka.as_ref()
    }

    pub fn operator(&self, name: &str) -> Option<&Arc<dyn CustomOperator>> {
        self.operators.get(name)
    }

    pub fn operator_names(&self) -> Vec<&str> {
        self.operators.keys().map(String::as_str).collect()
    }
}
