//! What `runnel run` and `runnel coordinator` share: where a job restores
//! from, and how its outcome is reported. Both start the same declarative
//! jobs and are driven by the same operator, so their restore flags and exit
//! lines must never drift apart.

use std::io::Write;
use std::process::ExitCode;

use crate::{JobError, JobOutcome, RestoreSettings};
use anyhow::{Context, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Restore from this savepoint or checkpoint (a `savepoint-...` or `chk-N`
    /// directory URI).
    #[arg(long, value_name = "PATH", conflicts_with = "from_latest_checkpoint")]
    from_savepoint: Option<String>,
    /// Restore from the newest complete checkpoint in the job's checkpoint
    /// storage, if there is one (what a last-state upgrade and a restarted
    /// coordinator do).
    #[arg(long)]
    from_latest_checkpoint: bool,
    /// Skip state in the snapshot that no operator of this job claims.
    #[arg(long)]
    allow_non_restored_state: bool,
}

impl RestoreArgs {
    /// The restore settings these flags ask for, given the job's checkpoint
    /// storage. An unreachable storage is an error, never a fresh start: that
    /// would silently drop the job's state.
    pub fn resolve(self, storage: Option<&str>) -> anyhow::Result<Option<RestoreSettings>> {
        let settings = |path| RestoreSettings {
            path,
            latest: false,
            allow_non_restored_state: self.allow_non_restored_state,
        };
        if let Some(path) = self.from_savepoint.clone() {
            return Ok(Some(settings(path)));
        }
        if !self.from_latest_checkpoint {
            return Ok(None);
        }
        let Some(storage) = storage else {
            bail!("--from-latest-checkpoint needs checkpoint storage in the job");
        };
        match crate::checkpoint::find_latest_checkpoint(storage)
            .with_context(|| format!("cannot look for checkpoints in {storage}"))?
        {
            Some(c) => {
                tracing::info!(checkpoint = %c.uri, "restoring from the latest checkpoint");
                Ok(Some(settings(c.uri)))
            }
            None => {
                tracing::info!(%storage, "no checkpoint yet; starting without state");
                Ok(None)
            }
        }
    }
}

/// Prints how the job ended (the last stdout line, read by scripts and the
/// operator's tests) and turns a failure into the process's error.
pub fn report_outcome(
    name: &str,
    outcome: Result<JobOutcome, JobError>,
) -> anyhow::Result<ExitCode> {
    let line = match outcome {
        Ok(JobOutcome::Finished) => format!("job {name} finished"),
        Ok(JobOutcome::Stopped(info)) => format!("job {name} stopped with savepoint {}", info.path),
        Ok(JobOutcome::Cancelled) => format!("job {name} cancelled"),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("job {name} failed"))),
    };
    // Nobody may be reading any more (SIGPIPE is ignored in serving
    // processes): the job's outcome stands, so a closed stdout is no error.
    let _ = writeln!(std::io::stdout(), "{line}");
    Ok(ExitCode::SUCCESS)
}
