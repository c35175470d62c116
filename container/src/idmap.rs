//! ID-mapped mounts (Linux 5.12) for pods with a user namespace of their
//! own: a directory tree cloned and seen through the pod's mapping, so that
//! a file the host owns as ID 0 is owned by the pod's root, and what the
//! pod's root writes is stored as ID 0.
//!
//! The mapping is carried by a user namespace made only for that: a child
//! cloned into a new user namespace, given the mapping, and killed once its
//! namespace is open (the open file keeps the namespace).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use runtime_api::container::{IdMapping, UserNamespace};

/// `open_tree(2)`: a detached copy of the mount tree at the path.
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount(2)`: the source is the file descriptor itself.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
/// `mount_setattr(2)`: the mount's IDs are seen through `userns_fd`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}

/// `mount_setattr(2)` on `path` relative to `dirfd`; `Err` is the errno.
pub(crate) fn mount_setattr(
    dirfd: libc::c_int,
    path: &Path,
    flags: libc::c_uint,
    attr: &MountAttr,
) -> Result<(), Errno> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: mount_setattr(2) reads a NUL-terminated path and `size` bytes
    // of `attr`, both valid for the call; it writes nothing of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// An ID-mapped mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    /// The user namespace carrying the mapping cannot be made
    #[error("clone a user namespace for the pod's ID mapping")]
    Namespace(#[source] Errno),
    /// The new namespace's mapping cannot be written, or its file opened
    #[error("give the pod's ID mapping its namespace: {}", .0.display())]
    Proc(PathBuf, #[source] std::io::Error),
    /// The ID-mapped copy of a tree cannot be made or mounted
    #[error("mount {} on {} through the pod's ID mapping ({step})", .source_path.display(), .target.display())]
    Mount {
        /// The tree.
        source_path: PathBuf,
        /// Where its copy was to go.
        target: PathBuf,
        /// `open_tree`, `mount_setattr` or `move_mount`.
        step: &'static str,
        /// Why.
        #[source]
        errno: Errno,
    },
}

/// The text of a `uid_map` or `gid_map`.
pub fn map_text(mappings: &[IdMapping]) -> String {
    mappings
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

/// Writes `userns`'s mappings as the `uid_map` and `gid_map` of process
/// `pid` (a child just cloned into a new user namespace).
pub fn write_maps(pid: nix::unistd::Pid, userns: &UserNamespace) -> Result<(), IdmapError> {
    for (file, mappings) in [("uid_map", &userns.uids), ("gid_map", &userns.gids)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, map_text(mappings)).map_err(|e| IdmapError::Proc(path, e))?;
    }
    Ok(())
}

/// A user namespace with `userns`'s mappings, as an open nsfs file.
pub fn user_namespace(userns: &UserNamespace) -> Result<OwnedFd, IdmapError> {
    let pid = crate::namespaces::hold(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(IdmapError::Namespace)?;
    let made = write_maps(pid, userns).and_then(|()| {
        let path = PathBuf::from(format!("/proc/{pid}/ns/user"));
        File::open(&path)
            .map(OwnedFd::from)
            .map_err(|e| IdmapError::Proc(path, e))
    });
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
    made
}

/// Mounts a copy of the tree at `source` on `target` (which must exist), its
/// IDs seen through the user namespace `userns` (from [`user_namespace`]);
/// with `recursive`, the mounts below `source` too.
pub fn mount_idmapped(
    source: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> Result<(), IdmapError> {
    let failed = |step: &'static str| {
        let errno = Errno::last();
        IdmapError::Mount {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            step,
            errno,
        }
    };
    let path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| IdmapError::Mount {
            source_path: source.to_path_buf(),
            target: target.to_path_buf(),
            step: "path",
            errno: Errno::EINVAL,
        })
    };
    let (from, to) = (path(source)?, path(target)?);
    let recursive_flag = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: open_tree(2) reads a NUL-terminated path and returns a new
    // file descriptor or -1.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            from.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | recursive_flag,
        )
    };
    if tree < 0 {
        return Err(failed("open_tree"));
    }
    // SAFETY: `tree` is a file descriptor open_tree just returned, owned here alone.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(
        tree.as_raw_fd(),
        Path::new(""),
        libc::AT_EMPTY_PATH as libc::c_uint | recursive_flag,
        &attr,
    )
    .map_err(|errno| IdmapError::Mount {
        source_path: source.to_path_buf(),
        target: target.to_path_buf(),
        step: "mount_setattr",
        errno,
    })?;
    let empty = c"";
    // SAFETY: move_mount(2) reads two NUL-terminated paths; `tree` is a
    // detached mount this function owns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(failed("move_mount"));
    }
    Ok(())
}

/// Whether this kernel does what pods with a user namespace need, under
/// `dir`: an ID-mapped copy of a directory of the filesystem holding `dir`
/// (Linux 5.12 and the filesystem's support), an overlay over such a copy
/// (5.19), and an ID-mapped tmpfs (6.3; Secrets and service-account
/// tokens are tmpfs volumes). Tried once per call on a scratch directory.
pub fn supported_under(dir: &Path) -> bool {
    use std::os::fd::AsFd;
    let scratch = dir.join(format!(".idmap-probe-{}", std::process::id()));
    let path = |name: &str| scratch.join(name);
    let range = IdMapping {
        container_id: 0,
        host_id: 1 << 30,
        length: 1,
    };
    let probe = UserNamespace {
        uids: vec![range],
        gids: vec![range],
    };
    let mut mounted = Vec::new();
    let works = (|| -> Option<()> {
        for d in ["plain", "mapped", "tmpfs", "tmpfs-mapped"] {
            std::fs::create_dir_all(path(d)).ok()?;
        }
        let ns = user_namespace(&probe).ok()?;
        mount_idmapped(&path("plain"), &path("mapped"), ns.as_fd(), false).ok()?;
        mounted.push(path("mapped"));
        let overlay = crate::rootfs::mount_overlay(
            &path("plain"),
            &path("layer"),
            &path("merged"),
            nix::mount::MsFlags::empty(),
            Some(crate::rootfs::Idmap {
                userns: ns.as_fd(),
                root: (1 << 30, 1 << 30),
            }),
        )
        .ok()?;
        mounted.extend(overlay);
        nix::mount::mount(
            Some("tmpfs"),
            &path("tmpfs"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4k"),
        )
        .ok()?;
        mounted.push(path("tmpfs"));
        mount_idmapped(&path("tmpfs"), &path("tmpfs-mapped"), ns.as_fd(), false).ok()?;
        mounted.push(path("tmpfs-mapped"));
        Some(())
    })()
    .is_some();
    for m in mounted.iter().rev() {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    works
}

/// Whether ID-mapped mounts work under one directory, probed once.
#[derive(Debug, Default)]
pub struct Probe(std::sync::OnceLock<bool>);

impl Probe {
    /// The answer for `dir` (made if missing), probed on the first call.
    pub fn supported(&self, dir: &Path) -> bool {
        *self.0.get_or_init(|| {
            let works = std::fs::create_dir_all(dir).is_ok() && supported_under(dir);
            if !works {
                tracing::warn!(
                    dir = %dir.display(),
                    "no ID-mapped mounts here: pods with a user namespace are refused"
                );
            }
            works
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_one_line_per_range() {
        let m = [
            IdMapping {
                container_id: 0,
                host_id: 100_000,
                length: 65_536,
            },
            IdMapping {
                container_id: 70_000,
                host_id: 5,
                length: 1,
            },
        ];
        assert_eq!(map_text(&m), "0 100000 65536\n70000 5 1\n");
    }

    /// Needs root (as the tests run): a file the host owns as 0 is owned
    /// by the mapping's root in the ID-mapped copy, and not in the source.
    #[test]
    fn an_idmapped_copy_shows_the_host_root_as_the_pods() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("file"), b"x").unwrap();
        let range = |host_id| IdMapping {
            container_id: 0,
            host_id,
            length: 65_536,
        };
        let userns = UserNamespace {
            uids: vec![range(200_000)],
            gids: vec![range(300_000)],
        };
        let ns = user_namespace(&userns).unwrap();
        mount_idmapped(&source, &target, ns.as_fd(), true).unwrap();
        let seen = std::fs::metadata(target.join("file")).unwrap();
        let own = std::fs::metadata(source.join("file")).unwrap();
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!((seen.uid(), seen.gid()), (200_000, 300_000));
        assert_eq!((own.uid(), own.gid()), (0, 0));
        assert!(supported_under(dir.path()));
    }
}
