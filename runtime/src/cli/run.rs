//! `runnel run JOB.yaml`: runs a declarative job in this process with its
//! control API, until it finishes, is stopped with a savepoint, is cancelled or
//! fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{ControlOptions, serve};
use crate::declarative::{self, ConnectorRegistry};
use anyhow::{Context, bail};
use clap::Args;

use super::jobctl::parse_duration;
use super::launch::{RestoreArgs, report_outcome};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job file (YAML): a job spec, or a StreamJob manifest (its
    /// `spec.job` is run).
    job: PathBuf,
    #[command(flatten)]
    restore: RestoreArgs,
    /// Default parallelism of every source and step that sets none.
    #[arg(long, value_name = "N")]
    parallelism: Option<u32>,
    /// Address of the control API (port 0 picks a free one; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    control_addr: SocketAddr,
    /// Default directory for savepoints requested without one.
    #[arg(long, value_name = "URI")]
    savepoint_dir: Option<String>,
    /// After a stop-with-savepoint, keep the control API up until the result
    /// has been read, at most this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    linger: Duration,
    /// Validate the job (including CEL compilation) and exit.
    #[arg(long)]
    dry_run: bool,
}

/// The connectors compiled into this build (what the `runnel` binary runs
/// with; custom runtime binaries add their operators to it).
pub fn registry() -> ConnectorRegistry {
    let r = ConnectorRegistry::new();
    #[cfg(feature = "kafka")]
    let r = r.with_kafka(crate::kafka::DeclarativeKafka::default());
    r
}

pub fn run(a: RunArgs, registry: &ConnectorRegistry) -> anyhow::Result<ExitCode> {
    if a.parallelism == Some(0) {
        bail!("--parallelism must be at least 1");
    }
    let yaml = std::fs::read_to_string(&a.job)
        .with_context(|| format!("cannot read the job file {}", a.job.display()))?;
    let invalid = |errors: Vec<runnel_spec::SpecError>| {
        anyhow::anyhow!(
            "{} is not a valid job:\n{}",
            a.job.display(),
            runnel_spec::format_errors(&errors)
        )
    };
    let mut spec = runnel_spec::load_yaml(&yaml).map_err(invalid)?;
    if let Some(p) = a.parallelism {
        spec.parallelism = Some(p);
    }
    let root = declarative::error_root(&yaml);
    let mut job = declarative::build_at(&spec, registry, root).map_err(invalid)?;
    if a.dry_run {
        println!("{}: valid", a.job.display());
        return Ok(ExitCode::SUCCESS);
    }
    let storage = job.config().checkpoint.storage.clone();
    job.config_mut().restore = a.restore.resolve(storage.as_deref())?;
    let name = job.name.clone();
    let client = job.execute_async().context("the job could not start")?;
    let server = serve(
        client.handle(),
        ControlOptions {
            addr: a.control_addr,
            default_savepoint_dir: a.savepoint_dir,
        },
    )?;
    // The first line on stdout is the control URL, for scripts and tests.
    println!("control API: {}", server.url());
    tracing::info!(job = %name, url = %server.url(), "job running");
    let outcome = client.wait();
    server.wait_until_results_read(a.linger);
    report_outcome(&name, outcome)
}
