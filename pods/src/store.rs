//! Crash-safe record store: one JSON file per sandbox, replaced atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::model::SandboxRecord;

/// Reading or writing a record failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Cannot create the store directory
    #[error("cannot create the store directory {0}: {1}")]
    CreateDir(PathBuf, std::io::Error),
    /// Cannot write a record
    #[error("cannot write record {0}: {1}")]
    Write(PathBuf, std::io::Error),
    /// Cannot delete a record
    #[error("cannot delete record {0}: {1}")]
    Delete(PathBuf, std::io::Error),
    /// Cannot list the store
    #[error("cannot list the store {0}: {1}")]
    List(PathBuf, std::io::Error),
}

/// Sandbox records under `<root>/sandboxes/<id>.json`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("sandboxes");
        fs::create_dir_all(&dir).map_err(|e| StoreError::CreateDir(dir.clone(), e))?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `record` atomically (temp file, fsync, rename, fsync dir).
    pub fn save(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let path = self.path(&record.id);
        let tmp = self.dir.join(format!(".{}.tmp", record.id));
        let write = || -> std::io::Result<()> {
            let data = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| StoreError::Write(path.clone(), e))
    }

    /// Deletes the record of `id`; deleting a missing record succeeds.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Delete(path, e)),
        }
    }

    /// Loads every readable record; unreadable files are logged and skipped.
    pub fn load_all(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| StoreError::List(self.dir.clone(), e))?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path).map(|d| serde_json::from_slice::<SandboxRecord>(&d)) {
                Ok(Ok(r)) => records.push(r),
                Ok(Err(e)) => tracing::error!("skipping unreadable record {}: {e}", path.display()),
                Err(e) => tracing::error!("skipping unreadable record {}: {e}", path.display()),
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SandboxConfig, SandboxState};

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            config: SandboxConfig {
                hostname: "h".into(),
                ..Default::default()
            },
            state: SandboxState::Ready,
            reason: String::new(),
            created_at_ns: 1,
            runtime: "fake".into(),
            runtime_state: serde_json::json!({"pid": 1}),
            ips: vec!["10.0.0.2".into()],
        }
    }

    #[test]
    fn save_load_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("a")).unwrap();
        let mut b = record("b");
        store.save(&b).unwrap();
        b.state = SandboxState::NotReady;
        store.save(&b).unwrap();
        let mut all = store.load_all().unwrap();
        all.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(all, vec![record("a"), b]);
        store.delete("a").unwrap();
        store.delete("a").unwrap();
        assert_eq!(store.load_all().unwrap().len(), 1);
    }

    #[test]
    fn corrupt_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("good")).unwrap();
        fs::write(dir.path().join("sandboxes/bad.json"), b"{not json").unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, "good");
    }
}
