//! `runnel run JOB.yaml`: runs a declarative job in this process with its
//! control API, until it finishes, is stopped with a savepoint, is cancelled or
//! fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use runnel_runtime::control::{ControlOptions, serve};
use runnel_runtime::declarative::{self, ConnectorRegistry};
use runnel_runtime::{JobOutcome, RestoreSettings};

use super::jobctl::parse_duration;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The job file (YAML): a job spec, or a StreamJob manifest (its
    /// `spec.job` is run).
    job: PathBuf,
    /// Restore from this savepoint or checkpoint (a `savepoint-...` or `chk-N`
    /// directory URI).
    #[arg(long, value_name = "PATH", conflicts_with = "from_latest_checkpoint")]
    from_savepoint: Option<String>,
    /// Restore from the newest complete checkpoint in the job's checkpoint
    /// storage, if there is one (what a last-state upgrade does).
    #[arg(long)]
    from_latest_checkpoint: bool,
    /// Skip state in the snapshot that no operator of this job claims.
    #[arg(long)]
    allow_non_restored_state: bool,
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

/// The connectors compiled into this binary.
pub fn registry() -> ConnectorRegistry {
    let r = ConnectorRegistry::new();
    #[cfg(feature = "kafka")]
    let r = r.with_kafka(runnel_runtime::kafka::DeclarativeKafka);
    r
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
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
    let mut job = declarative::build_at(&spec, &registry(), root).map_err(invalid)?;
    if a.dry_run {
        println!("{}: valid", a.job.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = a.from_savepoint {
        job.config_mut().restore = Some(RestoreSettings {
            path,
            latest: false,
            allow_non_restored_state: a.allow_non_restored_state,
        });
    } else if a.from_latest_checkpoint {
        let Some(storage) = job.config().checkpoint.storage.clone() else {
            bail!("--from-latest-checkpoint needs checkpoint storage in the job");
        };
        // An unreachable storage is an error here, never a fresh start: that
        // would silently drop the job's state.
        match runnel_runtime::checkpoint::find_latest_checkpoint(&storage)
            .with_context(|| format!("cannot look for checkpoints in {storage}"))?
        {
            Some(c) => {
                tracing::info!(checkpoint = %c.uri, "restoring from the latest checkpoint");
                job.config_mut().restore = Some(RestoreSettings {
                    path: c.uri,
                    latest: false,
                    allow_non_restored_state: a.allow_non_restored_state,
                })
            }
            None => tracing::info!(%storage, "no checkpoint yet; starting without state"),
        }
    }
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
    match outcome {
        Ok(JobOutcome::Finished) => {
            println!("job {name} finished");
            Ok(ExitCode::SUCCESS)
        }
        Ok(JobOutcome::Stopped(info)) => {
            println!("job {name} stopped with savepoint {}", info.path);
            Ok(ExitCode::SUCCESS)
        }
        Ok(JobOutcome::Cancelled) => {
            println!("job {name} cancelled");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("job {name} failed"))),
    }
}
