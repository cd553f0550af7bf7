//! The distributed Kafka tests' job and output: the keyed job of the
//! distributed tests with an exactly-once Kafka sink, and what
//! `read_committed` readers see of it. Included with `#[path]` by the tests
//! that use both `common` and `distributed_support`.
#![allow(dead_code)]

use crate::common::broker::Broker;
use crate::distributed_support::keyed_job;

/// The keyed job of the file-sink chaos test, writing to Kafka exactly once.
///
/// The windows run 4 wide across the workers, the sink 1 wide (the job's
/// parallelism): one transactional producer. nisshi 0.7.0, the test broker,
/// has a race between concurrent `EndTxn`s of different producers on the
/// same partitions: one can finalize the other while the other still writes
/// its markers, which leaves a finished transaction with open offset ranges.
/// The next transaction of that producer epoch clears it, but when it was the
/// epoch's last one (the worker is killed right after), every later
/// transaction on those partitions waits for it forever and `read_committed`
/// readers stop there (seen as 187, 250 and 400 of 4,000 records; the
/// broker's transaction table showed `state: Committed` with marker-only
/// `produces`). Apache Kafka has no such race. Several sink subtasks sharing
/// partitions under kills are covered in one process by
/// `kafka_exactly_once`; docs/kafka-exactly-once.md has the details.
pub fn kafka_job(b: &Broker, topic: &str, transaction_timeout: &str) -> String {
    let file_sink = r#"    file: { path: "{out}" }"#;
    let yaml = keyed_job(40_000, 2_000, 4);
    assert!(yaml.contains(file_sink), "{yaml}");
    let (job_par, window) = ("\nparallelism: 4\n", "  - name: sums\n");
    assert!(yaml.contains(job_par) && yaml.contains(window), "{yaml}");
    let yaml = yaml
        .replace(job_par, "\nparallelism: 1\n")
        .replace(window, "  - name: sums\n    parallelism: 4\n");
    yaml.replace(
        file_sink,
        &format!(
            r#"    kafka:
      bootstrapServers: "{}"
      topic: {topic}
      key: "key"
      delivery: exactly-once
      transactionTimeout: {transaction_timeout}"#,
            b.bootstrap
        ),
    )
}

/// The committed output, as canonical JSON strings, sorted.
pub fn committed(b: &Broker, topic: &str) -> Vec<String> {
    let mut v: Vec<String> = b
        .read_all(topic, true)
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.text())
                .unwrap_or_else(|e| panic!("output record is not JSON ({e}): {}", r.text()))
                .to_string()
        })
        .collect();
    v.sort();
    v
}
