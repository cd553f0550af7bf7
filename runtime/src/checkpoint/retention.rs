//! Retention of completed checkpoints: which subsumed checkpoints to delete, and
//! which of their files. The decision is pure ([`plan`]); [`enforce`] lists the
//! checkpoint directory, plans, and deletes.
//!
//! Rules:
//! - The newest `retained` complete checkpoints are kept, whichever run wrote
//!   them (a restored job's old checkpoints count too).
//! - A file that a kept checkpoint references is never deleted, even if it
//!   lives in a dropped checkpoint's directory (the format keeps files inside
//!   their own directory today; the rule holds whatever the layout).
//! - A dropped checkpoint loses its `_metadata` before its files, so an
//!   interrupted deletion leaves an incomplete checkpoint (skipped by discovery),
//!   never a complete-looking one with files missing.
//! - Directories without `_metadata` older than the newest kept checkpoint are
//!   debris of failed or crashed attempts and go too; newer ones may be in
//!   progress and stay.

use std::collections::BTreeSet;

use super::format::METADATA_FILE;
use super::{checkpoint_ids, read_metadata_in};
use crate::error::{SnapshotError, StorageError};
use crate::storage::{self, CheckpointStorage};

/// One `chk-N` directory as found in storage.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    pub id: u64,
    /// Whether `_metadata` exists and decodes.
    pub complete: bool,
    /// Files in the directory, relative to the storage root (`chk-N/...`).
    pub files: Vec<String>,
    /// For a complete checkpoint: the files its `_metadata` references, relative
    /// to the storage root. Empty for incomplete ones.
    pub referenced: Vec<String>,
}

/// What to delete from one directory, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub id: u64,
    /// `chk-N/_metadata` first when the checkpoint was complete, then state files.
    pub files: Vec<String>,
    /// The directory may be removed afterwards: nothing kept lives in it.
    pub remove_dir: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Kept complete checkpoints, newest first.
    pub keep: Vec<u64>,
    pub remove: Vec<Removal>,
}

pub fn plan(listings: &[Listing], retained: usize) -> Plan {
    let mut complete: Vec<&Listing> = listings.iter().filter(|l| l.complete).collect();
    complete.sort_by_key(|l| std::cmp::Reverse(l.id));
    let keep: Vec<u64> = complete.iter().take(retained).map(|l| l.id).collect();
    let protected: BTreeSet<&str> = complete
        .iter()
        .take(retained)
        .flat_map(|l| l.referenced.iter().map(String::as_str))
        .collect();
    let newest_kept = keep.first().copied();
    let mut remove = Vec::new();
    let mut sorted: Vec<&Listing> = listings.iter().collect();
    sorted.sort_by_key(|l| l.id);
    for l in sorted {
        if keep.contains(&l.id) {
            continue;
        }
        let dropped = if l.complete {
            true
        } else {
            newest_kept.is_some_and(|n| l.id < n)
        };
        if !dropped {
            continue;
        }
        let md = storage::join(&format!("chk-{}", l.id), METADATA_FILE);
        let mut files = Vec::new();
        if l.complete {
            files.push(md.clone());
        }
        let mut blocked = false;
        for f in &l.files {
            if *f == md {
                continue;
            }
            if protected.contains(f.as_str()) {
                blocked = true;
            } else {
                files.push(f.clone());
            }
        }
        remove.push(Removal {
            id: l.id,
            files,
            remove_dir: !blocked,
        });
    }
    Plan { keep, remove }
}

/// Lists the storage's `chk-N` directories (only the files of those that may be
/// dropped), plans, and deletes. Returns the ids whose checkpoints were removed.
pub fn enforce(st: &dyn CheckpointStorage, retained: usize) -> Result<Vec<u64>, SnapshotError> {
    let ids = checkpoint_ids(st)?;
    let mut listings = Vec::new();
    let mut complete_seen = 0usize;
    for id in ids {
        let dir = format!("chk-{id}");
        let (complete, referenced) = match read_metadata_in(st, &dir) {
            Ok(md) => (
                true,
                md.operators
                    .iter()
                    .flat_map(|o| o.subtasks.iter())
                    .map(|s| storage::join(&dir, &s.file))
                    .collect(),
            ),
            Err(SnapshotError::CorruptMetadata { .. })
            | Err(SnapshotError::UnsupportedVersion { .. }) => (false, Vec::new()),
            Err(e) => return Err(e),
        };
        // Kept checkpoints need no listing: nothing in them is deleted.
        let files = if complete && complete_seen < retained {
            Vec::new()
        } else {
            st.list(&dir)?
                .into_iter()
                .map(|f| storage::join(&dir, &f))
                .collect()
        };
        if complete {
            complete_seen += 1;
        }
        listings.push(Listing {
            id,
            complete,
            files,
            referenced,
        });
    }
    let p = plan(&listings, retained);
    let mut removed = Vec::new();
    for r in p.remove {
        delete_all(st, &r.files)?;
        if r.remove_dir {
            st.delete_dir(&format!("chk-{}", r.id))?;
        }
        removed.push(r.id);
    }
    Ok(removed)
}

