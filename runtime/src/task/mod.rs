//! Subtask execution: source tasks and input tasks, each on its own thread.

pub(crate) mod aligner;
pub(crate) mod chain;
pub(crate) mod counted;
pub(crate) mod input;
pub(crate) mod source;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_bytes::ByteBuf;

use crate::checkpoint::format::{KeyGroupData, KeyedStateMeta, OperatorListData};
use crate::clock::Clock;
use crate::error::TaskError;
use crate::event::{Barrier, SnapshotTarget};
use crate::executor::MasterMsg;
use crate::faults::{FaultInjector, FaultPoint};
use aligner::AlignMode;
use chain::{Notification, OperatorSnapshot};

/// The state one operator subtask restores.
#[derive(Default, Debug)]
pub(crate) struct Restored {
    pub operator_states: Vec<OperatorListData>,
    pub key_groups: Vec<KeyGroupData>,
    pub keyed_metas: Vec<KeyedStateMeta>,
    pub in_flight: Vec<ByteBuf>,
}

pub(crate) enum Control {
    /// Sources only: take a snapshot and emit the barrier.
    Trigger(Barrier),
    Notify(Notification),
    /// Sources only: every source finished and the final checkpoint is done; end
    /// the stream so that tasks drain and exit.
    FinishSources,
    Cancel,
}

pub(crate) struct UploadJob {
    pub attempt: u64,
    pub checkpoint_id: u64,
    pub task_index: usize,
    pub subtask: u32,
    pub target: Arc<SnapshotTarget>,
    pub ops: Vec<OperatorSnapshot>,
    /// How long this subtask aligned barriers before snapshotting.
    pub alignment_ms: u64,
}

pub(crate) struct TaskEnv {
    pub name: String,
    pub task_index: usize,
    pub subtask: u32,
    pub attempt: u64,
    pub head_uid: String,
    pub control: Receiver<Control>,
    pub master: Sender<MasterMsg>,
    pub uploader: Sender<UploadJob>,
    pub mode: AlignMode,
    pub clock: Clock,
    pub faults: FaultInjector,
    pub flush_interval: Duration,
    pub watermark_interval_ms: i64,
}

impl TaskEnv {
    /// Hands a finished subtask snapshot to the uploader.
    pub fn upload(
        &self,
        b: &Barrier,
        ops: Vec<OperatorSnapshot>,
        alignment_ms: u64,
    ) -> Result<(), TaskError> {
        self.uploader
            .send(UploadJob {
                attempt: self.attempt,
                checkpoint_id: b.id,
                task_index: self.task_index,
                subtask: self.subtask,
                target: b.target.clone(),
                ops,
                alignment_ms,
            })
            .map_err(|_| TaskError::Cancelled)
    }

    pub fn decline(&self, checkpoint_id: u64, reason: String) {
        let _ = self.master.send(MasterMsg::Decline {
            attempt: self.attempt,
            checkpoint_id,
            reason,
        });
    }

    pub fn fault_before_snapshot(&self, checkpoint_id: u64) -> Result<(), TaskError> {
        let p = FaultPoint::BeforeSnapshot {
            task: self.name.clone(),
            checkpoint_id,
        };
        if self.faults.should_fail(&p) {
            return Err(TaskError::Injected(format!("{p:?}")));
        }
        Ok(())
    }
}

pub(crate) trait TaskRunner: Send {
    fn run(self: Box<Self>, env: &TaskEnv) -> Result<(), TaskError>;
}
