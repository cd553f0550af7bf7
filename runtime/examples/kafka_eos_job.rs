//! The exactly-once job the process-kill tests run: Kafka (UTF-8 ids
//! `"{id},{key}"`) → key by key → running count per key (keyed state) →
//! Kafka exactly-once (`"{id},{key},{count}"`). Runs until killed.
//!
//! Configuration by environment (the test sets it):
//! - `BOOTSTRAP`, `IN_TOPIC`, `OUT_TOPIC`, `CHECKPOINTS` (a directory),
//!   `PARALLELISM`, `TXN_PREFIX`, `CHECKPOINT_MS` (default 300),
//!   `RESTART_ATTEMPTS` (in-process restarts, 1 s apart; default none);
//! - `RESTORE=latest` restores from the newest complete checkpoint (a fresh
//!   start when there is none yet);
//! - `FAULT=POINT:N` aborts the process (`std::process::abort`, like a
//!   SIGKILL: no cleanup) at that point for checkpoint id >= N. Points:
//!   `before-snapshot`, `before-metadata`, `after-metadata` (engine) and
//!   `sink-mid-produce`, `sink-before-commit`, `sink-after-commit` (inside the
//!   exactly-once commit window).

use std::time::Duration;

use anyhow::Context;
use runnel_runtime::faults::{FaultInjector, FaultPoint};
use runnel_runtime::kafka::{
    DeliveryGuarantee, Deserializer, KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig,
    OffsetReset, RecordView, SinkFaultPoint, StartPosition, TopicSelector, Utf8,
};
use runnel_runtime::state::{ValueState, ValueStateDescriptor};
use runnel_runtime::{
    CheckpointConfig, CheckpointListener, FnResult, InitContext, JobConfig, KeyedContext,
    KeyedProcessFunction, RestartStrategy, RestoreSettings, StreamEnv, UserError,
};

#[derive(Clone, Default)]
struct RunningCount {
    state: Option<ValueState<u64>>,
}

impl CheckpointListener for RunningCount {}

impl KeyedProcessFunction<u64, (u64, u64), String> for RunningCount {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count"))?);
        Ok(())
    }
    fn process_element(
        &mut self,
        v: (u64, u64),
        ctx: &mut KeyedContext<'_, u64, String>,
    ) -> FnResult {
        let st = self
            .state
            .clone()
            .ok_or_else(|| UserError::msg("no state"))?;
        let c = st.value(ctx)?.unwrap_or(0) + 1;
        st.update(ctx, c)?;
        ctx.collect(format!("{},{},{c}", v.0, v.1));
        Ok(())
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("environment variable {name}"))
}

/// Input records are `"{id},{key}"` in UTF-8.
struct IdKey;

impl Deserializer<(u64, u64)> for IdKey {
    fn deserialize(&self, r: &RecordView<'_>) -> Result<(u64, u64), String> {
        let s = std::str::from_utf8(r.payload.unwrap_or_default()).map_err(|e| e.to_string())?;
        let (a, b) = s.split_once(',').ok_or("no comma")?;
        Ok((
            a.parse().map_err(|e| format!("id: {e}"))?,
            b.parse().map_err(|e| format!("key: {e}"))?,
        ))
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let bootstrap = env("BOOTSTRAP")?;
    let dir = std::path::PathBuf::from(env("CHECKPOINTS")?);
    let parallelism: u32 = env("PARALLELISM")?.parse()?;
    let interval: u64 = std::env::var("CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let fault: Option<(String, u64)> = std::env::var("FAULT").ok().and_then(|f| {
        let (p, n) = f.split_once(':')?;
        Some((p.to_string(), n.parse().ok()?))
    });
    let uri = format!("file://{}", dir.display());
    let mut cfg = JobConfig::new("kafka-eos-job");
    cfg.parallelism = parallelism;
    cfg.max_parallelism = 32;
    cfg.checkpoint = CheckpointConfig {
        interval_ms: Some(interval),
        storage: Some(uri.clone()),
        retained: 2,
        ..Default::default()
    };
    // In-process restarts only when asked (the broker-outage test): the kill
    // tests restart the whole process instead.
    cfg.restart = match std::env::var("RESTART_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(attempts) => RestartStrategy::FixedDelay {
            attempts,
            delay_ms: 1000,
        },
        None => RestartStrategy::None,
    };
    if std::env::var("RESTORE").as_deref() == Ok("latest")
        && runnel_runtime::checkpoint::load_latest(&uri).is_ok()
    {
        cfg.restore = Some(RestoreSettings {
            path: uri.clone(),
            latest: true,
            allow_non_restored_state: false,
        });
    }
    if let Some((point, n)) = fault.clone() {
        cfg.faults = FaultInjector::new(move |p| {
            let hit = match p {
                FaultPoint::BeforeSnapshot { checkpoint_id, .. } => {
                    point == "before-snapshot" && *checkpoint_id >= n
                }
                FaultPoint::BeforeMetadata { checkpoint_id } => {
                    point == "before-metadata" && *checkpoint_id >= n
                }
                FaultPoint::AfterMetadata { checkpoint_id } => {
                    point == "after-metadata" && *checkpoint_id >= n
                }
            };
            if hit {
                eprintln!("FAULT {p:?}: aborting the process");
                std::process::abort();
            }
            false
        });
    }
    let env_ = StreamEnv::new(cfg);
    let job = env_.config().clone();
    let mut src_cfg =
        KafkaSourceConfig::new(&bootstrap, TopicSelector::List(vec![env("IN_TOPIC")?]));
    src_cfg.group_id = Some("kafka-eos-job".into());
    src_cfg.start = StartPosition::GroupOffsets {
        reset: OffsetReset::Earliest,
    };
    let source = KafkaSource::new(src_cfg, IdKey, &job)?;
    let mut sink_cfg = KafkaSinkConfig::new(
        &bootstrap,
        env("OUT_TOPIC")?,
        DeliveryGuarantee::ExactlyOnce,
    );
    sink_cfg.transactional_id_prefix = Some(env("TXN_PREFIX")?);
    sink_cfg.transaction_timeout = Duration::from_secs(30);
    sink_cfg.flush_timeout = Duration::from_secs(30);
    let mut sink = KafkaSink::new(sink_cfg, Utf8, &job)?;
    if let Some((point, n)) = fault {
        sink = sink.with_fault_hook(move |p| {
            let hit = match p {
                SinkFaultPoint::MidProduce { checkpoint_id } => {
                    point == "sink-mid-produce" && checkpoint_id >= n
                }
                SinkFaultPoint::BeforeCommit { checkpoint_id } => {
                    point == "sink-before-commit" && checkpoint_id >= n
                }
                SinkFaultPoint::AfterCommit { checkpoint_id } => {
                    point == "sink-after-commit" && checkpoint_id >= n
                }
            };
            if hit {
                eprintln!("FAULT {p:?}: aborting the process");
                std::process::abort();
            }
        });
    }
    env_.add_source("kafka-in", source)
        .key_by(|v: &(u64, u64)| v.1)
        .process("running-count", RunningCount::default())
        .sink("kafka-out", sink);
    println!("STARTED");
    env_.execute()?;
    Ok(())
}
