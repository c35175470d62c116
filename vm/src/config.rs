//! What the VM runtime is configured with, and what it persists per pod.

use std::path::PathBuf;
use std::time::Duration;

use hypervisor::{Accel, AccelMode};
use network::PodNetworks;
use runtime_api::RuntimeError;
use serde::{Deserialize, Serialize};

use crate::errors::internal;
use crate::net::VmNetwork;

/// Settings of the VM runtime.
#[derive(Debug, Clone)]
pub struct VmRuntimeConfig {
    /// Per-pod runtime files go to `<state_dir>/<pod id>/`.
    pub state_dir: PathBuf,
    /// Guest kernel (uncompressed PVH vmlinux).
    pub kernel: PathBuf,
    /// Guest initramfs with the agent as `/init`.
    pub initrd: PathBuf,
    /// The guest kernel's whole module tree as a read-only erofs image,
    /// attached to every VM for the agent's `modprobe`; `None` leaves the
    /// guest with the initramfs's modules only.
    pub modules: Option<PathBuf>,
    /// vCPUs of a pod without a CPU limit.
    pub default_vcpus: u32,
    /// Memory (MiB) of a pod without a memory limit.
    pub default_memory_mib: u64,
    /// Accelerator policy.
    pub accel: AccelMode,
    /// How long a guest may take to boot until its agent answers.
    pub boot_timeout: Duration,
    /// Extra kernel command-line words (e.g. `frakti.log=debug`).
    pub extra_cmdline: Vec<String>,
    /// Pod networking; `None` leaves pods without a network.
    pub networks: Option<PodNetworks>,
    /// The virtiofsd binary that serves each pod's shared directory.
    pub virtiofsd: PathBuf,
    /// Containers' writable layers go to `<containers_dir>/<container id>/`.
    pub containers_dir: PathBuf,
    /// Most vCPUs a pod VM may grow to.
    pub max_vcpus: u32,
    /// Most memory (MiB) a pod VM may grow to.
    pub max_memory_mib: u64,
    /// The host's cgroup hierarchy, where each VM gets a cgroup under its
    /// pod's; `None` leaves VMs where the daemon runs.
    pub cgroup_root: Option<PathBuf>,
    /// The runtime handler these settings are for (logs, metrics).
    pub handler: String,
    /// VMs kept booted ahead, ready for the next pods (0: none).
    pub pool: usize,
}

/// What is persisted per VM sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    /// PID of QEMU.
    pub pid: i32,
    /// The pod's runtime directory.
    pub dir: PathBuf,
    /// Accelerator used.
    pub accel: Accel,
    /// vCPUs at boot.
    pub vcpus: u32,
    /// Memory at boot, MiB.
    pub memory_mib: u64,
    /// Most vCPUs the VM can grow to (0: records from before hot-plug).
    #[serde(default)]
    pub max_vcpus: u32,
    /// Most memory the VM can grow to, MiB (0: records from before hot-plug).
    #[serde(default)]
    pub max_memory_mib: u64,
    /// The agent's boot id at start.
    pub boot_id: String,
    /// The pod's network, if it has one.
    #[serde(default)]
    pub network: Option<VmNetwork>,
    /// PID of the virtiofsd serving the pod's shared directory.
    #[serde(default)]
    pub virtiofsd_pid: Option<i32>,
    /// The VM's cgroup on the host, if it has one.
    #[serde(default)]
    pub cgroup: Option<crate::host_cgroup::VmCgroup>,
    /// The id the VMM was launched as, when it is not the pod's: a VM of
    /// the warm pool, booted before its pod existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_as: Option<String>,
}

impl VmState {
    /// The state stored in a sandbox record.
    pub fn parse(state: &serde_json::Value) -> Result<Self, RuntimeError> {
        serde_json::from_value(state.clone()).map_err(|e| internal("unreadable VM state", e))
    }

    /// The id the hypervisor knows the VM of pod `id` by.
    pub fn vmm_id<'a>(&'a self, id: &'a str) -> &'a str {
        self.launched_as.as_deref().unwrap_or(id)
    }

    /// The pod's shared directory on the host.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }
}
