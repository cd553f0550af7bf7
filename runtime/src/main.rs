//! The `runnel` binary: the command line of `runnel_runtime::cli` with the
//! connectors compiled into this build.

use std::process::ExitCode;

// Declarative jobs allocate per record and free on another thread; glibc's
// allocator made that a third of their CPU (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    runnel_runtime::cli::main_with(runnel_runtime::cli::run::registry())
}
