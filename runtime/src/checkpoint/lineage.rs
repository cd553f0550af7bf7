//! Lineage markers in a job's checkpoint directory.
//!
//! One checkpoint directory can hold snapshots of several runs that do not
//! continue each other: a job redeployed from an older savepoint leaves the
//! newer checkpoints of its previous run behind, with higher ids than
//! anything the new run has written yet. "The latest checkpoint" must not
//! lead back to those. So every run that has checkpoint storage writes
//! `_lineage-<first id>` before it starts, holding the URI of the snapshot it
//! restored from (empty for a fresh start). Discovery considers only
//! snapshots with ids from the newest marker on, and when there is none of
//! those yet, the marker's own starting point: the state this run began with.
//! A directory without markers (written before they existed) is read as
//! before: every snapshot counts.

use crate::error::StorageError;
use crate::storage::CheckpointStorage;

const PREFIX: &str = "_lineage-";

/// Where the current run of a checkpoint directory started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The first snapshot id the run could write.
    pub first_id: u64,
    /// The snapshot it restored from; `None` for a fresh start.
    pub restored_from: Option<String>,
}

fn name(first_id: u64) -> String {
    format!("{PREFIX}{first_id}")
}

/// Marker ids directly under the storage root, newest first.
pub fn marker_ids(st: &dyn CheckpointStorage) -> Result<Vec<u64>, StorageError> {
    super::numbered(st, PREFIX)
}

/// The newest marker, if any. A marker that vanished between the listing and
/// the read (a concurrent prune) is skipped for the next older one.
pub fn newest(st: &dyn CheckpointStorage) -> Result<Option<Lineage>, StorageError> {
    for id in marker_ids(st)? {
        match st.read(&name(id)) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                return Ok(Some(Lineage {
                    first_id: id,
                    restored_from: (!text.is_empty()).then_some(text),
                }));
            }
            Err(StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Records that a run starting at `first_id` began from `restored_from`, and
/// deletes older markers (only the newest one is ever read).
pub fn start(
    st: &dyn CheckpointStorage,
    first_id: u64,
    restored_from: Option<&str>,
) -> Result<(), StorageError> {
    st.write(&name(first_id), restored_from.unwrap_or("").as_bytes())?;
    for id in marker_ids(st)? {
        if id < first_id
            && let Err(e) = st.delete(&name(id))
        {
            tracing::warn!(error = %e, "could not delete an older lineage marker");
        }
    }
    Ok(())
}

/// Whether a snapshot id belongs to the current run (or a later one).
pub fn admits(lineage: Option<&Lineage>, id: u64) -> bool {
    lineage.is_none_or(|l| id >= l.first_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_marker_wins_and_older_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::storage::open(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(newest(st.as_ref()).unwrap(), None);
        start(st.as_ref(), 1, None).unwrap();
        assert_eq!(
            newest(st.as_ref()).unwrap(),
            Some(Lineage {
                first_id: 1,
                restored_from: None
            })
        );
        start(st.as_ref(), 40, Some("s3://b/sp/savepoint-7-abcdef")).unwrap();
        assert_eq!(marker_ids(st.as_ref()).unwrap(), vec![40]);
        let l = newest(st.as_ref()).unwrap().unwrap();
        assert_eq!(
            l.restored_from.as_deref(),
            Some("s3://b/sp/savepoint-7-abcdef")
        );
        assert!(!admits(Some(&l), 39));
        assert!(admits(Some(&l), 40));
        assert!(admits(None, 0));
    }
}
