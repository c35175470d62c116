//! Hypervisor backends: everything about running a VM process. A backend
//! turns a [`VmSpec`] into a VMM process (command line, files in the VM's
//! directory, accelerator), re-finds and re-attaches to it after a daemon
//! restart, stops it, and drives it at run time (QMP for QEMU: NIC and disk
//! hot-plug). The crate also spawns the virtiofsd that serves a VM's shared
//! directory and checks whether KVM is usable. QEMU is the only backend;
//! [`fake`] (feature `fake`) is one for unit tests.
//!
//! It knows nothing of pods, CRI or the agent protocol: callers get the
//! agent's socket path in [`VmEndpoints`] and speak to it themselves. The
//! names of a backend's files (pidfile, control socket, logs) are the
//! backend's own; callers go through [`Hypervisor::endpoints`] and
//! [`Hypervisor::find`].

pub mod accel;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod virtiofsd;

use std::error::Error;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use accel::{Accel, AccelMode};
pub use process::Process;
pub use qemu::{Machine, Qemu, QemuConfig};
pub use qmp::{QmpClient, QmpError};

/// A backend-specific error, kept as the source of a neutral one.
pub type BackendError = Box<dyn Error + Send + Sync>;

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique id (the sandbox id); also names the VM process.
    pub id: String,
    /// Per-VM directory for sockets, logs and the pidfile.
    pub dir: PathBuf,
    /// Number of vCPUs at boot.
    pub vcpus: u32,
    /// Guest memory at boot, MiB.
    pub memory_mib: u64,
    /// Most vCPUs it may grow to (at most `vcpus`: it cannot grow).
    pub max_vcpus: u32,
    /// Most memory it may grow to, MiB (at most `memory_mib`: it cannot grow).
    pub max_memory_mib: u64,
    /// Uncompressed kernel image (PVH ELF).
    pub kernel: PathBuf,
    /// Initramfs holding the agent.
    pub initrd: PathBuf,
    /// Extra kernel command-line words, appended to the backend's own.
    pub extra_cmdline: Vec<String>,
    /// Accelerator to use.
    pub accel: Accel,
    /// Network namespace the VMM runs in (its taps live there).
    pub netns: Option<PathBuf>,
    /// Network interfaces, each backed by a tap in `netns`.
    pub nics: Vec<NicSpec>,
    /// virtio-fs devices, each served by a vhost-user backend already listening.
    pub shares: Vec<FsShare>,
    /// Disks present from boot (they take no hot-plug slot).
    pub disks: Vec<BlockSpec>,
}

/// A virtio-fs device backed by a vhost-user-fs daemon (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    /// The tag the guest mounts.
    pub tag: String,
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
}

/// A virtio-net device backed by a tap device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The tap device's name.
    pub tap: String,
    /// The MAC address the guest sees.
    pub mac: String,
    /// The network namespace the tap lives in (the host's when `None`).
    pub netns: Option<PathBuf>,
}

/// The unprivileged user a VMM runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmUser {
    /// Its name, for messages.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (e.g. `kvm`, for `/dev/kvm`).
    pub groups: Vec<u32>,
    /// User ids of the user's own (its `/etc/subuid` range, first and
    /// count): each VMM takes one no other process holds, so no two pods'
    /// VMMs share a uid. `None`: every VMM runs as `uid`.
    pub uid_range: Option<(u32, u32)>,
}

/// A running VM's process and its control endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEndpoints {
    /// Process id of the VMM.
    pub pid: i32,
    /// The VMM's control socket (QMP for QEMU).
    pub control_socket: PathBuf,
    /// The socket behind the agent's channel.
    pub agent_socket: PathBuf,
    /// The guest console log.
    pub console_log: PathBuf,
    /// The VMM's own stdout/stderr log.
    pub vmm_log: PathBuf,
}

/// A disk to hot-plug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// Names the disk in the VM, and is the serial the guest sees
    /// (`/sys/block/vd*/serial`): 1 to 20 ASCII letters, digits, `-` or `_`,
    /// starting with a letter.
    pub id: String,
    /// Host file or block device backing the disk.
    pub path: PathBuf,
    /// Format of its contents.
    pub format: BlockFormat,
    /// The guest may not write to it.
    pub read_only: bool,
}

