//! The `runnel` command line: its subcommands and the helpers they share.
//!
//! It lives in the library, not in the binary, so that a custom runtime
//! binary (user-written operators registered on top of this library, the
//! equivalent of a Flink jar) gets the same commands with [`main_with`]. This
//! module is that binary edge: its commands report errors with `anyhow`.

pub mod bench;
pub mod bench_distributed;
#[cfg(feature = "kafka")]
pub mod bench_kafka;
pub mod bench_s3;
pub mod client;
pub mod demo;
pub mod distributed;
pub mod inspect;
pub mod jobctl;
pub mod launch;
pub mod run;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::declarative::ConnectorRegistry;

#[derive(Parser)]
#[command(
    name = "runnel",
    version,
    about = "Runnel: a stateful stream-processing engine with barrier checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs an in-process job that fails once, recovers from a checkpoint, and
    /// verifies exactly-once results.
    Demo(demo::DemoArgs),
    /// Measures throughput, CPU, memory and checkpoint overhead of a keyed count
    /// and sum; `runnel bench s3` measures S3 checkpoint upload and restore.
    Bench(BenchCmd),
    /// Prints a checkpoint or savepoint in human-readable form and verifies it
    /// (same as `runnel savepoint inspect`).
    Inspect(inspect::InspectArgs),
    /// Runs a declarative job (YAML) with its control API.
    Run(run::RunArgs),
    /// Runs a declarative job's coordinator over worker processes.
    Coordinator(distributed::CoordinatorArgs),
    /// Runs a worker that hosts subtasks of a distributed job.
    Worker(distributed::WorkerArgs),
    /// Shows a running job's state and last checkpoint.
    Status(jobctl::StatusArgs),
    /// Takes a savepoint of a running job (or: `savepoint inspect|dispose PATH`).
    Savepoint(jobctl::SavepointArgs),
    /// Stops a running job with a savepoint.
    Stop(jobctl::StopArgs),
    /// Cancels a running job without a savepoint.
    Cancel(jobctl::CancelArgs),
    /// Lists a running job's retained and in-progress checkpoints.
    Checkpoints(jobctl::CheckpointsArgs),
}

impl Command {
    /// Commands whose whole job is printing what they read from storage.
    fn only_prints(&self) -> bool {
        match self {
            Command::Inspect(_) => true,
            Command::Savepoint(a) => a.is_inspect(),
            _ => false,
        }
    }
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCmd {
    #[command(subcommand)]
    target: Option<BenchTarget>,
    #[command(flatten)]
    args: bench::BenchArgs,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Checkpoint upload throughput and restore time of keyed state on S3,
    /// against a plain upload and download with the same client.
    S3(bench_s3::BenchS3Args),
    /// The same keyed job on workers over loopback against one process.
    Distributed(bench_distributed::BenchDistributedArgs),
    /// Kafka -> keyed aggregate -> Kafka exactly-once, against a bare consumer
    /// draining the same topic.
    #[cfg(feature = "kafka")]
    Kafka(bench_kafka::BenchKafkaArgs),
}

/// Logs to stderr; `RUST_LOG` overrides the default filter.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,runnel=info,runnel_runtime=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs the `runnel` command line with `registry`'s connectors and custom
/// operators: what the `runnel` binary does with the built-in ones
/// ([`run::registry`]), and what a custom runtime binary calls with its own
/// operators added, so that its image takes the same commands and flags as
/// the `runnel` image (the operator's pods run `runnel run ...`, its disposal
/// Jobs `runnel savepoint dispose ...`).
pub fn main_with(registry: ConnectorRegistry) -> ExitCode {
    let cli = Cli::parse();
    if cli.command.only_prints() {
        // Exit quietly when stdout is closed early (`runnel inspect ... | head`)
        // instead of failing to print. Only for these: in anything that serves
        // or talks over sockets, the default disposition turns a peer that
        // closed its connection into a silent death of the process, because
        // vectored socket writes (tokio, hyper) raise SIGPIPE. A worker killed
        // that way when its coordinator died is how this was found.
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of SIGPIPE before any threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_logging();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Bench(b) => match b.target {
            Some(BenchTarget::S3(a)) => bench_s3::run(a),
            Some(BenchTarget::Distributed(a)) => bench_distributed::run(a),
            #[cfg(feature = "kafka")]
            Some(BenchTarget::Kafka(a)) => bench_kafka::run(a).map(|()| ExitCode::SUCCESS),
            None => bench::run(b.args),
        },
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a, &registry),
        Command::Coordinator(a) => distributed::coordinator(a, &registry),
        Command::Worker(a) => distributed::worker(a, &registry),
        Command::Status(a) => jobctl::status(a),
        Command::Savepoint(a) => jobctl::savepoint(a),
        Command::Stop(a) => jobctl::stop(a),
        Command::Cancel(a) => jobctl::cancel(a),
        Command::Checkpoints(a) => jobctl::checkpoints(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<client::ClientError>()
                .map_or(client::exit::FAILURE, |c| c.exit_code());
            ExitCode::from(code)
        }
    }
}

/// Formats a byte count for people: `512 B`, `12.3 KiB`, `4.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `file://` URI of an absolute path.
pub fn file_uri(path: &Path) -> anyhow::Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("path {} is not valid UTF-8", path.display()))?;
    anyhow::ensure!(
        path.is_absolute(),
        "path {} is not absolute",
        path.display()
    );
    Ok(format!("file://{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_a_readable_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(12_595), "12.3 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn file_uri_requires_absolute_utf8_paths() {
        assert_eq!(file_uri(Path::new("/tmp/x")).unwrap(), "file:///tmp/x");
        assert!(file_uri(Path::new("rel/x")).is_err());
    }
}
