//! The warm pool: VMs booted ahead of their pods, agent ready, with no pod
//! identity. RunPodSandbox takes one and gives it the pod (its directory,
//! network, hostname, DNS, size: see `warm`); the pool refills behind it.
//!
//! A pool VM waits in `<state_dir>/pool/<hex>`, launched as `pool-<hex>`,
//! in an empty network namespace of its own and a cgroup of frakti's with
//! the least CPU weight. Nothing about the pool is recorded: a daemon
//! restart discards what a previous one left (see [`VmRuntime::sweep_pool`]),
//! and a stopping daemon drains it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent_api::{AgentClient, UnixTransport, calls};
use hypervisor::{Accel, Process, VmEndpoints};
use network::Netns;
use runtime_api::{RuntimeError, RuntimeErrorKind, report};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::boot::Undo;
use crate::containers;
use crate::errors::{agent_failure, internal};
use crate::guest::{console_tail, wait_boot};
use crate::host_cgroup::VmCgroup;
use crate::runtime::{AGENT_CALL, VmRuntime, lock};
use crate::sizing::VmSize;

/// The file in a pool VM's directory naming the id it was launched as: it
/// stays with the directory when a pod takes the VM.
pub(crate) const LAUNCHED_AS: &str = "launched-as";

/// A pool VM's hostname until a pod has it.
const POOL_HOSTNAME: &str = "frakti-pool";

/// The MTU of a pool VM's NIC until its pod's network sets it (Ethernet's,
/// which most pod networks keep).
const BOOT_MTU: u32 = 1500;

/// How often the pool looks for VMs that died while waiting.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long a discarded pool VM may take to quit before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);

/// The first wait after a pool VM failed to boot; it doubles up to
/// [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MOST: Duration = Duration::from_secs(300);

/// The warm VMs of one VM runtime, and what fills the pool.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    warm: Mutex<Vec<WarmVm>>,
    /// Wakes the filler: a VM was taken, or the pool is drained.
    wake: Notify,
    /// Set by a drain: no VM is booted or handed out any more.
    stopped: AtomicBool,
    /// Held while a pool VM boots, so that a drain waits for it.
    booting: tokio::sync::Mutex<()>,
}

/// A booted VM waiting for a pod.
#[derive(Debug)]
pub(crate) struct WarmVm {
    /// The id it was launched as (`pool-<hex>`).
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) endpoints: VmEndpoints,
    /// The agent's transport, moved with the directory.
    pub(crate) transport: Arc<UnixTransport>,
    pub(crate) agent: Arc<AgentClient>,
    pub(crate) virtiofsd: i32,
    /// Its size now, and the most it can grow to.
    pub(crate) size: VmSize,
    pub(crate) max: VmSize,
    pub(crate) accel: Accel,
    pub(crate) boot_id: String,
    pub(crate) cgroup: Option<VmCgroup>,
    /// Its own network namespace (QEMU stays in it), where the tap of the
    /// NIC it booted with waits for the pod's network.
    pub(crate) netns: Option<Netns>,
    /// That NIC's MAC, until the pod's replaces it.
    pub(crate) boot_mac: Option<String>,
}

impl WarmVm {
    /// A pod of `size` can have this VM: as large or larger, within what
    /// the VM can grow to.
    fn fits(&self, size: &VmSize) -> bool {
        (self.size.vcpus..=self.max.vcpus).contains(&size.vcpus)
            && (self.size.memory_mib..=self.max.memory_mib).contains(&size.memory_mib)
    }

    fn running(&self) -> bool {
        Process::open(self.endpoints.pid).is_ok_and(|p| p.is_running())
    }
}

/// How many pool VMs wait, of how many wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFigures {
    /// Booted and waiting.
    pub ready: usize,
    /// The configured size.
    pub target: usize,
}

/// The directory of every pool VM of a daemon.
fn pool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pool")
}

