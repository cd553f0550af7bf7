//! The `runnel` binary: the command line of `runnel_runtime::cli` with the
//! connectors compiled into this build.

use std::process::ExitCode;

fn main() -> ExitCode {
    runnel_runtime::cli::main_with(runnel_runtime::cli::run::registry())
}
