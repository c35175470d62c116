//! What a VM pod and its containers use. The containers' CPU and memory
//! come from their cgroups in the guest (one agent call for all of them);
//! the pod's CPU and memory are what the VM costs on the host (QEMU and
//! virtiofsd); network counters are read on the host, in the pod's network
//! namespace; writable layers are measured where they live, on the host.

use std::path::{Path, PathBuf};

use agent_api::calls;
use runtime_api::{
    ContainerRecord, ContainerUsage, LayerUsage, PodUsage, RuntimeError, SandboxRecord,
};
use usage::process::read_process;
use usage::{CpuUsage, MemoryUsage};

use crate::config::VmState;
use crate::containers::ContainerFiles;
use crate::errors::{agent_failure, internal};
use crate::runtime::{AGENT_CALL, VmRuntime};

impl VmRuntime {
    /// Measures the pod and `containers`.
    pub(crate) async fn measure_pod(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<PodUsage, RuntimeError> {
        let state = VmState::parse(&sandbox.runtime_state)?;
        let agent = self.agent_of(sandbox)?;
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let guest = agent
            .request(calls::Stats { containers: ids }, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("measure the containers", e))?;
        // The guest is not trusted: the answer must fit the question.
        if guest.containers.len() != containers.len() {
            return Err(internal(
                "measure the containers",
                format!(
                    "the agent answered {} figures for {} containers",
                    guest.containers.len(),
                    containers.len()
                ),
            ));
        }
        let layers: Vec<Option<PathBuf>> = containers
            .iter()
            .map(|c| {
                serde_json::from_value::<ContainerFiles>(c.runtime_state.clone())
                    .ok()
                    .map(|f| f.layer.join("upper"))
            })
            .collect();
        let mountpoint = self.config.containers_dir.display().to_string();
        let host = tokio::task::spawn_blocking(move || host_side(&state, &layers))
            .await
            .map_err(|e| internal("measure the pod on the host", e))??;
        let containers = containers
            .iter()
            .zip(guest.containers)
            .zip(host.layers)
            .map(|((record, cgroup), layer)| ContainerUsage {
                id: record.id.clone(),
                cpu: cgroup.map(|c| c.cpu),
                memory: cgroup.map(|c| c.memory),
                writable_layer: layer.map(|usage| LayerUsage {
                    mountpoint: mountpoint.clone(),
                    usage,
                }),
            })
            .collect();
        Ok(PodUsage {
            timestamp_ns: host.timestamp_ns,
            cpu: Some(host.cpu),
            memory: Some(host.memory),
            default_interface: host
                .interfaces
                .iter()
                .any(|i| i.name == network::pod::IFNAME)
                .then(|| network::pod::IFNAME.to_owned()),
            interfaces: host.interfaces,
            processes: guest.processes,
            containers,
        })
    }
}

/// What is measured on the host.
struct HostSide {
    timestamp_ns: i64,
    cpu: CpuUsage,
    memory: MemoryUsage,
    interfaces: Vec<usage::InterfaceUsage>,
    layers: Vec<Option<usage::FsUsage>>,
}

fn host_side(state: &VmState, layers: &[Option<PathBuf>]) -> Result<HostSide, RuntimeError> {
    let timestamp_ns = runtime_api::now_ns();
    let (cpu, memory) = vm_processes(state.pid, state.virtiofsd_pid)?;
    let interfaces = match &state.network {
        Some(net) => network::netns::interface_counters(&net.pod.netns().path())
            .map_err(|e| internal("read the pod's network counters", e))?
            .into_iter()
            // The taps carry the pod interface's traffic to the VM: report the
            // interfaces the pod's network gave it.
            .filter(|i| !net.taps().any(|t| t.tap == i.name))
            .collect(),
        None => Vec::new(),
    };
    let layers = layers
        .iter()
        .map(|dir| {
            dir.as_ref()
                .and_then(|d| usage::dir::read_dir_usage(d).ok())
        })
        .collect();
    Ok(HostSide {
        timestamp_ns,
        cpu,
        memory,
        interfaces,
        layers,
    })
}

/// What QEMU (`pid`) and virtiofsd with its children use on the host.
fn vm_processes(pid: i32, virtiofsd: Option<i32>) -> Result<(CpuUsage, MemoryUsage), RuntimeError> {
    let proc = Path::new("/proc");
    let mut pids = vec![pid];
    if let Some(virtiofsd) = virtiofsd {
        pids.push(virtiofsd);
        pids.extend(children(virtiofsd));
    }
    let mut cpu = CpuUsage::default();
    let mut memory = MemoryUsage::default();
    for each in pids {
        let Ok(each) = u32::try_from(each) else {
            continue;
        };
        let p = match read_process(proc, each) {
            Ok(p) => p,
            // QEMU itself must be there; a helper may have just gone.
            Err(e) if i64::from(each) == i64::from(pid) => {
                return Err(internal("read the VM's CPU and memory", e));
            }
            Err(_) => continue,
        };
        cpu.usage_core_ns += p.cpu_ns;
        memory.usage_bytes += p.rss_bytes;
        memory.working_set_bytes += p.rss_bytes;
        memory.rss_bytes += p.rss_bytes;
        memory.page_faults += p.page_faults;
        memory.major_page_faults += p.major_page_faults;
    }
    Ok((cpu, memory))
}

impl telemetry::VmSource for VmRuntime {
    fn vm_costs(&self) -> Vec<telemetry::VmCost> {
        self.running()
            .into_iter()
            .filter_map(|(id, vm)| {
                let (cpu, memory) = vm_processes(vm.endpoints.pid, vm.virtiofsd_pid).ok()?;
                Some(telemetry::VmCost {
                    sandbox_id: id,
                    cpu_seconds: cpu.usage_core_ns as f64 / 1e9,
                    rss_bytes: memory.rss_bytes,
                })
            })
            .collect()
    }

    fn pool(&self) -> Option<telemetry::PoolState> {
        let figures = self.pool_figures();
        Some(telemetry::PoolState {
            handler: self.config.handler.clone(),
            ready: figures.ready,
            target: figures.target,
        })
    }
}

/// The children of `pid` (virtiofsd serves from a child in its sandbox).
pub(crate) fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
