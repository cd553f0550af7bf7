//! A real Kafka-protocol broker (`nisshi` 0.7.0) on a free loopback port, for
//! tests: start, stop, restart on the same port, topics through the admin API,
//! produce and read-back helpers (read_committed or read_uncommitted).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// Where the broker binary is: `$NISSHI`, else `~/.cargo/bin/nisshi`, else PATH.
pub fn nisshi_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NISSHI") {
        return Some(PathBuf::from(p));
    }
    if let Ok(h) = std::env::var("HOME") {
        let p = PathBuf::from(h).join(".cargo/bin/nisshi");
        if p.exists() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nisshi"))
            .find(|p| p.exists())
    })
}

/// Starts a broker, or returns `None` (after a loud message) when nisshi is
/// not installed and `CI` is unset. Under `CI`, a missing broker fails.
pub fn broker_or_skip(test: &str) -> Option<Broker> {
    if nisshi_path().is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: nisshi is not installed (CI is set, so this is a failure)");
        }
        eprintln!(
            "\n!!!!!!!!\n!!! SKIPPING {test}: the nisshi broker is not installed.\n!!! Install: \
             cargo install nisshi@0.7.0 --locked --ignore-rust-version --no-default-features \
             --features dynostore\n!!!!!!!!\n"
        );
        return None;
    }
    Some(Broker::start())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running nisshi process.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub bootstrap: String,
    storage: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// In-memory storage on a free port.
    pub fn start() -> Broker {
        Self::start_with_storage("memory://nisshi/", &[])
    }

    /// With a chosen storage URL and extra environment (e.g. S3 credentials).
    pub fn start_with_storage(storage: &str, env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut b = Broker {
            child: None,
            port,
            bootstrap: format!("127.0.0.1:{port}"),
            storage: storage.to_string(),
            log: dir.path().join("nisshi.log"),
            _dir: dir,
        };
        b.spawn(env);
        b
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let bin = nisshi_path().expect("nisshi installed");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let mut cmd = Command::new(bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(&self.storage)
            .arg("--group-initial-rebalance-delay")
            .arg("10ms")
            .env_remove("SCHEMA_REGISTRY")
            // RUNNEL_TEST_NISSHI_LOG=debug (or a filter) to debug the broker;
            // its log is then kept (path printed when the broker stops).
            .env(
                "RUST_LOG",
                std::env::var("RUNNEL_TEST_NISSHI_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start nisshi"));
        self.wait_ready();
    }

    /// Polls metadata until the broker answers (deadline 60 s).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let c: BaseConsumer = self.client_config().create().expect("consumer");
        loop {
            if let Ok(md) = c.fetch_metadata(None, Duration::from_millis(500))
                && !md.brokers().is_empty()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nisshi did not become ready on {}; log:\n{}",
                    self.bootstrap,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker process (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port with the same storage.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.spawn(env);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().expect("admin client")
    }

    /// Creates a topic through the admin API and waits until metadata shows it.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin = self.admin();
        let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = futures_executor::block_on(admin.create_topics([&t], &opts)).expect("create");
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e:?}"));
        }
        self.wait_partitions(name, partitions);
    }

    /// Grows a topic to `total` partitions (admin CreatePartitions). nisshi
    /// 0.7.0 answers `UnsupportedFeature`; the error is returned so tests can
    /// say so.
    pub fn add_partitions(&self, name: &str, total: usize) -> Result<(), String> {
        let admin = self.admin();
        let p = NewPartitions::new(name, total);
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = futures_executor::block_on(admin.create_partitions([&p], &opts))
            .map_err(|e| e.to_string())?;
        for r in res {
            r.map_err(|(t, e)| format!("create partitions {t}: {e:?}"))?;
        }
        self.wait_partitions(name, total as i32);
        Ok(())
    }

    pub fn partitions(&self, name: &str) -> i32 {
        let c: BaseConsumer = self.client_config().create().expect("consumer");
        c.fetch_metadata(Some(name), Duration::from_secs(5))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map(|t| t.partitions().len() as i32)
            })
            .unwrap_or(0)
    }

    fn wait_partitions(&self, name: &str, n: i32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.partitions(name) < n {
            assert!(
                Instant::now() < deadline,
                "topic {name} never showed {n} partitions"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn producer(&self) -> ThreadedProducer<DefaultProducerContext> {
        self.client_config()
            .set("linger.ms", "5")
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer")
    }

    /// Produces (key, value) records to a partition (or by key when `None`)
    /// and waits until all are delivered.
    pub fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[(Option<Vec<u8>>, Vec<u8>)],
    ) {
        let p = self.producer();
        for (k, v) in records {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic).payload(v.as_slice());
            if let Some(k) = k {
                r = r.key(k.as_slice());
            }
            if let Some(pt) = partition {
                r = r.partition(pt);
            }
            let mut r = r;
            loop {
                match p.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60)).expect("flush");
    }

    /// Produces UTF-8 values round-robin over `partitions` partitions.
    pub fn produce_strings(&self, topic: &str, partitions: i32, values: &[String]) {
        let p = self.producer();
        for (i, v) in values.iter().enumerate() {
            let mut r = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(v.as_bytes())
                .partition(i as i32 % partitions);
            loop {
                match p.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60)).expect("flush");
    }

    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        self.watermarks(topic)
            .into_iter()
            .map(|(p, (_, h))| (p, h))
            .collect()
    }

    /// (start, end) offsets per partition as the broker answers them
    /// (`ListOffsets`; see [`Broker::read_all`] for how nisshi 0.7.0 gets
    /// both wrong when batches reach storage out of offset order).
    pub fn watermarks(&self, topic: &str) -> BTreeMap<i32, (i64, i64)> {
        let c: BaseConsumer = self.client_config().create().expect("consumer");
        (0..self.partitions(topic))
            .map(|p| {
                let w = c
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                (p, w)
            })
            .collect()
    }

    /// Reads a whole topic from offset 0 to its current end.
    ///
    /// From offset 0, not from `Offset::Beginning`: librdkafka resolves that
    /// with `ListOffsets(Earliest)`, which nisshi 0.7.0 answers with the base
    /// offset of the batch object *written first*, not of the lowest one.
    /// When two producers (two sink subtasks) write a partition's first
    /// batches and the later offsets reach storage first, every reader that
    /// starts at "beginning" skips the records below them, for the life of
    /// the broker. That made `kafka_flows` stall with run 1's output short by
    /// exactly partition 2's first 93 offsets (docs/kafka-exactly-once.md).
    /// Tests never delete records, so offset 0 is the log start.
    pub fn read_all(&self, topic: &str, read_committed: bool) -> Vec<ReadRecord> {
        let iso = if read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        };
        let c: BaseConsumer = self
            .client_config()
            .set("group.id", "runnel-test-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", iso)
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        let ends = self.end_offsets(topic);
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Offset(0))
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut eof: BTreeMap<i32, bool> = BTreeMap::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "read_all({topic}) did not reach the end"
            );
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    eof.insert(m.partition(), false);
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| (x.key.to_string(), x.value.map(|v| v.to_vec())))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(ReadRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| k.to_vec()),
                        value: m.payload().map(|v| v.to_vec()).unwrap_or_default(),
                        headers,
                    });
                    continue;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    eof.insert(p, true);
                }
                _ => {}
            }
            let pos = c.position().expect("position");
            // End-of-partition as well as the end offset: nisshi's end offset
            // can be below the real end (see `read_all`'s doc).
            // Nothing consumed at end-of-partition: nothing is readable there
            // (e.g. only an open transaction, for read_committed).
            let done = ends.iter().all(|(p, end)| {
                eof.get(p).copied().unwrap_or(false)
                    && match pos.find_partition(topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o >= *end,
                        _ => true,
                    }
            });
            if done {
                return out;
            }
        }
    }

    /// The values of a whole topic as text, sorted (see [`Broker::read_all`]).
    pub fn read_texts(&self, topic: &str, read_committed: bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .read_all(topic, read_committed)
            .iter()
            .map(|r| r.text())
            .collect();
        v.sort();
        v
    }

    /// Per partition: records visible to read_committed and to
    /// read_uncommitted readers (with the highest offset each saw) and the
    /// broker's end offset. For failure messages: it tells output that was
    /// never written apart from output held back by an open transaction.
    pub fn describe(&self, topic: &str) -> String {
        let seen = |committed: bool| {
            let mut m: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
            for r in self.read_all(topic, committed) {
                let e = m.entry(r.partition).or_insert((0, -1));
                e.0 += 1;
                e.1 = e.1.max(r.offset);
            }
            m
        };
        let (c, u) = (seen(true), seen(false));
        // Runs of two or more offsets that no read_uncommitted reader gets
        // (a single one is a transaction marker).
        let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for r in self.read_all(topic, false) {
            offsets.entry(r.partition).or_default().push(r.offset);
        }
        let mut gaps = Vec::new();
        let mut ranges = Vec::new();
        for (p, mut os) in offsets {
            os.sort();
            for w in os.windows(2) {
                if w[1] - w[0] > 2 {
                    gaps.push(format!("{p}: {}..{}", w[0] + 1, w[1] - 1));
                }
            }
            // The offsets read, as runs ("0-99 101-150"), and any read twice.
            let mut runs: Vec<(i64, i64)> = Vec::new();
            let mut twice = 0;
            for o in os {
                match runs.last_mut() {
                    Some((_, end)) if o == *end => twice += 1,
                    Some((_, end)) if o == *end + 1 => *end = o,
                    _ => runs.push((o, o)),
                }
            }
            let runs: Vec<String> = runs.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            ranges.push(format!("{p}: [{}] {twice} read twice", runs.join(" ")));
        }
        let total = |m: &BTreeMap<i32, (usize, i64)>| m.values().map(|v| v.0).sum::<usize>();
        let mut out = format!(
            "{topic}: {} records read_committed, {} read_uncommitted; per partition \
             (count/highest offset committed, uncommitted, start..end offsets answered):",
            total(&c),
            total(&u)
        );
        for (p, (start, end)) in self.watermarks(topic) {
            let (cc, co) = c.get(&p).copied().unwrap_or((0, -1));
            let (uc, uo) = u.get(&p).copied().unwrap_or((0, -1));
            out.push_str(&format!(" {p}: {cc}/{co}, {uc}/{uo}, {start}..{end};"));
        }
        out.pop();
        out.push_str(&format!(
            "; unread offset runs: {gaps:?}; offsets read: {ranges:?}"
        ));
        out
    }

    /// The group's committed offsets for a topic's partitions.
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions(topic) {
            tpl.add_partition(topic, p);
        }
        let r = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed");
        r.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if std::env::var("RUNNEL_TEST_NISSHI_LOG").is_ok() {
            let keep = std::env::temp_dir().join(format!("nisshi-{}.log", self.port));
            if std::fs::copy(&self.log, &keep).is_ok() {
                eprintln!("nisshi log kept at {}", keep.display());
            }
        }
    }
}

/// A record read back from the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Headers for a record (test helper).
pub fn headers(h: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut o = OwnedHeaders::new();
    for (k, v) in h {
        o = o.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    o
}
