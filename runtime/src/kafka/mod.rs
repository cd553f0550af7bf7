//! Kafka connector: a source and a sink on librdkafka (through `rdkafka`,
//! which builds its bundled librdkafka). See docs/kafka.md for usage and
//! docs/kafka-exactly-once.md for the exactly-once design.

mod assign;
mod client;
pub mod config;
pub mod declarative;
pub mod eos;
pub mod error;
pub mod format;
mod producer;
pub mod sink;
pub mod source;
pub mod watermarks;

pub use assign::{Start, StartPlan, plan_starts, subtask_for};
pub use config::{
    DeliveryGuarantee, DeserializationPolicy, KafkaSinkConfig, KafkaSourceConfig, OffsetCommit,
    OffsetReset, StartPosition, TopicPartition, TopicSelector,
};
pub use declarative::DeclarativeKafka;
pub use error::KafkaError;
pub use format::{Avro, Deserializer, FnSerializer, Json, Raw, RecordView, Serializer, Utf8};
pub use sink::{KafkaSink, KafkaSinkMetrics, SinkFaultPoint};
pub use source::{KafkaSource, KafkaSourceMetrics, OFFSETS_STATE, OffsetEntry};
pub use watermarks::KafkaWatermarks;
