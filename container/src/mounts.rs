//! Host-side bind mounts of a container's CRI mounts, and the propagation
//! checks they need.
//!
//! A mount with propagation [`Propagation::Bidirectional`] only reaches the
//! host if the host's mount holding its source is shared, and one with
//! [`Propagation::HostToContainer`] only sees the host's new mounts if that
//! mount is shared or a slave: [`check_shared`] and [`check_shared_or_slave`]
//! tell, from `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use runtime_api::container::Propagation;

/// The mount table of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A bind mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Binding the source on the target failed
    #[error("bind {} on {}", .from.display(), .to.display())]
    Bind {
        /// What was to be bound.
        from: PathBuf,
        /// Where.
        to: PathBuf,
        /// Why not.
        #[source]
        errno: Errno,
    },
    /// The ID-mapped copy of the source cannot be made
    #[error(transparent)]
    Idmap(crate::idmap::IdmapError),
    /// Setting the propagation of the new mount failed
    #[error("set the propagation of {}", .target.display())]
    Propagation {
        /// The new mount.
        target: PathBuf,
        /// Why not.
        #[source]
        errno: Errno,
    },
    /// Remounting the new mount read-only failed
    #[error("remount {} read-only", .target.display())]
    Readonly {
        /// The new mount.
        target: PathBuf,
        /// Why not.
        #[source]
        errno: Errno,
    },
    /// Making the new mount and its submounts read-only failed
    #[error("make {} and its submounts read-only (mount_setattr)", .target.display())]
    RecursiveReadonly {
        /// The new mount.
        target: PathBuf,
        /// Why not.
        #[source]
        errno: Errno,
    },
}

/// The mount holding a path does not have the propagation asked for, or
/// cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The path cannot be resolved
    #[error("resolve {}", .path.display())]
    Resolve {
        /// The path asked about.
        path: PathBuf,
        /// Why not.
        #[source]
        error: std::io::Error,
    },
    /// The mount table cannot be read
    #[error("read {MOUNTINFO}")]
    MountInfo(#[source] std::io::Error),
    /// No mount of the mount table holds the path
    #[error("no mount in {MOUNTINFO} holds {}", .0.display())]
    NoMount(PathBuf),
    /// The mount holding the path is not shared
    #[error("{} is on mount {}, which is not shared (make it so with `mount --make-rshared {}`)", .path.display(), .mount_point.display(), .mount_point.display())]
    NotShared {
        /// The path asked about.
        path: PathBuf,
        /// The mount point of the mount holding it.
        mount_point: PathBuf,
    },
    /// The mount holding the path is neither shared nor a slave
    #[error("{} is on mount {}, which is neither shared nor a slave (make it shared with `mount --make-rshared {}`)", .path.display(), .mount_point.display(), .mount_point.display())]
    NotSharedOrSlave {
        /// The path asked about.
        path: PathBuf,
        /// The mount point of the mount holding it.
        mount_point: PathBuf,
    },
}

/// A CRI mount's host path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    /// The host path is relative
    #[error("mount {container_path}: host_path {host_path:?} must be absolute")]
    NotAbsolute {
        /// The mount's path in the container.
        container_path: String,
        /// The host path given.
        host_path: String,
    },
    /// A missing host path cannot be created
    #[error("create host path {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
    /// The host path cannot be resolved
    #[error("resolve host path {}", .0.display())]
    Resolve(PathBuf, #[source] std::io::Error),
}

/// The host path of a CRI mount, resolved on the host (symlinks followed);
/// a missing one is created as a directory, as other runtimes do.
pub fn resolve_host_path(m: &runtime_api::container::Mount) -> Result<PathBuf, HostPathError> {
    let host = Path::new(&m.host_path);
    if !host.is_absolute() {
        return Err(HostPathError::NotAbsolute {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
        });
    }
    if !host.exists() {
        std::fs::create_dir_all(host).map_err(|e| HostPathError::Create(host.into(), e))?;
    }
    std::fs::canonicalize(host).map_err(|e| HostPathError::Resolve(host.into(), e))
}

