//! Runnel runtime: a stateful stream-processing engine with Flink's checkpoint
//! semantics (barriers, alignment, savepoints, restore with rescaling).
//!
//! Build a job with [`StreamEnv`], run it with [`StreamEnv::execute`] or
//! [`StreamEnv::execute_async`] (which returns a [`JobClient`] for savepoints,
//! stop and cancel).

pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod declarative;
pub mod distributed;
pub mod error;
pub mod event;
mod executor;
pub mod faults;
pub mod functions;
pub mod graph;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keygroup;
pub mod metrics;
pub mod restart;
pub mod seeds;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod storage;
mod task;
pub mod timers;
pub mod valve;
pub mod watermark;
pub mod windows;

pub use config::{CheckpointConfig, CheckpointMode, JobConfig, RestoreSettings};
pub use error::{FnResult, JobError, UserError};
pub use event::SnapshotKind;
pub use executor::{
    CheckpointInProgress, CompletedCheckpoint, JobClient, JobHandle, JobOutcome, JobState,
    JobStatus, SavepointInfo, SavepointReceiver,
};
pub use functions::{
    CheckpointListener, Collector, Data, InitContext, KeyedContext, KeyedProcessFunction,
    ProcessContext, ProcessFunction, SinkContext, SinkFunction, SnapshotContext, SourceFunction,
    SourceOutput, SourcePoll, TimeDomain,
};
pub use graph::{DataStream, KeyedStream, StreamEnv};
pub use restart::RestartStrategy;
pub use watermark::WatermarkStrategy;
