//! The messages of Runnel's per-job HTTP control API.
//!
//! They live in their own crate with nothing but serde so that the Kubernetes
//! operator and the CLI can speak the API without compiling the engine. The
//! wire format is JSON with camelCase fields; `docs/control-api.yaml` is the
//! OpenAPI description of the same types. Fields are only ever added (with
//! defaults), so an older client keeps reading a newer runtime.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path prefix of every endpoint; bumped only with an incompatible change.
pub const API_PREFIX: &str = "/v1";

/// The job's lifecycle state as the runtime sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Created,
    Running,
    Restarting,
    Finished,
    Cancelled,
    Stopped,
    Failed,
}

impl JobState {
    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Cancelled | JobState::Stopped | JobState::Failed
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
    StopSavepoint,
}

/// A completed checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInfo {
    pub id: u64,
    pub kind: SnapshotKind,
    /// URI of the snapshot directory (what `--from-savepoint` takes).
    pub path: String,
    /// From trigger to `_metadata` written.
    pub duration_ms: u64,
    pub size_bytes: u64,
    /// Longest time any subtask spent aligning barriers for this snapshot.
    pub alignment_ms: u64,
    /// Wall-clock completion time, milliseconds since the Unix epoch.
    pub completed_ms: i64,
}

/// A snapshot that has been triggered and not yet completed or failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointInProgress {
    pub id: u64,
    pub kind: SnapshotKind,
    pub path: String,
    pub started_ms: i64,
    pub acknowledged_subtasks: u32,
    pub total_subtasks: u32,
}

/// `GET /v1/job`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusResponse {
    pub name: String,
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub start_time_ms: i64,
    pub restarts: u32,
    /// Attempt number (1 for the first deployment; grows with each restart).
    pub attempt: u64,
    /// Parallelism per operator uid.
    pub parallelism: BTreeMap<String, u32>,
    pub max_parallelism: u32,
    /// Snapshot the current attempt restored from.
    #[serde(default)]
    pub restored_from: Option<String>,
    #[serde(default)]
    pub last_checkpoint: Option<CheckpointInfo>,
    #[serde(default)]
    pub last_failure: Option<String>,
}

/// `GET /v1/job/checkpoints`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointsResponse {
    /// Retained completed snapshots of this run, oldest first.
    pub completed: Vec<CheckpointInfo>,
    pub in_progress: Vec<CheckpointInProgress>,
    pub completed_count: u64,
    pub failed_count: u64,
}

/// Body of `POST /v1/job/savepoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRequest {
    /// Directory URI; defaults to the job's configured savepoint directory.
    #[serde(default)]
    pub target_directory: Option<String>,
}

/// Body of `POST /v1/job/stop`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    #[serde(default)]
    pub target_directory: Option<String>,
    /// Emit a final watermark first, so event-time windows and timers fire.
    #[serde(default)]
    pub drain: bool,
}

/// `202` answer to a savepoint or stop request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerResponse {
    pub trigger_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TriggerState {
    InProgress,
    Completed,
    Failed,
}

/// `GET /v1/job/savepoints/{triggerId}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    pub trigger_id: String,
    pub state: TriggerState,
    /// True when this savepoint also stops the job.
    pub stop: bool,
    #[serde(default)]
    pub checkpoint_id: Option<u64>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_camel_case_and_states_upper_case() {
        let s = SavepointStatus {
            trigger_id: "t1".into(),
            state: TriggerState::InProgress,
            stop: false,
            checkpoint_id: None,
            path: None,
            error: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["triggerId"], "t1");
        assert_eq!(v["state"], "IN_PROGRESS");
    }

    #[test]
    fn older_messages_without_optional_fields_parse() {
        let j = r#"{"name":"j","state":"RUNNING","startTimeMs":1,"restarts":0,"attempt":1,
                   "parallelism":{"a":2},"maxParallelism":128}"#;
        let s: JobStatusResponse = serde_json::from_str(j).unwrap();
        assert_eq!(s.state, JobState::Running);
        assert!(s.last_checkpoint.is_none());
        let r: StopRequest = serde_json::from_str("{}").unwrap();
        assert!(!r.drain);
    }

    #[test]
    fn terminal_states() {
        assert!(JobState::Failed.is_terminal());
        assert!(!JobState::Restarting.is_terminal());
    }
}
