//! Checkpoints and savepoints: the persisted format, loading and discovery, and
//! how restored state is redistributed to a (possibly different) parallelism.

mod body_input;
pub mod entries;
pub mod format;
pub mod lineage;
pub mod redistribute;
pub mod retention;
pub mod savepoint_ref;
pub mod summary;
pub(crate) mod trigger;

use std::collections::HashMap;
use std::sync::Arc;

use format::{METADATA_FILE, SnapshotMetadata, SubtaskMeta, SubtaskState, decode_metadata};

use crate::error::{SnapshotError, StorageError};
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

/// The name a state file is written under: [`state_file_name`] behind a random
/// prefix. Two coordinators that race on the same checkpoint number (a stale one
/// that has not noticed it was replaced) write into the same `chk-N` directory;
/// unique names keep them from overwriting each other's files, so whichever
/// commits `_metadata` finds exactly the files it recorded.
pub fn unique_state_file_name(uid: &str, subtask: u32) -> String {
    format!(
        "{:08x}.{}",
        rand::random::<u32>(),
        state_file_name(uid, subtask)
    )
}

/// State files fetched and decoded concurrently during a restore, at most.
const RESTORE_THREADS: usize = 4;

/// How many of `files` state files a restore fetches and decodes at once: a
/// few, but no more than there are cores. Public so that benchmarks can compare
/// a restore with a plain download at the same concurrency.
pub fn restore_concurrency(files: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, RESTORE_THREADS)
        .min(files.max(1))
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
    read_metadata_in(st.as_ref(), "")
}

/// Reads `dir/_metadata` of a storage; a missing one means the snapshot is
/// incomplete.
fn read_metadata_in(
    st: &dyn CheckpointStorage,
    dir: &str,
) -> Result<SnapshotMetadata, SnapshotError> {
    let path = storage::join(dir, METADATA_FILE);
    let md_uri = st.uri(&path);
    let bytes = match st.read(&path) {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => {
            return Err(SnapshotError::CorruptMetadata {
                path: md_uri,
                reason: "missing: the snapshot is incomplete (its _metadata was never written)"
                    .into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    decode_metadata(&md_uri, &bytes)
}

/// Loads and verifies a complete snapshot (a `chk-N` or savepoint directory).
/// State files are streamed: each is decoded and checksummed as it arrives,
/// never held in memory as bytes.
pub fn load_snapshot(uri: &str) -> Result<LoadedSnapshot, SnapshotError> {
    let st = open_snapshot(uri)?;
    let metadata = read_metadata_in(st.as_ref(), "")?;
    let files: Vec<(&str, &SubtaskMeta)> = metadata
        .operators
        .iter()
        .flat_map(|op| op.subtasks.iter().map(move |s| (op.uid.as_str(), s)))
        .collect();
    // Files are fetched and decoded on a few threads at once: decoding is
    // CPU-bound, so one stream at a time leaves the network idle.
    let threads = restore_concurrency(files.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<Vec<(usize, SubtaskState)>, SnapshotError>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((_, sub)) = files.get(i) else {
                                return Ok(out);
                            };
                            out.push((i, read_subtask(st.as_ref(), "", sub)?));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(SnapshotError::Encode("a restore thread panicked".into()))
                    })
                })
                .collect()
        });
    let mut decoded: Vec<(usize, SubtaskState)> = Vec::with_capacity(files.len());
    for r in results {
        decoded.extend(r?);
    }
    decoded.sort_by_key(|(i, _)| *i);
    let mut states: HashMap<String, Vec<(u32, SubtaskState)>> = HashMap::new();
    for (i, state) in decoded {
        let (uid, sub) = files[i];
        states
            .entry(uid.to_string())
            .or_default()
            .push((sub.index, state));
    }
    Ok(LoadedSnapshot {
        uri: uri.trim_end_matches('/').to_string(),
        metadata,
        states,
    })
}

