//! The pod's own namespaces without a pause process: UTS and IPC namespaces
//! made on a throw-away thread, configured there (hostname, sysctls) and
//! kept alive by bind-mounting their nsfs files under the pod's directory,
//! the way `ip netns` keeps network namespaces. Containers join them by path.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Which namespace a pod sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlScope {
    /// `net.*`: the pod's network namespace.
    Network,
    /// SysV IPC and POSIX message queues: the pod's IPC namespace.
    Ipc,
}

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// A namespace cannot be made
    #[error("cannot create the pod's {what} namespace: {message}")]
    Create {
        /// `uts` or `ipc`.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A sysctl cannot be set in the pod's namespace
    #[error("cannot set sysctl {key}={value:?} in the pod: {message}")]
    Sysctl {
        /// The sysctl.
        key: String,
        /// Its value.
        value: String,
        /// Why.
        message: String,
    },
    /// A namespace file cannot be released
    #[error("cannot release namespace file {0}: {1}")]
    Release(PathBuf, String),
}

/// The scope of sysctl `key` (dots or slashes), or `None` when it is not
/// namespaced (setting it would change the whole node).
pub fn sysctl_scope(key: &str) -> Option<SysctlScope> {
    let key = key.replace('/', ".");
    if key.starts_with("net.") {
        Some(SysctlScope::Network)
    } else if container::spec::is_ipc_sysctl(&key) {
        Some(SysctlScope::Ipc)
    } else {
        None
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn write_sysctls(sysctls: &[(String, String)]) -> Result<(), NamespaceError> {
    for (key, value) in sysctls {
        std::fs::write(sysctl_path(key), value).map_err(|e| NamespaceError::Sysctl {
            key: key.clone(),
            value: value.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// What a new UTS or IPC namespace is made with.
#[derive(Debug, Clone, Default)]
pub struct NewNamespaces {
    /// A UTS namespace with this hostname, bind-mounted at `uts_file`.
    pub hostname: Option<String>,
    /// An IPC namespace, bind-mounted at `ipc_file`.
    pub ipc: bool,
    /// IPC sysctls to set in the new IPC namespace.
    pub ipc_sysctls: Vec<(String, String)>,
}

/// The files of the namespaces made by [`create`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceFiles {
    /// The pod's UTS namespace.
    pub uts: Option<PathBuf>,
    /// The pod's IPC namespace.
    pub ipc: Option<PathBuf>,
}

/// Makes the namespaces `new` asks for, with their files in `dir`. On
/// failure nothing is left behind.
pub fn create(dir: &Path, new: &NewNamespaces) -> Result<NamespaceFiles, NamespaceError> {
    let mut files = NamespaceFiles::default();
    let mut flags = CloneFlags::empty();
    if new.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
        files.uts = Some(dir.join("uts"));
    }
    if new.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
        files.ipc = Some(dir.join("ipc"));
    }
    if flags.is_empty() {
        return Ok(files);
    }
    let what = if new.hostname.is_some() { "uts" } else { "ipc" };
    let fail = |message: String| NamespaceError::Create { what, message };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("create {}: {e}", dir.display())))?;
    for file in files.uts.iter().chain(files.ipc.iter()) {
        File::create(file).map_err(|e| fail(format!("create {}: {e}", file.display())))?;
    }
    let (new, made) = (new.clone(), files.clone());
    // unshare() moves only the calling thread: do it on a thread of its own.
    let result = std::thread::spawn(move || -> Result<(), NamespaceError> {
        unshare(flags).map_err(|e| NamespaceError::Create {
            what,
            message: format!("unshare: {e}"),
        })?;
        if let Some(hostname) = &new.hostname {
            nix::unistd::sethostname(hostname).map_err(|e| NamespaceError::Create {
                what: "uts",
                message: format!("set hostname {hostname:?}: {e}"),
            })?;
        }
        write_sysctls(&new.ipc_sysctls)?;
        for (kind, file) in [("uts", &made.uts), ("ipc", &made.ipc)] {
            if let Some(file) = file {
                mount(
                    Some(Path::new("/proc/thread-self/ns").join(kind).as_path()),
                    file.as_path(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| NamespaceError::Create {
                    what: if kind == "uts" { "uts" } else { "ipc" },
                    message: format!("bind mount onto {}: {e}", file.display()),
                })?;
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(fail("the namespace thread panicked".into())));
    if let Err(e) = result {
        release_all(&files);
        return Err(e);
    }
    Ok(files)
}

/// Sets `sysctls` inside the network namespace at `netns`.
pub fn set_net_sysctls(netns: &Path, sysctls: &[(String, String)]) -> Result<(), NamespaceError> {
    set_sysctls_in(netns, CloneFlags::CLONE_NEWNET, None, sysctls)
}

/// Sets `sysctls` inside the IPC namespace at `file`, owned by a user
/// namespace whose root is `owner` on the host.
pub fn set_ipc_sysctls(
    file: &Path,
    owner: (u32, u32),
    sysctls: &[(String, String)],
) -> Result<(), NamespaceError> {
    set_sysctls_in(file, CloneFlags::CLONE_NEWIPC, Some(owner), sysctls)
}

/// [`container::namespaces::set_sysctls_in`], its failure named by the
/// first sysctl.
fn set_sysctls_in(
    file: &Path,
    kind: CloneFlags,
    owner: Option<(u32, u32)>,
    sysctls: &[(String, String)],
) -> Result<(), NamespaceError> {
    container::namespaces::set_sysctls_in(file, kind, owner, sysctls).map_err(|message| {
        NamespaceError::Sysctl {
            key: sysctls.first().map(|s| s.0.clone()).unwrap_or_default(),
            value: sysctls.first().map(|s| s.1.clone()).unwrap_or_default(),
            message,
        }
    })
}

/// Unmounts and deletes a namespace file; a missing one is not an error.
pub fn release(file: &Path) -> Result<(), NamespaceError> {
    match umount2(file, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(NamespaceError::Release(file.to_path_buf(), e.to_string())),
    }
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NamespaceError::Release(file.to_path_buf(), e.to_string())),
    }
}

/// Releases every file of `files`, logging what fails.
pub fn release_all(files: &NamespaceFiles) {
    for file in files.uts.iter().chain(files.ipc.iter()) {
        if let Err(e) = release(file) {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn sysctls_are_scoped_by_namespace() {
        assert_eq!(
            sysctl_scope("net.ipv4.ip_forward"),
            Some(SysctlScope::Network)
        );
        assert_eq!(
            sysctl_scope("net/core/somaxconn"),
            Some(SysctlScope::Network)
        );
        assert_eq!(
            sysctl_scope("kernel.shm_rmid_forced"),
            Some(SysctlScope::Ipc)
        );
        assert_eq!(sysctl_scope("fs.mqueue.msg_max"), Some(SysctlScope::Ipc));
        assert_eq!(sysctl_scope("vm.swappiness"), None);
        assert_eq!(sysctl_scope("kernel.pid_max"), None);
    }

    #[test]
    fn new_namespaces_are_separate_configured_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let files = create(
            dir.path(),
            &NewNamespaces {
                hostname: Some("unit-pod".into()),
                ipc: true,
                ipc_sysctls: vec![("kernel.shm_rmid_forced".into(), "1".into())],
            },
        )
        .unwrap();
        let (uts, ipc) = (files.uts.clone().unwrap(), files.ipc.clone().unwrap());
        assert_ne!(inode(&uts), inode(Path::new("/proc/self/ns/uts")));
        assert_ne!(inode(&ipc), inode(Path::new("/proc/self/ns/ipc")));
        // Inside: the hostname and the sysctl; outside: unchanged.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--uts={}", uts.display()))
            .arg(format!("--ipc={}", ipc.display()))
            .args(["sh", "-c", "hostname; cat /proc/sys/kernel/shm_rmid_forced"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "unit-pod\n1\n");
        assert_ne!(
            nix::unistd::gethostname().unwrap().to_string_lossy(),
            "unit-pod"
        );
        release_all(&files);
        assert!(!uts.exists() && !ipc.exists());
        release(&uts).unwrap();
    }

    #[test]
    fn a_failed_sysctl_leaves_no_namespace_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = create(
            dir.path(),
            &NewNamespaces {
                hostname: None,
                ipc: true,
                ipc_sysctls: vec![("kernel.no_such_sysctl".into(), "1".into())],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("kernel.no_such_sysctl"), "{err}");
        assert!(!dir.path().join("ipc").exists());
    }
}
