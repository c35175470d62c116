//! A container's root filesystem on the host: an overlay of the image's
//! snapshot (read-only) under the container's writable layer, seen through
//! the pod's ID mapping when the pod has a user namespace of its own.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The root filesystem cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A directory of the writable layer cannot be made
    #[error("create {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
    /// The image cannot be seen through the pod's ID mapping
    #[error("mount the image for the pod's user namespace")]
    Idmap(#[source] crate::idmap::IdmapError),
    /// The writable layer cannot be given to the pod's root
    #[error("give the writable layer to the pod's root")]
    Chown(#[source] std::io::Error),
    /// The overlay cannot be mounted
    #[error("mount the container's root filesystem")]
    Overlay(#[source] Errno),
}

/// The pod's ID mapping for a root filesystem: the mapping's user namespace
/// (from [`crate::idmap::user_namespace`]) and the host UID and GID of the
/// pod's root.
#[derive(Debug, Clone, Copy)]
pub struct Idmap<'a> {
    /// The user namespace carrying the mapping.
    pub userns: BorrowedFd<'a>,
    /// The host UID and GID of the pod's root.
    pub root: (u32, u32),
}

/// Mounts at `target` the overlay of `lower` under the writable layer in
/// `layer` (`upper` and `work`, made here), with `flags`. With `idmap`, the
/// overlay's lower layer is an ID-mapped copy of `lower` at `layer/lower`,
/// and the writable layer's root belongs to the pod's root. Returns the
/// mounts made, in the order made (unmount them last first); on failure
/// nothing stays mounted.
pub fn mount_overlay(
    lower: &Path,
    layer: &Path,
    target: &Path,
    flags: MsFlags,
    idmap: Option<Idmap<'_>>,
) -> Result<Vec<PathBuf>, RootfsError> {
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for d in [&upper, &work, &target.to_path_buf()] {
        std::fs::create_dir_all(d).map_err(|e| RootfsError::Create(d.clone(), e))?;
    }
    let mut made = Vec::new();
    let lower = match idmap {
        None => lower.to_path_buf(),
        Some(idmap) => {
            let mapped = layer.join("lower");
            std::fs::create_dir_all(&mapped).map_err(|e| RootfsError::Create(mapped.clone(), e))?;
            crate::idmap::mount_idmapped(lower, &mapped, idmap.userns, false)
                .map_err(RootfsError::Idmap)?;
            made.push(mapped.clone());
            let (uid, gid) = idmap.root;
            if let Err(e) = std::os::unix::fs::chown(&upper, Some(uid), Some(gid)) {
                let _ = umount2(&mapped, MntFlags::MNT_DETACH);
                return Err(RootfsError::Chown(e));
            }
            mapped
        }
    };
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if let Err(e) = mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options.as_str()),
    ) {
        for m in &made {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
        return Err(RootfsError::Overlay(e));
    }
    made.push(target.to_path_buf());
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// Needs root (as the tests run): through the mapping the image's root
    /// is the pod's, and a file the pod writes lands in the writable layer
    /// as the pod's root; without it, as the host's.
    #[test]
    fn an_overlay_through_the_pods_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::fs::write(image.join("etc/passwd"), b"root:x:0:0::/:/bin/sh\n").unwrap();
        let range = |host_id| runtime_api::container::IdMapping {
            container_id: 0,
            host_id,
            length: 65_536,
        };
        let userns = runtime_api::container::UserNamespace {
            uids: vec![range(400_000)],
            gids: vec![range(500_000)],
        };
        let ns = crate::idmap::user_namespace(&userns).unwrap();
        let (layer, target) = (dir.path().join("layer"), dir.path().join("rootfs"));
        let idmap = Idmap {
            userns: ns.as_fd(),
            root: userns.root().unwrap(),
        };
        let made = mount_overlay(&image, &layer, &target, MsFlags::empty(), Some(idmap)).unwrap();
        assert_eq!(made, [layer.join("lower"), target.clone()]);
        let passwd = std::fs::metadata(target.join("etc/passwd")).unwrap();
        let root = std::fs::metadata(&target).unwrap();
        let upper = std::fs::metadata(layer.join("upper")).unwrap();
        for m in made.iter().rev() {
            umount2(m, MntFlags::MNT_DETACH).unwrap();
        }
        assert_eq!((passwd.uid(), passwd.gid()), (400_000, 500_000));
        assert_eq!((root.uid(), root.gid()), (400_000, 500_000));
        assert_eq!((upper.uid(), upper.gid()), (400_000, 500_000));

        let (layer, target) = (dir.path().join("layer2"), dir.path().join("rootfs2"));
        let made = mount_overlay(&image, &layer, &target, MsFlags::empty(), None).unwrap();
        assert_eq!(made, std::slice::from_ref(&target));
        let passwd = std::fs::metadata(target.join("etc/passwd")).unwrap();
        umount2(&target, MntFlags::MNT_DETACH).unwrap();
        assert_eq!(passwd.uid(), 0);
    }
}
