//! Savepoint references in a job's checkpoint directory.
//!
//! A savepoint lives where the user asked (`savepoint-<id>-<hex>/` under any
//! directory), yet it completes like a checkpoint: sinks commit its output
//! when it does. If the job then goes away before anyone has read the
//! savepoint's path (a stop-with-savepoint whose pod is evicted before the
//! operator reads the result), a restore from the latest *checkpoint* would
//! go back before output that is already committed and produce it again. So
//! before a savepoint commits, the job writes `_savepoint-<id>` into its
//! checkpoint directory, holding the savepoint's URI, and discovery of the
//! latest snapshot considers these references beside `chk-<id>`. Ids in one
//! checkpoint directory only grow (see `Master::init_next_id`), so the highest
//! complete one is the newest.
//!
//! A reference is written before the savepoint's `_metadata`, so it can point
//! at a savepoint that never completed or was disposed later: discovery
//! verifies the target like a checkpoint and skips it if it is incomplete.

use crate::error::StorageError;
use crate::storage::CheckpointStorage;

const PREFIX: &str = "_savepoint-";

/// File name of the reference for savepoint `id`.
pub fn ref_name(id: u64) -> String {
    format!("{PREFIX}{id}")
}

/// Reference ids directly under the checkpoint storage root, newest first.
pub fn ref_ids(st: &dyn CheckpointStorage) -> Result<Vec<u64>, StorageError> {
    super::numbered(st, PREFIX)
}

/// Records that savepoint `id` is (about to be) at `uri`.
pub fn write_ref(st: &dyn CheckpointStorage, id: u64, uri: &str) -> Result<(), StorageError> {
    st.write(&ref_name(id), uri.as_bytes())
}

/// The savepoint URI a reference holds; `None` if it is not valid UTF-8 or
/// empty (treated like an incomplete snapshot).
pub fn read_ref(st: &dyn CheckpointStorage, id: u64) -> Result<Option<String>, StorageError> {
    let bytes = st.read(&ref_name(id))?;
    Ok(String::from_utf8(bytes)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// Deletes references older than `keep_from`: once a newer savepoint or
/// checkpoint is complete they can never be the latest again. Failures are
/// left for the next call (a stale reference is only a few bytes).
pub fn prune_below(st: &dyn CheckpointStorage, keep_from: u64) -> Result<(), StorageError> {
    for id in ref_ids(st)? {
        if id < keep_from {
            st.delete(&ref_name(id))?;
        }
    }
    Ok(())
}

/// One candidate for "the latest snapshot" of a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    Checkpoint(u64),
    SavepointRef(u64),
}

impl Candidate {
    pub fn id(&self) -> u64 {
        match self {
            Candidate::Checkpoint(id) | Candidate::SavepointRef(id) => *id,
        }
    }
}

/// Checkpoints and savepoint references merged, newest first. At equal ids
/// (which the shared counter never produces) the checkpoint comes first.
pub fn candidates(checkpoints: &[u64], refs: &[u64]) -> Vec<Candidate> {
    let mut v: Vec<Candidate> = checkpoints
        .iter()
        .map(|id| Candidate::Checkpoint(*id))
        .chain(refs.iter().map(|id| Candidate::SavepointRef(*id)))
        .collect();
    v.sort_by(|a, b| {
        b.id().cmp(&a.id()).then_with(|| {
            matches!(a, Candidate::SavepointRef(_)).cmp(&matches!(b, Candidate::SavepointRef(_)))
        })
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_newest_first_with_checkpoints_before_refs_at_equal_ids() {
        let c = candidates(&[9, 4, 2], &[7, 9, 1]);
        assert_eq!(
            c,
            vec![
                Candidate::Checkpoint(9),
                Candidate::SavepointRef(9),
                Candidate::SavepointRef(7),
                Candidate::Checkpoint(4),
                Candidate::Checkpoint(2),
                Candidate::SavepointRef(1),
            ]
        );
        assert!(candidates(&[], &[]).is_empty());
    }

    #[test]
    fn references_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let st = crate::storage::open(&format!("file://{}", dir.path().display())).unwrap();
        write_ref(st.as_ref(), 3, "s3://b/sp/savepoint-3-abc").unwrap();
        write_ref(st.as_ref(), 12, "file:///x/savepoint-12-def\n").unwrap();
        st.write("chk-5/_metadata", b"{}").unwrap();
        st.write(&ref_name(20), b"").unwrap();
        assert_eq!(ref_ids(st.as_ref()).unwrap(), vec![20, 12, 3]);
        assert_eq!(
            read_ref(st.as_ref(), 12).unwrap().as_deref(),
            Some("file:///x/savepoint-12-def")
        );
        assert_eq!(read_ref(st.as_ref(), 20).unwrap(), None);
        prune_below(st.as_ref(), 12).unwrap();
        assert_eq!(ref_ids(st.as_ref()).unwrap(), vec![20, 12]);
    }
}
