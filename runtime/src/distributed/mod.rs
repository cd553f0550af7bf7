//! Distributed execution: one coordinator and N worker processes (see
//! `docs/distributed.md`).
//!
//! Every process builds the job graph from the same job definition (a
//! [`JobFactory`]); only the assignment of subtasks to workers, the attempt's
//! epoch and the restore point travel from the coordinator. Records crossing
//! workers go over TCP with credit-based flow control ([`exchange`]); barriers
//! and watermarks travel in-band, so alignment is unchanged. The coordinator
//! runs the single-process job master over the workers ([`coordinator`]), so
//! checkpoints, savepoints, restarts and the control API behave as in a local
//! job. Single-process mode stays the default and is untouched.

pub mod assign;
mod conn;
pub mod coordinator;
pub mod discovery;
pub(crate) mod exchange;
pub mod fence;
pub mod plan;
pub(crate) mod wire;
pub mod worker;

use std::sync::Arc;

pub use coordinator::{CoordinatorOptions, WorkerStats, start_coordinator, start_coordinator_with};
pub use wire::ExchangeStats;
pub use worker::{WorkerHandle, WorkerOptions, start_worker};

use crate::config::JobConfig;
use crate::error::JobError;
use crate::graph::JobGraph;

/// Builds the job graph and configuration, given the `--parallelism`
/// override. Called in every process, so it must be deterministic.
pub type JobFactory =
    Arc<dyn Fn(Option<u32>) -> Result<(JobGraph, JobConfig), JobError> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Protocol(String),
}

/// Asks a worker for its exchange statistics (tests and tools).
pub fn worker_stats(addr: &str) -> Result<ExchangeStats, DistributedError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DistributedError::Io(e.to_string()))?;
    rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| DistributedError::Io(format!("cannot connect to {addr}: {e}")))?;
        let (mut r, mut w) = conn::split(s);
        conn::send_msg(
            &mut w,
            &wire::Hello::Stats {
                version: wire::PROTOCOL_VERSION,
            },
        )
        .await
        .map_err(DistributedError::Protocol)?;
        conn::next_msg(&mut r, Some(std::time::Duration::from_secs(10)))
            .await
            .map_err(DistributedError::Protocol)
    })
}
