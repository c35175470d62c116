//! Crash-safe record store: one JSON file per sandbox or container,
//! replaced atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use runtime_api::ContainerRecord;
use runtime_api::SandboxRecord;

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

/// Sandbox records under `<root>/sandboxes/<id>.json`, container records
/// under `<root>/containers/<id>.json`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    containers: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let dir = root.join("sandboxes");
        let containers = root.join("containers");
        for d in [&dir, &containers] {
            fs::create_dir_all(d).map_err(|e| StoreError::CreateDir(d.clone(), e))?;
        }
        Ok(Self { dir, containers })
    }

    /// Writes `record` atomically (temp file, fsync, rename, fsync dir).
    pub fn save(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        save_in(&self.dir, &record.id, record)
    }

    /// Deletes the record of `id`; deleting a missing record succeeds.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        delete_in(&self.dir, id)
    }

    /// Loads every readable record; unreadable files are logged and skipped.
    pub fn load_all(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        load_in(&self.dir)
    }

    /// Writes a container record atomically.
    pub fn save_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        save_in(&self.containers, &record.id, record)
    }

    /// Deletes the container record of `id`; a missing record succeeds.
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        delete_in(&self.containers, id)
    }

    /// Loads every readable container record; unreadable files are logged and skipped.
    pub fn load_containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        load_in(&self.containers)
    }
}

fn save_in<T: Serialize>(dir: &Path, id: &str, record: &T) -> Result<(), StoreError> {
    let path = dir.join(format!("{id}.json"));
    let tmp = dir.join(format!(".{id}.tmp"));
    let write = || -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| StoreError::Write(path.clone(), e))
}

fn delete_in(dir: &Path, id: &str) -> Result<(), StoreError> {
    let path = dir.join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Delete(path, e)),
    }
}

fn load_in<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::List(dir.to_path_buf(), e))?;
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match fs::read(&path).map(|d| serde_json::from_slice::<T>(&d)) {
            Ok(Ok(r)) => records.push(r),
            Ok(Err(e)) => tracing::error!("skipping unreadable record {}: {e}", path.display()),
            Err(e) => tracing::error!("skipping unreadable record {}: {e}", path.display()),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_api::{SandboxConfig, SandboxState};

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
            handler: "fake".into(),
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

    #[test]
    fn containers_are_kept_apart_from_sandboxes() {
        use runtime_api::{ContainerConfig, ContainerRecord, ContainerRuntimeStatus};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&record("s")).unwrap();
        let c = ContainerRecord {
            id: "c".into(),
            sandbox_id: "s".into(),
            config: ContainerConfig::default(),
            created_at_ns: 2,
            status: ContainerRuntimeStatus::created(),
            log_path: String::new(),
            runtime_state: serde_json::Value::Null,
        };
        store.save_container(&c).unwrap();
        assert!(dir.path().join("containers/c.json").is_file());
        assert_eq!(store.load_containers().unwrap(), vec![c]);
        assert_eq!(store.load_all().unwrap().len(), 1);
        store.delete_container("c").unwrap();
        store.delete_container("c").unwrap();
        assert!(store.load_containers().unwrap().is_empty());
        assert_eq!(store.load_all().unwrap().len(), 1);
    }
}
