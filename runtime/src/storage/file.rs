use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{CheckpointStorage, ObjectReader, ObjectWriter};
use crate::error::StorageError;

/// `file://` storage. Writes go to a temporary file that is fsynced and then
/// published with `rename` (replace) or `hard_link` (create-if-absent, atomic).
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStorage { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn io(path: &Path, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound {
                path: path.display().to_string(),
            }
        } else {
            StorageError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }

    /// Creates a uniquely named temporary file next to `target`.
    fn create_tmp(&self, target: &Path) -> Result<(PathBuf, fs::File), StorageError> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| Self::io(dir, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let f = fs::File::create(&tmp).map_err(|e| Self::io(&tmp, e))?;
        Ok((tmp, f))
    }

    fn write_tmp(&self, target: &Path, data: &[u8]) -> Result<PathBuf, StorageError> {
        let (tmp, mut f) = self.create_tmp(target)?;
        let res = f
            .write_all(data)
            .and_then(|_| f.sync_all())
            .map_err(|e| Self::io(&tmp, e));
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    fn sync_parent(target: &Path) {
        // Best effort: makes the rename durable on filesystems that need it.
        if let Some(dir) = target.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
    }
}

/// Streams into a temporary file; `finish` fsyncs and renames it into place.
struct FileWriter {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<fs::File>>,
    written: u64,
}

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("writer already finished"))?;
        let n = f.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectWriter for FileWriter {
    fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
        let Some(f) = self.file.take() else {
            return Err(StorageError::Io {
                path: self.target.display().to_string(),
                source: std::io::Error::other("writer already finished"),
            });
        };
        let f = f
            .into_inner()
            .map_err(|e| FileStorage::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| FileStorage::io(&self.tmp, e))?;
        drop(f);
        fs::rename(&self.tmp, &self.target).map_err(|e| FileStorage::io(&self.target, e))?;
        FileStorage::sync_parent(&self.target);
        Ok(self.written)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Not finished: discard the partial temporary file.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl CheckpointStorage for FileStorage {
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        let target = self.path(path);
        let (tmp, f) = self.create_tmp(&target)?;
        Ok(Box::new(FileWriter {
            tmp,
            target,
            file: Some(BufWriter::with_capacity(256 * 1024, f)),
            written: 0,
        }))
    }

    fn write_new(&self, path: &str, data: &[u8]) -> Result<(), StorageError> {
        let target = self.path(path);
        let tmp = self.write_tmp(&target, data)?;
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                Self::sync_parent(&target);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StorageError::AlreadyExists {
                    path: target.display().to_string(),
                })
            }
            Err(e) => Err(Self::io(&target, e)),
        }
    }

    fn open(&self, path: &str) -> Result<ObjectReader, StorageError> {
        let p = self.path(path);
        let f = fs::File::open(&p).map_err(|e| Self::io(&p, e))?;
        if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(StorageError::NotFound {
                path: p.display().to_string(),
            });
        }
        Ok(Box::new(f))
    }

    fn exists(&self, path: &str) -> Result<bool, StorageError> {
        let p = self.path(path);
        p.try_exists().map_err(|e| Self::io(&p, e))
    }

    fn size(&self, path: &str) -> Result<u64, StorageError> {
        let p = self.path(path);
        fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| Self::io(&p, e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, StorageError> {
        let p = self.path(dir);
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(Self::io(&p, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Self::io(&p, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), StorageError> {
        let p = self.path(path);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&p, e)),
        }
    }

    fn delete_dir(&self, dir: &str) -> Result<(), StorageError> {
        let p = self.path(dir);
        match fs::remove_dir_all(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io(&p, e)),
        }
    }

    fn uri(&self, path: &str) -> String {
        format!("file://{}", self.path(path).display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_new_refuses_to_overwrite_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        s.write_new("chk-1/_metadata", b"one").unwrap();
        let err = s.write_new("chk-1/_metadata", b"two").unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
        assert_eq!(s.read("chk-1/_metadata").unwrap(), b"one");
        assert_eq!(s.list("chk-1").unwrap(), vec!["_metadata".to_string()]);
        let all: Vec<_> = fs::read_dir(dir.path().join("chk-1")).unwrap().collect();
        assert_eq!(all.len(), 1, "temporary files must be cleaned up");
    }

    #[test]
    fn missing_things() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        assert!(matches!(
            s.read("nope").unwrap_err(),
            StorageError::NotFound { .. }
        ));
        assert!(s.list("nope").unwrap().is_empty());
        s.delete_dir("nope").unwrap();
        s.delete("nope").unwrap();
        assert!(!s.exists("nope").unwrap());
    }

    #[test]
    fn a_writer_publishes_only_on_finish_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        let mut w = s.create("chk-1/a.state").unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        assert!(!s.exists("chk-1/a.state").unwrap(), "visible before finish");
        assert_eq!(w.finish().unwrap(), 11);
        assert_eq!(s.read("chk-1/a.state").unwrap(), b"hello world");
        let mut w = s.create("chk-1/b.state").unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(s.list("chk-1").unwrap(), vec!["a.state".to_string()]);
        let all: Vec<_> = fs::read_dir(dir.path().join("chk-1")).unwrap().collect();
        assert_eq!(
            all.len(),
            1,
            "the dropped writer's temporary file is removed"
        );
        s.delete("chk-1/a.state").unwrap();
        assert!(s.list("chk-1").unwrap().is_empty());
    }
}
