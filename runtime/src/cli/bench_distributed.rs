//! `runnel bench distributed`: the same keyed job (generator → key_by →
//! per-key count and sum) with W workers on loopback against one process with
//! the same total parallelism, per batch size. Reports throughput, the ratio,
//! and the network shuffle rate the workers measured.
//!
//! The job is a Rust-API job: the workers are child processes of this binary
//! (`--serve-worker`) that build it from the same arguments, the way a job
//! binary of one's own would call `start_worker` and `start_coordinator`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::distributed::{
    CoordinatorOptions, JobFactory, WorkerOptions, start_coordinator, start_worker, worker_stats,
};
use crate::sources::GeneratorSource;
use crate::state::keyed::{ValueState, ValueStateDescriptor};
use crate::{
    CheckpointListener, FnResult, InitContext, JobConfig, JobOutcome, KeyedContext,
    KeyedProcessFunction, RestartStrategy, StreamEnv, UserError,
};
use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Args, Debug, Clone)]
pub struct BenchDistributedArgs {
    /// Events per run. Long enough that start-up (worker processes,
    /// connections) is small next to the run on a fast host: at 4 M a run
    /// lasted well under a second on the 2026-12 host.
    #[arg(long, default_value_t = 40_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Total parallelism (sources and keyed operator), in both setups.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    parallelism: u32,
    /// Workers of the distributed setup.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    workers: u32,
    /// Records per batch (and per network frame) to compare.
    #[arg(long, value_delimiter = ',', default_value = "16,128,512")]
    batch_sizes: Vec<usize>,
    /// Runs per configuration; the median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    #[arg(long)]
    json: bool,
    /// Internal: serve as a worker of the benchmark job at this address.
    #[arg(long, hide = true)]
    serve_worker: Option<std::net::SocketAddr>,
    /// Internal: run the single-process baseline here and print JSON.
    #[arg(long, hide = true)]
    local: bool,
    /// Internal: the batch size of a worker or baseline run.
    #[arg(long, hide = true, default_value_t = 512)]
    batch_size: usize,
}

#[derive(Clone)]
struct CountSum {
    state: Option<ValueState<(u64, u64)>>,
}

impl CheckpointListener for CountSum {}

impl KeyedProcessFunction<u64, (u64, u64), ()> for CountSum {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_, u64>) -> FnResult {
        self.state = Some(ctx.value_state(&ValueStateDescriptor::new("count-sum"))?);
        Ok(())
    }

    fn process_element(&mut self, v: (u64, u64), ctx: &mut KeyedContext<'_, u64, ()>) -> FnResult {
        let state = self
            .state
            .as_ref()
            .ok_or_else(|| UserError::msg("state not initialized"))?;
        let (count, sum) = state.value(ctx)?.unwrap_or((0, 0));
        state.update(ctx, (count + 1, sum + v.1))
    }
}

fn env(a: &BenchDistributedArgs, batch: usize) -> StreamEnv {
    let mut config = JobConfig::new("runnel-bench-distributed");
    config.parallelism = a.parallelism;
    config.batch_size = batch;
    config.restart = RestartStrategy::None;
    let keys = a.keys;
    let env = StreamEnv::new(config);
    env.add_source(
        "generator",
        GeneratorSource::new(move |i: u64| (i.wrapping_mul(2_654_435_761) % keys, i % 100 + 1))
            .count(a.events),
    )
    .key_by(|e: &(u64, u64)| e.0)
    .process("count-sum", CountSum { state: None });
    env
}

fn factory(a: &BenchDistributedArgs, batch: usize) -> (JobFactory, u64) {
    let a2 = a.clone();
    let f: JobFactory = Arc::new(move |_| env(&a2, batch).build());
    let id = format!("{}/{}/{}/{batch}", a.events, a.keys, a.parallelism);
    (f, xxhash_rust::xxh64::xxh64(id.as_bytes(), 0))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    batch: usize,
    local_events_per_s: f64,
    distributed_events_per_s: f64,
    ratio: f64,
    shuffled_records: u64,
    shuffle_records_per_s: f64,
    shuffle_mib_per_s: f64,
    records_per_frame: f64,
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn common_args(a: &BenchDistributedArgs, batch: usize) -> Vec<String> {
    vec![
        "bench".into(),
        "distributed".into(),
        "--events".into(),
        a.events.to_string(),
        "--keys".into(),
        a.keys.to_string(),
        "--parallelism".into(),
        a.parallelism.to_string(),
        "--batch-size".into(),
        batch.to_string(),
    ]
}

fn run_local(a: &BenchDistributedArgs, batch: usize) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the runnel executable")?;
    let out = Command::new(&exe)
        .args(common_args(a, batch))
        .arg("--local")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the baseline")?;
    if !out.status.success() {
        bail!("the baseline run failed ({})", out.status);
    }
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse()
        .context("cannot parse the baseline's output")
}

