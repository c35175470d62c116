//! Hypervisor backends. A backend starts a VM from a [`VmSpec`], re-attaches
//! to one after a daemon restart, and stops it. QEMU is the only backend.

pub mod accel;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod virtiofsd;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use accel::{Accel, AccelMode};
pub use process::Process;
pub use qemu::{LaunchError, Qemu, QemuConfig};
pub use qmp::{QmpClient, QmpError};

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Unique id (the sandbox id); also names the VM process.
    pub id: String,
    /// Per-VM directory for sockets, logs and the pidfile.
    pub dir: PathBuf,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
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

impl VmEndpoints {
    /// The endpoints of the VM whose files live in `dir` and whose VMM has `pid`.
    pub fn in_dir(dir: &Path, pid: i32) -> Self {
        Self {
            pid,
            control_socket: dir.join("qmp.sock"),
            agent_socket: dir.join("agent.sock"),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("qemu.log"),
        }
    }
}

/// Re-attaching to a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
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

/// Hot-plugging a device failed.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The VMM refused or did not answer
    #[error("hot-plug of {device}: {source}")]
    Qmp {
        /// The device.
        device: String,
        /// The VMM's answer.
        source: QmpError,
    },
    /// No free hot-plug slot
    #[error("no free hot-plug slot for {0}")]
    NoSlot(String),
}

/// A virtual machine monitor.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync + Debug {
    /// Short name of the backend.
    fn name(&self) -> &'static str;

    /// Starts a VM; returns once the VMM process runs (not when the guest booted).
    async fn launch(&self, spec: &VmSpec) -> Result<VmEndpoints, LaunchError>;

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
}
