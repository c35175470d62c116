//! The pod's disks: block devices and disk images the host hot-plugged for
//! CRI mounts and devices. Each is found by its serial, its filesystem is
//! mounted once per pod at [`agent_api::messages::disk_mount_dir`] (the
//! containers' mounts bind from there), and its device nodes are added to
//! the containers that ask for them.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_api::AgentError;
use agent_api::messages::{AgentErrorKind, GuestDisk};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::{Value, json};

/// How long a hot-plugged disk may take to appear in the guest.
const DISK_WAIT: Duration = Duration::from_secs(10);

fn fail(kind: AgentErrorKind, message: String) -> AgentError {
    AgentError::new(kind, message)
}

/// Mounts the filesystems of `disks` (those not mounted yet) and adds their
/// device nodes and cgroup rules to `spec`.
pub fn prepare(disks: &[GuestDisk], spec: &mut Value) -> Result<(), AgentError> {
    for disk in disks {
        let device = find_disk(&disk.serial, DISK_WAIT).ok_or_else(|| {
            fail(
                AgentErrorKind::NotFound,
                format!("disk {} did not appear in the VM", disk.serial),
            )
        })?;
        if disk.mount {
            mount_once(&device, &disk.serial, disk.read_only)?;
        }
        for node in &disk.nodes {
            let d = runtime_api::container::Device {
                host_path: device.display().to_string(),
                container_path: node.container_path.clone(),
                permissions: node.permissions.clone(),
            };
            let (nodes, rules) = container::spec::device_nodes_and_rules(std::slice::from_ref(&d))
                .map_err(|e| fail(AgentErrorKind::InvalidArgument, e.to_string()))?;
            append(spec, &["linux", "devices"], nodes);
            append(spec, &["linux", "resources", "devices"], rules);
        }
    }
    Ok(())
}

/// Appends `items` to the array at `path` in `spec`, making it if missing.
fn append(spec: &mut Value, path: &[&str], items: Vec<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = spec;
    for key in parents {
        let Some(object) = at.as_object_mut() else {
            return;
        };
        at = object.entry(*key).or_insert_with(|| json!({}));
    }
    let Some(object) = at.as_object_mut() else {
        return;
    };
    let list = object.entry(*last).or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut() {
        list.extend(items);
    }
}

fn mount_once(device: &Path, serial: &str, read_only: bool) -> Result<(), AgentError> {
    let dir = agent_api::messages::disk_mount_dir(serial);
    let dir = Path::new(&dir);
    if crate::init::is_mount_point(dir) {
        return Ok(());
    }
    let fstype = detect_filesystem(device)?;
    fs::create_dir_all(dir).map_err(|e| {
        fail(
            AgentErrorKind::Internal,
            format!("create {}: {e}", dir.display()),
        )
    })?;
    let mut flags = MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    // The kernel asks the agent's modprobe for the filesystem's module.
    // A disk that just arrived can refuse mounts (ENODEV) for a moment
    // after it is readable.
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        match mount(Some(device), dir, Some(fstype), flags, None::<&str>) {
            Ok(()) => break,
            Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(fail(
                    AgentErrorKind::FailedPrecondition,
                    format!("mount {fstype} of disk {serial}: {e}"),
                ));
            }
        }
    }
    tracing::info!(serial, fstype, read_only, "disk mounted");
    Ok(())
}

/// The device node of the disk whose serial is `serial`, waiting up to
/// `limit` for it to appear.
pub fn find_disk(serial: &str, limit: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + limit;
    loop {
        let found = fs::read_dir("/sys/block").ok().and_then(|entries| {
            entries.flatten().find_map(|e| {
                let own = fs::read_to_string(e.path().join("serial")).ok()?;
                (own.trim() == serial).then(|| Path::new("/dev").join(e.file_name()))
            })
        });
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts the filesystem of disk `serial`, if mounted.
pub fn release(serial: &str) -> Result<(), AgentError> {
    if serial.is_empty() || serial.contains(['/', '.']) {
        return Err(fail(
            AgentErrorKind::InvalidArgument,
            format!("bad disk serial {serial:?}"),
        ));
    }
    let dir = agent_api::messages::disk_mount_dir(serial);
    let dir = Path::new(&dir);
    if crate::init::is_mount_point(dir) {
        nix::unistd::sync();
        umount2(dir, MntFlags::empty()).map_err(|e| {
            fail(
                AgentErrorKind::FailedPrecondition,
                format!("unmount disk {serial}: {e}"),
            )
        })?;
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

/// The filesystem on `device`, from its superblock's magic.
fn detect_filesystem(device: &Path) -> Result<&'static str, AgentError> {
    let mut head = vec![0u8; 0x10048];
    let read = fs::File::open(device).and_then(|mut f| {
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    });
    let n = read.map_err(|e| {
        fail(
            AgentErrorKind::Internal,
            format!("read {}: {e}", device.display()),
        )
    })?;
    head.truncate(n);
    filesystem_of(&head).ok_or_else(|| {
        fail(
            AgentErrorKind::FailedPrecondition,
            format!(
                "no filesystem the guest knows (ext2/3/4, xfs, btrfs, vfat, erofs) on {}",
                device.display()
            ),
        )
    })
}

/// The filesystem whose magic `head` (a device's first bytes) carries.
fn filesystem_of(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"XFSB") {
        Some("xfs")
    } else if at(0x438, &[0x53, 0xef]) {
        Some("ext4")
    } else if at(0x10040, b"_BHRfS_M") {
        Some("btrfs")
    } else if at(0x400, &[0xe2, 0xe1, 0xf5, 0xe0]) {
        Some("erofs")
    } else if at(0x1fe, &[0x55, 0xaa]) && (at(0x36, b"FAT") || at(0x52, b"FAT32")) {
        Some("vfat")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystems_are_known_by_their_magic() {
        let with = |offset: usize, magic: &[u8]| {
            let mut head = vec![0u8; 0x10048];
            head[offset..offset + magic.len()].copy_from_slice(magic);
            head
        };
        assert_eq!(filesystem_of(&with(0, b"XFSB")), Some("xfs"));
        assert_eq!(filesystem_of(&with(0x438, &[0x53, 0xef])), Some("ext4"));
        assert_eq!(filesystem_of(&with(0x10040, b"_BHRfS_M")), Some("btrfs"));
        assert_eq!(
            filesystem_of(&with(0x400, &[0xe2, 0xe1, 0xf5, 0xe0])),
            Some("erofs")
        );
        let mut fat = with(0x52, b"FAT32   ");
        fat[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(filesystem_of(&fat), Some("vfat"));
        assert_eq!(
            filesystem_of(&with(0x52, b"FAT32")),
            None,
            "no boot signature"
        );
        assert_eq!(filesystem_of(&[0u8; 0x10048]), None);
        assert_eq!(filesystem_of(&[]), None, "a short device");
    }

    #[test]
    fn device_nodes_join_the_spec() {
        let mut spec =
            json!({"linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}});
        append(
            &mut spec,
            &["linux", "devices"],
            vec![json!({"path": "/dev/xvda"})],
        );
        append(
            &mut spec,
            &["linux", "resources", "devices"],
            vec![json!({"allow": true})],
        );
        assert_eq!(spec["linux"]["devices"], json!([{"path": "/dev/xvda"}]));
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}, {"allow": true}]),
            "after the spec's own rules"
        );
        let mut bare = json!({});
        append(
            &mut bare,
            &["linux", "resources", "devices"],
            vec![json!(1)],
        );
        assert_eq!(bare, json!({"linux": {"resources": {"devices": [1]}}}));
    }
}
