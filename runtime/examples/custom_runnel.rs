//! A custom runtime binary as docs/custom-operators.md describes it: the whole
//! `runnel` command line (`run` with the control API and restore flags,
//! `savepoint dispose`, `coordinator`, `worker`, ...) with the built-in
//! connectors plus the `running-total` operator of the `custom_operator`
//! example. Installed as `runnel` in an image, it is what the operator's pods
//! and disposal Jobs run.
//!
//! cargo run -p runnel-runtime --example custom_runnel -- run JOB.yaml

use std::process::ExitCode;

#[path = "custom_operator.rs"]
#[allow(dead_code)]
mod custom_operator;

fn main() -> ExitCode {
    let registry = runnel_runtime::cli::run::registry()
        .with_operator("running-total", custom_operator::running_total);
    runnel_runtime::cli::main_with(registry)
}