fn missing(path: String) -> SnapshotError {
    SnapshotError::CorruptStateFile {
        path,
        reason: "missing".into(),
    }
}

/// Checks a state file's recorded size (one cheap request), so that a replaced
/// or truncated file gets a precise message before anything is downloaded.
fn check_size(
    st: &dyn CheckpointStorage,
    dir: &str,
    sub: &SubtaskMeta,
) -> Result<(), SnapshotError> {
    let rel = storage::join(dir, &sub.file);
    let path = st.uri(&rel);
    let actual = match st.size(&rel) {
        Ok(n) => n,
        Err(StorageError::NotFound { .. }) => return Err(missing(path)),
        Err(e) => return Err(e.into()),
    };
    if actual != sub.size {
        return Err(SnapshotError::CorruptStateFile {
            path,
            reason: format!(
                "size is {actual} bytes but _metadata records {} (truncated or replaced)",
                sub.size
            ),
        });
    }
    Ok(())
}

fn read_subtask(
    st: &dyn CheckpointStorage,
    dir: &str,
    sub: &SubtaskMeta,
) -> Result<SubtaskState, SnapshotError> {
    check_size(st, dir, sub)?;
    let rel = storage::join(dir, &sub.file);
    let path = st.uri(&rel);
    let mut reader = match st.open(&rel) {
        Ok(r) => r,
        Err(StorageError::NotFound { .. }) => return Err(missing(path)),
        Err(e) => return Err(e.into()),
    };
    format::read_state_file(&path, &mut reader, sub.size, Some(&sub.checksum))
}

/// Checkpoint ids present under a checkpoint directory, newest first (complete
/// or not; see [`find_latest_checkpoint`] for the newest complete one).
pub fn list_checkpoints(dir_uri: &str) -> Result<Vec<(u64, String)>, SnapshotError> {
    let st = open_snapshot(dir_uri)?;
    Ok(checkpoint_ids(st.as_ref())?
        .into_iter()
        .map(|id| (id, storage::join(dir_uri, &format!("chk-{id}"))))
        .collect())
}

/// `chk-N` ids directly under the storage root, newest first.
pub(crate) fn checkpoint_ids(st: &dyn CheckpointStorage) -> Result<Vec<u64>, StorageError> {
    numbered(st, "chk-")
}

/// The N of every `<prefix>N` directly under the storage root, newest first
/// (checkpoints, savepoint references and lineage markers are named so).
pub(crate) fn numbered(st: &dyn CheckpointStorage, prefix: &str) -> Result<Vec<u64>, StorageError> {
    let mut ids: Vec<u64> = st
        .list("")?
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok()))
        .collect();
    ids.sort_unstable_by_key(|id| std::cmp::Reverse(*id));
    ids.dedup();
    Ok(ids)
}

/// Whether an error says the snapshot itself is unusable (incomplete or
/// corrupt), as opposed to storage being unreachable. Discovery skips the former
/// and reports the latter: falling back to an older checkpoint because S3 had a
/// hiccup would silently lose progress.
fn is_unusable(e: &SnapshotError) -> bool {
    matches!(
        e,
        SnapshotError::CorruptMetadata { .. }
            | SnapshotError::CorruptStateFile { .. }
            | SnapshotError::UnsupportedVersion { .. }
            | SnapshotError::Storage(StorageError::NotFound { .. })
    )
}

