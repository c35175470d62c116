//! `VmRuntime`: runs every pod sandbox as its own VM, with `frakti-agent` as
//! the guest's PID 1, reached over a virtio-serial channel.

pub mod containers;
pub mod net;
pub mod sizing;
pub mod streams;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_api::{AgentClient, Request, Response, UnixTransport};
use hypervisor::{
    Accel, AccelMode, Hypervisor, LaunchError, NicSpec, Process, VmEndpoints, VmSpec,
};
use network::Cni;
use pods::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ExecOutput, PodRuntime, RuntimeError,
    RuntimeErrorKind, RuntimeEvent, SandboxConfig, SandboxRecord, StartedSandbox,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use sizing::{VmSize, size_for};

/// How long a KVM probe boot may take before KVM is judged unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest gets to power off after the agent's shutdown.
const POWEROFF_GRACE: Duration = Duration::from_secs(3);
/// How long QEMU gets to quit before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// Deadline for small agent requests.
const AGENT_CALL: Duration = Duration::from_secs(10);

/// Settings of the VM runtime.
#[derive(Debug, Clone)]
pub struct VmRuntimeConfig {
    /// Per-pod runtime files go to `<state_dir>/<pod id>/`.
    pub state_dir: PathBuf,
    /// Guest kernel (uncompressed PVH vmlinux).
    pub kernel: PathBuf,
    /// Guest initramfs with the agent as `/init`.
    pub initrd: PathBuf,
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
    /// CNI networking for pods; `None` leaves pods without a network.
    pub cni: Option<Arc<Cni>>,
    /// The virtiofsd binary that serves each pod's shared directory.
    pub virtiofsd: PathBuf,
    /// Containers' writable layers go to `<containers_dir>/<container id>/`.
    pub containers_dir: PathBuf,
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
    /// vCPUs given.
    pub vcpus: u32,
    /// Memory given, MiB.
    pub memory_mib: u64,
    /// The agent's boot id at start.
    pub boot_id: String,
    /// The pod's network, if it has one.
    #[serde(default)]
    pub network: Option<net::PodNetwork>,
    /// PID of the virtiofsd serving the pod's shared directory.
    #[serde(default)]
    pub virtiofsd_pid: Option<i32>,
}

impl VmState {
    /// The pod's shared directory on the host.
    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }
}

/// The accelerator verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelVerdict {
    /// The accelerator chosen.
    pub accel: Accel,
    /// Why it was chosen.
    pub reason: String,
}

/// What a failed start must undo.
struct Undo<'a> {
    id: &'a str,
    virtiofsd: Option<i32>,
    vm: Option<VmEndpoints>,
    netns: Option<network::Netns>,
    network: Option<net::PodNetwork>,
}

#[derive(Debug)]
struct Vm {
    endpoints: VmEndpoints,
    agent: Arc<AgentClient>,
    stopping: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
    relay: JoinHandle<()>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.watcher.abort();
        self.relay.abort();
    }
}

/// Longest wait of one `WaitEvents` request.
const EVENTS_WAIT: Duration = Duration::from_secs(30);

