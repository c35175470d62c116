//! A privileged container's view of its runtime's `/dev`, in a form youki's
//! libcontainer 0.7 can make.
//!
//! The spec builder gives a privileged container the runtime's whole `/dev`
//! as a bind mount (`/dev` from `/dev`), as runc-based runtimes can.
//! libcontainer 0.7 does not treat such a mount specially: after the mounts it
//! makes its default symlinks and device nodes (`/dev/kcore`, `/dev/fd`,
//! `/dev/null`, `/dev/ptmx`, ...) in the container's `/dev`, which would be
//! the runtime's own: it would change the runtime's `/dev` and then fail on
//! the first entry that already exists. [`dev_bind_as_nodes`] turns such a
//! spec into one libcontainer handles: a fresh `/dev` tmpfs with a node for
//! every device of the runtime's `/dev` (as the container is created; later
//! devices do not appear).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType, Mount, MountBuilder, Spec,
};

/// The runtime's `/dev` cannot be turned into device nodes.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// A directory of the runtime's `/dev` cannot be listed
    #[error("list the devices under {}", .0.display())]
    List(PathBuf, #[source] std::io::Error),
    /// A spec element cannot be built (a bug)
    #[error("describe {0}: {1}")]
    Build(String, String),
}

/// Whether `mount` is a bind of the runtime's `/dev` on `/dev`.
fn is_dev_bind(mount: &Mount) -> bool {
    mount.destination() == Path::new("/dev")
        && mount.typ().as_deref() == Some("bind")
        && mount.source().as_deref() == Some(Path::new("/dev"))
}

/// If `spec` binds the runtime's `/dev` on `/dev`, replaces that mount by a
/// `/dev` tmpfs and adds a `linux.devices` entry for every device node under
/// `dev` (the runtime's `/dev`; entries the spec lists already are kept).
/// Returns whether the spec changed.
pub fn dev_bind_as_nodes(spec: &mut Spec, dev: &Path) -> Result<bool, DevicesError> {
    let Some(mounts) = spec.mounts().as_ref() else {
        return Ok(false);
    };
    let Some(at) = mounts.iter().position(is_dev_bind) else {
        return Ok(false);
    };
    let tmpfs = MountBuilder::default()
        .destination("/dev")
        .typ("tmpfs")
        .source("tmpfs")
        .options(["nosuid", "strictatime", "mode=755", "size=65536k"].map(String::from))
        .build()
        .map_err(|e| DevicesError::Build("the /dev tmpfs".into(), e.to_string()))?;
    let mut mounts = mounts.clone();
    mounts[at] = tmpfs;
    spec.set_mounts(Some(mounts));

    let mut devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    for node in nodes(dev)? {
        if !devices.iter().any(|d| d.path() == node.path()) {
            devices.push(node);
        }
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_devices(Some(devices));
    spec.set_linux(Some(linux));
    Ok(true)
}

/// Every character and block device under `dev`, as seen from a container
/// (`/dev/...`), skipping other filesystems mounted below it (`pts`, `shm`,
/// `mqueue`, ...), which the spec mounts itself.
pub fn nodes(dev: &Path) -> Result<Vec<LinuxDevice>, DevicesError> {
    let root = std::fs::symlink_metadata(dev).map_err(|e| DevicesError::List(dev.into(), e))?;
    let mut out = Vec::new();
    let mut pending = vec![dev.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| DevicesError::List(dir.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DevicesError::List(dir.clone(), e))?;
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Gone while listing (a device unplugged).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DevicesError::List(path, e)),
            };
            if meta.dev() != root.dev() {
                continue;
            }
            let kind = meta.file_type();
            let typ = if kind.is_dir() {
                pending.push(path);
                continue;
            } else if kind.is_char_device() {
                LinuxDeviceType::C
            } else if kind.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let Ok(relative) = path.strip_prefix(dev) else {
                continue;
            };
            let rdev = meta.rdev();
            let node = LinuxDeviceBuilder::default()
                .path(Path::new("/dev").join(relative))
                .typ(typ)
                // Both numbers have at most 32 bits.
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(|e| DevicesError::Build(path.display().to_string(), e.to_string()))?;
            out.push(node);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dev_mount: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": "/rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                dev_mount,
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            ],
            "linux": {
                "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_dev_bind_becomes_a_tmpfs_with_the_runtimes_nodes() {
        let mut s = spec(serde_json::json!(
            {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "rslave"]}
        ));
        assert!(dev_bind_as_nodes(&mut s, Path::new("/dev")).unwrap());
        let mounts = s.mounts().as_ref().unwrap();
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].destination(), Path::new("/dev"));
        assert_eq!(mounts[1].typ().as_deref(), Some("tmpfs"));
        assert_eq!(mounts[2].destination(), Path::new("/dev/pts"));
        let devices = s.linux().as_ref().unwrap().devices().clone().unwrap();
        let paths: Vec<_> = devices.iter().map(|d| d.path().clone()).collect();
        // The spec's own entry first, then the runtime's nodes once each.
        assert_eq!(devices[0].path(), Path::new("/dev/null"));
        assert_eq!(
            paths
                .iter()
                .filter(|p| *p == Path::new("/dev/null"))
                .count(),
            1
        );
        let zero = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/zero"))
            .unwrap();
        assert_eq!(
            (zero.typ(), zero.major(), zero.minor()),
            (LinuxDeviceType::C, 1, 5)
        );
        // Nothing from the devpts mount below /dev.
        assert!(!paths.iter().any(|p| p.starts_with("/dev/pts")));
    }

    #[test]
    fn other_dev_mounts_are_left_alone() {
        let tmpfs = serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs"});
        let mut s = spec(tmpfs);
        let before = serde_json::to_value(&s).unwrap();
        assert!(!dev_bind_as_nodes(&mut s, Path::new("/dev")).unwrap());
        assert_eq!(serde_json::to_value(&s).unwrap(), before);
    }

    #[test]
    fn nodes_skip_files_links_and_other_filesystems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", dir.path().join("fd")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(nodes(dir.path()).unwrap().is_empty());
        assert!(matches!(
            nodes(&dir.path().join("missing")),
            Err(DevicesError::List(..))
        ));
    }
}
