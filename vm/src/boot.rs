//! Booting a pod VM: the network namespace, virtiofsd for the shared
//! directory, the VMM, CNI (while the guest boots) and the NICs, then the
//! guest's set-up through the agent. A failed boot undoes what it did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_api::{AgentClient, UnixTransport, calls};
use hypervisor::{Hypervisor, Resources, VmEndpoints, VmSpec};
use network::Netns;
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};
use telemetry::StartPhase;
use tokio::time::Instant;

use crate::config::VmState;
use crate::containers;
use crate::errors::{agent_failure, internal, launch_failure};
use crate::guest::{console_tail, wait_boot};
use crate::net::{self, VmNetwork};
use crate::profile::size_for;
use crate::runtime::{AGENT_CALL, VmRuntime};
use crate::teardown::kill_virtiofsd;

/// virtiofsd's socket in the pod's directory.
const VIRTIOFS_SOCKET: &str = "vfs.sock";

/// The longest `sun_path` a unix socket can have (108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Every unix socket a pod VM gets under `state_dir`, for a 64-character pod
/// id: the ones that must fit in [`MAX_SOCKET_PATH`].
pub fn pod_socket_paths(hypervisor: &dyn Hypervisor, state_dir: &Path) -> Vec<PathBuf> {
    let dir = state_dir.join("f".repeat(64));
    let vm = hypervisor.endpoints(&dir, 0);
    vec![
        vm.control_socket,
        vm.agent_socket,
        dir.join(VIRTIOFS_SOCKET),
    ]
}

/// What a failed start must undo.
#[derive(Default)]
struct Undo {
    virtiofsd: Option<i32>,
    cgroup: Option<crate::host_cgroup::VmCgroup>,
    vm: Option<VmEndpoints>,
    netns: Option<Netns>,
    network: Option<VmNetwork>,
}

impl VmRuntime {
    /// Boots the VM of sandbox `id` in `dir`; on failure everything started
    /// for it is stopped again.
    pub(crate) async fn boot(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
    ) -> Result<VmState, RuntimeError> {
        let mut undo = Undo::default();
        match self.boot_steps(id, config, dir, &mut undo).await {
            Ok(state) => Ok(state),
            Err(e) => {
                self.undo(id, undo).await;
                Err(e)
            }
        }
    }

