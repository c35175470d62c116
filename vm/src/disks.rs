//! Disks of a VM pod. A CRI mount whose host path is a block device, or a
//! regular file that the annotation `io.frakti.volume.<container_path>:
//! "disk"` (on the container or the pod) marks as a disk image, and a CRI
//! device that is a host block device, are hot-plugged into the pod's VM as
//! virtio-blk disks: once per pod however many containers use them, and
//! unplugged when the last of those containers is removed. The guest mounts
//! a disk's filesystem itself (the agent detects it), so its bytes never
//! pass through virtio-fs.
//!
//! What is attached, and for whom, is kept in `<pod dir>/disks.json`, so a
//! restarted daemon carries on where the last one stopped.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_api::calls;
use agent_api::messages::{DiskNode, GuestDisk};
use hypervisor::{BlockFormat, BlockSpec};
use runtime_api::container::{ContainerConfig, Device};
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};
use serde::{Deserialize, Serialize};

use crate::config::VmState;
use crate::errors::{agent_failure, internal};
use crate::runtime::{AGENT_CALL, Vm, VmRuntime};

/// Annotations `<prefix><container path>: "disk"` mark a mount's file as a disk image.
pub const VOLUME_ANNOTATION: &str = "io.frakti.volume.";
/// The file of a pod's disk records, in its runtime directory.
const RECORDS: &str = "disks.json";
/// How long the guest may take to let go of an unplugged disk.
const UNPLUG_WAIT: Duration = Duration::from_secs(30);

fn invalid(message: String) -> RuntimeError {
    RuntimeError::new(RuntimeErrorKind::InvalidArgument, message)
}

/// A host disk a container asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostDisk {
    /// The block device or image file, symlinks resolved.
    pub path: PathBuf,
    /// The format of its contents.
    pub format: BlockFormat,
    /// The container may not write to it.
    pub read_only: bool,
}

/// What one container asks of the pod's disks.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    /// CRI mounts that are disks: the mount's index and its disk.
    pub mounts: Vec<(usize, HostDisk)>,
    /// CRI devices that are disks, with their node in the container.
    pub devices: Vec<(HostDisk, DiskNode)>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.devices.is_empty()
    }
}

/// Sorts out the disks among `config`'s mounts and devices. A host
/// character device, a device path that is not a device, and a disk
/// annotation on what is not a regular file are refused by name.
pub(crate) fn wanted(
    config: &ContainerConfig,
    sandbox: &SandboxConfig,
) -> Result<Wanted, RuntimeError> {
    let mut wanted = Wanted::default();
    for (n, m) in config.mounts.iter().enumerate() {
        let key = format!("{VOLUME_ANNOTATION}{}", m.container_path);
        let marked = match config
            .annotations
            .get(&key)
            .or_else(|| sandbox.annotations.get(&key))
        {
            None => false,
            Some(v) if v == "disk" => true,
            Some(v) => {
                return Err(invalid(format!(
                    "annotation {key}: {v:?} is not a volume kind (the one known is \"disk\")"
                )));
            }
        };
        let path = crate::containers::resolve_host_path(m)?;
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let format = if meta.file_type().is_block_device() {
            BlockFormat::Raw
        } else if !marked {
            continue;
        } else if meta.is_file() {
            image_format(&path)?
        } else {
            return Err(invalid(format!(
                "mount {}: {key} marks {} as a disk image, but it is not a regular file",
                m.container_path,
                path.display()
            )));
        };
        let disk = HostDisk {
            path,
            format,
            read_only: m.readonly,
        };
        wanted.mounts.push((n, disk));
    }
    for d in &config.devices {
        wanted.devices.push(host_block_device(d)?);
    }
    Ok(wanted)
}

