//! Engine status → control-API messages.

use runnel_api::{CheckpointInProgress, CheckpointInfo, JobStatusResponse};

use crate::event::SnapshotKind;
use crate::executor::{self, CompletedCheckpoint, JobStatus};

fn kind(k: SnapshotKind) -> runnel_api::SnapshotKind {
    match k {
        SnapshotKind::Checkpoint => runnel_api::SnapshotKind::Checkpoint,
        SnapshotKind::Savepoint => runnel_api::SnapshotKind::Savepoint,
        SnapshotKind::StopSavepoint { .. } => runnel_api::SnapshotKind::StopSavepoint,
    }
}

pub fn checkpoint_info(c: &CompletedCheckpoint) -> CheckpointInfo {
    CheckpointInfo {
        id: c.id,
        kind: kind(c.kind),
        path: c.path.clone(),
        duration_ms: c.duration_ms,
        size_bytes: c.size_bytes,
        alignment_ms: c.alignment_ms,
        completed_ms: c.completed_ms,
    }
}

pub(super) fn in_progress_info(p: &executor::CheckpointInProgress) -> CheckpointInProgress {
    CheckpointInProgress {
        id: p.id,
        kind: kind(p.kind),
        path: p.path.clone(),
        started_ms: p.started_ms,
        acknowledged_subtasks: p.acknowledged,
        total_subtasks: p.total,
    }
}

pub fn status_response(s: &JobStatus) -> JobStatusResponse {
    JobStatusResponse {
        name: s.name.clone(),
        state: s.state,
        start_time_ms: s.start_ms,
        restarts: s.restarts,
        attempt: s.attempt,
        parallelism: s.parallelism.clone(),
        max_parallelism: s.max_parallelism,
        restored_from: s.restored_from.last().cloned().flatten(),
        last_checkpoint: s.completed.last().map(checkpoint_info),
        last_failure: s.last_failure.clone(),
    }
}