/// Loads the newest checkpoint under `dir_uri` (or savepoint it references,
/// see [`savepoint_ref`]) of the directory's current run ([`lineage`]) that
/// is complete and intact, skipping (and logging) incomplete or corrupt ones;
/// if the run has none yet, the snapshot it started from.
pub fn load_latest(dir_uri: &str) -> Result<LoadedSnapshot, SnapshotError> {
    let st = open_snapshot(dir_uri)?;
    let Latest { candidates, start } = latest_candidates(st.as_ref(), dir_uri)?;
    for (c, uri) in candidates {
        match load_snapshot(&uri) {
            Ok(s)
                if matches!(c, savepoint_ref::Candidate::Checkpoint(_))
                    || s.metadata.checkpoint_id == c.id() =>
            {
                return Ok(s);
            }
            Ok(s) => tracing::warn!(
                candidate = ?c,
                %uri,
                found = s.metadata.checkpoint_id,
                "skipping a snapshot whose id does not match its name"
            ),
            Err(e) if is_unusable(&e) => {
                tracing::warn!(candidate = ?c, %uri, error = %e, "skipping unusable snapshot")
            }
            Err(e) => return Err(e),
        }
    }
    match start.and_then(|l| l.restored_from) {
        // Not skipped when unusable: falling back to an empty start would
        // silently drop the state this run began with.
        Some(uri) => load_snapshot(&uri),
        None => Err(SnapshotError::NoCompleteCheckpoint(dir_uri.to_string())),
    }
}

/// What "the latest snapshot" of a checkpoint directory is chosen from.
struct Latest {
    /// The checkpoints and referenced savepoints of the directory's current
    /// run with their URIs, newest first (see [`savepoint_ref`] and
    /// [`lineage`]).
    candidates: Vec<(savepoint_ref::Candidate, String)>,
    /// Where that run started, if the directory has a lineage marker.
    start: Option<lineage::Lineage>,
}

