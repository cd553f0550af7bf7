//! Errors of the Kafka connector. Library code returns these; they convert into
//! [`UserError`](crate::UserError) where the engine calls the connector.

/// Why a Kafka source or sink could not be built or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The connector's configuration does not fit the job or itself.
    #[error("invalid Kafka configuration: {0}")]
    Config(String),
    /// A call to the broker through librdkafka failed.
    #[error("Kafka {op}: {source}")]
    Client {
        op: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker did not reach a required state before the deadline.
    #[error("Kafka {op}: timed out after {after_ms} ms")]
    Timeout { op: String, after_ms: u64 },
    /// A record could not be encoded for the sink.
    #[error("cannot encode a record for topic '{topic}': {reason}")]
    Encode { topic: String, reason: String },
    /// Restored connector state cannot be read.
    #[error("restored Kafka connector state: {0}")]
    State(String),
}

impl KafkaError {
    pub(crate) fn client(op: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let op = op.into();
        move |source| KafkaError::Client { op, source }
    }
}
