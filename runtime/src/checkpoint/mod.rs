//! Checkpoints and savepoints: the persisted format, loading and discovery, and
//! how restored state is redistributed to a (possibly different) parallelism.

pub mod format;
pub mod redistribute;
pub(crate) mod trigger;

use std::collections::HashMap;
use std::sync::Arc;

use format::{METADATA_FILE, SnapshotMetadata, SubtaskState, decode_metadata, decode_state_file};

use crate::error::SnapshotError;
use crate::storage::{self, CheckpointStorage};

/// File name of an operator subtask's state: readable, and unique per operator
/// name because `StreamEnv::build` rejects names that sanitize to the same file.
pub fn state_file_name(uid: &str, subtask: u32) -> String {
    let clean: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}.{subtask}.state")
}

/// A snapshot read from storage and verified (sizes and checksums).
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub uri: String,
    pub metadata: SnapshotMetadata,
    /// State per operator uid, by old subtask index.
    pub states: HashMap<String, Vec<(u32, SubtaskState)>>,
}

fn open_snapshot(uri: &str) -> Result<Arc<dyn CheckpointStorage>, SnapshotError> {
    Ok(storage::open(uri)?)
}

/// Reads only `_metadata` (cheap; used by discovery and `inspect`).
pub fn read_metadata(uri: &str) -> Result<SnapshotMetadata, SnapshotError> {
    let st = open_snapshot(uri)?;
    let bytes = st.read(METADATA_FILE)?;
    decode_metadata(&st.uri(METADATA_FILE), &bytes)
}

/// Loads and verifies a complete snapshot (a `chk-N` or savepoint directory).
pub fn load_snapshot(uri: &str) -> Result<LoadedSnapshot, SnapshotError> {
    let st = open_snapshot(uri)?;
    let md_path = st.uri(METADATA_FILE);
    let bytes = match st.read(METADATA_FILE) {
        Ok(b) => b,
        Err(crate::error::StorageError::NotFound { .. }) => {
            return Err(SnapshotError::CorruptMetadata {
                path: md_path,
                reason: "missing: the snapshot is incomplete (its _metadata was never written)"
                    .into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let metadata = decode_metadata(&md_path, &bytes)?;
    let mut states: HashMap<String, Vec<(u32, SubtaskState)>> = HashMap::new();
    for op in &metadata.operators {
        for sub in &op.subtasks {
            let path = st.uri(&sub.file);
            let data = st.read(&sub.file).map_err(|e| match e {
                crate::error::StorageError::NotFound { .. } => SnapshotError::CorruptStateFile {
                    path: path.clone(),
                    reason: "missing".into(),
                },
                e => e.into(),
            })?;
            if data.len() as u64 != sub.size {
                return Err(SnapshotError::CorruptStateFile {
                    path,
                    reason: format!(
                        "size is {} bytes but _metadata records {} (truncated or replaced)",
                        data.len(),
                        sub.size
                    ),
                });
            }
            if format::checksum_hex(&data) != sub.checksum {
                return Err(SnapshotError::CorruptStateFile {
                    path,
                    reason: "checksum does not match _metadata".into(),
                });
            }
            let state = decode_state_file(&path, &data)?;
            states
                .entry(op.uid.clone())
                .or_default()
                .push((sub.index, state));
        }
    }
    Ok(LoadedSnapshot {
        uri: uri.trim_end_matches('/').to_string(),
        metadata,
        states,
    })
}

/// Checkpoint ids present under a checkpoint directory, newest first.
pub fn list_checkpoints(dir_uri: &str) -> Result<Vec<(u64, String)>, SnapshotError> {
    let st = open_snapshot(dir_uri)?;
    let mut ids: Vec<(u64, String)> = st
        .list("")?
        .into_iter()
        .filter_map(|n| {
            n.strip_prefix("chk-")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|id| (id, storage::join(dir_uri, &n)))
        })
        .collect();
    ids.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    Ok(ids)
}

/// Loads the newest checkpoint under `dir_uri` that is complete and intact,
/// skipping (and logging) incomplete or corrupt ones.
pub fn load_latest(dir_uri: &str) -> Result<LoadedSnapshot, SnapshotError> {
    for (id, uri) in list_checkpoints(dir_uri)? {
        match load_snapshot(&uri) {
            Ok(s) => return Ok(s),
            Err(e) => tracing::warn!(checkpoint = id, error = %e, "skipping unusable checkpoint"),
        }
    }
    Err(SnapshotError::NoCompleteCheckpoint(dir_uri.to_string()))
}
