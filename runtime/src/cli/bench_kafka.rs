//! `runnel bench kafka`: Kafka → keyed aggregate → Kafka, exactly-once with
//! 1 s checkpoints, measured side by side in one run with a bare rdkafka
//! `BaseConsumer` draining the same topic (the physical limit of this broker
//! and machine). Starts a nisshi broker on a free loopback port unless
//! `--bootstrap` names one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::kafka::{
    DeliveryGuarantee, Deserializer, KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig,
    RecordView, StartPosition, TopicSelector, Utf8,
};
use crate::state::keyed::{ValueState, ValueStateDescriptor};
use crate::{
    CheckpointConfig, CheckpointListener, FnResult, InitContext, JobConfig, KeyedContext,
    KeyedProcessFunction, RestartStrategy, StreamEnv, UserError,
};
use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct BenchKafkaArgs {
    /// Records in the input topic.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Bytes per record value.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Distinct keys of the aggregation.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Parallelism of the job.
    #[arg(long, default_value_t = 2)]
    parallelism: u32,
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// An existing broker; by default a nisshi broker is started on loopback.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    records: u64,
    record_bytes: usize,
    partitions: i32,
    keys: u64,
    parallelism: u32,
    checkpoint_interval_ms: u64,
    cores: usize,
    produce_records_per_s: f64,
    raw_consumer_records_per_s: f64,
    job_records_per_s: f64,
    ratio: f64,
    job_checkpoints: u64,
    job_transactions: u64,
    job_output_records: u64,
}

struct NisshiProcess(Child);

impl Drop for NisshiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nisshi() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NISSHI") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").ok()?;
    let p = PathBuf::from(home).join(".cargo/bin/nisshi");
    p.exists().then_some(p)
}