/// Lists what [`Latest`] holds. A reference that does not hold a URI is
/// skipped like an incomplete checkpoint.
fn latest_candidates(st: &dyn CheckpointStorage, dir_uri: &str) -> Result<Latest, SnapshotError> {
    let start = lineage::newest(st)?;
    let chk = checkpoint_ids(st)?;
    let refs = savepoint_ref::ref_ids(st)?;
    let mut candidates = Vec::new();
    for c in savepoint_ref::candidates(&chk, &refs) {
        if !lineage::admits(start.as_ref(), c.id()) {
            continue;
        }
        match &c {
            savepoint_ref::Candidate::Checkpoint(id) => {
                candidates.push((c.clone(), storage::join(dir_uri, &format!("chk-{id}"))))
            }
            savepoint_ref::Candidate::SavepointRef(id) => match savepoint_ref::read_ref(st, *id) {
                Ok(Some(uri)) => candidates.push((c.clone(), uri)),
                Ok(None) | Err(StorageError::NotFound { .. }) => {
                    tracing::debug!(savepoint = id, "empty or vanished savepoint reference")
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(Latest { candidates, start })
}

/// A complete checkpoint (or referenced savepoint, or the snapshot the current
/// run started from) found by [`find_latest_checkpoint`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRef {
    pub id: u64,
    /// URI of the `chk-N` (or savepoint) directory, usable as a restore path.
    pub uri: String,
    pub metadata: SnapshotMetadata,
}

/// Reads a snapshot's `_metadata` and checks that every state file it
/// references exists with the recorded size, without downloading state.
fn verify(uri: &str) -> Result<SnapshotMetadata, SnapshotError> {
    let target = open_snapshot(uri)?;
    let md = read_metadata_in(target.as_ref(), "")?;
    for op in &md.operators {
        for sub in &op.subtasks {
            check_size(target.as_ref(), "", sub)?;
        }
    }
    Ok(md)
}

/// Finds the newest complete checkpoint of a job's checkpoint directory, or
/// the newest savepoint it references if that is newer ([`savepoint_ref`]: a
/// savepoint's output is committed like a checkpoint's), among the snapshots
/// of the directory's current run ([`lineage`]); if that run has written none
/// yet, the snapshot it started from. "Complete" is checked without
/// downloading state: its `_metadata` decodes and every state file it
/// references exists with the recorded size. This is what a last-state
/// upgrade restores from, and it works while the job itself is down.
/// `Ok(None)` means there is nothing to restore (no snapshot, or a run that
/// started empty and has not checkpointed); an unreachable storage, or a
/// starting snapshot that is gone, is an error, never a reason to start older
/// or empty.
pub fn find_latest_checkpoint(dir_uri: &str) -> Result<Option<CheckpointRef>, SnapshotError> {
    let st = open_snapshot(dir_uri)?;
    let Latest { candidates, start } = latest_candidates(st.as_ref(), dir_uri)?;
    for (c, uri) in candidates {
        match verify(&uri) {
            // A reference must point at the savepoint it names: a copy of
            // another job's savepoint under that path is not this job's.
            Ok(metadata)
                if matches!(c, savepoint_ref::Candidate::Checkpoint(_))
                    || metadata.checkpoint_id == c.id() =>
            {
                return Ok(Some(CheckpointRef {
                    id: c.id(),
                    uri,
                    metadata,
                }));
            }
            Ok(metadata) => tracing::warn!(
                candidate = ?c,
                %uri,
                found = metadata.checkpoint_id,
                "skipping a snapshot whose id does not match its name"
            ),
            Err(e) if is_unusable(&e) => {
                tracing::debug!(candidate = ?c, %uri, error = %e, "not a complete snapshot")
            }
            Err(e) => return Err(e),
        }
    }
    match start.and_then(|l| l.restored_from) {
        Some(uri) => {
            let metadata = verify(&uri)?;
            Ok(Some(CheckpointRef {
                id: metadata.checkpoint_id,
                uri,
                metadata,
            }))
        }
        None => Ok(None),
    }
}

/// Deletes what an abandoned (never committed) snapshot directory holds, unless
/// it turns out to be committed after all: a coordinator that lost a race on the
/// same checkpoint number must not delete the winner's checkpoint.
pub fn discard_incomplete(st: &dyn CheckpointStorage, dir: &str) -> Result<(), StorageError> {
    if st.exists(&storage::join(dir, METADATA_FILE))? {
        tracing::warn!(
            dir = %st.uri(dir),
            "not discarding a snapshot directory: another coordinator committed it"
        );
        return Ok(());
    }
    st.delete_dir(dir)
}

/// What [`dispose`] deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Disposed {
    pub uri: String,
    pub kind: String,
    pub checkpoint_id: u64,
    pub files: usize,
}

/// Deletes a savepoint (or a retained checkpoint) at `uri`. Refuses anything that
/// is not a snapshot, i.e. that has no `_metadata` decoding as a Runnel snapshot,
/// so a mistyped path (a bucket root, a checkpoint base directory) is never wiped.
/// `_metadata` goes first: an interrupted dispose leaves an incomplete snapshot,
/// never one that looks complete but lacks files.
pub fn dispose(uri: &str) -> Result<Disposed, SnapshotError> {
    let st = open_snapshot(uri)?;
    let md = match read_metadata_in(st.as_ref(), "") {
        Ok(md) => md,
        Err(e) => {
            let hint = match checkpoint_ids(st.as_ref()) {
                Ok(ids) if !ids.is_empty() => format!(
                    "; it holds {} checkpoint(s) (chk-{} ...): dispose one snapshot at a time",
                    ids.len(),
                    ids[0]
                ),
                _ => String::new(),
            };
            return Err(SnapshotError::NotASnapshot {
                path: uri.to_string(),
                reason: format!("{e}{hint}"),
            });
        }
    };
    st.delete(METADATA_FILE)?;
    let mut files = 1;
    for op in &md.operators {
        for sub in &op.subtasks {
            st.delete(&sub.file)?;
            files += 1;
        }
    }
    // Anything else left in the directory (files of a coordinator that lost a
    // race) belongs to no other snapshot.
    st.delete_dir("")?;
    Ok(Disposed {
        uri: uri.to_string(),
        kind: md.kind,
        checkpoint_id: md.checkpoint_id,
        files,
    })
}