/// Passes container exits the agent reports on as runtime events.
async fn relay_container_events(
    sandbox_id: String,
    agent: Arc<AgentClient>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
) {
    let mut after = 0;
    loop {
        let request = Request::WaitEvents {
            after,
            timeout_ms: EVENTS_WAIT.as_millis() as u64,
        };
        match agent.call(&request, EVENTS_WAIT + AGENT_CALL).await {
            Ok(Response::Events { last, containers }) => {
                after = last;
                for info in containers {
                    if info.state == agent_api::messages::ContainerState::Exited {
                        let _ = events.send(RuntimeEvent::ContainerExited {
                            sandbox_id: sandbox_id.clone(),
                            id: info.id.clone(),
                            status: containers::runtime_status(&info),
                        });
                    }
                }
            }
            Ok(other) => {
                tracing::warn!(sandbox = %sandbox_id, ?other, "unexpected answer to WaitEvents");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Runs pod sandboxes as VMs.
#[derive(Debug)]
pub struct VmRuntime {
    config: VmRuntimeConfig,
    hypervisor: Arc<dyn Hypervisor>,
    accel: OnceCell<AccelVerdict>,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    locator: std::sync::OnceLock<streams::Locator>,
}

impl VmRuntime {
    /// A runtime on `hypervisor`; exits of VMs are reported on `events`.
    pub fn new(
        config: VmRuntimeConfig,
        hypervisor: Arc<dyn Hypervisor>,
        events: mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Self {
        Self {
            config,
            hypervisor,
            accel: OnceCell::new(),
            vms: Mutex::default(),
            events,
            locator: std::sync::OnceLock::new(),
        }
    }

    /// The accelerator for all VMs, probed once (a real KVM boot in `auto` mode).
    pub async fn accel(&self) -> &AccelVerdict {
        self.accel
            .get_or_init(|| async {
                let verdict = self.choose_accel().await;
                tracing::info!(accel = %verdict.accel, "accelerator chosen: {}", verdict.reason);
                verdict
            })
            .await
    }

    async fn choose_accel(&self) -> AccelVerdict {
        let verdict = |accel, reason: String| AccelVerdict { accel, reason };
        match self.config.accel {
            AccelMode::Kvm => return verdict(Accel::Kvm, "forced by configuration".into()),
            AccelMode::Tcg => return verdict(Accel::Tcg, "forced by configuration".into()),
            AccelMode::Auto => {}
        }
        if let Err(why) = hypervisor::accel::kvm_device_usable() {
            return verdict(Accel::Tcg, format!("KVM unavailable ({why})"));
        }
        let spec = VmSpec {
            id: "accel-probe".into(),
            dir: self.config.state_dir.join("accel-probe"),
            vcpus: 1,
            memory_mib: 256,
            kernel: self.config.kernel.clone(),
            initrd: self.config.initrd.clone(),
            extra_cmdline: Vec::new(),
            accel: Accel::Kvm,
            netns: None,
            nics: Vec::new(),
            shares: Vec::new(),
        };
        let started = Instant::now();
        let result = match self.hypervisor.launch(&spec).await {
            Ok(vm) => {
                let agent = AgentClient::new(Arc::new(UnixTransport::new(&vm.agent_socket)));
                let ready = wait_boot(&agent, &vm, started + PROBE_TIMEOUT).await;
                let _ = self.hypervisor.stop(&spec.id, &vm, Duration::ZERO).await;
                ready
            }
            Err(e) => Err(e.to_string()),
        };
        let _ = std::fs::remove_dir_all(&spec.dir);
        match result {
            Ok(()) => verdict(
                Accel::Kvm,
                format!("a KVM probe guest booted in {:.2?}", started.elapsed()),
            ),
            Err(why) => verdict(
                Accel::Tcg,
                format!("a KVM probe guest did not come up: {why}"),
            ),
        }
    }

    /// Kills and deletes what pods without a record left in the state
    /// directory (a daemon killed in the middle of RunPodSandbox): their VM
    /// process, files and network namespace. Returns how many were swept.
    pub fn sweep_orphans(&self, known: &std::collections::HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.config.state_dir) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_pod_dir = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_pod_dir || known.contains(&id) || !entry.path().is_dir() {
                continue;
            }
            let pid = std::fs::read_to_string(entry.path().join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid
                && let Ok(endpoints) = self.hypervisor.adopt(&id, &entry.path(), pid)
                && let Ok(p) = Process::open(endpoints.pid)
            {
                p.signal(nix::sys::signal::Signal::SIGKILL);
            }
            let _ = net::netns_for(&id).remove();
            let _ = std::fs::remove_dir_all(entry.path());
            tracing::warn!(%id, ?pid, "swept the remains of a pod without a record");
            swept += 1;
        }
        swept
    }

    fn vm(&self, id: &str) -> Option<Arc<Vm>> {
        lock(&self.vms).get(id).cloned()
    }

    /// Records a running VM and watches its process.
    fn track(
        &self,
        id: &str,
        endpoints: VmEndpoints,
        agent: Arc<AgentClient>,
    ) -> Result<(), RuntimeError> {
        let process = Process::open(endpoints.pid).map_err(|e| {
            RuntimeError::new(RuntimeErrorKind::Internal, format!("watch VM process: {e}"))
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let events = self.events.clone();
        let (id_owned, flag) = (id.to_owned(), stopping.clone());
        let dir = endpoints
            .console_log
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let watcher = tokio::spawn(async move {
            process.exited().await;
            if !flag.load(Ordering::SeqCst) {
                let reason = format!(
                    "VM process {} exited unexpectedly (see {}/qemu.log and console.log)",
                    process.pid(),
                    dir.display()
                );
                let _ = events.send(RuntimeEvent::SandboxExited {
                    id: id_owned,
                    reason,
                });
            }
        });
        let relay = tokio::spawn(relay_container_events(
            id.to_owned(),
            agent.clone(),
            self.events.clone(),
        ));
        let vm = Arc::new(Vm {
            endpoints,
            agent,
            stopping,
            watcher,
            relay,
        });
        lock(&self.vms).insert(id.to_owned(), vm);
        Ok(())
    }

    async fn boot(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
    ) -> Result<VmState, RuntimeError> {
        let mut undo = Undo {
            id,
            virtiofsd: None,
            vm: None,
            netns: None,
            network: None,
        };
        match self.boot_steps(id, config, dir, &mut undo).await {
            Ok(state) => Ok(state),
            Err(e) => {
                self.undo(undo).await;
                Err(e)
            }
        }
    }

    /// Boots the VM while CNI sets up the pod's network, then hot-plugs the
    /// NIC: the network's set-up time hides behind the guest's boot.
    async fn boot_steps<'a>(
        &self,
        id: &'a str,
        config: &SandboxConfig,
        dir: &Path,
        undo: &mut Undo<'a>,
    ) -> Result<VmState, RuntimeError> {
        let internal = |what: &str, e: String| {
            RuntimeError::new(RuntimeErrorKind::Internal, format!("{what}: {e}"))
        };
        let accel = self.accel().await.accel;
        let max_vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let size = size_for(
            config,
            self.config.default_vcpus,
            self.config.default_memory_mib,
            u32::try_from(max_vcpus).unwrap_or(u32::MAX),
        );
        let netns = match &self.config.cni {
            Some(_) => {
                let ns = net::netns_for(id);
                ns.create()
                    .map_err(|e| internal("pod network", e.to_string()))?;
                undo.netns = Some(ns.clone());
                Some(ns)
            }
            None => None,
        };
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared)
            .map_err(|e| internal("create the pod's shared directory", e.to_string()))?;
        let fs_socket = dir.join("vfs.sock");
        let virtiofsd = hypervisor::virtiofsd::spawn(
            &self.config.virtiofsd,
            &fs_socket,
            &shared,
            &dir.join("virtiofsd.log"),
        )
        .await
        .map_err(|e| match e {
            hypervisor::virtiofsd::VirtiofsdError::Missing(_) => {
                RuntimeError::new(RuntimeErrorKind::Unavailable, e.to_string())
            }
            other => internal("share the pod directory", other.to_string()),
        })?;
        undo.virtiofsd = Some(virtiofsd);
        let spec = VmSpec {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            kernel: self.config.kernel.clone(),
            initrd: self.config.initrd.clone(),
            extra_cmdline: self.config.extra_cmdline.clone(),
            accel,
            netns: netns.as_ref().map(network::Netns::path),
            nics: Vec::new(),
            shares: vec![hypervisor::FsShare {
                tag: containers::SHARE_TAG.to_owned(),
                socket: fs_socket,
            }],
        };
        let started = Instant::now();
        let endpoints = self.hypervisor.launch(&spec).await.map_err(|e| match e {
            LaunchError::Missing { .. } => {
                RuntimeError::new(RuntimeErrorKind::Unavailable, e.to_string())
            }
            other => RuntimeError::new(RuntimeErrorKind::Internal, other.to_string()),
        })?;
        undo.vm = Some(endpoints.clone());
        tracing::debug!(%id, elapsed = ?started.elapsed(), "VMM started");
        let agent = Arc::new(AgentClient::new(Arc::new(UnixTransport::new(
            &endpoints.agent_socket,
        ))));
        let attach = async {
            let (Some(cni), Some(ns)) = (&self.config.cni, &netns) else {
                return (None, Ok(()));
            };
            let pod_net = match net::setup(cni, ns, id, config).await {
                Ok(n) => n,
                Err(e) => return (None, Err(e)),
            };
            tracing::debug!(%id, elapsed = ?started.elapsed(), "CNI added");
            let mut plugged = Ok(());
            for (index, tap) in pod_net.taps().enumerate() {
                let nic = NicSpec {
                    tap: tap.tap.clone(),
                    mac: tap.mac.clone(),
                };
                plugged = self
                    .hypervisor
                    .add_nic(&endpoints, index, &nic)
                    .await
                    .map_err(|e| e.to_string());
                if plugged.is_err() {
                    break;
                }
            }
            tracing::debug!(%id, elapsed = ?started.elapsed(), "NIC hot-plugged");
            (Some(pod_net), plugged)
        };
        let booted = wait_boot(&agent, &endpoints, started + self.config.boot_timeout);
        let ((pod_net, plugged), booted) = tokio::join!(attach, booted);
        undo.network = pod_net.clone();
        plugged.map_err(|e| internal("pod network", e))?;
        if let Err(why) = booted {
            let tail = console_tail(&endpoints.console_log);
            return Err(RuntimeError::new(
                RuntimeErrorKind::DeadlineExceeded,
                format!("the pod VM did not come up: {why}; console: {tail}"),
            ));
        }
        tracing::debug!(%id, elapsed = ?started.elapsed(), "agent answered");
        let welcome = agent.welcome().await;
        let ips = pod_net
            .as_ref()
            .map(|n| n.result.pod_ips())
            .unwrap_or_default();
        containers::write_sandbox_files(&shared, config, &ips)
            .map_err(|e| internal("write the pod's hosts and resolv.conf", e.to_string()))?;
        let clock_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0));
        let setup = Request::SetupSandbox {
            hostname: config.hostname.clone(),
            clock_ns,
            share_tag: containers::SHARE_TAG.to_owned(),
            sysctls: config.sysctls.clone(),
        };
        agent
            .call(&setup, AGENT_CALL)
            .await
            .map_err(|e| internal("set up the guest", e.to_string()))?;
        if let Some(n) = &pod_net {
            let (interfaces, routes) = net::guest_config(n);
            let request = Request::ConfigureNetwork { interfaces, routes };
            agent
                .call(&request, AGENT_CALL)
                .await
                .map_err(|e| internal("configure the guest network", e.to_string()))?;
        }
        tracing::info!(%id, pid = endpoints.pid, %accel, vcpus = size.vcpus, memory_mib = size.memory_mib,
            boot = ?started.elapsed(), "pod VM ready");
        let state = VmState {
            pid: endpoints.pid,
            dir: dir.to_path_buf(),
            accel,
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            boot_id: welcome.map(|w| w.boot_id).unwrap_or_default(),
            network: pod_net,
            virtiofsd_pid: Some(virtiofsd),
        };
        self.track(id, endpoints, agent)?;
        Ok(state)
    }

    /// Undoes a failed start: the VM, then the network, then the namespace.
    async fn undo(&self, undo: Undo<'_>) {
        if let Some(vm) = &undo.vm {
            let _ = self.hypervisor.stop(undo.id, vm, Duration::ZERO).await;
        }
        if let Some(pid) = undo.virtiofsd {
            kill_virtiofsd(pid).await;
        }
        match (&self.config.cni, &undo.network, &undo.netns) {
            (Some(cni), Some(n), _) => {
                if let Err(why) = net::teardown(cni, n).await {
                    tracing::warn!(id = undo.id, "cleaning up the pod network: {why}");
                }
            }
            (_, None, Some(ns)) => {
                let _ = ns.remove();
            }
            _ => {}
        }
    }
}

/// Kills a pod's virtiofsd (it normally exits with QEMU) and reaps it.
async fn kill_virtiofsd(pid: i32) {
    let is_ours = hypervisor::process::cmdline(pid)
        .and_then(|c| c.first().cloned())
        .is_some_and(|bin| bin.contains("virtiofsd"));
    if !is_ours {
        return;
    }
    if let Ok(p) = Process::open(pid)
        && tokio::time::timeout(Duration::from_millis(500), p.exited())
            .await
            .is_err()
    {
        p.signal(nix::sys::signal::Signal::SIGKILL);
        p.exited().await;
    }
}

/// Detaches every mount under `dir` (deepest first), e.g. containers' root
/// filesystems left in a pod's shared directory.
fn detach_mounts_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Waits for the agent's handshake, failing early if the VM process exits.
async fn wait_boot(agent: &AgentClient, vm: &VmEndpoints, deadline: Instant) -> Result<(), String> {
    let process = Process::open(vm.pid).map_err(|e| format!("VM process: {e}"))?;
    tokio::select! {
        r = agent.wait_ready(deadline) => r.map(drop).map_err(|e| e.to_string()),
        () = process.exited() => {
            let log = std::fs::read_to_string(&vm.vmm_log).unwrap_or_default();
            let last = log.trim().lines().last().unwrap_or("no output").to_owned();
            Err(format!("the VM process exited during boot ({last})"))
        }
    }
}

/// The last lines of the guest console, for error messages.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn parse_state(state: &serde_json::Value) -> Result<VmState, RuntimeError> {
    serde_json::from_value(state.clone()).map_err(|e| {
        RuntimeError::new(
            RuntimeErrorKind::Internal,
            format!("unreadable VM state: {e}"),
        )
    })
}

#[async_trait::async_trait]
impl PodRuntime for VmRuntime {
    fn name(&self) -> &'static str {
        "vm"
    }

    async fn ready(&self) -> Result<(), String> {
        for (what, path) in [
            ("guest kernel", &self.config.kernel),
            ("guest initramfs", &self.config.initrd),
        ] {
            if !path.exists() {
                return Err(format!(
                    "{what} {} not found (run `make build`)",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    async fn network_ready(&self) -> Result<(), String> {
        match &self.config.cni {
            Some(cni) => cni.status().map(drop).map_err(|e| e.to_string()),
            None => Err("pod networking is disabled".into()),
        }
    }

    async fn start_sandbox(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError> {
        for (what, mode) in [
            ("PID", config.namespaces.pid),
            ("IPC", config.namespaces.ipc),
        ] {
            if mode == pods::container::NamespaceMode::Node {
                return Err(RuntimeError::new(
                    RuntimeErrorKind::InvalidArgument,
                    format!("the node's {what} namespace needs a host runtime, not a VM pod"),
                ));
            }
        }
        let dir = self.config.state_dir.join(id);
        match self.boot(id, config, &dir).await {
            Ok(state) => {
                let ips = state
                    .network
                    .as_ref()
                    .map(|n| n.result.pod_ips())
                    .unwrap_or_default();
                let state = serde_json::to_value(state)
                    .map_err(|e| RuntimeError::new(RuntimeErrorKind::Internal, e.to_string()))?;
                Ok(StartedSandbox { state, ips })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, id: &str, state: &serde_json::Value) -> Result<(), RuntimeError> {
        let vm_state = parse_state(state)?;
        let (endpoints, agent) = match self.vm(id) {
            Some(vm) => {
                vm.stopping.store(true, Ordering::SeqCst);
                (vm.endpoints.clone(), Some(vm.agent.clone()))
            }
            None => (VmEndpoints::in_dir(&vm_state.dir, vm_state.pid), None),
        };
        if let (Some(agent), Ok(process)) = (agent, Process::open(endpoints.pid))
            && process.is_running()
        {
            // Graceful first: the guest syncs and powers off.
            let asked = agent.call(&Request::Shutdown, Duration::from_secs(2)).await;
            if matches!(asked, Ok(Response::Done)) {
                let _ = tokio::time::timeout(POWEROFF_GRACE, process.exited()).await;
            }
        }
        self.hypervisor
            .stop(id, &endpoints, QUIT_GRACE)
            .await
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::Internal, e.to_string()))?;
        lock(&self.vms).remove(id);
        if let Some(pid) = vm_state.virtiofsd_pid {
            kill_virtiofsd(pid).await;
        }
        if let Some(network) = &vm_state.network {
            let cni = self.config.cni.clone().unwrap_or_else(|| {
                Arc::new(Cni::new(PathBuf::new(), network::cni::default_bin_dirs()))
            });
            net::teardown(&cni, network).await.map_err(|e| {
                RuntimeError::new(
                    RuntimeErrorKind::Internal,
                    format!("pod network teardown: {e}"),
                )
            })?;
        }
        Ok(())
    }

    async fn remove_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        self.stop_sandbox(id, state).await?;
        let dir = parse_state(state)?.dir;
        detach_mounts_under(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::new(
                RuntimeErrorKind::Internal,
                format!("remove {}: {e}", dir.display()),
            )),
        }
    }

    async fn adopt_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<bool, RuntimeError> {
        let vm_state = parse_state(state)?;
        let endpoints = match self.hypervisor.adopt(id, &vm_state.dir, vm_state.pid) {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(%id, "not re-adopting: {e}");
                return Ok(false);
            }
        };
        let agent = Arc::new(AgentClient::new(Arc::new(UnixTransport::new(
            &endpoints.agent_socket,
        ))));
        match agent
            .wait_ready(Instant::now() + Duration::from_secs(5))
            .await
        {
            Ok(w) if w.boot_id != vm_state.boot_id && !vm_state.boot_id.is_empty() => {
                tracing::warn!(%id, "guest rebooted since it was started");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%id, "VM runs but its agent does not answer yet: {e}"),
        }
        self.track(id, endpoints, agent)?;
        Ok(true)
    }

    async fn sandbox_info(&self, id: &str, state: &serde_json::Value) -> serde_json::Value {
        let mut info = serde_json::json!({ "runtime": "vm", "vm": state });
        if let Ok(s) = parse_state(state) {
            let running = Process::open(s.pid).is_ok_and(|p| p.is_running());
            info["running"] = running.into();
            if running {
                info["qemu_rss_kib"] = hypervisor::process::rss_kib(s.pid).into();
            }
            // CNI CHECK: does the network still look as ADD left it?
            if let (true, Some(cni), Some(n)) = (running, &self.config.cni, &s.network) {
                let checked = cni
                    .check(&n.config, &n.attachment, &n.result, &n.port_mappings)
                    .await;
                info["network_check"] = match checked {
                    Ok(true) => "ok".into(),
                    Ok(false) => "not supported by the CNI version".into(),
                    Err(e) => e.to_string().into(),
                };
            }
        }
        if let Some(vm) = self.vm(id)
            && let Ok(Response::GuestInfo(guest)) = vm
                .agent
                .call(&Request::GuestInfo, Duration::from_secs(3))
                .await
        {
            info["guest"] = serde_json::to_value(guest).unwrap_or_default();
        }
        info
    }

    async fn create_container(
        &self,
        sandbox: &SandboxRecord,
        id: &str,
        config: &ContainerConfig,
        log_path: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let state = parse_state(&sandbox.runtime_state)?;
        let prepared = containers::prepare(
            &state.shared_dir(),
            &self.config.containers_dir,
            &sandbox.config,
            id,
            config,
            log_path,
        )?;
        tracing::debug!(container = id, spec = %prepared.spec, "OCI spec");
        let request = Request::CreateContainer(agent_api::messages::CreateContainer {
            id: id.to_owned(),
            spec: prepared.spec,
            log_path: prepared.guest_log,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
        });
        match agent.call(&request, CONTAINER_CALL).await {
            Ok(Response::Container(_)) => {}
            other => {
                if let Err(e) = containers::remove_files(&prepared.files) {
                    tracing::warn!(container = id, "cleanup after a failed create: {e}");
                }
                return Err(agent_failure("create the container", other));
            }
        }
        serde_json::to_value(&prepared.files)
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::Internal, e.to_string()))
    }

    async fn start_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = Request::StartContainer {
            id: container.id.clone(),
        };
        match agent.call(&request, CONTAINER_CALL).await {
            Ok(Response::Container(info)) => Ok(containers::runtime_status(&info)),
            other => Err(agent_failure("start the container", other)),
        }
    }

    async fn stop_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let signal = containers::stop_signal(&container.config.image.process.stop_signal)?;
        let request = Request::StopContainer {
            id: container.id.clone(),
            signal,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match agent.call(&request, timeout + CONTAINER_CALL).await {
            Ok(Response::Container(info)) => Ok(containers::runtime_status(&info)),
            other => Err(agent_failure("stop the container", other)),
        }
    }

    async fn remove_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        // A pod whose VM is gone has no container left to remove in the guest.
        if let Ok(agent) = self.agent_of(sandbox) {
            let request = Request::RemoveContainer {
                id: container.id.clone(),
            };
            match agent.call(&request, CONTAINER_CALL).await {
                Ok(Response::Done) => {}
                other => return Err(agent_failure("remove the container", other)),
            }
        }
        if container.runtime_state.is_null() {
            return Ok(());
        }
        let files: containers::ContainerFiles =
            serde_json::from_value(container.runtime_state.clone()).map_err(|e| {
                RuntimeError::new(
                    RuntimeErrorKind::Internal,
                    format!("unreadable container state: {e}"),
                )
            })?;
        containers::remove_files(&files)
    }

    async fn container_status(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = Request::ContainerStatus {
            id: container.id.clone(),
        };
        match agent.call(&request, AGENT_CALL).await {
            Ok(Response::Container(info)) => Ok(containers::runtime_status(&info)),
            other => Err(agent_failure("read the container's status", other)),
        }
    }

    async fn exec_sync(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        use base64::Engine;
        let agent = self.agent_of(sandbox)?;
        let request = Request::ExecSync {
            id: container.id.clone(),
            args: cmd.to_vec(),
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        // Without a timeout the command may run as long as it likes.
        let limit = timeout.map_or(Duration::from_secs(365 * 24 * 3600), |t| t + CONTAINER_CALL);
        match agent.call(&request, limit).await {
            Ok(Response::Exec(out)) => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let decode = |s: &str| {
                    b64.decode(s).map_err(|e| {
                        RuntimeError::new(
                            RuntimeErrorKind::Internal,
                            format!("bad exec output from the agent: {e}"),
                        )
                    })
                };
                Ok(ExecOutput {
                    stdout: decode(&out.stdout)?,
                    stderr: decode(&out.stderr)?,
                    exit_code: out.exit_code,
                })
            }
            other => Err(agent_failure("exec in the container", other)),
        }
    }

    async fn reopen_container_log(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = Request::ReopenLog {
            id: container.id.clone(),
        };
        match agent.call(&request, AGENT_CALL).await {
            Ok(Response::Done) => Ok(()),
            other => Err(agent_failure("reopen the container log", other)),
        }
    }

    async fn container_info(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> serde_json::Value {
        serde_json::json!({ "runtime": "vm", "files": container.runtime_state })
    }
}

