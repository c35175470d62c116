//! Stopping and removing a pod VM: a graceful guest shutdown first, then the
//! VMM, its virtiofsd, the pod network; removal also detaches what is still
//! mounted in the pod's directory and deletes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_api::calls;
use hypervisor::Process;
use runtime_api::RuntimeError;

use crate::config::VmState;
use crate::errors::internal;
use crate::runtime::VmRuntime;

/// How long the guest gets to power off after the agent's shutdown.
const POWEROFF_GRACE: Duration = Duration::from_secs(3);
/// How long QEMU gets to quit before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);

impl VmRuntime {
    /// Stops the VM of sandbox `id` and releases its network; succeeds if
    /// it is already stopped.
    pub(crate) async fn stop_vm(&self, id: &str, state: &VmState) -> Result<(), RuntimeError> {
        let (endpoints, agent) = match self.vm(id) {
            Some(vm) => {
                vm.stopping.store(true, Ordering::SeqCst);
                (vm.endpoints.clone(), Some(vm.agent.clone()))
            }
            None => (self.hypervisor.endpoints(&state.dir, state.pid), None),
        };
        if let (Some(agent), Ok(process)) = (agent, Process::open(endpoints.pid))
            && process.is_running()
        {
            // Graceful first: the guest syncs and powers off.
            let asked = agent.request(calls::Shutdown, Duration::from_secs(2)).await;
            if asked.is_ok() {
                let _ = tokio::time::timeout(POWEROFF_GRACE, process.exited()).await;
            }
        }
        self.hypervisor
            .stop(state.vmm_id(id), &endpoints, QUIT_GRACE)
            .await
            .map_err(|e| internal("stop the VM", e))?;
        self.forget(id);
        if let Some(pid) = state.virtiofsd_pid {
            kill_virtiofsd(pid).await;
        }
        if let Some(cgroup) = &state.cgroup {
            self.remove_vm_cgroup(cgroup);
        }
        if let Some(network) = &state.network {
            // A runtime without networking still deletes what a pod got
            // when it had one, with the default plugins.
            let fallback;
            let networks = match &self.config.networks {
                Some(n) => n,
                None => {
                    fallback = network::PodNetworks::new(network::Cni::new(
                        PathBuf::new(),
                        network::cni::default_bin_dirs(),
                    ));
                    &fallback
                }
            };
            networks
                .remove(&network.pod)
                .await
                .map_err(|e| internal("pod network teardown", e))?;
        }
        Ok(())
    }

    /// Stops the VM, then deletes the pod's directory; succeeds if nothing
    /// is left.
    pub(crate) async fn remove_vm(&self, id: &str, state: &VmState) -> Result<(), RuntimeError> {
        self.stop_vm(id, state).await?;
        detach_mounts_under(&state.dir);
        match std::fs::remove_dir_all(&state.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal(format!("remove {}", state.dir.display()), e)),
        }
    }
}

/// Kills a pod's virtiofsd (it normally exits with QEMU) and reaps it.
pub(crate) async fn kill_virtiofsd(pid: i32) {
    // Usually it has exited with QEMU: reap it by pid (a zombie's command
    // line is empty, so the check below cannot recognise it).
    hypervisor::process::reap(pid);
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