    /// Boots the VM while CNI sets up the pod's network, then hot-plugs the
    /// NIC: the network's set-up time hides behind the guest's boot.
    async fn boot_steps(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
        undo: &mut Undo,
    ) -> Result<VmState, RuntimeError> {
        let accel = self.accel().await.accel;
        let max_vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let size = size_for(
            config,
            self.config.default_vcpus,
            self.config.default_memory_mib,
            u32::try_from(max_vcpus).unwrap_or(u32::MAX),
        );
        let netns = match &self.config.networks {
            Some(networks) => {
                let ns = networks
                    .create_netns(id)
                    .map_err(|e| internal("pod network", e))?;
                undo.netns = Some(ns.clone());
                Some(ns)
            }
            None => None,
        };
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)
            .map_err(|e| internal("create the pod's shared directory", e))?;
        let fs_socket = dir.join(VIRTIOFS_SOCKET);
        let virtiofsd = hypervisor::virtiofsd::spawn(
            &self.config.virtiofsd,
            &fs_socket,
            &shared,
            &dir.join("virtiofsd.log"),
        )
        .await
        .map_err(|e| match e {
            hypervisor::virtiofsd::VirtiofsdError::Missing(_) => {
                RuntimeError::caused(RuntimeErrorKind::Unavailable, "share the pod directory", e)
            }
            other => internal("share the pod directory", other),
        })?;
        undo.virtiofsd = Some(virtiofsd);
        let caps = self.hypervisor.capabilities();
        // A machine without NIC hot-plug boots with its NICs: CNI first.
        let mut early_net = None;
        if let (false, Some(networks), Some(ns)) = (caps.nic_hotplug, &self.config.networks, &netns)
        {
            let net_started = Instant::now();
            let pod_net = net::setup(networks, ns, id, config)
                .await
                .map_err(|e| internal("pod network", e))?;
            undo.network = Some(pod_net.clone());
            record_phase(StartPhase::Network, net_started.elapsed());
            early_net = Some(pod_net);
        }
        let boot_nics = early_net.iter().flat_map(VmNetwork::nics).collect();
        let spec = VmSpec {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            max_vcpus: if caps.cpu_hotplug {
                self.config.max_vcpus.min(caps.max_vcpus).max(size.vcpus)
            } else {
                size.vcpus
            },
            max_memory_mib: if caps.memory_hotplug {
                self.config.max_memory_mib.max(size.memory_mib)
            } else {
                size.memory_mib
            },
            kernel: self.config.kernel.clone(),
            initrd: self.config.initrd.clone(),
            extra_cmdline: self.config.extra_cmdline.clone(),
            accel,
            netns: netns.as_ref().map(Netns::path),
            nics: boot_nics,
            shares: vec![hypervisor::FsShare {
                tag: containers::SHARE_TAG.to_owned(),
                socket: fs_socket,
            }],
            disks: self
                .config
                .modules
                .iter()
                .map(|image| hypervisor::BlockSpec {
                    id: agent_api::MODULES_DISK_SERIAL.to_owned(),
                    path: image.clone(),
                    format: hypervisor::BlockFormat::Raw,
                    read_only: true,
                })
                .collect(),
        };
        let started = Instant::now();
        let endpoints = self
            .hypervisor
            .launch(&spec)
            .await
            .map_err(launch_failure)?;
        undo.vm = Some(endpoints.clone());
        tracing::debug!(%id, elapsed = ?started.elapsed(), "VMM started");
        let mut pids = vec![endpoints.pid, virtiofsd];
        pids.extend(crate::stats::children(virtiofsd));
        let boot_size = Resources {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
        };
        let cgroup = self.place_vm(id, config, &pids, &boot_size)?;
        undo.cgroup = cgroup.clone();
        let agent = Arc::new(AgentClient::new(Arc::new(UnixTransport::new(
            &endpoints.agent_socket,
        ))));
        let attach = async {
            if early_net.is_some() {
                return (early_net.clone(), Ok(()));
            }
            let (Some(networks), Some(ns)) = (&self.config.networks, &netns) else {
                return (None, Ok(()));
            };
            let net_started = Instant::now();
            let pod_net = match net::setup(networks, ns, id, config).await {
                Ok(n) => n,
                Err(e) => return (None, Err(internal("pod network", e))),
            };
            tracing::debug!(%id, elapsed = ?started.elapsed(), "CNI added");
            let mut plugged = Ok(());
            for (index, nic) in pod_net.nics().enumerate() {
                plugged = self
                    .hypervisor
                    .add_nic(&endpoints, index, &nic)
                    .await
                    .map_err(|e| internal("pod network", e));
                if plugged.is_err() {
                    break;
                }
            }
            tracing::debug!(%id, elapsed = ?started.elapsed(), "NIC hot-plugged");
            if plugged.is_ok() {
                record_phase(StartPhase::Network, net_started.elapsed());
            }
            (Some(pod_net), plugged)
        };
        let booted = wait_boot(&agent, &endpoints, started + self.config.boot_timeout);
        let ((pod_net, plugged), booted) = tokio::join!(attach, booted);
        undo.network = pod_net.clone();
        plugged?;
        if let Err(why) = booted {
            let tail = console_tail(&endpoints.console_log);
            return Err(RuntimeError::new(
                RuntimeErrorKind::DeadlineExceeded,
                format!("the pod VM did not come up: {why}; console: {tail}"),
            ));
        }
        tracing::debug!(%id, elapsed = ?started.elapsed(), "agent answered");
        let answered = Instant::now();
        record_phase(StartPhase::VmBoot, answered - started);
        let welcome = agent.welcome().await;
        let ips = pod_net
            .as_ref()
            .map(|n| n.pod.result.pod_ips())
            .unwrap_or_default();
        container::podfiles::write(&shared.join("sandbox"), config, &ips, false)
            .map_err(|e| internal("write the pod's hosts and resolv.conf", e))?;
        let clock_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
        let setup = calls::SetupSandbox {
            hostname: config.hostname.clone(),
            clock_ns,
            share_tag: containers::SHARE_TAG.to_owned(),
            sysctls: config.sysctls.clone(),
        };
        agent
            .request(setup, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("set up the guest", e))?;
        if let Some(n) = &pod_net {
            let (interfaces, routes) = net::guest_config(n);
            agent
                .request(calls::ConfigureNetwork { interfaces, routes }, AGENT_CALL)
                .await
                .map_err(|e| agent_failure("configure the guest network", e))?;
        }
        record_phase(StartPhase::AgentReady, answered.elapsed());
        tracing::info!(%id, pid = endpoints.pid, %accel, vcpus = size.vcpus, memory_mib = size.memory_mib,
            boot = ?started.elapsed(), "pod VM ready");
        let state = VmState {
            pid: endpoints.pid,
            dir: dir.to_path_buf(),
            accel,
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            max_vcpus: spec.max_vcpus,
            max_memory_mib: spec.max_memory_mib,
            boot_id: welcome.map(|w| w.boot_id).unwrap_or_default(),
            network: pod_net,
            virtiofsd_pid: Some(virtiofsd),
            cgroup,
        };
        self.track(id, endpoints, agent, Some(virtiofsd))?;
        Ok(state)
    }

    /// Undoes a failed start: the VM, then the network, then the namespace.
    async fn undo(&self, id: &str, undo: Undo) {
        if let Some(vm) = &undo.vm {
            let _ = self.hypervisor.stop(id, vm, Duration::ZERO).await;
        }
        if let Some(pid) = undo.virtiofsd {
            kill_virtiofsd(pid).await;
        }
        if let Some(cgroup) = &undo.cgroup {
            self.remove_vm_cgroup(cgroup);
        }
        match (&self.config.networks, &undo.network, &undo.netns) {
            (Some(networks), Some(n), _) => {
                if let Err(why) = networks.remove(&n.pod).await {
                    tracing::warn!(%id, "cleaning up the pod network: {why}");
                }
            }
            (_, None, Some(ns)) => {
                let _ = ns.remove();
            }
            _ => {}
        }
    }
}

/// Records a phase of a VM pod's start in the daemon's metrics.
fn record_phase(phase: StartPhase, elapsed: Duration) {
    telemetry::global().record_pod_start(crate::runtime::NAME, phase, elapsed);
}