/// Deadline for container requests that fork in the guest.
const CONTAINER_CALL: Duration = Duration::from_secs(30);

impl VmRuntime {
    /// The agent of a running pod VM.
    fn agent_of(&self, sandbox: &SandboxRecord) -> Result<Arc<AgentClient>, RuntimeError> {
        self.vm(&sandbox.id)
            .map(|vm| vm.agent.clone())
            .ok_or_else(|| {
                RuntimeError::new(
                    RuntimeErrorKind::FailedPrecondition,
                    format!("the VM of pod {} is not running", sandbox.id),
                )
            })
    }
}

/// Maps a failed or unexpected agent answer to a runtime error.
fn agent_failure(what: &str, answer: Result<Response, agent_api::CallError>) -> RuntimeError {
    use agent_api::messages::AgentErrorKind as K;
    match answer {
        Err(agent_api::CallError::Agent(e)) => {
            let kind = match e.kind {
                K::InvalidArgument => RuntimeErrorKind::InvalidArgument,
                K::NotFound => RuntimeErrorKind::NotFound,
                K::FailedPrecondition => RuntimeErrorKind::FailedPrecondition,
                K::DeadlineExceeded => RuntimeErrorKind::DeadlineExceeded,
                K::Internal => RuntimeErrorKind::Internal,
            };
            RuntimeError::new(kind, format!("{what}: {}", e.message))
        }
        Err(e) => RuntimeError::new(RuntimeErrorKind::Unavailable, format!("{what}: {e}")),
        Ok(other) => RuntimeError::new(
            RuntimeErrorKind::Internal,
            format!("{what}: unexpected answer from the agent: {other:?}"),
        ),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
