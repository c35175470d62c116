//! OCI layer application: a layer tar is applied on top of a directory tree,
//! honouring whiteouts (`.wh.<name>`) and opaque directories
//! (`.wh..wh..opq`), with every path resolved inside the root so that no
//! entry, symlink or hard link can make us write outside it.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Prefix of a whiteout entry.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of an opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Most symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: usize = 40;

/// A layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer archive cannot be read
    #[error("cannot read the layer archive: {0}")]
    Archive(io::Error),
    /// An entry's path leaves the root (`..`)
    #[error("unsafe path in layer: {0:?} climbs out of the root with `..`")]
    UnsafePath(PathBuf),
    /// A path cannot be resolved inside the root
    #[error("cannot resolve {path:?} inside the root: {reason}")]
    Resolve {
        /// The entry's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file-system operation failed
    #[error("cannot {op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The entry's path inside the root.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The uncompressed layer is not the one the image config names
    #[error("uncompressed layer has digest {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The config's diff ID.
        expected: String,
        /// What the layer hashed to.
        actual: String,
    },
    /// The layer or the image expands past a cap
    #[error("{0}")]
    TooLarge(String),
    /// The layer holds a device node or a FIFO, which images may not carry
    #[error("layer holds a {kind} at {path:?}; images may not carry device nodes or FIFOs")]
    DeviceNode {
        /// `character device`, `block device` or `FIFO`.
        kind: &'static str,
        /// The entry's path.
        path: PathBuf,
    },
    /// The archive has an entry type we do not apply
    #[error("unsupported tar entry type {kind:?} at {path:?}")]
    Unsupported {
        /// The entry type byte.
        kind: u8,
        /// The entry's path.
        path: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Normalises an entry path to its components below the root: leading `/`
/// and `.` are dropped, `..` is refused.
fn normalise(path: &Path) -> Result<Vec<OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(UnpackError::UnsafePath(path.to_path_buf())),
        }
    }
    Ok(out)
}