fn run_distributed(a: &BenchDistributedArgs, batch: usize) -> anyhow::Result<(f64, u64, u64, u64)> {
    let exe = std::env::current_exe().context("cannot find the runnel executable")?;
    let slots = a.parallelism.div_ceil(a.workers);
    let mut workers = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..a.workers {
        let mut child = Command::new(&exe)
            .args(common_args(a, batch))
            .args(["--serve-worker", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a worker")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        workers.push(Kill(child));
        addrs.push(line.trim().to_string());
    }
    let (f, fingerprint) = factory(a, batch);
    let (graph, config) = f(None)?;
    let t0 = Instant::now();
    let (client, _) = start_coordinator(
        graph,
        config,
        CoordinatorOptions {
            workers: addrs.clone(),
            slots: Some(slots),
            parallelism: None,
            fingerprint,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(10),
            deploy_timeout: Duration::from_secs(60),
            expected_workers: addrs.len(),
            worker_wait: Duration::from_secs(10),
        },
    )?;
    let outcome = client.wait()?;
    let wall = t0.elapsed().as_secs_f64();
    if outcome != JobOutcome::Finished {
        bail!("the distributed run ended as {outcome:?}");
    }
    let (mut records, mut bytes, mut frames) = (0, 0, 0);
    for addr in &addrs {
        let s = worker_stats(addr)?;
        records += s.records_sent;
        bytes += s.bytes_sent;
        frames += s.frames_sent;
    }
    Ok((wall, records, bytes, frames))
}

pub fn run(a: BenchDistributedArgs) -> anyhow::Result<ExitCode> {
    if let Some(listen) = a.serve_worker {
        let (f, fingerprint) = factory(&a, a.batch_size);
        let h = start_worker(
            f,
            WorkerOptions {
                listen,
                slots: a.parallelism,
                fingerprint,
                heartbeat_interval: Duration::from_millis(500),
                heartbeat_timeout: Duration::from_secs(10),
            },
        )?;
        println!("{}", h.local_addr);
        h.wait();
        return Ok(ExitCode::SUCCESS);
    }
    if a.local {
        let t0 = Instant::now();
        env(&a, a.batch_size).execute()?;
        println!("{}", a.events as f64 / t0.elapsed().as_secs_f64());
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    for &batch in &a.batch_sizes {
        if batch == 0 {
            bail!("batch sizes must be at least 1");
        }
        let mut local = Vec::new();
        let mut dist = Vec::new();
        for _ in 0..a.repeat {
            local.push(run_local(&a, batch)?);
            let (wall, records, bytes, frames) = run_distributed(&a, batch)?;
            dist.push((a.events as f64 / wall, wall, records, bytes, frames));
        }
        local.sort_by(|x, y| x.total_cmp(y));
        dist.sort_by(|x, y| x.0.total_cmp(&y.0));
        let l = local[local.len() / 2];
        let (d, wall, records, bytes, frames) = dist[dist.len() / 2];
        rows.push(Row {
            batch,
            local_events_per_s: l,
            distributed_events_per_s: d,
            ratio: d / l,
            shuffled_records: records,
            shuffle_records_per_s: records as f64 / wall,
            shuffle_mib_per_s: bytes as f64 / wall / (1024.0 * 1024.0),
            records_per_frame: records as f64 / frames.max(1) as f64,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "keyed count+sum, {} events, {} keys, parallelism {} ({} workers vs 1 process)",
        a.events, a.keys, a.parallelism, a.workers
    );
    println!(
        "{:>6} {:>14} {:>14} {:>7} {:>14} {:>10} {:>10}",
        "batch", "1 process ev/s", "workers ev/s", "ratio", "shuffle rec/s", "MiB/s", "rec/frame"
    );
    for r in &rows {
        println!(
            "{:>6} {:>14.0} {:>14.0} {:>6.0}% {:>14.0} {:>10.1} {:>10.1}",
            r.batch,
            r.local_events_per_s,
            r.distributed_events_per_s,
            r.ratio * 100.0,
            r.shuffle_records_per_s,
            r.shuffle_mib_per_s,
            r.records_per_frame
        );
    }
    Ok(ExitCode::SUCCESS)
}
