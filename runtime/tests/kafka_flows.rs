//! Seed flows against a real broker: seed 000 (savepoint, cancel, produce
//! more, resume: offsets restored per partition, nothing lost, nothing
//! duplicated with an exactly-once sink) and seed 002 (a restart from the
//! latest retained checkpoint continues from there although the job says
//! `earliest`).
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{Broker, broker_or_skip};
use common::{config, lock};
use runnel_runtime::kafka::{
    DeliveryGuarantee, KafkaSink, KafkaSinkConfig, KafkaSinkMetrics, KafkaSource,
    KafkaSourceConfig, KafkaSourceMetrics, OffsetReset, StartPosition, TopicSelector, Utf8,
};
use runnel_runtime::sinks::CollectSink;
use runnel_runtime::{JobClient, JobConfig, RestoreSettings, StreamEnv};

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "restored offsets {t-0: 5, t-3: 9}" → {t-0: 5, t-3: 9}, merged over subtasks.
fn restored_offsets(lines: &[String]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("restored offsets {") else {
            continue;
        };
        let body = rest.split('}').next().unwrap_or_default();
        for item in body.split(", ").filter(|s| !s.is_empty()) {
            let (tp, o) = item.split_once(": ").expect("tp: offset");
            m.insert(tp.to_string(), o.parse::<i64>().expect("offset"));
        }
    }
    m
}

fn source(
    bootstrap: &str,
    topic: &str,
    group: &str,
    start: StartPosition,
    job: &JobConfig,
) -> (KafkaSource<String>, Arc<KafkaSourceMetrics>) {
    let mut c = KafkaSourceConfig::new(bootstrap, TopicSelector::List(vec![topic.into()]));
    c.group_id = Some(group.into());
    c.start = start;
    let s = KafkaSource::new(c, Utf8, job).expect("source");
    let m = s.metrics();
    (s, m)
}

fn eos_sink(
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    job: &JobConfig,
) -> (KafkaSink<String>, Arc<KafkaSinkMetrics>) {
    let mut c = KafkaSinkConfig::new(bootstrap, topic, DeliveryGuarantee::ExactlyOnce);
    c.transactional_id_prefix = Some(prefix.into());
    c.transaction_timeout = Duration::from_secs(30);
    c.flush_timeout = Duration::from_secs(30);
    let s = KafkaSink::new(c, Utf8, job).expect("sink");
    let m = s.metrics();
    (s, m)
}

