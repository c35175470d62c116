//! Space and inodes a directory tree uses, as `du` counts them: allocated
//! blocks, each inode once, without crossing into other filesystems.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
        assert!(after.used_bytes < 2 << 20, "the hard link counted twice: {after:?}");
        assert!(read_dir_usage(&dir.path().join("missing")).is_err());
    }
}