fn start_broker() -> anyhow::Result<(String, NisshiProcess)> {
    let bin = nisshi().context(
        "nisshi not found (install: cargo install nisshi@0.7.0 --locked --ignore-rust-version \
         --no-default-features --features dynostore), or pass --bootstrap",
    )?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://nisshi/"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start nisshi")?;
    let proc_ = NisshiProcess(child);
    let bootstrap = format!("127.0.0.1:{port}");
    let c: BaseConsumer = client(&bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.fetch_metadata(None, Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            bail!("nisshi did not become ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((bootstrap, proc_))
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn create_topic(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create()?;
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in futures_executor::block_on(admin.create_topics([&t], &opts))? {
        r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e:?}"))?;
    }
    Ok(())
}

/// Record values: `"{key:08}"` then padding to `bytes`.
fn produce(a: &BenchKafkaArgs, bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    let p: ThreadedProducer<DefaultProducerContext> = client(bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    let mut v = vec![b'.'; a.record_bytes.max(8)];
    for i in 0..a.records {
        let key = (i.wrapping_mul(2_654_435_761)) % a.keys;
        v[..8].copy_from_slice(format!("{key:08}").as_bytes());
        let part = (i % a.partitions as u64) as i32;
        let mut r = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(&v[..])
            .partition(part);
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
    p.flush(Duration::from_secs(300))?;
    Ok(a.records as f64 / start.elapsed().as_secs_f64())
}

fn raw_drain(a: &BenchKafkaArgs, bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    let c: BaseConsumer = client(bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..a.partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let start = Instant::now();
    let mut n = 0u64;
    let deadline = start + Duration::from_secs(600);
    while n < a.records {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => n += 1,
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => {
                if Instant::now() > deadline {
                    bail!("raw consumer stalled at {n} records");
                }
            }
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Parses the key from a value's first 8 bytes.
struct KeyOf;

impl Deserializer<(u64, u32)> for KeyOf {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<(u64, u32), String> {
        let p = r.payload.ok_or("no value")?;
        let k = std::str::from_utf8(p.get(..8).ok_or("short value")?)
            .map_err(|e| e.to_string())?
            .parse::<u64>()
            .map_err(|e| e.to_string())?;
        Ok((k, p.len() as u32))
    }
}

/// Count and bytes per key; each key's totals are emitted once per second of
/// processing time (a tumbling processing-time window), so the output is
/// proportional to keys, not to input.
#[derive(Clone, Default)]
struct WindowedCount {
    state: Option<ValueState<(u64, u64)>>,
}

impl CheckpointListener for WindowedCount {}

impl KeyedProcessFunction<u64, (u64, u32), String> for WindowedCount {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count-bytes"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        v: (u64, u32),
        ctx: &mut KeyedContext<'_, u64, String>,
    ) -> FnResult {
        let st = self
            .state
            .clone()
            .ok_or_else(|| UserError::msg("no state"))?;
        let (c, b) = match st.value(ctx)? {
            Some(x) => x,
            None => {
                let now = ctx.current_processing_time();
                ctx.register_processing_time_timer(now - now.rem_euclid(1000) + 1000);
                (0, 0)
            }
        };
        st.update(ctx, (c + 1, b + u64::from(v.1)))?;
        Ok(())
    }
    fn on_timer(&mut self, _ts: i64, ctx: &mut KeyedContext<'_, u64, String>) -> FnResult {
        let st = self
            .state
            .clone()
            .ok_or_else(|| UserError::msg("no state"))?;
        if let Some((c, b)) = st.value(ctx)? {
            let k = *ctx.key();
            ctx.collect(format!("{k},{c},{b}"));
        }
        st.clear(ctx)?;
        Ok(())
    }
}

fn run_job(
    a: &BenchKafkaArgs,
    bootstrap: &str,
    topic: &str,
    out: &str,
) -> anyhow::Result<(f64, u64, u64, u64)> {
    let dir = std::env::temp_dir().join(format!("runnel-bench-kafka-{}", std::process::id()));
    let mut cfg = JobConfig::new("bench-kafka");
    cfg.parallelism = a.parallelism;
    cfg.checkpoint = CheckpointConfig {
        interval_ms: Some(a.checkpoint_interval_ms),
        storage: Some(super::file_uri(&dir)?),
        ..Default::default()
    };
    cfg.restart = RestartStrategy::None;
    let env = StreamEnv::new(cfg);
    let job = env.config().clone();
    let mut sc = KafkaSourceConfig::new(bootstrap, TopicSelector::List(vec![topic.into()]));
    sc.start = StartPosition::Earliest;
    let source = KafkaSource::new(sc, KeyOf, &job)?;
    let metrics = source.metrics();
    let mut kc = KafkaSinkConfig::new(bootstrap, out, DeliveryGuarantee::ExactlyOnce);
    kc.transactional_id_prefix = Some("bench-kafka".into());
    kc.transaction_timeout = Duration::from_secs(60);
    let sink = KafkaSink::new(kc, Utf8, &job)?;
    let sink_metrics = sink.metrics();
    env.add_source("kafka-in", source)
        .key_by(|v: &(u64, u32)| v.0)
        .process("windowed-count", WindowedCount::default())
        .sink("kafka-out", sink);
    let start = Instant::now();
    let client = env.execute_async()?;
    let deadline = start + Duration::from_secs(900);
    while metrics.records.load(Ordering::Relaxed) < a.records {
        if Instant::now() > deadline {
            bail!("the job stalled");
        }
        if let Some(f) = client.status().last_failure {
            bail!("the job failed: {f}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let checkpoints = client.status().completed_checkpoints;
    client.cancel()?;
    let _ = client.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        a.records as f64 / elapsed,
        checkpoints,
        sink_metrics.transactions_committed.load(Ordering::Relaxed),
        sink_metrics.records.load(Ordering::Relaxed),
    ))
}

pub fn run(a: BenchKafkaArgs) -> anyhow::Result<()> {
    let (bootstrap, _broker) = match &a.bootstrap {
        Some(b) => (b.clone(), None),
        None => {
            let (b, p) = start_broker()?;
            (b, Some(p))
        }
    };
    let topic = "bench-in";
    let out = "bench-out";
    create_topic(&bootstrap, topic, a.partitions)?;
    create_topic(&bootstrap, out, a.partitions)?;
    eprintln!(
        "producing {} records of {} bytes...",
        a.records, a.record_bytes
    );
    let produce_rate = produce(&a, &bootstrap, topic)?;
    eprintln!("draining with a bare BaseConsumer...");
    let raw = raw_drain(&a, &bootstrap, topic)?;
    eprintln!(
        "running the job (exactly-once, {} ms checkpoints)...",
        a.checkpoint_interval_ms
    );
    let (job_rate, checkpoints, txns, outputs) = run_job(&a, &bootstrap, topic, out)?;
    let report = Report {
        records: a.records,
        record_bytes: a.record_bytes,
        partitions: a.partitions,
        keys: a.keys,
        parallelism: a.parallelism,
        checkpoint_interval_ms: a.checkpoint_interval_ms,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        produce_records_per_s: produce_rate,
        raw_consumer_records_per_s: raw,
        job_records_per_s: job_rate,
        ratio: job_rate / raw,
        job_checkpoints: checkpoints,
        job_transactions: txns,
        job_output_records: outputs,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "records {} x {} B, {} partitions, {} keys, parallelism {}, checkpoints every {} ms, {} cores",
            report.records,
            report.record_bytes,
            report.partitions,
            report.keys,
            report.parallelism,
            report.checkpoint_interval_ms,
            report.cores
        );
        println!(
            "produce (setup)        {:>12.0} records/s",
            report.produce_records_per_s
        );
        println!(
            "bare BaseConsumer      {:>12.0} records/s",
            report.raw_consumer_records_per_s
        );
        println!(
            "job (exactly-once)     {:>12.0} records/s",
            report.job_records_per_s
        );
        println!("ratio job / raw        {:>12.1} %", report.ratio * 100.0);
        println!(
            "job: {} checkpoints, {} transactions, {} output records",
            report.job_checkpoints, report.job_transactions, report.job_output_records
        );
    }
    Ok(())
}