/// A CRI device for a VM pod: only a host block device can enter the VM.
fn host_block_device(d: &Device) -> Result<(HostDisk, DiskNode), RuntimeError> {
    let refuse = |why: &str| {
        invalid(format!(
            "device {} ({} in the container) {why}",
            d.host_path, d.container_path
        ))
    };
    // The node and permissions are checked as the guest will build them.
    container::spec::device_nodes_and_rules(std::slice::from_ref(d))
        .map_err(|e| invalid(e.to_string()))?;
    let path = std::fs::canonicalize(&d.host_path).map_err(|e| refuse(&e.to_string()))?;
    let meta = std::fs::metadata(&path).map_err(|e| refuse(&e.to_string()))?;
    if meta.file_type().is_char_device() {
        return Err(refuse(
            "is a character device of the host, which cannot be passed into a VM; \
             run the pod on the host handler to use it",
        ));
    }
    if !meta.file_type().is_block_device() {
        return Err(refuse("is not a device"));
    }
    let disk = HostDisk {
        path,
        format: BlockFormat::Raw,
        read_only: !d.permissions.is_empty() && !d.permissions.contains('w'),
    };
    let node = DiskNode {
        container_path: d.container_path.clone(),
        permissions: d.permissions.clone(),
    };
    Ok((disk, node))
}

/// qcow2 or raw, from the file's first bytes.
fn image_format(path: &Path) -> Result<BlockFormat, RuntimeError> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic));
    match read {
        Ok(4) if magic == *b"QFI\xfb" => Ok(BlockFormat::Qcow2),
        Ok(_) => Ok(BlockFormat::Raw),
        Err(e) => Err(invalid(format!("disk image {}: {e}", path.display()))),
    }
}

/// A disk attached to the pod's VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Attached {
    /// Its serial in the guest (and id in the hypervisor).
    serial: String,
    /// What backs it on the host.
    path: PathBuf,
    /// Attached read-only.
    read_only: bool,
    /// The containers that use it.
    users: BTreeSet<String>,
}

/// The disks of one pod, as `disks.json` holds them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PodDisks {
    /// Number of the next serial.
    next: u32,
    disks: Vec<Attached>,
}

