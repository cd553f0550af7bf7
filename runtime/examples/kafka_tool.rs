//! The two Kafka chores the README demo needs from a shell, where no Kafka
//! command-line tools can be installed (Debian's kcat is built on a
//! librdkafka too old to talk to the test broker): create a topic, and dump
//! what `read_committed` readers see in one.
//!
//!   kafka_tool create BOOTSTRAP TOPIC PARTITIONS
//!   kafka_tool dump BOOTSTRAP TOPIC
//!
//! `dump` prints one JSON object per record, `{"partition", "offset", "key",
//! "value"}` (the value parsed as JSON when it is JSON, else as text), from
//! the beginning of every partition to its end.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "create", bootstrap, topic, partitions] => {
            create(bootstrap, topic, partitions.parse().context("PARTITIONS")?)
        }
        [_, "dump", bootstrap, topic] => dump(bootstrap, topic),
        _ => bail!(
            "usage: kafka_tool create BOOTSTRAP TOPIC PARTITIONS | kafka_tool dump BOOTSTRAP TOPIC"
        ),
    }
}

fn create(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in futures_executor::block_on(admin.create_topics([&t], &opts))? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

fn dump(bootstrap: &str, topic: &str) -> anyhow::Result<()> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "runnel-kafka-tool")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // Offset 0 where the log still starts there, else (records deleted)
        // the log start: nisshi 0.7.0 answers "beginning" (`ListOffsets`
        // Earliest) with the batch object written first, which skips records
        // when two producers' batches reached storage out of offset order
        // (docs/kafka-exactly-once.md).
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(0))?;
    }
    c.assign(&tpl)?;
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < parts.len() {
        if Instant::now() > deadline {
            bail!("did not reach the end of {topic} within 60 s (a transaction still open?)");
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                done.remove(&m.partition());
                let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                let value = text(m.payload()).map(|v| {
                    serde_json::from_str::<serde_json::Value>(&v)
                        .unwrap_or(serde_json::Value::String(v))
                });
                let line = serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": text(m.key()),
                    "value": value,
                });
                println!("{line}");
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(())
}