/// Resolves the directory `comps` inside `root`, following symlinks but never
/// leaving `root`: absolute link targets start again at `root` and `..`
/// stops at it, as if `root` were `/`. Missing directories are created when
/// `create` is set; otherwise `None` is returned for a missing one.
pub fn resolve_dir(
    root: &Path,
    comps: &[OsString],
    create: bool,
) -> Result<Option<PathBuf>, UnpackError> {
    let shown = || comps.iter().collect::<PathBuf>();
    let mut pending: Vec<OsString> = comps.iter().rev().cloned().collect();
    let mut cur: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&cur);
        candidate.push(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(UnpackError::Resolve {
                        path: shown(),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                let target =
                    std::fs::read_link(&candidate).map_err(io_err("read link", &candidate))?;
                if target.is_absolute() {
                    cur.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(m) if m.is_dir() => cur.push(c),
            Ok(_) => {
                return Err(UnpackError::Resolve {
                    path: shown(),
                    reason: format!("{c:?} is not a directory"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&candidate)
                    .map_err(io_err("create directory", &candidate))?;
                cur.push(c);
            }
            Err(e) => return Err(io_err("inspect", &candidate)(e)),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(cur);
    Ok(Some(out))
}

/// Removes whatever is at `path` (not following symlinks); missing is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        // Unprivileged (tests): ownership cannot be given away; keep ours.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !is_root() => Ok(()),
        r => r,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sets atime and mtime of `path` without following a symlink.
pub(crate) fn set_mtime(path: &Path, secs: i64, nsecs: i64) -> io::Result<()> {
    let c = cstring(path)?;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsecs,
    };
    let times = [t, t];
    // SAFETY: valid NUL-terminated path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets an extended attribute on `path` without following a symlink.
pub(crate) fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cstring(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What one applied layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries written.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts (including opaque markers) applied.
    pub whiteouts: u64,
}

/// Applies the uncompressed layer tar read from `reader` onto `root`.
pub fn apply_layer(root: &Path, reader: impl Read) -> Result<Applied, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = Applied::default();
    // Paths (relative) written by this layer: an opaque marker must not remove them.
    let mut written: HashSet<PathBuf> = HashSet::new();
    // Directory mtimes are set last: adding children changes them.
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
            continue; // pax global metadata (e.g. from `git archive`), not a file
        }
        let raw_path = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let comps = normalise(&raw_path)?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // the root itself
        };
        let rel: PathBuf = comps.iter().collect();
        let name_bytes = name.as_bytes();

        if name == OsStr::new(OPAQUE_MARKER) {
            stats.whiteouts += 1;
            if let Some(dir) = resolve_dir(root, parent, true)? {
                let rel_parent: PathBuf = parent.iter().collect();
                let children = std::fs::read_dir(&dir).map_err(io_err("list", &dir))?;
                for child in children {
                    let child = child.map_err(io_err("list", &dir))?;
                    if !written.contains(&rel_parent.join(child.file_name())) {
                        remove_any(&child.path()).map_err(io_err("remove", &child.path()))?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                continue; // other AUFS metadata (.wh..wh.plnk etc.)
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                // `.wh..` would name the parent itself: never follow it.
                return Err(UnpackError::UnsafePath(raw_path));
            }
            stats.whiteouts += 1;
            if let Some(dir) = resolve_dir(root, parent, false)? {
                let victim = dir.join(OsStr::from_bytes(hidden));
                remove_any(&victim).map_err(io_err("remove", &victim))?;
            }
            continue;
        }

        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            let device = entry.header().device_major().ok().flatten().unwrap_or(0)
                | entry.header().device_minor().ok().flatten().unwrap_or(0);
            if kind == tar::EntryType::Char && device == 0 {
                // A 0:0 character device is overlayfs' whiteout format.
                stats.whiteouts += 1;
                if let Some(dir) = resolve_dir(root, parent, false)? {
                    let victim = dir.join(name);
                    remove_any(&victim).map_err(io_err("remove", &victim))?;
                }
                continue;
            }
            return Err(UnpackError::DeviceNode {
                kind: match kind {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    _ => "FIFO",
                },
                path: rel,
            });
        }
        let dir = resolve_dir(root, parent, true)?.ok_or_else(|| UnpackError::Resolve {
            path: rel.clone(),
            reason: "parent directory missing".into(),
        })?;
        let target = dir.join(name);
        let header = entry.header().clone();
        let mode = header.mode().map_err(UnpackError::Archive)?;
        let uid = header.uid().map_err(UnpackError::Archive)?;
        let gid = header.gid().map_err(UnpackError::Archive)?;
        let mtime = i64::try_from(header.mtime().map_err(UnpackError::Archive)?).unwrap_or(0);
        let existing = std::fs::symlink_metadata(&target).ok();
        if let Some(m) = &existing
            && !(m.is_dir() && kind.is_dir())
        {
            remove_any(&target).map_err(io_err("replace", &target))?;
        }
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Archive)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Archive)?;
                if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((key.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err("create", &target))?;
                stats.bytes += io::copy(&mut entry, &mut f).map_err(io_err("write", &target))?;
            }
            tar::EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    std::fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&target)
                        .map_err(io_err("create directory", &target))?;
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| UnpackError::Resolve {
                        path: rel.clone(),
                        reason: "symlink without a target".into(),
                    })?;
                // The target is stored as given: it is data, and every later
                // resolution through it is confined to the root.
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(io_err("create symlink", &target))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Archive)?
                    .ok_or_else(|| UnpackError::Resolve {
                        path: rel.clone(),
                        reason: "hard link without a target".into(),
                    })?;
                let lcomps = normalise(&link)?;
                let Some((lname, lparent)) = lcomps.split_last() else {
                    return Err(UnpackError::Resolve {
                        path: rel,
                        reason: "hard link to the root".into(),
                    });
                };
                let source = resolve_dir(root, lparent, false)?
                    .map(|d| d.join(lname))
                    .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
                    .ok_or_else(|| UnpackError::Resolve {
                        path: rel.clone(),
                        reason: format!("hard link target {link:?} does not exist in the layer"),
                    })?;
                std::fs::hard_link(&source, &target).map_err(io_err("hard link", &target))?;
                written.insert(rel);
                stats.entries += 1;
                continue; // metadata belongs to the linked inode
            }
            other => {
                return Err(UnpackError::Unsupported {
                    kind: other.as_byte(),
                    path: rel,
                });
            }
        }
        lchown(&target, uid, gid).map_err(io_err("chown", &target))?;
        if !kind.is_symlink() {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(io_err("chmod", &target))?;
        }
        for (key, value) in &xattrs {
            set_xattr(&target, key, value).map_err(io_err("set xattr on", &target))?;
        }
        if kind.is_dir() {
            dir_times.push((target, mtime));
        } else {
            set_mtime(&target, mtime, 0).map_err(io_err("set mtime of", &target))?;
        }
        written.insert(rel);
        stats.entries += 1;
    }
    for (dir, mtime) in dir_times.iter().rev() {
        // A directory removed by a later whiteout of the same layer is gone: fine.
        if dir.exists() {
            set_mtime(dir, *mtime, 0).map_err(io_err("set mtime of", dir))?;
        }
    }
    Ok(stats)
}