/// Waits until `test-out` holds `want` committed records; on timeout the
/// panic says where the output stopped: what the source read, what the
/// sink received and committed, and what the broker shows per partition
/// under both isolation levels (a record the sink committed but no reader
/// sees is the broker's; one never committed is the sink's).
fn wait_for_output(
    b: &Broker,
    want: usize,
    what: &str,
    source: &KafkaSourceMetrics,
    sink: &KafkaSinkMetrics,
    client: &JobClient,
    before: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.read_all("test-out", true).len() < want {
        if Instant::now() > deadline {
            let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
            let job = client.metrics().encode();
            let checkpoints: Vec<&str> = job
                .lines()
                .filter(|l| l.starts_with("runnel_checkpoints_"))
                .collect();
            let seen = b.read_texts("test-out", false);
            let missing: Vec<usize> = (0..want)
                .filter(|i| seen.binary_search(&format!("out:m-{i}")).is_err())
                .collect();
            panic!(
                "timed out waiting for {what}: source read {}; sink received {}, committed {} \
                 in {} transactions; {}; {} values missing: {:?}..{:?}; job: {checkpoints:?}; \
                 {before}",
                ld(&source.records),
                ld(&sink.records),
                ld(&sink.records_committed),
                ld(&sink.transactions_committed),
                b.describe("test-out"),
                missing.len(),
                missing.first(),
                missing.last(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn seed_000_savepoint_cancel_produce_resume() {
    let Some(b) = broker_or_skip("seed_000_savepoint_cancel_produce_resume") else {
        return;
    };
    b.create_topic("test-topic", 8);
    b.create_topic("test-out", 4);
    let first: Vec<String> = (0..800).map(|i| format!("m-{i}")).collect();
    b.produce_strings("test-topic", 8, &first);
    let dir = tempfile::tempdir().unwrap();
    let sp_dir = tempfile::tempdir().unwrap();
    let group_offsets = StartPosition::GroupOffsets {
        reset: OffsetReset::Earliest,
    };

    // Run 1: no restored state; consume everything, then take a savepoint.
    let mut cfg = config("seed-000", &dir.path().join("chk"), 100);
    cfg.parallelism = 2;
    let env = StreamEnv::new(cfg);
    let job = env.config().clone();
    let (src, m1) = source(
        &b.bootstrap,
        "test-topic",
        "seed-000",
        group_offsets.clone(),
        &job,
    );
    let (sink, s1) = eos_sink(&b.bootstrap, "test-out", "seed-000", &job);
    env.add_source("kafka-source", src)
        .map(|s: String| format!("out:{s}"))
        .sink("kafka-sink", sink);
    let client = env.execute_async().unwrap();
    wait_for_output(
        &b,
        800,
        "run 1 to commit 800 records",
        &m1,
        &s1,
        &client,
        "",
    );
    let after_run1 = {
        let mut out = b.read_texts("test-out", true);
        let records = out.len();
        out.dedup();
        format!(
            "when run 1 had committed 800: {records} records, {} distinct",
            out.len()
        )
    };
    let sp = client
        .trigger_savepoint(&common::file_uri(sp_dir.path()))
        .expect("savepoint");
    client.cancel().unwrap();
    let _ = client.wait();
    let mut lines = m1.start_lines();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "no restored state, starting from committed group offsets (reset: Earliest)"
                .to_string();
            2
        ]
    );
    // Offsets were committed to the group for monitoring (on checkpoint completion).
    wait_until(
        "group offsets at 100 per partition",
        Duration::from_secs(30),
        || {
            b.committed("seed-000", "test-topic")
                .values()
                .all(|o| *o == 100)
                && b.committed("seed-000", "test-topic").len() == 8
        },
    );

    // Produce more while the job is down.
    let second: Vec<String> = (800..1200).map(|i| format!("m-{i}")).collect();
    b.produce_strings("test-topic", 8, &second);

    // Run 2: resume from the savepoint.
    let mut cfg = config("seed-000", &dir.path().join("chk"), 100);
    cfg.parallelism = 2;
    cfg.restore = Some(RestoreSettings {
        path: sp.path.clone(),
        latest: false,
        allow_non_restored_state: false,
    });
    let env = StreamEnv::new(cfg);
    let job = env.config().clone();
    let (src, m2) = source(&b.bootstrap, "test-topic", "seed-000", group_offsets, &job);
    let (sink, s2) = eos_sink(&b.bootstrap, "test-out", "seed-000", &job);
    env.add_source("kafka-source", src)
        .map(|s: String| format!("out:{s}"))
        .sink("kafka-sink", sink);
    let client = env.execute_async().unwrap();
    wait_for_output(
        &b,
        1200,
        "run 2 to commit 1200 records in all",
        &m2,
        &s2,
        &client,
        &after_run1,
    );
    // Offsets restored per partition: each of the 8 partitions at 100.
    let restored = restored_offsets(&m2.start_lines());
    let want: BTreeMap<String, i64> = (0..8).map(|p| (format!("test-topic-{p}"), 100)).collect();
    assert_eq!(restored, want);
    assert!(
        m2.start_lines()
            .iter()
            .all(|l| l.starts_with("restored offsets {"))
    );
    // Run 2 read exactly the 400 new records: nothing re-read.
    assert_eq!(
        m2.records.load(Ordering::SeqCst),
        400,
        "records read after resuming"
    );
    client.cancel().unwrap();
    let _ = client.wait();
    // Nothing lost, nothing duplicated (read_committed).
    let out = b.read_texts("test-out", true);
    let mut want: Vec<String> = (0..1200).map(|i| format!("out:m-{i}")).collect();
    want.sort();
    assert_eq!(out.len(), 1200);
    assert_eq!(out, want);
}

#[test]
fn seed_002_restart_from_latest_checkpoint_continues_there() {
    let Some(b) = broker_or_skip("seed_002_restart_from_latest_checkpoint_continues_there") else {
        return;
    };
    b.create_topic("s2", 4);
    b.produce_strings(
        "s2",
        4,
        &(0..400).map(|i| format!("a-{i}")).collect::<Vec<_>>(),
    );
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("chk");

    // Run 1, configured to start from earliest; checkpoints retained on cancel.
    let mut cfg = config("seed-002", &chk, 100);
    cfg.checkpoint.retain_on_cancellation = true;
    let env = StreamEnv::new(cfg);
    let job = env.config().clone();
    let (src, m1) = source(
        &b.bootstrap,
        "s2",
        "seed-002",
        StartPosition::Earliest,
        &job,
    );
    let (sink, got1) = CollectSink::<String>::new();
    env.add_source("kafka-source", src).sink("collect", sink);
    let client = env.execute_async().unwrap();
    wait_until("run 1 to read 400", Duration::from_secs(60), || {
        lock(&got1).len() >= 400
    });
    // Wait for a checkpoint taken after everything was read.
    let base = client.status().completed.last().map(|c| c.id).unwrap_or(0);
    wait_until(
        "a checkpoint after the reads",
        Duration::from_secs(30),
        || client.status().completed.last().map(|c| c.id).unwrap_or(0) > base + 1,
    );
    client.cancel().unwrap();
    let _ = client.wait();
    assert_eq!(
        m1.start_lines(),
        vec!["no restored state, starting from earliest".to_string()]
    );

    b.produce_strings(
        "s2",
        4,
        &(400..500).map(|i| format!("a-{i}")).collect::<Vec<_>>(),
    );

    // Run 2: same job (still says earliest), restarted from the latest checkpoint.
    let mut cfg = config("seed-002", &chk, 100);
    cfg.restore = Some(RestoreSettings {
        path: common::file_uri(&chk),
        latest: true,
        allow_non_restored_state: false,
    });
    let env = StreamEnv::new(cfg);
    let job = env.config().clone();
    let (src, m2) = source(
        &b.bootstrap,
        "s2",
        "seed-002",
        StartPosition::Earliest,
        &job,
    );
    let (sink, got2) = CollectSink::<String>::new();
    env.add_source("kafka-source", src).sink("collect", sink);
    let client = env.execute_async().unwrap();
    wait_until(
        "run 2 to read the 100 new records",
        Duration::from_secs(60),
        || lock(&got2).len() >= 100,
    );
    client.cancel().unwrap();
    let _ = client.wait();
    let restored = restored_offsets(&m2.start_lines());
    let want: BTreeMap<String, i64> = (0..4).map(|p| (format!("s2-{p}"), 100)).collect();
    assert_eq!(
        restored, want,
        "continues from the checkpoint, not from earliest"
    );
    let mut got: Vec<String> = lock(&got2).clone();
    got.sort();
    let mut want: Vec<String> = (400..500).map(|i| format!("a-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "only the records after the checkpoint");
}
