//! The QEMU backend: q35 + qboot + PVH kernel (or microvm: faster, no
//! hot-plug), virtio-serial agent channel, shared-memfd RAM (ready for
//! virtio-fs), QMP on a unix socket.
//!
//! This module holds the [`Qemu`] type, its [`QemuConfig`], the layout of a
//! VM's directory and the [`Hypervisor`] impl, which delegates to `cmdline`
//! (QEMU's arguments and the kernel command line), `launch` (starting,
//! re-finding, adopting and stopping the QEMU process) and `hotplug` (NIC
//! and disk hot-plug over QMP).

mod cmdline;
mod handoff;
mod hotplug;
mod launch;
mod resize;
#[cfg(test)]
mod tests;
mod uids;

pub use handoff::Fds;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{
    AdoptError, BlockSpec, Capabilities, HotplugError, Hypervisor, LaunchError, NicSpec,
    ResizeError, Resources, StopError, VmEndpoints, VmSpec,
};

use cmdline::{host_tsc_khz, supports_sandbox};
use hotplug::HOTPLUG_PORTS;

/// Files QEMU's VMs keep in their directory; no other code knows these names.
const QMP_SOCKET: &str = "qmp.sock";
const AGENT_SOCKET: &str = "agent.sock";
const CONSOLE_LOG: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const PIDFILE: &str = "qemu.pid";

/// Where QEMU and its firmware are, whether to confine it, and the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// Firmware of q35; qboot boots a PVH kernel fastest (microvm has its own).
    pub firmware: PathBuf,
    /// Run QEMU under its seccomp `-sandbox` when the binary supports it.
    pub seccomp: bool,
    /// The machine type.
    pub machine: Machine,
    /// The user QEMU runs as (root when `None`).
    pub user: Option<crate::VmUser>,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            firmware: PathBuf::from("/usr/share/qemu/qboot.rom"),
            seccomp: true,
            machine: Machine::Q35,
            user: None,
        }
    }
}

/// QEMU's machine type for pod VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// PCIe with root ports: NICs, disks, memory and vCPUs can be hot-plugged.
    #[default]
    Q35,
    /// virtio-mmio, no PCI: boots faster, nothing can be hot-plugged (no
    /// disks after boot, no resize).
    Microvm,
}

impl Machine {
    /// The name QEMU and the configuration use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q35 => "q35",
            Self::Microvm => "microvm",
        }
    }

    /// The name of virtio device `kind` (e.g. `virtio-net`) on this machine's bus.
    fn device(self, kind: &str) -> String {
        match self {
            Self::Q35 => format!("{kind}-pci"),
            Self::Microvm => format!("{kind}-device"),
        }
    }
}

impl std::str::FromStr for Machine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q35" => Ok(Self::Q35),
            "microvm" => Ok(Self::Microvm),
            other => Err(format!("{other:?} is neither q35 nor microvm")),
        }
    }
}

/// The QEMU hypervisor backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    config: QemuConfig,
    seccomp: bool,
    /// The configuration asks for `-sandbox` and the binary lacks it: no VM
    /// starts (never silently unconfined).
    sandbox_missing: bool,
    tsc_khz: Option<u64>,
}

impl Qemu {
    /// A backend with `config`; probes whether the binary has `-sandbox`.
    pub fn new(config: QemuConfig) -> Self {
        let seccomp = config.seccomp && supports_sandbox(&config.binary);
        Self {
            sandbox_missing: config.seccomp && !seccomp,
            config,
            seccomp,
            tsc_khz: host_tsc_khz(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The same backend (binary, its probes) for another machine type.
    pub fn for_machine(&self, machine: Machine) -> Self {
        let mut other = self.clone();
        other.config.machine = machine;
        other
    }
}

/// Most vCPUs of a q35 machine in QEMU 7.2.
const Q35_MAX_VCPUS: u32 = 288;

/// The `-name` QEMU gets for the VM `id`; its process is recognised by it.
fn vm_name(id: &str) -> String {
    format!("frakti-{id}")
}

/// The endpoints of the QEMU VM whose files are in `dir`.
fn endpoints_in(dir: &Path, pid: i32) -> VmEndpoints {
    VmEndpoints {
        pid,
        control_socket: dir.join(QMP_SOCKET),
        agent_socket: dir.join(AGENT_SOCKET),
        console_log: dir.join(CONSOLE_LOG),
        vmm_log: dir.join(QEMU_LOG),
    }
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn check_host(&self) -> Result<(), LaunchError> {
        launch::check_host(self)
    }

    fn capabilities(&self) -> Capabilities {
        match self.config.machine {
            Machine::Q35 => Capabilities {
                cpu_hotplug: true,
                memory_hotplug: true,
                block_hotplug: true,
                nic_hotplug: true,
                hotplug_slots: HOTPLUG_PORTS as u32,
                max_vcpus: Q35_MAX_VCPUS,
            },
            Machine::Microvm => Capabilities {
                max_vcpus: Q35_MAX_VCPUS,
                ..Capabilities::default()
            },
        }
    }

    fn most(&self, spec: &VmSpec) -> Resources {
        // Memory grows in whole blocks of the virtio-mem region.
        Resources {
            vcpus: spec.max_vcpus.max(spec.vcpus),
            memory_mib: spec.memory_mib + resize::hotplug_region_mib(spec),
        }
    }

    async fn launch(&self, spec: &VmSpec) -> Result<VmEndpoints, LaunchError> {
        launch::launch(self, spec).await
    }

    fn endpoints(&self, dir: &Path, pid: i32) -> VmEndpoints {
        endpoints_in(dir, pid)
    }

    fn find(&self, id: &str, dir: &Path) -> Result<VmEndpoints, AdoptError> {
        launch::find(id, dir)
    }

    fn adopt(&self, id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError> {
        launch::adopt(id, dir, pid)
    }

    async fn add_nic(
        &self,
        vm: &VmEndpoints,
        index: usize,
        nic: &NicSpec,
    ) -> Result<(), HotplugError> {
        hotplug::add_nic(vm, index, nic).await
    }

    async fn add_block(&self, vm: &VmEndpoints, disk: &BlockSpec) -> Result<(), HotplugError> {
        hotplug::add_block(vm, disk).await
    }

    async fn remove_block(
        &self,
        vm: &VmEndpoints,
        id: &str,
        limit: Duration,
    ) -> Result<(), HotplugError> {
        hotplug::remove_block(vm, id, limit).await
    }

    async fn resize(&self, vm: &VmEndpoints, to: &Resources) -> Result<(), ResizeError> {
        resize::resize(vm, to).await
    }

    async fn resources(&self, vm: &VmEndpoints) -> Result<Resources, ResizeError> {
        resize::current(vm).await
    }

    async fn stop(&self, id: &str, vm: &VmEndpoints, grace: Duration) -> Result<(), StopError> {
        launch::stop(id, vm, grace).await
    }
}