/// Format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockFormat {
    /// The bytes as they are (e.g. an erofs or ext4 image).
    #[default]
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// The resources a running VM is resized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
}

/// What a backend can do to a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// vCPUs can be added and removed ([`Hypervisor::resize`]).
    pub cpu_hotplug: bool,
    /// Memory can be added ([`Hypervisor::resize`]).
    pub memory_hotplug: bool,
    /// Disks can be added and removed ([`Hypervisor::add_block`]).
    pub block_hotplug: bool,
    /// NICs can be added ([`Hypervisor::add_nic`]).
    pub nic_hotplug: bool,
    /// Hot-plug slots per VM, shared by NICs and disks.
    pub hotplug_slots: u32,
    /// Most vCPUs one VM can have.
    pub max_vcpus: u32,
}

/// Starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file the VM needs is missing (the host lacks a binary or a guest asset)
    #[error("{what} {path} not found")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Cannot open a file or socket handed to the VMM
    #[error("cannot open {what} {path}: {source}")]
    Open {
        /// What it is.
        what: &'static str,
        /// Its path (or name, for a tap).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No uid of the VM user's range is free
    #[error(
        "every uid of vm_user {user}'s range ({first} and {count} more) runs a process already"
    )]
    NoUid {
        /// The VM user.
        user: String,
        /// First uid of the range.
        first: u32,
        /// Size of the range, less one.
        count: u32,
    },
    /// A file the VMM opens itself is not readable by the user it runs as
    #[error(
        "{what} {path} is not readable by vm_user {user}; make it readable (mode 0644) or set vm_user"
    )]
    Unreadable {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The VMM's user.
        user: String,
    },
    /// The VMM cannot confine itself as the configuration asks
    #[error(
        "{binary} has no -sandbox (seccomp) support; use a QEMU built with it, or set \
         qemu_sandbox = false to run VMs unconfined"
    )]
    NoSandbox {
        /// The VMM binary.
        binary: PathBuf,
    },
    /// Cannot prepare the VM directory or a file in it
    #[error("cannot prepare VM directory {path}: {source}")]
    Dir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Cannot start the VMM process
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The VMM binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited during start-up
    #[error("{vmm} exited during start-up: {log_tail}")]
    Exited {
        /// The VMM's name, e.g. `QEMU`.
        vmm: &'static str,
        /// The last line of its log (empty if none).
        log_tail: String,
    },
    /// A backend-specific failure
    #[error(transparent)]
    Backend(BackendError),
}

/// Finding or re-attaching to a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The VM directory has no readable pidfile
    #[error("no readable VM pidfile {0}")]
    NoPidfile(PathBuf),
    /// The process is gone
    #[error("VM process {0} is not running")]
    Gone(i32),
    /// The pid now belongs to another process
    #[error("process {pid} is not the VM {id}")]
    NotOurs {
        /// The pid checked.
        pid: i32,
        /// The VM id expected.
        id: String,
    },
}

/// Stopping a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The VM process survived SIGKILL
    #[error("VM process {0} did not exit after SIGKILL")]
    Unkillable(i32),
}