impl PodDisks {
    fn load(dir: &Path) -> Result<Self, RuntimeError> {
        match std::fs::read(dir.join(RECORDS)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("unreadable {}", dir.join(RECORDS).display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(internal(format!("read {}", dir.join(RECORDS).display()), e)),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join(RECORDS);
        let tmp = dir.join(format!("{RECORDS}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| internal("encode the disk records", e))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| internal(format!("write {}", path.display()), e))
    }

    /// The disk backed by `path`, if attached.
    fn find(&mut self, path: &Path) -> Option<&mut Attached> {
        self.disks.iter_mut().find(|d| d.path == path)
    }
}

/// The disks a container got: what the agent needs, the guest source of
/// each disk mount by mount index, and the serials it uses.
#[derive(Debug, Default)]
pub(crate) struct Granted {
    pub guest: Vec<GuestDisk>,
    pub sources: HashMap<usize, PathBuf>,
    pub serials: Vec<String>,
}

impl VmRuntime {
    /// Attaches the disks that container `id` wants (those not attached
    /// yet) to the VM of the pod whose state is `state`, and records `id`
    /// as a user of each. On failure nothing changes.
    pub(crate) async fn attach_disks(
        &self,
        vm: &Vm,
        state: &VmState,
        id: &str,
        wanted: &Wanted,
    ) -> Result<Granted, RuntimeError> {
        if wanted.is_empty() {
            return Ok(Granted::default());
        }
        if !self.hypervisor.capabilities().block_hotplug {
            return Err(RuntimeError::new(
                RuntimeErrorKind::FailedPrecondition,
                "this pod's VM cannot take disks (its machine has no hot-plug)",
            ));
        }
        let _one_at_a_time = vm.disks.lock().await;
        let mut records = PodDisks::load(&state.dir)?;
        let before = records.clone();
        let all = wanted
            .mounts
            .iter()
            .map(|(_, d)| d)
            .chain(wanted.devices.iter().map(|(d, _)| d));
        let mut plugged = Vec::new();
        let mut result = Ok(());
        for disk in all {
            if let Err(e) = self
                .attach_one(vm, &mut records, id, disk, &mut plugged)
                .await
            {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = result.and_then(|()| records.save(&state.dir)) {
            for serial in plugged {
                if let Err(undo) = self
                    .hypervisor
                    .remove_block(&vm.endpoints, &serial, UNPLUG_WAIT)
                    .await
                {
                    tracing::warn!(serial, "unplug after a failed create: {undo}");
                }
            }
            if let Err(undo) = before.save(&state.dir) {
                tracing::warn!("restore the disk records: {undo}");
            }
            return Err(e);
        }
        Ok(grant(&mut records, wanted))
    }

    async fn attach_one(
        &self,
        vm: &Vm,
        records: &mut PodDisks,
        id: &str,
        disk: &HostDisk,
        plugged: &mut Vec<String>,
    ) -> Result<(), RuntimeError> {
        if let Some(attached) = records.find(&disk.path) {
            if attached.read_only && !disk.read_only {
                return Err(RuntimeError::new(
                    RuntimeErrorKind::FailedPrecondition,
                    format!(
                        "disk {} is attached to the pod read-only (for {}), so it cannot be \
                         written; make every use of it read-only, or none",
                        disk.path.display(),
                        attached
                            .users
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            attached.users.insert(id.to_owned());
            return Ok(());
        }
        let serial = format!("vol{}", records.next);
        records.next += 1;
        let spec = BlockSpec {
            id: serial.clone(),
            path: disk.path.clone(),
            format: disk.format,
            read_only: disk.read_only,
        };
        self.hypervisor
            .add_block(&vm.endpoints, &spec)
            .await
            .map_err(|e| {
                RuntimeError::caused(
                    RuntimeErrorKind::FailedPrecondition,
                    format!("attach disk {} to the pod's VM", disk.path.display()),
                    e,
                )
            })?;
        tracing::info!(container = id, %serial, path = %disk.path.display(), read_only = disk.read_only, "disk attached");
        plugged.push(serial.clone());
        records.disks.push(Attached {
            serial,
            path: disk.path.clone(),
            read_only: disk.read_only,
            users: BTreeSet::from([id.to_owned()]),
        });
        Ok(())
    }

    /// Drops container `id` as a user of `serials`; a disk nobody uses any
    /// more is unmounted in the guest and unplugged (when the VM runs).
    pub(crate) async fn release_disks(
        &self,
        sandbox_id: &str,
        state: &VmState,
        id: &str,
        serials: &[String],
    ) -> Result<(), RuntimeError> {
        if serials.is_empty() {
            return Ok(());
        }
        let vm = self.vm(sandbox_id);
        let _one_at_a_time = match &vm {
            Some(vm) => Some(vm.disks.lock().await),
            None => None,
        };
        let mut records = PodDisks::load(&state.dir)?;
        let mut changed = false;
        for serial in serials {
            let Some(at) = records.disks.iter().position(|d| &d.serial == serial) else {
                continue;
            };
            let disk = &mut records.disks[at];
            changed |= disk.users.remove(id);
            if !disk.users.is_empty() {
                continue;
            }
            if let Some(vm) = &vm {
                let release = calls::ReleaseDisk {
                    serial: serial.clone(),
                };
                vm.agent
                    .request(release, AGENT_CALL)
                    .await
                    .map_err(|e| agent_failure(&format!("release disk {serial}"), e))?;
                self.hypervisor
                    .remove_block(&vm.endpoints, serial, UNPLUG_WAIT)
                    .await
                    .map_err(|e| internal(format!("detach disk {serial}"), e))?;
                tracing::info!(container = id, %serial, "disk detached");
            }
            records.disks.remove(at);
            changed = true;
        }
        // Records already gone (the pod's directory with them) stay gone.
        if changed {
            records.save(&state.dir)?;
        }
        Ok(())
    }
}

/// What `wanted` comes to, given the attached `records`.
fn grant(records: &mut PodDisks, wanted: &Wanted) -> Granted {
    let mut granted = Granted::default();
    let mut entry = |granted: &mut Granted, disk: &HostDisk| -> usize {
        let attached = records
            .find(&disk.path)
            .map(|a| (a.serial.clone(), a.read_only))
            .unwrap_or_default();
        if let Some(at) = granted.guest.iter().position(|g| g.serial == attached.0) {
            return at;
        }
        granted.serials.push(attached.0.clone());
        granted.guest.push(GuestDisk {
            serial: attached.0,
            mount: false,
            read_only: attached.1,
            nodes: Vec::new(),
        });
        granted.guest.len() - 1
    };
    for (n, disk) in &wanted.mounts {
        let at = entry(&mut granted, disk);
        granted.guest[at].mount = true;
        let source = agent_api::messages::disk_mount_dir(&granted.guest[at].serial);
        granted.sources.insert(*n, PathBuf::from(source));
    }
    for (disk, node) in &wanted.devices {
        let at = entry(&mut granted, disk);
        granted.guest[at].nodes.push(node.clone());
    }
    granted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, read_only: bool) -> HostDisk {
        HostDisk {
            path: path.into(),
            format: BlockFormat::Raw,
            read_only,
        }
    }

    #[test]
    fn one_disk_used_twice_is_granted_once() {
        let mut records = PodDisks {
            next: 2,
            disks: vec![
                Attached {
                    serial: "vol0".into(),
                    path: "/dev/a".into(),
                    read_only: false,
                    users: BTreeSet::from(["c1".to_owned()]),
                },
                Attached {
                    serial: "vol1".into(),
                    path: "/dev/b".into(),
                    read_only: true,
                    users: BTreeSet::from(["c1".to_owned()]),
                },
            ],
        };
        let node = DiskNode {
            container_path: "/dev/xvda".into(),
            permissions: "rw".into(),
        };
        let wanted = Wanted {
            mounts: vec![(0, disk("/dev/a", true)), (3, disk("/dev/b", true))],
            devices: vec![(disk("/dev/a", false), node.clone())],
        };
        let granted = grant(&mut records, &wanted);
        assert_eq!(granted.serials, ["vol0", "vol1"]);
        assert_eq!(
            granted.guest[0],
            GuestDisk {
                serial: "vol0".into(),
                mount: true,
                read_only: false,
                nodes: vec![node],
            }
        );
        assert!(granted.guest[1].mount && granted.guest[1].read_only);
        assert_eq!(
            granted.sources,
            HashMap::from([
                (0, PathBuf::from("/run/frakti/disks/vol0")),
                (3, PathBuf::from("/run/frakti/disks/vol1")),
            ])
        );
    }

    #[test]
    fn records_survive_a_round_trip_and_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PodDisks::load(dir.path()).unwrap(), PodDisks::default());
        let records = PodDisks {
            next: 1,
            disks: vec![Attached {
                serial: "vol0".into(),
                path: "/dev/loop3".into(),
                read_only: true,
                users: BTreeSet::from(["c".to_owned()]),
            }],
        };
        records.save(dir.path()).unwrap();
        assert_eq!(PodDisks::load(dir.path()).unwrap(), records);
        std::fs::write(dir.path().join(RECORDS), b"{").unwrap();
        assert_eq!(
            PodDisks::load(dir.path()).unwrap_err().kind,
            RuntimeErrorKind::Internal
        );
    }

    #[test]
    fn images_are_qcow2_by_their_magic() {
        let dir = tempfile::tempdir().unwrap();
        let (q, r) = (dir.path().join("q"), dir.path().join("r"));
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        std::fs::write(&r, b"QF").unwrap();
        assert_eq!(image_format(&q).unwrap(), BlockFormat::Qcow2);
        assert_eq!(image_format(&r).unwrap(), BlockFormat::Raw);
    }
}
