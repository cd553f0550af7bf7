use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::CheckpointStorage;
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

    fn write_tmp(&self, target: &Path, data: &[u8]) -> Result<PathBuf, StorageError> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| Self::io(dir, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let mut f = fs::File::create(&tmp).map_err(|e| Self::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Self::io(&tmp, e))?;
        f.sync_all().map_err(|e| Self::io(&tmp, e))?;
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

impl CheckpointStorage for FileStorage {
    fn write(&self, path: &str, data: &[u8]) -> Result<(), StorageError> {
        let target = self.path(path);
        let tmp = self.write_tmp(&target, data)?;
        fs::rename(&tmp, &target).map_err(|e| Self::io(&target, e))?;
        Self::sync_parent(&target);
        Ok(())
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

    fn read(&self, path: &str) -> Result<Vec<u8>, StorageError> {
        let p = self.path(path);
        fs::read(&p).map_err(|e| Self::io(&p, e))
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
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
        assert!(!s.exists("nope").unwrap());
    }
}