/// Hot-plugging or unplugging a device failed.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The VMM refused or did not answer
    #[error("{op} of {device}: {source}")]
    Backend {
        /// `hot-plug` or `hot-unplug`.
        op: &'static str,
        /// The device.
        device: String,
        /// The VMM's answer (a [`QmpError`] for QEMU).
        #[source]
        source: BackendError,
    },
    /// No free hot-plug slot
    #[error("no free hot-plug slot for {0}")]
    NoSlot(String),
    /// The host side of the device (its file, block device or tap) cannot be opened
    #[error("cannot open the host side of {device}: {source}")]
    Open {
        /// The device.
        device: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device id cannot be used
    #[error("invalid device id {id:?}: {reason}")]
    InvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The guest did not release the device in time (it stays plugged)
    #[error("the guest did not release {device} within {limit:?}")]
    Timeout {
        /// The device.
        device: String,
        /// How long it was given.
        limit: Duration,
    },
    /// The backend cannot do this
    #[error("{0} is not supported by this hypervisor")]
    Unsupported(&'static str),
}

/// Resizing a running VM failed.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The backend cannot do this
    #[error("{0} is not supported by this hypervisor")]
    Unsupported(&'static str),
    /// More was asked than the VM was booted with room for
    #[error("{asked} {what} asked, but this VM can have at most {most}")]
    TooLarge {
        /// What was asked for.
        what: &'static str,
        /// How much.
        asked: u64,
        /// The most it can have.
        most: u64,
    },
    /// The guest did not release an unplugged device in time
    #[error("the guest did not release {device} within {limit:?}")]
    NotReleased {
        /// The device.
        device: String,
        /// How long it was given.
        limit: Duration,
    },
    /// A backend-specific failure
    #[error(transparent)]
    Backend(BackendError),
}

/// A virtual machine monitor.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync + Debug {
    /// Short name of the backend.
    fn name(&self) -> &'static str;

    /// Whether this host can start VMs now (the VMM and its firmware are
    /// there and executable); `Err` names what is missing. Ready by default.
    fn check_host(&self) -> Result<(), LaunchError> {
        Ok(())
    }

    /// What the backend can do to a running VM; nothing by default.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The most the VM of `spec` can grow to once it runs (what its
    /// hot-plug room allows): `spec`'s maxima by default.
    fn most(&self, spec: &VmSpec) -> Resources {
        Resources {
            vcpus: spec.max_vcpus.max(spec.vcpus),
            memory_mib: spec.max_memory_mib.max(spec.memory_mib),
        }
    }

    /// Starts a VM; returns once the VMM process runs (not when the guest booted).
    async fn launch(&self, spec: &VmSpec) -> Result<VmEndpoints, LaunchError>;

    /// The endpoints of the VM whose files live in `dir` and whose VMM has `pid`
    /// (no check that it runs).
    fn endpoints(&self, dir: &Path, pid: i32) -> VmEndpoints;

    /// Finds the VM `id` from the files in its directory `dir` (its pidfile)
    /// and checks its process runs and is ours, as [`Hypervisor::adopt`].
    fn find(&self, id: &str, dir: &Path) -> Result<VmEndpoints, AdoptError>;

    /// Re-attaches to the VM `id` whose VMM had `pid`, checking it is ours.
    fn adopt(&self, id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError>;

    /// Stops the VMM: asks it to quit, waits `grace`, then kills it. Succeeds if already gone.
    async fn stop(&self, id: &str, vm: &VmEndpoints, grace: Duration) -> Result<(), StopError>;

    /// Hot-plugs NIC number `index` backed by `nic`'s tap (in the VMM's namespace).
    async fn add_nic(
        &self,
        vm: &VmEndpoints,
        index: usize,
        nic: &NicSpec,
    ) -> Result<(), HotplugError>;

    /// Hot-plugs the disk `disk` into a free slot.
    async fn add_block(&self, vm: &VmEndpoints, disk: &BlockSpec) -> Result<(), HotplugError> {
        let _ = (vm, disk);
        Err(HotplugError::Unsupported("disk hot-plug"))
    }

    /// Unplugs the disk `id`, waiting up to `limit` for the guest to release
    /// it; a disk that is not plugged succeeds.
    async fn remove_block(
        &self,
        vm: &VmEndpoints,
        id: &str,
        limit: Duration,
    ) -> Result<(), HotplugError> {
        let _ = (vm, id, limit);
        Err(HotplugError::Unsupported("disk hot-unplug"))
    }

    /// Asks a running VM to have `to`: vCPUs are plugged or unplugged, the
    /// memory above the boot size is offered or taken back. Returns when the
    /// VMM took the request; the guest onlines what came and releases what
    /// was asked back on its own time ([`Hypervisor::resources`] tells).
    async fn resize(&self, vm: &VmEndpoints, to: &Resources) -> Result<(), ResizeError> {
        let _ = (vm, to);
        Err(ResizeError::Unsupported("resizing a running VM"))
    }

    /// The vCPUs and memory a running VM has now.
    async fn resources(&self, vm: &VmEndpoints) -> Result<Resources, ResizeError> {
        let _ = vm;
        Err(ResizeError::Unsupported("reading a running VM's size"))
    }
}
