//! `runnel coordinator JOB.yaml --workers ...` and `runnel worker JOB.yaml
//! --listen ADDR`: a declarative job run by one coordinator and N workers
//! (see docs/distributed.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::JobError;
use crate::control::{ControlOptions, serve};
use crate::declarative::{self, ConnectorRegistry};
use crate::distributed::{
    CoordinatorOptions, JobFactory, WorkerOptions, discovery, start_coordinator_with, start_worker,
};
use anyhow::{Context, bail};
use clap::Args;

use super::jobctl::parse_duration;
use super::launch::{RestoreArgs, report_outcome};

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// The job file (YAML); every worker must run the same file.
    job: PathBuf,
    /// Workers: `host:port` entries separated by commas; a name that resolves
    /// to several addresses (a headless Service) counts each as a worker.
    #[arg(long, value_name = "LIST")]
    workers: String,
    /// Slots per worker (default: what the workers offer).
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Default parallelism of every source and step that sets none.
    #[arg(long, value_name = "N")]
    parallelism: Option<u32>,
    #[command(flatten)]
    restore: RestoreArgs,
    /// Address of the job's control API (port 0 picks one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    control_addr: SocketAddr,
    #[arg(long, value_name = "URI")]
    savepoint_dir: Option<String>,
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// A worker silent this long is declared lost and the job restarts without it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_timeout: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    deploy_timeout: Duration,
    /// Wait, before each attempt is placed, until this many workers answer
    /// (or `--worker-wait` passes); then place it on the workers found.
    #[arg(long, value_name = "N", default_value_t = 0)]
    expect_workers: usize,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    worker_wait: Duration,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    linger: Duration,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The job file (YAML), the same as the coordinator's.
    job: PathBuf,
    /// Address to listen on for the coordinator and peer workers.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Subtask slots this worker offers.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Coordinator silence after which this worker cancels its tasks.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_timeout: Duration,
}

/// The job factory of a YAML file and the file's fingerprint.
fn factory(path: &Path, registry: &ConnectorRegistry) -> anyhow::Result<(JobFactory, u64)> {
    let yaml = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the job file {}", path.display()))?;
    let fingerprint = xxhash_rust::xxh64::xxh64(yaml.as_bytes(), 0);
    let spec = runnel_spec::load_yaml(&yaml).map_err(|errors| {
        anyhow::anyhow!(
            "{} is not a valid job:\n{}",
            path.display(),
            runnel_spec::format_errors(&errors)
        )
    })?;
    let root = declarative::error_root(&yaml);
    let registry = registry.clone();
    let f: JobFactory = Arc::new(move |parallelism| {
        let mut spec = spec.clone();
        if parallelism.is_some() {
            spec.parallelism = parallelism;
        }
        let job = declarative::build_at(&spec, &registry, root)
            .map_err(|e| JobError::InvalidJob(runnel_spec::format_errors(&e).to_string()))?;
        job.into_env().build()
    });
    // Fail now, not at the first deploy.
    f(None).map_err(anyhow::Error::new)?;
    Ok((f, fingerprint))
}

pub fn coordinator(a: CoordinatorArgs, registry: &ConnectorRegistry) -> anyhow::Result<ExitCode> {
    if a.parallelism == Some(0) {
        bail!("--parallelism must be at least 1");
    }
    let workers = discovery::parse_workers(&a.workers);
    if workers.is_empty() {
        bail!("--workers lists no worker");
    }
    let (factory, fingerprint) = factory(&a.job, registry)?;
    let (_, cfg) = factory(a.parallelism)?;
    let restore = a.restore.resolve(cfg.checkpoint.storage.as_deref())?;
    let opts = CoordinatorOptions {
        workers,
        slots: a.slots,
        parallelism: a.parallelism,
        fingerprint,
        heartbeat_interval: a.heartbeat_interval,
        heartbeat_timeout: a.heartbeat_timeout,
        deploy_timeout: a.deploy_timeout,
        expected_workers: a.expect_workers,
        worker_wait: a.worker_wait,
    };
    let (client, _stats) =
        start_coordinator_with(&factory, restore, opts).context("the job could not start")?;
    let server = serve(
        client.handle(),
        ControlOptions {
            addr: a.control_addr,
            default_savepoint_dir: a.savepoint_dir,
        },
    )?;
    println!("control API: {}", server.url());
    let name = cfg.name.clone();
    let outcome = client.wait();
    server.wait_until_results_read(a.linger);
    report_outcome(&name, outcome)
}

pub fn worker(a: WorkerArgs, registry: &ConnectorRegistry) -> anyhow::Result<ExitCode> {
    if a.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let (factory, fingerprint) = factory(&a.job, registry)?;
    let handle = start_worker(
        factory,
        WorkerOptions {
            listen: a.listen,
            slots: a.slots,
            fingerprint,
            heartbeat_interval: a.heartbeat_interval,
            heartbeat_timeout: a.heartbeat_timeout,
        },
    )?;
    // The first line on stdout is the address, for scripts and tests.
    println!("worker listening on {}", handle.local_addr);
    handle.wait();
    Ok(ExitCode::SUCCESS)
}