/// Makes `target` a mount point for `source`: a directory for a directory,
/// an empty file for anything else; its parent is made too.
pub fn mount_point_for(source: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if source.is_dir() {
        std::fs::create_dir_all(target)
    } else {
        std::fs::write(target, b"")
    }
}

/// A volume of a pod with a user namespace is an ID-mapped copy, which
/// takes no mount propagation: `Err` says so for a mount that asks for it.
pub fn check_idmapped_propagation(m: &runtime_api::container::Mount) -> Result<(), String> {
    if m.propagation == Propagation::Private {
        return Ok(());
    }
    Err(format!(
        "mount {}: a pod with a user namespace gets ID-mapped copies of its volumes, which take no mount propagation (PROPAGATION_PRIVATE only)",
        m.container_path
    ))
}

/// Bind-mounts `source` (recursively) on `target`, which must exist, with
/// `propagation` (private, slave or shared) and read-only if `readonly`.
///
/// A shared bind only propagates to and from the host if `source`'s mount is
/// shared itself (see [`check_shared`]).
///
/// With `idmap` (a user namespace from [`crate::idmap::user_namespace`]) the
/// bind is an ID-mapped copy of the tree: a detached copy, so it is in no
/// peer group of the host's, and its propagation reaches nothing.
pub fn bind(
    source: &Path,
    target: &Path,
    propagation: Propagation,
    readonly: bool,
    idmap: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), BindError> {
    if let Some(userns) = idmap {
        crate::idmap::mount_idmapped(source, target, userns, true).map_err(BindError::Idmap)?;
    } else {
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|errno| BindError::Bind {
            from: source.to_path_buf(),
            to: target.to_path_buf(),
            errno,
        })?;
    }
    let flag = match propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mount(
        None::<&str>,
        target,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|errno| BindError::Propagation {
        target: target.to_path_buf(),
        errno,
    })?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| BindError::Readonly {
            target: target.to_path_buf(),
            errno,
        })?;
    }
    Ok(())
}

/// Makes the mount at `target` and every mount under it read-only
/// (`mount_setattr` with `AT_RECURSIVE`, Linux 5.12).
pub fn readonly_recursively(target: &Path) -> Result<(), BindError> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = crate::idmap::MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    crate::idmap::mount_setattr(
        libc::AT_FDCWD,
        target,
        libc::AT_RECURSIVE as libc::c_uint,
        &attr,
    )
    .map_err(|errno| BindError::RecursiveReadonly {
        target: target.to_path_buf(),
        errno,
    })
}

/// Whether this kernel has `mount_setattr` (Linux 5.12), which recursive
/// read-only mounts need; probed once.
pub fn recursive_readonly_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: mount_setattr(2) with a bad fd, a NULL path and a NULL
        // attribute of size 0 touches no memory; it fails with ENOSYS where
        // the call does not exist and with another errno elsewhere.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                std::ptr::null::<libc::c_char>(),
                0,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        rc == 0 || Errno::last() != Errno::ENOSYS
    })
}

/// Whether anything is mounted below `path` (not on it) in this mount
/// namespace.
pub fn has_submounts(path: &Path) -> Result<bool, SharedError> {
    let table = std::fs::read_to_string(MOUNTINFO).map_err(SharedError::MountInfo)?;
    Ok(submounts_in(&table, path))
}

fn submounts_in(table: &str, path: &Path) -> bool {
    table
        .lines()
        .filter_map(MountEntry::parse)
        .any(|e| e.mount_point != path && e.mount_point.starts_with(path))
}

/// Succeeds if the host's mount holding `path` is shared (needed by a
/// [`Propagation::Bidirectional`] mount of `path`).
pub fn check_shared(path: &Path) -> Result<(), SharedError> {
    let (path, entry) = holding_mount(path)?;
    if entry.is_shared() {
        Ok(())
    } else {
        Err(SharedError::NotShared {
            path,
            mount_point: entry.mount_point,
        })
    }
}

