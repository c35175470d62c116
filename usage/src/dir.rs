//! Space and inodes a directory tree uses, as `du` counts them: allocated
//! blocks, each inode once, without crossing into other filesystems.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{FsUsage, UsageError};

/// The usage of the tree at `root` (which must exist). Entries that vanish
/// while it is walked are skipped.
pub fn read_dir_usage(root: &Path) -> Result<FsUsage, UsageError> {
    let top = std::fs::symlink_metadata(root).map_err(|source| UsageError::Read {
        path: root.to_owned(),
        source,
    })?;
    let mut seen = HashSet::new();
    let mut usage = FsUsage::default();
    let mut stack = vec![root.to_owned()];
    count(&top, &mut seen, &mut usage);
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != top.dev() {
                continue;
            }
            count(&meta, &mut seen, &mut usage);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// The usage of one directory tree, measured at most once per `max_age`
/// (walking a tree of writable layers on every call would cost more than
/// the figure is worth to a caller that asks every few seconds).
#[derive(Debug)]
pub struct CachedDirUsage {
    root: PathBuf,
    max_age: Duration,
    last: Mutex<Option<(Instant, FsUsage)>>,
}

impl CachedDirUsage {
    /// Measures `root` at most once per `max_age`.
    pub fn new(root: impl Into<PathBuf>, max_age: Duration) -> Self {
        Self {
            root: root.into(),
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The measured tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The last measurement if it is recent enough, else a new one.
    pub fn get(&self) -> Result<FsUsage, UsageError> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, usage)) = *last
            && at.elapsed() < self.max_age
        {
            return Ok(usage);
        }
        let usage = read_dir_usage(&self.root)?;
        *last = Some((Instant::now(), usage));
        Ok(usage)
    }
}

fn count(meta: &std::fs::Metadata, seen: &mut HashSet<u64>, usage: &mut FsUsage) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    usage.inodes_used += 1;
    usage.used_bytes += meta.blocks() * 512;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_count_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let before = read_dir_usage(dir.path()).unwrap();
        assert_eq!(before.inodes_used, 1);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/data"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("sub/data"), dir.path().join("link")).unwrap();
        let after = read_dir_usage(dir.path()).unwrap();
        assert_eq!(after.inodes_used, 3, "root, sub, one file with two names");
        assert!(after.used_bytes >= 1 << 20, "{after:?}");
        assert!(
            after.used_bytes < 2 << 20,
            "the hard link counted twice: {after:?}"
        );
        assert!(read_dir_usage(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_cached_usage_is_measured_again_only_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = CachedDirUsage::new(dir.path(), Duration::from_secs(3600));
        let always = CachedDirUsage::new(dir.path(), Duration::ZERO);
        let before = fresh.get().unwrap();
        assert_eq!(always.get().unwrap(), before);
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        assert_eq!(fresh.get().unwrap(), before, "served from the cache");
        assert_eq!(always.get().unwrap().inodes_used, before.inodes_used + 1);
    }
}
