//! `runnel status|savepoint|stop|cancel|checkpoints JOB_URL`: drive a running
//! job through its control API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use runnel_api::{CheckpointInfo, TriggerState};

use super::client::ControlClient;
use super::human_bytes;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30s, 10m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("'{s}' has an unknown unit (use ms, s, m or h)")),
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job's control URL, e.g. http://127.0.0.1:8081
    job_url: String,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SavepointArgs {
    #[command(subcommand)]
    action: Option<SavepointAction>,
    /// The job's control URL, e.g. http://127.0.0.1:8081
    #[arg(required = true)]
    job_url: Option<String>,
    /// Directory URI for the savepoint (default: the job's savepoint directory).
    target_dir: Option<String>,
    /// Print the trigger id and return instead of waiting.
    #[arg(long)]
    detach: bool,
    /// How long to wait for the savepoint.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

impl SavepointArgs {
    /// `runnel savepoint inspect PATH`.
    pub fn is_inspect(&self) -> bool {
        matches!(self.action, Some(SavepointAction::Inspect(_)))
    }
}

#[derive(Subcommand, Debug)]
pub enum SavepointAction {
    /// Print a savepoint or checkpoint: operators, parallelism, key groups,
    /// states and sizes, Kafka offsets; verifies its state files.
    Inspect(super::inspect::InspectArgs),
    /// Delete a savepoint and everything in it.
    Dispose(super::inspect::DisposeArgs),
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Take a savepoint before stopping (always done; the flag may name the
    /// target directory: --savepoint=s3://bucket/savepoints).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "")]
    savepoint: Option<String>,
    /// Emit a final watermark first, so event-time windows and timers fire.
    #[arg(long)]
    drain: bool,
    /// The job's control URL, e.g. http://127.0.0.1:8081
    job_url: String,
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job's control URL, e.g. http://127.0.0.1:8081
    job_url: String,
}

#[derive(Args, Debug)]
pub struct CheckpointsArgs {
    /// The job's control URL, e.g. http://127.0.0.1:8081
    job_url: String,
    #[arg(long)]
    json: bool,
}

fn print_checkpoint(c: &CheckpointInfo) {
    println!(
        "  {:>6}  {:<14}  {:>10}  {:>7} ms  align {:>5} ms  {}",
        c.id,
        format!("{:?}", c.kind).to_uppercase(),
        human_bytes(c.size_bytes),
        c.duration_ms,
        c.alignment_ms,
        c.path
    );
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let c = ControlClient::new(&a.job_url)?;
    let s = c.status()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("job:          {}", s.name);
    println!(
        "state:        {}",
        serde_json::to_value(s.state)?.as_str().unwrap_or("?")
    );
    println!("attempt:      {} ({} restarts)", s.attempt, s.restarts);
    println!(
        "parallelism:  {:?} (max {})",
        s.parallelism, s.max_parallelism
    );
    if let Some(r) = &s.restored_from {
        println!("restored:     {r}");
    }
    match &s.last_checkpoint {
        Some(cp) => {
            println!("last checkpoint:");
            print_checkpoint(cp);
        }
        None => println!("last checkpoint: none yet"),
    }
    if let Some(f) = &s.last_failure {
        println!("last failure: {f}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn savepoint(a: SavepointArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        Some(SavepointAction::Inspect(i)) => return super::inspect::run(i),
        Some(SavepointAction::Dispose(d)) => return super::inspect::dispose(d),
        None => {}
    }
    let Some(url) = a.job_url else {
        bail!("a job URL is required (or use `runnel savepoint inspect|dispose PATH`)");
    };
    let c = ControlClient::new(&url)?;
    let trigger = c.trigger_savepoint(a.target_dir)?;
    if a.detach {
        println!("{trigger}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("savepoint triggered ({trigger}); waiting for it to complete...");
    print_savepoint_outcome(&c, &trigger, a.timeout, "savepoint failed")
}

/// Waits for a trigger and prints the savepoint path, or fails with `failure`
/// and the job's reason.
fn print_savepoint_outcome(
    c: &ControlClient,
    trigger: &str,
    timeout: Duration,
    failure: &str,
) -> anyhow::Result<ExitCode> {
    let s = c.wait_savepoint(trigger, timeout)?;
    match s.state {
        TriggerState::Completed => {
            println!("{}", s.path.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "{failure}: {}",
            s.error.unwrap_or_else(|| "no reason given".into())
        ),
    }
}

pub fn stop(a: StopArgs) -> anyhow::Result<ExitCode> {
    let c = ControlClient::new(&a.job_url)?;
    let dir = a.savepoint.filter(|d| !d.is_empty());
    let trigger = c.stop(dir, a.drain)?;
    eprintln!("stop-with-savepoint triggered ({trigger}); waiting...");
    print_savepoint_outcome(
        &c,
        &trigger,
        a.timeout,
        "stop-with-savepoint failed, the job keeps running",
    )
}

pub fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let c = ControlClient::new(&a.job_url)?;
    c.cancel()?;
    eprintln!("cancel requested");
    Ok(ExitCode::SUCCESS)
}

pub fn checkpoints(a: CheckpointsArgs) -> anyhow::Result<ExitCode> {
    let c = ControlClient::new(&a.job_url)?;
    let r = c.checkpoints()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "completed: {}   failed: {}   retained: {}",
        r.completed_count,
        r.failed_count,
        r.completed.len()
    );
    for cp in &r.completed {
        print_checkpoint(cp);
    }
    for p in &r.in_progress {
        println!(
            "  {:>6}  {:<14}  in progress: {}/{} subtasks acknowledged  {}",
            p.id,
            format!("{:?}", p.kind).to_uppercase(),
            p.acknowledged_subtasks,
            p.total_subtasks,
            p.path
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
