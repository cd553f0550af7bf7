//! Checkpoint storage: a small object-store-shaped trait so that `file://` and
//! (with its own issue) `s3://` behave the same. Paths are `/`-separated and
//! relative to the storage root, so snapshots are relocatable.

mod file;

use std::sync::Arc;

pub use file::FileStorage;

use crate::error::StorageError;

pub trait CheckpointStorage: Send + Sync {
    /// Writes (or replaces) an object.
    fn write(&self, path: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Creates an object atomically, failing with `AlreadyExists` if it exists. The
    /// checkpoint commit (`_metadata`) relies on this: a stale coordinator can never
    /// overwrite a newer checkpoint, and a reader never sees a partial object.
    fn write_new(&self, path: &str, data: &[u8]) -> Result<(), StorageError>;
    fn read(&self, path: &str) -> Result<Vec<u8>, StorageError>;
    fn exists(&self, path: &str) -> Result<bool, StorageError>;
    /// Size in bytes, or `NotFound`.
    fn size(&self, path: &str) -> Result<u64, StorageError>;
    /// Names of the direct children (files and directories) under `dir`.
    fn list(&self, dir: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes `dir` and everything under it; missing is not an error.
    fn delete_dir(&self, dir: &str) -> Result<(), StorageError>;
    /// URI of `path` for messages and results.
    fn uri(&self, path: &str) -> String;
}

/// Opens the storage rooted at `uri`.
pub fn open(uri: &str) -> Result<Arc<dyn CheckpointStorage>, StorageError> {
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(StorageError::UnsupportedUri(uri.to_string()));
        }
        return Ok(Arc::new(FileStorage::new(rest)));
    }
    if uri.starts_with('/') {
        return Ok(Arc::new(FileStorage::new(uri)));
    }
    Err(StorageError::UnsupportedUri(uri.to_string()))
}

/// Joins URI segments with exactly one `/`.
pub fn join(base: &str, child: &str) -> String {
    if base.is_empty() {
        return child.to_string();
    }
    if child.is_empty() {
        return base.to_string();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        child.trim_start_matches('/')
    )
}

/// Splits a snapshot URI into its parent storage URI and last segment.
pub fn split_last(uri: &str) -> (String, String) {
    let t = uri.trim_end_matches('/');
    match t.rfind('/') {
        Some(i) if i > "file://".len() || !t.starts_with("file://") => {
            (t[..i].to_string(), t[i + 1..].to_string())
        }
        _ => (t.to_string(), String::new()),
    }
}
