//! The `runnel` command-line tool: an end-to-end demo, the performance
//! benchmark and a snapshot inspector.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    Demo(cli::demo::DemoArgs),
    /// Measures throughput, CPU, memory and checkpoint overhead of a keyed count
    /// and sum; `runnel bench s3` measures S3 checkpoint upload and restore.
    Bench(BenchCmd),
    /// Prints a checkpoint or savepoint in human-readable form and verifies it.
    Inspect(cli::inspect::InspectArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCmd {
    #[command(subcommand)]
    target: Option<BenchTarget>,
    #[command(flatten)]
    args: cli::bench::BenchArgs,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Checkpoint upload throughput and restore time of keyed state on S3,
    /// against a plain upload and download with the same client.
    S3(cli::bench_s3::BenchS3Args),
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,runnel=info,runnel_runtime=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    // Exit quietly when stdout is closed early (e.g. `runnel inspect ... | head`)
    // instead of failing to print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Bench(b) => match b.target {
            Some(BenchTarget::S3(a)) => cli::bench_s3::run(a),
            None => cli::bench::run(b.args),
        },
        Command::Inspect(a) => cli::inspect::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
