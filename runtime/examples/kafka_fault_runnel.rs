//! The `runnel` command line with a fault point in every exactly-once Kafka
//! sink, for the stale-worker test: a worker process that runs it freezes
//! itself (SIGSTOP, all threads at once, as a long GC pause or a stalled VM
//! would) inside a commit transaction, with that transaction's records
//! already written to the broker. The test thaws it later with SIGCONT.
//!
//! `STOP_AT=sink-before-commit:N` stops at the first commit of checkpoint
//! id >= N, in the one process of all that use the same `STOP_FLAG` file
//! that creates it first (it writes its pid there, so the test knows which
//! worker froze). Without `STOP_AT` it is the plain `runnel`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use runnel_runtime::declarative::ConnectorRegistry;
use runnel_runtime::kafka::{DeclarativeKafka, SinkFaultPoint};

fn main() -> ExitCode {
    let at: Option<u64> = std::env::var("STOP_AT").ok().map(|v| {
        v.strip_prefix("sink-before-commit:")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("STOP_AT={v}: expected sink-before-commit:N"))
    });
    let flag = std::env::var_os("STOP_FLAG").map(PathBuf::from);
    let kafka = match (at, flag) {
        (Some(at), Some(flag)) => {
            let done = AtomicBool::new(false);
            let stopped = AtomicBool::new(false);
            DeclarativeKafka::with_sink_fault_hook(move |p| {
                if let SinkFaultPoint::AfterCommit { checkpoint_id } = p
                    && stopped.load(Ordering::SeqCst)
                {
                    // A stale worker's commit went through: the test fails on this.
                    eprintln!(
                        "COMMITTED the transaction of checkpoint {checkpoint_id} after resuming"
                    );
                }
                if let SinkFaultPoint::BeforeCommit { checkpoint_id } = p
                    && checkpoint_id >= at
                    && !done.swap(true, Ordering::SeqCst)
                    && first_to_stop(&flag)
                {
                    // The test looks for this line, then for the stopped state.
                    eprintln!("STOPPING in the commit transaction of checkpoint {checkpoint_id}");
                    // SAFETY: raising a signal on our own process.
                    unsafe {
                        libc::raise(libc::SIGSTOP);
                    }
                    stopped.store(true, Ordering::SeqCst);
                    eprintln!("RESUMED in the commit transaction of checkpoint {checkpoint_id}");
                }
            })
        }
        (None, _) => DeclarativeKafka::default(),
        (Some(_), None) => panic!("STOP_AT needs STOP_FLAG"),
    };
    runnel_runtime::cli::main_with(ConnectorRegistry::new().with_kafka(kafka))
}

/// Whether this process is the first to claim `flag` (created exclusively).
fn first_to_stop(flag: &Path) -> bool {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(flag)
    {
        Ok(mut f) => {
            let _ = write!(f, "{}", std::process::id());
            true
        }
        Err(_) => false,
    }
}
