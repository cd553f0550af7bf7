//! Checkpoint storage: a small object-store-shaped trait so that `file://` and
//! `s3://` behave the same. Paths are `/`-separated and relative to the storage
//! root, so snapshots are relocatable.
//!
//! The trait is synchronous on purpose: snapshot uploads and restores run on
//! dedicated threads (the uploader, the job master), never on an async executor.
//! The S3 backend owns a small tokio runtime and blocks on it from those threads.
//!
//! Objects are written and read as streams ([`ObjectWriter`], [`ObjectReader`]) so
//! that a large state file is never held in memory whole.

mod file;
#[cfg(feature = "s3")]
pub mod s3;
mod uri;

use std::io::{Read, Write};
use std::sync::Arc;

pub use file::FileStorage;
pub use uri::{join, split_last};

use crate::error::StorageError;

/// A stream of bytes for one object. Nothing is visible to readers until
/// [`ObjectWriter::finish`] succeeds; dropping the writer without finishing
/// discards what was written (a temporary file is removed, a multipart upload
/// aborted).
pub trait ObjectWriter: Write + Send {
    /// Publishes the object (replacing an existing one) and returns its size.
    fn finish(self: Box<Self>) -> Result<u64, StorageError>;
}

/// A stream of an object's bytes.
pub type ObjectReader = Box<dyn Read + Send>;

pub trait CheckpointStorage: Send + Sync {
    /// Starts writing (or replacing) an object.
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Creates a small object atomically, failing with `AlreadyExists` if it
    /// exists. The checkpoint commit (`_metadata`) relies on this: a stale
    /// coordinator can never overwrite a newer checkpoint, and a reader never sees
    /// a partial object.
    fn write_new(&self, path: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Opens an object for streaming reads; `NotFound` if it does not exist.
    fn open(&self, path: &str) -> Result<ObjectReader, StorageError>;
    fn exists(&self, path: &str) -> Result<bool, StorageError>;
    /// Size in bytes, or `NotFound`.
    fn size(&self, path: &str) -> Result<u64, StorageError>;
    /// Names of the direct children (files and directories) under `dir`, sorted.
    fn list(&self, dir: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes one object; missing is not an error.
    fn delete(&self, path: &str) -> Result<(), StorageError>;
    /// Deletes `dir` and everything under it; missing is not an error.
    fn delete_dir(&self, dir: &str) -> Result<(), StorageError>;
    /// URI of `path` for messages and results; `open(uri(p))` reaches the same
    /// object from anywhere.
    fn uri(&self, path: &str) -> String;

    /// Writes (or replaces) a small object in one call.
    fn write(&self, path: &str, data: &[u8]) -> Result<(), StorageError> {
        let mut w = self.create(path)?;
        w.write_all(data).map_err(|e| StorageError::Io {
            path: self.uri(path),
            source: e,
        })?;
        w.finish().map(|_| ())
    }

    /// Reads a small object whole (metadata); state files are streamed with
    /// [`CheckpointStorage::open`].
    fn read(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        let mut r = self.open(path)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| StorageError::Io {
            path: self.uri(path),
            source: e,
        })?;
        Ok(out)
    }
}

/// Opens the storage rooted at `uri`: `file:///abs/path`, an absolute path, or
/// `s3://bucket/prefix` (see [`s3`] for endpoint, region and path-style options).
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
    if uri.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return Ok(Arc::new(s3::S3Storage::open(uri)?));
        #[cfg(not(feature = "s3"))]
        return Err(StorageError::UnsupportedUri(format!(
            "{uri} (this build has no S3 support: enable the `s3` feature)"
        )));
    }
    Err(StorageError::UnsupportedUri(uri.to_string()))
}
