//! Snapshots: one directory per layer chain (`snapshots/<chain-id hex>/`),
//! holding the whole root filesystem up to and including that layer. A child
//! snapshot starts as a copy of its parent in which directories are real
//! copies and every other inode is a hard link; applying a layer never
//! writes into an existing inode (files are replaced, not rewritten), so the
//! parent stays intact and its bytes are stored once.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::unpack::{set_mtime, set_xattr};

fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut names = vec![0u8; 4096];
    // SAFETY: valid path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOTSUP) {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    names.truncate(usize::try_from(n).unwrap_or(0));
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut value = vec![0u8; 65536];
        // SAFETY: valid strings and a buffer of the given length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cn.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        value.truncate(usize::try_from(len).unwrap_or(0));
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

/// Copies the tree `src` into the new directory `dst`: directories are
/// recreated with their mode, owner, xattrs and mtime; everything else is
/// hard-linked.
pub fn clone_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    std::fs::DirBuilder::new().mode(0o700).create(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            clone_tree(&from, &to)?;
        } else {
            std::fs::hard_link(&from, &to)?;
        }
    }
    copy_dir_metadata(dst, &meta, src)
}

fn copy_dir_metadata(dst: &Path, meta: &std::fs::Metadata, src: &Path) -> io::Result<()> {
    match std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid())) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        r => r?,
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for (name, value) in list_xattrs(src)? {
        set_xattr(dst, &name, &value)?;
    }
    set_mtime(dst, meta.mtime(), meta.mtime_nsec())
}

/// Disk usage of a tree: (bytes in blocks, inodes), each inode counted once
/// even when hard-linked from several snapshots.
pub fn usage(
    path: &Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> io::Result<(u64, u64)> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let mut bytes = 0;
    let mut inodes = 0;
    if seen.insert((meta.dev(), meta.ino())) {
        bytes += meta.blocks() * 512;
        inodes += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let (b, i) = usage(&entry?.path(), seen)?;
            bytes += b;
            inodes += i;
        }
    }
    Ok((bytes, inodes))
}