fn delete_all(st: &dyn CheckpointStorage, files: &[String]) -> Result<(), StorageError> {
    for f in files {
        st.delete(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(id: u64, files: &[&str]) -> Listing {
        let dir = format!("chk-{id}");
        let mut all = vec![format!("{dir}/_metadata")];
        all.extend(files.iter().map(|f| format!("{dir}/{f}")));
        Listing {
            id,
            complete: true,
            files: all,
            referenced: files.iter().map(|f| format!("{dir}/{f}")).collect(),
        }
    }

    fn incomplete(id: u64, files: &[&str]) -> Listing {
        Listing {
            id,
            complete: false,
            files: files.iter().map(|f| format!("chk-{id}/{f}")).collect(),
            referenced: vec![],
        }
    }

    #[test]
    fn keeps_exactly_the_newest_retained_and_deletes_metadata_first() {
        let ls = vec![
            complete(3, &["a.state"]),
            complete(5, &["a.state", "b.state"]),
            complete(4, &["a.state"]),
            complete(7, &["a.state"]),
        ];
        let p = plan(&ls, 2);
        assert_eq!(p.keep, vec![7, 5]);
        assert_eq!(
            p.remove,
            vec![
                Removal {
                    id: 3,
                    files: vec!["chk-3/_metadata".into(), "chk-3/a.state".into()],
                    remove_dir: true,
                },
                Removal {
                    id: 4,
                    files: vec!["chk-4/_metadata".into(), "chk-4/a.state".into()],
                    remove_dir: true,
                },
            ]
        );
    }

    #[test]
    fn fewer_than_retained_deletes_nothing() {
        for n in 0..4 {
            let ls: Vec<_> = (1..=n).map(|i| complete(i, &["x"])).collect();
            let p = plan(&ls, 3);
            assert!(p.remove.is_empty(), "{n}");
            assert_eq!(p.keep.len(), n as usize);
        }
    }

    #[test]
    fn a_file_a_kept_checkpoint_references_is_never_deleted() {
        // chk-9 references a file that lives in chk-2's directory.
        let mut newer = complete(9, &["own.state"]);
        newer.referenced.push("chk-2/shared.state".into());
        let ls = vec![complete(2, &["shared.state", "old.state"]), newer];
        let p = plan(&ls, 1);
        assert_eq!(p.keep, vec![9]);
        assert_eq!(
            p.remove,
            vec![Removal {
                id: 2,
                files: vec!["chk-2/_metadata".into(), "chk-2/old.state".into()],
                remove_dir: false,
            }]
        );
    }

    #[test]
    fn debris_older_than_the_newest_kept_goes_newer_stays() {
        let ls = vec![
            incomplete(1, &["x.state"]),
            complete(2, &["a"]),
            incomplete(3, &["y.state"]),
            complete(4, &["a"]),
            incomplete(5, &["z.state"]),
        ];
        let p = plan(&ls, 2);
        assert_eq!(p.keep, vec![4, 2]);
        let ids: Vec<u64> = p.remove.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 3], "chk-5 may still be in progress");
        assert_eq!(p.remove[0].files, vec!["chk-1/x.state".to_string()]);
        // Without any complete checkpoint nothing is debris yet.
        assert!(plan(&[incomplete(1, &["x"])], 1).remove.is_empty());
    }

    #[test]
    fn every_retained_count_over_every_history_keeps_min_of_both() {
        for total in 0..6u64 {
            for retained in 1..5usize {
                let ls: Vec<_> = (1..=total).map(|i| complete(i, &["s"])).collect();
                let p = plan(&ls, retained);
                let kept = (total as usize).min(retained);
                assert_eq!(p.keep.len(), kept);
                assert_eq!(p.remove.len(), total as usize - kept);
                let expect: Vec<u64> = (1..=total).rev().take(kept).collect();
                assert_eq!(p.keep, expect);
                for r in &p.remove {
                    assert!(r.id <= total - kept as u64);
                    assert_eq!(r.files[0], format!("chk-{}/_metadata", r.id));
                }
            }
        }
    }
}
