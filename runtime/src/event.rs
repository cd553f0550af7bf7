//! What flows through a channel. Records, watermarks, idleness, barriers and end of
//! input share one ordered channel so that a barrier can never overtake a record.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::CheckpointStorage;

/// A record with its optional event-time timestamp (milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord<T> {
    pub value: T,
    pub timestamp: Option<i64>,
}

/// The final watermark: emitted when input ends so that all event-time timers fire.
pub const MAX_WATERMARK: i64 = i64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
    /// Stop-with-savepoint. `drain` emits the final watermark before the barrier so
    /// that windows fire, as Flink's `stop --drain`.
    StopSavepoint {
        drain: bool,
    },
}

impl SnapshotKind {
    pub fn is_savepoint(&self) -> bool {
        !matches!(self, SnapshotKind::Checkpoint)
    }
}

/// Where the subtasks of one snapshot write their files.
pub struct SnapshotTarget {
    pub storage: Arc<dyn CheckpointStorage>,
    /// Directory relative to the storage root ("chk-7" or "" for a savepoint root).
    pub dir: String,
    /// Human-readable location for logs and results.
    pub location: String,
}

impl std::fmt::Debug for SnapshotTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

#[derive(Clone, Debug)]
pub struct Barrier {
    pub id: u64,
    pub timestamp_ms: i64,
    pub kind: SnapshotKind,
    pub target: Arc<SnapshotTarget>,
    /// The checkpoint a bounded job takes after its sources finished, before
    /// it ends. Nothing runs after it, so it is always aligned (see
    /// [`Barrier::must_align`]).
    pub is_final: bool,
}

impl Barrier {
    /// Whether every input must deliver this barrier before the snapshot
    /// even when checkpoints are unaligned (at-least-once mode stays as it
    /// is: it promises no exactness to align for). An unaligned snapshot is taken at the
    /// first barrier, and what the other inputs still hold before theirs is
    /// processed afterwards: output from it goes out *after* the barrier, into
    /// the next checkpoint. For the final checkpoint and a draining stop there
    /// is no next checkpoint (the final watermark, in flight on the slower
    /// input, fires the last windows there), so that output was never
    /// committed. Flink likewise never leaves in-flight data to a final
    /// checkpoint: its tasks drain their inputs before it.
    ///
    /// Savepoints of every kind are aligned too, as in Flink: in-flight
    /// records are encoded as the type of the edge they were on, and a
    /// savepoint is what a *changed* job restores from. The declarative
    /// builder, for one, sends a count-only window its keys alone but a
    /// window with other aggregates whole records; in-flight keys restored
    /// into the latter would be keyed as records (wrongly), so a window keeps
    /// what its input carries and refuses such a restore from an unaligned
    /// checkpoint (`WindowOptions::input_kind`). Without in-flight
    /// data a savepoint holds only operator and keyed state, which restore
    /// by uid and key group into any compatible job.
    pub fn must_align(&self) -> bool {
        self.is_final || self.kind.is_savepoint()
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Event<T> {
    Record(StreamRecord<T>),
    Watermark(i64),
    /// Watermark status of the sending subtask: idle (true) or active again (false).
    Idle(bool),
    Barrier(Barrier),
    /// End of this channel. `drain` tells operators to flush (fire remaining timers,
    /// emit buffered output); without it the job is stopping after a savepoint and
    /// operators must not emit anything the savepoint does not account for.
    End {
        drain: bool,
    },
}

pub(crate) type Batch<T> = Vec<Event<T>>;