/// Whether `name` is a pool VM's id (`pool-` and 16 hex digits).
pub(crate) fn is_pool_name(name: &str) -> bool {
    name.strip_prefix("pool-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Kills process `pid` and waits (at most 2 s) for it to exit, so that its
/// cgroup can go.
pub(crate) fn kill_and_wait(pid: i32) {
    let Ok(p) = Process::open(pid) else {
        return;
    };
    p.signal(nix::sys::signal::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while p.is_running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    hypervisor::process::reap(pid);
}

/// The empty network namespace of pool VM `name`.
fn pool_netns(name: &str) -> Netns {
    network::PodNetworks::netns_for(name)
}

impl VmRuntime {
    /// The pool's figures.
    pub fn pool_figures(&self) -> PoolFigures {
        PoolFigures {
            ready: lock(&self.pool.warm).len(),
            target: self.pool_target(),
        }
    }

    /// How many VMs the pool keeps: none on a machine that cannot hot-plug
    /// a pod's NIC.
    fn pool_target(&self) -> usize {
        if self.hypervisor.capabilities().nic_hotplug {
            self.config.pool
        } else {
            0
        }
    }

    /// A warm VM for a pod of `size`, if one waits: the filler is woken to
    /// replace it.
    pub(crate) fn take_warm(&self, size: &VmSize) -> Option<WarmVm> {
        if self.pool.stopped.load(Ordering::SeqCst) {
            return None;
        }
        let vm = {
            let mut warm = lock(&self.pool.warm);
            let i = warm.iter().position(|w| w.fits(size) && w.running())?;
            warm.swap_remove(i)
        };
        self.pool.wake.notify_one();
        Some(vm)
    }

    /// Keeps `config.pool` VMs booted until the pool is drained: boots one
    /// at a time, replaces VMs that died, and backs off when boots fail.
    pub(crate) async fn keep_pool(&self) {
        if self.pool_target() == 0 {
            if self.config.pool > 0 {
                tracing::info!(handler = %self.config.handler,
                    "no warm pool: this machine type cannot hot-plug a pod's NIC");
            }
            return;
        }
        let mut retry = RETRY_FIRST;
        while !self.pool.stopped.load(Ordering::SeqCst) {
            {
                // A drain waits for this discard as for a boot.
                let _busy = self.pool.booting.lock().await;
                if self.pool.stopped.load(Ordering::SeqCst) {
                    return;
                }
                self.prune_pool().await;
            }
            let missing = self.pool_target() > lock(&self.pool.warm).len();
            let wait = if missing {
                let _booting = self.pool.booting.lock().await;
                if self.pool.stopped.load(Ordering::SeqCst) {
                    return;
                }
                match self.boot_pool_vm().await {
                    Ok(vm) => {
                        tracing::info!(handler = %self.config.handler, vm = %vm.name,
                            pid = vm.endpoints.pid, "pool VM ready");
                        lock(&self.pool.warm).push(vm);
                        retry = RETRY_FIRST;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(handler = %self.config.handler,
                            "a pool VM did not boot (next try in {retry:?}): {}", report(&e));
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_MOST);
                        wait
                    }
                }
            } else {
                CHECK_EVERY
            };
            tokio::select! {
                () = self.pool.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Boots a VM of the default size with no pod.
    async fn boot_pool_vm(&self) -> Result<WarmVm, RuntimeError> {
        let accel = self.accel().await.accel;
        let hex: String = rand::random::<[u8; 8]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("pool-{hex}");
        let dir = pool_dir(&self.config.state_dir).join(&hex);
        let mut undo = Undo::default();
        match self.boot_pool_steps(&name, &dir, accel, &mut undo).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                self.undo(&name, undo, QUIT_GRACE).await;
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn boot_pool_steps(
        &self,
        name: &str,
        dir: &Path,
        accel: Accel,
        undo: &mut Undo,
    ) -> Result<WarmVm, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| internal("create a pool VM's directory", e))?;
        std::fs::write(dir.join(LAUNCHED_AS), name)
            .map_err(|e| internal("write a pool VM's name", e))?;
        let netns = match &self.config.networks {
            Some(_) => {
                let ns = pool_netns(name);
                ns.create()
                    .map_err(|e| internal("a pool VM's network namespace", e))?;
                undo.netns = Some(ns.clone());
                Some(ns)
            }
            None => None,
        };
        let (virtiofsd, fs_socket) = self.share(dir).await?;
        undo.virtiofsd = Some(virtiofsd);
        // The size a pod without limits gets (vCPUs capped at the host's).
        let size = self.pod_size(&runtime_api::SandboxConfig::default());
        let mut spec = self.vm_spec(name, dir, &size, accel, netns.as_ref(), fs_socket);
        // A NIC probed at boot: the pod's network only moves its tap.
        if let Some(ns) = &netns {
            let nic = crate::net::boot_tap(ns)
                .await
                .map_err(|e| internal("a pool VM's NIC", e))?;
            spec.nics.push(nic);
        }
        let boot_mac = spec.nics.first().map(|n| n.mac.clone());
        let most = self.hypervisor.most(&spec);
        let started = Instant::now();
        let (endpoints, pids) = self.launch_vm(&spec, virtiofsd, undo).await?;
        let cgroup = self.place_pool_vm(name, &pids, &size.into())?;
        undo.cgroup = cgroup.clone();
        let transport = Arc::new(UnixTransport::new(&endpoints.agent_socket));
        let agent = Arc::new(AgentClient::new(transport.clone()));
        if let Err(why) = wait_boot(&agent, &endpoints, started + self.config.boot_timeout).await {
            let tail = console_tail(&endpoints.console_log);
            return Err(RuntimeError::new(
                RuntimeErrorKind::DeadlineExceeded,
                format!("the pool VM did not come up: {why}; console: {tail}"),
            ));
        }
        let boot_id = agent.welcome().await.map(|w| w.boot_id).unwrap_or_default();
        // What every pod's set-up does first (the shared directory mounted,
        // its modules loaded, the pod's PID namespace): done now, the pod's
        // own set-up finds it done. Hostname, clock and sysctls are the pod's.
        let prepare = calls::SetupSandbox {
            hostname: POOL_HOSTNAME.to_owned(),
            clock_ns: 0,
            share_tag: containers::SHARE_TAG.to_owned(),
            sysctls: Default::default(),
            userns: None,
        };
        agent
            .request(prepare, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("prepare the pool VM's guest", e))?;
        // Its NIC up, buffers filled: the pod's network only renames it.
        if let Some(mac) = &boot_mac {
            let up = calls::ConfigureNetwork {
                interfaces: vec![agent_api::NetInterface {
                    mac: mac.clone(),
                    current_mac: None,
                    mtu: BOOT_MTU,
                    addresses: Vec::new(),
                }],
                routes: Vec::new(),
            };
            agent
                .request(up, AGENT_CALL)
                .await
                .map_err(|e| agent_failure("bring up the pool VM's NIC", e))?;
        }
        Ok(WarmVm {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            endpoints,
            transport,
            agent,
            virtiofsd,
            size,
            max: most.into(),
            accel,
            boot_id,
            cgroup,
            netns,
            boot_mac,
        })
    }

    /// Stops a pool VM and removes all it had.
    pub(crate) async fn discard(&self, vm: WarmVm) {
        let dir = vm.dir.clone();
        self.undo(
            &vm.name,
            Undo {
                virtiofsd: Some(vm.virtiofsd),
                cgroup: vm.cgroup,
                vm: Some((vm.name.clone(), vm.endpoints)),
                netns: vm.netns,
                network: None,
            },
            QUIT_GRACE,
        )
        .await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Discards the pool VMs that died while they waited.
    async fn prune_pool(&self) {
        let dead: Vec<WarmVm> = {
            let mut warm = lock(&self.pool.warm);
            let (alive, dead) = std::mem::take(&mut *warm)
                .into_iter()
                .partition(WarmVm::running);
            *warm = alive;
            dead
        };
        for vm in dead {
            tracing::warn!(handler = %self.config.handler, vm = %vm.name, pid = vm.endpoints.pid,
                "a pool VM died while it waited (see {}); replacing it", vm.endpoints.vmm_log.display());
            self.discard(vm).await;
        }
    }

    /// Stops filling the pool and discards its VMs (the daemon stops);
    /// waits for a VM that is booting.
    pub(crate) async fn drain_pool(&self) {
        self.pool.stopped.store(true, Ordering::SeqCst);
        self.pool.wake.notify_one();
        let _booting = self.pool.booting.lock().await;
        let warm = std::mem::take(&mut *lock(&self.pool.warm));
        let count = warm.len();
        for vm in warm {
            self.discard(vm).await;
        }
        if count > 0 {
            tracing::info!(handler = %self.config.handler, count, "pool VMs discarded");
        }
    }

    /// Removes what pool VM `name` had besides its process and directory:
    /// its cgroup and its namespace's name.
    pub(crate) fn remove_pool_remains(&self, name: &str) {
        if !is_pool_name(name) {
            return;
        }
        self.remove_pool_cgroup(name);
        let _ = pool_netns(name).remove();
    }

    /// Kills and removes the pool VMs an earlier daemon left (they have no
    /// record); returns how many there were. Runs before any pool fills.
    pub(crate) fn sweep_pool(&self) -> usize {
        let dir = pool_dir(&self.config.state_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(hex) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let name = format!("pool-{hex}");
            if let Ok(endpoints) = self.hypervisor.find(&name, &path) {
                kill_and_wait(endpoints.pid);
            }
            self.remove_pool_remains(&name);
            let _ = std::fs::remove_dir_all(&path);
            swept += 1;
        }
        if swept > 0 {
            tracing::info!(swept, "discarded the pool VMs of an earlier daemon");
        }
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_are_what_the_pool_makes() {
        assert!(is_pool_name("pool-0123456789abcdef"));
        for bad in [
            "",
            "pool-",
            "pool-0123",
            "pool-0123456789abcdeg",
            "../../etc",
            "x-0123456789abcdef",
        ] {
            assert!(!is_pool_name(bad), "{bad}");
        }
    }
}
