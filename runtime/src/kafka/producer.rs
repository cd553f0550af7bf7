//! Producer plumbing: a context that records delivery failures (so a flush can
//! tell whether everything arrived) and a send that waits out a full queue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use super::client::base_config;
use super::error::KafkaError;

/// The first delivery failure since the last [`DeliveryTracker::take_error`].
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    error: Mutex<Option<String>>,
}

impl DeliveryTracker {
    fn record(&self, e: String) {
        let mut g = match self.error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.is_none() {
            *g = Some(e);
        }
    }

    /// Fails if any record since the last call was not delivered.
    pub fn take_error(&self) -> Result<(), KafkaError> {
        let mut g = match self.error.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.take() {
            None => Ok(()),
            Some(e) => Err(KafkaError::Config(format!(
                "a record was not delivered: {e}"
            ))),
        }
    }
}

/// Producer context that feeds a [`DeliveryTracker`].
pub struct TrackedContext(pub Arc<DeliveryTracker>);

impl ClientContext for TrackedContext {}

impl ProducerContext for TrackedContext {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            self.0.record(e.to_string());
        }
    }
}

/// A producer with a background polling thread and delivery tracking.
pub(crate) fn plain_producer(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) -> Result<(ThreadedProducer<TrackedContext>, Arc<DeliveryTracker>), KafkaError> {
    let tracker = Arc::new(DeliveryTracker::default());
    let mut d: Vec<(&str, &str)> = vec![("linger.ms", "5"), ("partitioner", "murmur2_random")];
    d.extend_from_slice(defaults);
    let p = base_config(bootstrap, properties, &d)
        .create_with_context(TrackedContext(tracker.clone()))
        .map_err(KafkaError::client("create producer"))?;
    Ok((p, tracker))
}

/// Sends a record, waiting while librdkafka's queue is full (back-pressure
/// from the broker reaches the job this way).
pub(crate) fn send_blocking<K, P>(
    producer: &ThreadedProducer<TrackedContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => {
                return Err(KafkaError::Client {
                    op: "produce".into(),
                    source: e,
                });
            }
        }
    }
}