/// Succeeds if the host's mount holding `path` is shared or a slave (needed
/// by a [`Propagation::HostToContainer`] mount of `path`).
pub fn check_shared_or_slave(path: &Path) -> Result<(), SharedError> {
    let (path, entry) = holding_mount(path)?;
    if entry.is_shared() || entry.is_slave() {
        Ok(())
    } else {
        Err(SharedError::NotSharedOrSlave {
            path,
            mount_point: entry.mount_point,
        })
    }
}

/// `path` canonicalized, and the entry of the mount holding it.
fn holding_mount(path: &Path) -> Result<(PathBuf, MountEntry), SharedError> {
    let resolved = std::fs::canonicalize(path).map_err(|error| SharedError::Resolve {
        path: path.to_path_buf(),
        error,
    })?;
    let table = std::fs::read_to_string(MOUNTINFO).map_err(SharedError::MountInfo)?;
    match mount_of(&table, &resolved) {
        Some(entry) => Ok((resolved, entry)),
        None => Err(SharedError::NoMount(resolved)),
    }
}

/// One line of a mountinfo table, as far as propagation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    /// Where it is mounted.
    mount_point: PathBuf,
    /// The optional fields (`shared:N`, `master:N`, `propagate_from:N`, `unbindable`).
    optional: Vec<String>,
}

impl MountEntry {
    /// Parses one mountinfo line: `id parent major:minor root mount-point
    /// options [optional...] - fstype source super-options`.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_ascii_whitespace();
        let mount_point = fields.nth(4)?;
        let _options = fields.next()?;
        let mut optional = Vec::new();
        for field in fields.by_ref() {
            if field == "-" {
                return Some(Self {
                    mount_point: PathBuf::from(unescape(mount_point)),
                    optional,
                });
            }
            optional.push(field.to_owned());
        }
        // No separator: not a mountinfo line.
        None
    }

    fn is_shared(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("shared:"))
    }

    fn is_slave(&self) -> bool {
        self.optional.iter().any(|f| f.starts_with("master:"))
    }
}

