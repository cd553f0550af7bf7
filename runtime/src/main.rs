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
    /// Prints a checkpoint or savepoint in human-readable form and verifies it
    /// (same as `runnel savepoint inspect`).
    Inspect(cli::inspect::InspectArgs),
    /// Runs a declarative job (YAML) with its control API.
    Run(cli::run::RunArgs),
    /// Runs a declarative job's coordinator over worker processes.
    Coordinator(cli::distributed::CoordinatorArgs),
    /// Runs a worker that hosts subtasks of a distributed job.
    Worker(cli::distributed::WorkerArgs),
    /// Shows a running job's state and last checkpoint.
    Status(cli::jobctl::StatusArgs),
    /// Takes a savepoint of a running job (or: `savepoint inspect|dispose PATH`).
    Savepoint(cli::jobctl::SavepointArgs),
    /// Stops a running job with a savepoint.
    Stop(cli::jobctl::StopArgs),
    /// Cancels a running job without a savepoint.
    Cancel(cli::jobctl::CancelArgs),
    /// Lists a running job's retained and in-progress checkpoints.
    Checkpoints(cli::jobctl::CheckpointsArgs),
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
    args: cli::bench::BenchArgs,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Checkpoint upload throughput and restore time of keyed state on S3,
    /// against a plain upload and download with the same client.
    S3(cli::bench_s3::BenchS3Args),
    /// The same keyed job on workers over loopback against one process.
    Distributed(cli::bench_distributed::BenchDistributedArgs),
    /// Kafka -> keyed aggregate -> Kafka exactly-once, against a bare consumer
    /// draining the same topic.
    #[cfg(feature = "kafka")]
    Kafka(cli::bench_kafka::BenchKafkaArgs),
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
        Command::Demo(a) => cli::demo::run(a),
        Command::Bench(b) => match b.target {
            Some(BenchTarget::S3(a)) => cli::bench_s3::run(a),
            Some(BenchTarget::Distributed(a)) => cli::bench_distributed::run(a),
            #[cfg(feature = "kafka")]
            Some(BenchTarget::Kafka(a)) => cli::bench_kafka::run(a).map(|()| ExitCode::SUCCESS),
            None => cli::bench::run(b.args),
        },
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Coordinator(a) => cli::distributed::coordinator(a),
        Command::Worker(a) => cli::distributed::worker(a),
        Command::Status(a) => cli::jobctl::status(a),
        Command::Savepoint(a) => cli::jobctl::savepoint(a),
        Command::Stop(a) => cli::jobctl::stop(a),
        Command::Cancel(a) => cli::jobctl::cancel(a),
        Command::Checkpoints(a) => cli::jobctl::checkpoints(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = e
                .downcast_ref::<cli::client::ClientError>()
                .map_or(cli::client::exit::FAILURE, |c| c.exit_code());
            ExitCode::from(code)
        }
    }
}
