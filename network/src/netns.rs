//! Named network namespaces, bind-mounted under `/run/netns` so that
//! `ip netns` and CNI plugins can reach them by path.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

/// Where named namespaces live (the `ip netns` convention).
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Cannot create the network namespace
    #[error("cannot create network namespace {0}: {1}")]
    Create(PathBuf, String),
    /// Cannot remove the network namespace
    #[error("cannot remove network namespace {0}: {1}")]
    Remove(PathBuf, String),
}

/// A named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace called `name` (it may not exist yet).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The namespace's name (for `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Creates the namespace; an existing one with this name is kept.
    pub fn create(&self) -> Result<(), NetnsError> {
        let path = self.path();
        let err = |e: String| NetnsError::Create(path.clone(), e);
        if is_nsfs(&path) {
            return Ok(());
        }
        fs::create_dir_all(NETNS_DIR).map_err(|e| err(e.to_string()))?;
        fs::File::create(&path).map_err(|e| err(e.to_string()))?;
        let target = path.clone();
        // unshare() moves only the calling thread: do it on a throw-away thread.
        let made = std::thread::spawn(move || -> Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind mount: {e}"))
        })
        .join()
        .map_err(|_| err("namespace thread panicked".into()))?;
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(err(e));
        }
        Ok(())
    }

    /// Whether the namespace exists.
    pub fn exists(&self) -> bool {
        is_nsfs(&self.path())
    }

    /// Unmounts and deletes the namespace; a missing one is not an error.
    pub fn remove(&self) -> Result<(), NetnsError> {
        let path = self.path();
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(NetnsError::Remove(path, e.to_string())),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetnsError::Remove(path, e.to_string())),
        }
    }
}

/// Whether `path` is a mounted namespace file (nsfs).
pub fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673)
}

/// Runs `f` on a thread of its own that enters the network namespace at
/// `netns` (setns moves only the calling thread, which then ends).
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let ns = fs::File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(std::os::fd::AsFd::as_fd(&ns), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter the network namespace: {e}"))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err("the network namespace thread panicked".to_owned()))
}

/// The counters of every interface but loopback in the network namespace
/// at `netns` (its `/proc/net/dev`, read from a thread inside it).
pub fn interface_counters(netns: &Path) -> Result<Vec<usage::InterfaceUsage>, String> {
    in_netns(netns, || {
        usage::net::read_net_dev(Path::new("/proc/thread-self/net/dev")).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_idempotent_and_remove_cleans_up() {
        let ns = Netns::new(format!("frakti-unit-{}", std::process::id()));
        ns.create().unwrap();
        assert!(ns.exists());
        ns.create().unwrap();
        // It is a real, separate namespace: only a loopback device inside.
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-o", "link"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&out.stdout);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:"));
        // A thread that enters it sees its devices, not the host's.
        let inside = in_netns(&ns.path(), || {
            fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| e.to_string())
        })
        .unwrap();
        let host = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        assert_eq!(inside.lines().count(), 3, "{inside}");
        assert!(host.lines().count() > 3, "{host}");
        ns.remove().unwrap();
        assert!(!ns.exists());
        assert!(!ns.path().exists());
        ns.remove().unwrap();
    }
}
