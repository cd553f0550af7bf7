//! Opens a Kafka transaction, writes records in it, flushes, prints `READY`
//! and waits to be killed: the broker-conformance test SIGKILLs it to see what
//! the broker does with a dead producer's open transaction.
//!
//! Usage: kafka_txn_probe BOOTSTRAP TOPIC TRANSACTIONAL_ID COUNT

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, bootstrap, topic, txn_id, count] = args.as_slice() else {
        anyhow::bail!("usage: kafka_txn_probe BOOTSTRAP TOPIC TRANSACTIONAL_ID COUNT");
    };
    let count: usize = count.parse().context("COUNT")?;
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", txn_id)
        .set("transaction.timeout.ms", "60000")
        .create()?;
    p.init_transactions(Duration::from_secs(30))?;
    p.begin_transaction()?;
    for i in 0..count {
        let v = format!("open-{i}");
        p.send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .payload(v.as_bytes())
                .partition(0),
        )
        .map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    println!("READY");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}
