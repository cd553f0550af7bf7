//! `runnel-operator`: `crd` prints the CRD; `run` runs the controller.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "runnel-operator",
    version,
    about = "Kubernetes operator for Runnel StreamJobs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the StreamJob CustomResourceDefinition (YAML).
    Crd,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Crd => {
            print!("{}", runnel_operator::crd::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
