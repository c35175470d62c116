//! Booting a pod VM: the network namespace, virtiofsd for the shared
//! directory, the VMM, CNI (while the guest boots) and the NICs, then the
//! guest's set-up through the agent. A failed boot undoes what it did.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_api::{AgentClient, UnixTransport, calls};
use hypervisor::{Hypervisor, VmEndpoints, VmSpec};
use network::Netns;
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};
use telemetry::StartPhase;
use tokio::time::Instant;

use crate::config::VmState;
use crate::containers;
use crate::errors::{agent_failure, internal, launch_failure};
use crate::guest::{console_tail, wait_boot};
use crate::net::{self, VmNetwork};
use crate::profile::{VmSize, size_for};
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
pub(crate) struct Undo {
    pub(crate) virtiofsd: Option<i32>,
    pub(crate) cgroup: Option<crate::host_cgroup::VmCgroup>,
    /// The VM, by the id it was launched as.
    pub(crate) vm: Option<(String, VmEndpoints)>,
    pub(crate) netns: Option<Netns>,
    pub(crate) network: Option<VmNetwork>,
}

impl VmRuntime {
    /// Boots the VM of sandbox `id` in `dir`, or gives it a VM of the warm
    /// pool; on failure everything started for it is stopped again.
    pub(crate) async fn boot(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
    ) -> Result<VmState, RuntimeError> {
        let size = self.pod_size(config);
        let mut undo = Undo::default();
        let booted = match self.take_warm(&size) {
            Some(warm) => {
                self.boot_warm(id, config, dir, warm, &size, &mut undo)
                    .await
            }
            None => self.boot_steps(id, config, dir, &size, &mut undo).await,
        };
        match booted {
            Ok(state) => Ok(state),
            Err(e) => {
                self.undo(id, undo, Duration::ZERO).await;
                Err(e)
            }
        }
    }

    /// The VM size a pod gets at start.
    pub(crate) fn pod_size(&self, config: &SandboxConfig) -> VmSize {
        let max_vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        size_for(
            config,
            self.config.default_vcpus,
            self.config.default_memory_mib,
            u32::try_from(max_vcpus).unwrap_or(u32::MAX),
        )
    }

    /// Starts virtiofsd on `dir`'s shared directory; its pid and socket.
    pub(crate) async fn share(&self, dir: &Path) -> Result<(i32, PathBuf), RuntimeError> {
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)
            .map_err(|e| internal("create the pod's shared directory", e))?;
        let fs_socket = dir.join(VIRTIOFS_SOCKET);
        let pid = hypervisor::virtiofsd::spawn(
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
        Ok((pid, fs_socket))
    }

    /// The VM `id` in `dir` of `size`, able to grow to the configured most.
    pub(crate) fn vm_spec(
        &self,
        id: &str,
        dir: &Path,
        size: &VmSize,
        accel: hypervisor::Accel,
        netns: Option<&Netns>,
        fs_socket: PathBuf,
    ) -> VmSpec {
        let caps = self.hypervisor.capabilities();
        VmSpec {
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
            netns: netns.map(Netns::path),
            nics: Vec::new(),
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
        }
    }

    /// Boots the VM while CNI sets up the pod's network, then hot-plugs the
    /// NIC: the network's set-up time hides behind the guest's boot.
    async fn boot_steps(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
        size: &VmSize,
        undo: &mut Undo,
    ) -> Result<VmState, RuntimeError> {
        let accel = self.accel().await.accel;
        let netns = self.pod_netns(id, undo)?;
        let (virtiofsd, fs_socket) = self.share(dir).await?;
        undo.virtiofsd = Some(virtiofsd);
        let caps = self.hypervisor.capabilities();
        // A machine without NIC hot-plug boots with its NICs: CNI first.
        let mut early_net = None;
        if let (false, Some(networks), Some(ns)) = (caps.nic_hotplug, &self.config.networks, &netns)
        {
            let net_started = Instant::now();
            let pod_net = net::setup(networks, ns, id, config, None)
                .await
                .map_err(|e| internal("pod network", e))?;
            undo.network = Some(pod_net.clone());
            record_phase(StartPhase::Network, net_started.elapsed());
            early_net = Some(pod_net);
        }
        let mut spec = self.vm_spec(id, dir, size, accel, netns.as_ref(), fs_socket);
        spec.nics = early_net.iter().flat_map(VmNetwork::nics).collect();
        let started = Instant::now();
        let (endpoints, pids) = self.launch_vm(&spec, virtiofsd, undo).await?;
        tracing::debug!(%id, elapsed = ?started.elapsed(), "VMM started");
        let cgroup = self.place_vm(id, config, &pids, &(*size).into())?;
        undo.cgroup = cgroup.clone();
        let agent = Arc::new(AgentClient::new(Arc::new(UnixTransport::new(
            &endpoints.agent_socket,
        ))));
        let attach = async {
            if early_net.is_some() {
                return (early_net.clone(), Ok(()));
            }
            match &netns {
                Some(ns) => self.attach_network(id, config, ns, &endpoints, None).await,
                None => (None, Ok(())),
            }
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
        self.set_up_guest(&agent, dir, config, pod_net.as_ref(), None)
            .await?;
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
            launched_as: None,
        };
        self.track(id, endpoints, agent, Some(virtiofsd))?;
        Ok(state)
    }