/// Undoes the kernel's octal escapes in a mountinfo path (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entry of the mount holding `path` (absolute, canonical) in the
/// mountinfo `table`: the longest mount point that is a prefix of `path`;
/// of several mounts on the same point, the last one (the one on top).
fn mount_of(table: &str, path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for entry in table.lines().filter_map(MountEntry::parse) {
        if !path.starts_with(&entry.mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| entry.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(entry);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec master:9 - tmpfs tmpfs ro,mode=755
40 22 0:40 / /var/lib/data rw,relatime - tmpfs tmpfs rw
41 40 0:41 / /var/lib/data/sub rw,relatime master:3 propagate_from:1 - tmpfs tmpfs rw
42 22 0:42 / /mnt/my\\040disk rw shared:20 master:5 - tmpfs tmpfs rw
43 22 0:43 / /var/lib/data rw,relatime shared:30 - tmpfs tmpfs rw
";

    fn at(path: &str) -> MountEntry {
        mount_of(TABLE, Path::new(path)).unwrap()
    }

    #[test]
    fn lines_parse_with_and_without_optional_fields() {
        let root = MountEntry::parse(TABLE.lines().next().unwrap()).unwrap();
        assert_eq!(root.mount_point, Path::new("/"));
        assert_eq!(root.optional, ["shared:1"]);
        let bare = MountEntry::parse(TABLE.lines().nth(4).unwrap()).unwrap();
        assert!(bare.optional.is_empty());
        let slave = MountEntry::parse(TABLE.lines().nth(5).unwrap()).unwrap();
        assert_eq!(slave.optional, ["master:3", "propagate_from:1"]);
        assert!(MountEntry::parse("").is_none());
        assert!(MountEntry::parse("22 1 8:1 / / rw shared:1").is_none());
    }

    #[test]
    fn submounts_are_mounts_strictly_below() {
        assert!(submounts_in(TABLE, Path::new("/var/lib/data")));
        assert!(!submounts_in(TABLE, Path::new("/var/lib/data/sub")));
        // A prefix of the name is not a prefix of the path.
        assert!(!submounts_in(TABLE, Path::new("/var/lib/dat")));
    }

    #[test]
    fn the_longest_mount_point_holds_a_path() {
        assert_eq!(at("/usr/bin").mount_point, Path::new("/"));
        assert!(at("/usr/bin").is_shared());
        // A prefix of the name is not a prefix of the path.
        assert_eq!(at("/system").mount_point, Path::new("/"));
        let cgroup = at("/sys/fs/cgroup/memory");
        assert!(cgroup.is_slave() && !cgroup.is_shared());
        let sub = at("/var/lib/data/sub/x");
        assert_eq!(sub.mount_point, Path::new("/var/lib/data/sub"));
        assert!(sub.is_slave());
    }

    #[test]
    fn the_top_mount_of_a_stack_counts() {
        let data = at("/var/lib/data/file");
        assert_eq!(data.optional, ["shared:30"]);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        let disk = at("/mnt/my disk/a");
        assert_eq!(disk.mount_point, Path::new("/mnt/my disk"));
        assert!(disk.is_shared() && disk.is_slave());
        assert_eq!(unescape(r"a\011b\134c\0"), "a\tb\\c\\0");
    }

    /// A tmpfs mounted on a fresh directory; unmounted when dropped.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        /// `None` when this process may not mount (not root).
        fn mount() -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            match mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=1m"),
            ) {
                Ok(()) => Some(Self(dir)),
                Err(Errno::EPERM) => None,
                Err(e) => panic!("mount a tmpfs: {e}"),
            }
        }

        fn propagation(&self, flag: MsFlags) {
            mount(
                None::<&str>,
                self.0.path(),
                None::<&str>,
                flag,
                None::<&str>,
            )
            .unwrap();
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn check_shared_reads_the_real_mount_table() {
        let Some(tmpfs) = Tmpfs::mount() else {
            eprintln!("skipped: not allowed to mount");
            return;
        };
        let inside = tmpfs.0.path().join("dir");
        std::fs::create_dir(&inside).unwrap();
        tmpfs.propagation(MsFlags::MS_SHARED);
        check_shared(&inside).unwrap();
        check_shared_or_slave(&inside).unwrap();
        tmpfs.propagation(MsFlags::MS_PRIVATE);
        let err = check_shared(&inside).unwrap_err();
        assert!(
            matches!(&err, SharedError::NotShared { mount_point, .. } if mount_point == &std::fs::canonicalize(tmpfs.0.path()).unwrap()),
            "{err}"
        );
        assert!(matches!(
            check_shared_or_slave(&inside),
            Err(SharedError::NotSharedOrSlave { .. })
        ));
        assert!(matches!(
            check_shared(Path::new("/no/such/path")),
            Err(SharedError::Resolve { .. })
        ));
    }

    #[test]
    fn bind_sets_the_propagation_asked_for() {
        let Some(tmpfs) = Tmpfs::mount() else {
            eprintln!("skipped: not allowed to mount");
            return;
        };
        tmpfs.propagation(MsFlags::MS_SHARED);
        let (source, target) = (tmpfs.0.path().join("src"), tmpfs.0.path().join("dst"));
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&target).unwrap();
        bind(&source, &target, Propagation::Bidirectional, true, None).unwrap();
        check_shared(&target).unwrap();
        assert!(
            std::fs::write(target.join("f"), b"").is_err(),
            "not read-only"
        );
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        bind(&source, &target, Propagation::Private, false, None).unwrap();
        assert!(check_shared_or_slave(&target).is_err());
        std::fs::write(target.join("f"), b"").unwrap();
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        let err = bind(
            &source.join("missing"),
            &target,
            Propagation::Private,
            false,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("bind "), "{err}");
    }
}