    /// Launches the VM of `spec` (to be undone by its id); its endpoints,
    /// and the processes its cgroup takes: QEMU, `virtiofsd` and its children.
    pub(crate) async fn launch_vm(
        &self,
        spec: &VmSpec,
        virtiofsd: i32,
        undo: &mut Undo,
    ) -> Result<(VmEndpoints, Vec<i32>), RuntimeError> {
        let endpoints = self.hypervisor.launch(spec).await.map_err(launch_failure)?;
        undo.vm = Some((spec.id.clone(), endpoints.clone()));
        let mut pids = vec![endpoints.pid, virtiofsd];
        pids.extend(crate::stats::children(virtiofsd));
        Ok((endpoints, pids))
    }

    /// The network namespace of pod `id`, when pods have networking.
    pub(crate) fn pod_netns(
        &self,
        id: &str,
        undo: &mut Undo,
    ) -> Result<Option<Netns>, RuntimeError> {
        let Some(networks) = &self.config.networks else {
            return Ok(None);
        };
        let ns = networks
            .create_netns(id)
            .map_err(|e| internal("pod network", e))?;
        undo.netns = Some(ns.clone());
        Ok(Some(ns))
    }

    /// CNI ADD for pod `id` in `netns`, then its NICs hot-plugged into the
    /// VM: the network (if CNI made it) and whether it is all attached. A
    /// VM that booted with a NIC on a tap in `booted_with` keeps it for the
    /// CNI interface: that tap moves into `netns`.
    pub(crate) async fn attach_network(
        &self,
        id: &str,
        config: &SandboxConfig,
        netns: &Netns,
        endpoints: &VmEndpoints,
        booted_with: Option<&Netns>,
    ) -> (Option<VmNetwork>, Result<(), RuntimeError>) {
        let Some(networks) = &self.config.networks else {
            return (None, Ok(()));
        };
        let net_started = Instant::now();
        let pod_net = match net::setup(networks, netns, id, config, booted_with).await {
            Ok(n) => n,
            Err(e) => return (None, Err(internal("pod network", e))),
        };
        tracing::debug!(%id, elapsed = ?net_started.elapsed(), "CNI added");
        let mut plugged = Ok(());
        let plugged_at_boot = usize::from(booted_with.is_some());
        for (index, nic) in pod_net.nics().enumerate().skip(plugged_at_boot) {
            plugged = self
                .hypervisor
                .add_nic(endpoints, index, &nic)
                .await
                .map_err(|e| internal("pod network", e));
            if plugged.is_err() {
                break;
            }
        }
        if plugged.is_ok() {
            tracing::debug!(%id, elapsed = ?net_started.elapsed(), "NIC hot-plugged");
            record_phase(StartPhase::Network, net_started.elapsed());
        }
        (Some(pod_net), plugged)
    }

    /// Gives the booted guest its pod: hosts and resolv.conf, hostname,
    /// clock, shared directory, sysctls, then its network.
    /// `boot_mac` is the MAC of the NIC the VM booted with for the CNI
    /// interface (a pool VM's), which the guest changes to the pod's.
    pub(crate) async fn set_up_guest(
        &self,
        agent: &AgentClient,
        dir: &Path,
        config: &SandboxConfig,
        pod_net: Option<&VmNetwork>,
        boot_mac: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let ips = pod_net.map(|n| n.pod.result.pod_ips()).unwrap_or_default();
        container::podfiles::write(&dir.join("shared").join("sandbox"), config, &ips, false)
            .map_err(|e| internal("write the pod's hosts and resolv.conf", e))?;
        let clock_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
        let setup = calls::SetupSandbox {
            hostname: config.hostname.clone(),
            clock_ns,
            share_tag: containers::SHARE_TAG.to_owned(),
            sysctls: config.sysctls.clone(),
            userns: config.namespaces.userns.clone(),
        };
        let started = Instant::now();
        agent
            .request(setup, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("set up the guest", e))?;
        tracing::debug!(elapsed = ?started.elapsed(), "guest set up");
        if let Some(n) = pod_net {
            let (mut interfaces, routes) = net::guest_config(n);
            if let (Some(primary), Some(mac)) = (interfaces.first_mut(), boot_mac) {
                primary.current_mac = Some(mac.to_owned());
            }
            agent
                .request(calls::ConfigureNetwork { interfaces, routes }, AGENT_CALL)
                .await
                .map_err(|e| agent_failure("configure the guest network", e))?;
            tracing::debug!(elapsed = ?started.elapsed(), "guest network configured");
        }
        Ok(())
    }

    /// Undoes a failed start: the VM, then the network, then the namespace.
    /// QEMU gets `grace` to quit.
    pub(crate) async fn undo(&self, id: &str, undo: Undo, grace: Duration) {
        if let Some((launched_as, vm)) = &undo.vm {
            let _ = self.hypervisor.stop(launched_as, vm, grace).await;
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
pub(crate) fn record_phase(phase: StartPhase, elapsed: Duration) {
    telemetry::global().record_pod_start(crate::runtime::NAME, phase, elapsed);
}
