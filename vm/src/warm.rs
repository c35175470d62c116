//! A pod gets a VM of the warm pool: the pool VM's directory becomes the
//! pod's, the pod's network is hot-plugged, the VM grows to the pod's size,
//! and the guest is set up as after a cold boot. What the pod sees is what a
//! cold-started VM of its size would show.

use std::path::Path;

use hypervisor::Resources;
use runtime_api::{RuntimeError, SandboxConfig};
use telemetry::StartPhase;
use tokio::time::Instant;

use crate::boot::{Undo, record_phase};
use crate::config::VmState;
use crate::errors::{agent_failure, internal};
use crate::pool::WarmVm;
use crate::runtime::{AGENT_CALL, VmRuntime};
use crate::sizing::VmSize;

impl VmRuntime {
    /// Gives the pool VM `warm` to pod `id`, whose directory is `dir`.
    pub(crate) async fn boot_warm(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
        warm: WarmVm,
        size: &VmSize,
        undo: &mut Undo,
    ) -> Result<VmState, RuntimeError> {
        let pool_netns = warm.netns.clone();
        let given = self.give_warm(id, config, dir, warm, size, undo).await;
        // QEMU keeps the pool VM's namespace, empty once its tap moved to
        // the pod's (or the VM is gone); the name goes either way.
        if let Some(ns) = pool_netns
            && let Err(e) = ns.remove()
        {
            tracing::warn!(%id, "removing a pool VM's namespace name: {e}");
        }
        given
    }

    async fn give_warm(
        &self,
        id: &str,
        config: &SandboxConfig,
        dir: &Path,
        warm: WarmVm,
        size: &VmSize,
        undo: &mut Undo,
    ) -> Result<VmState, RuntimeError> {
        let started = Instant::now();
        if let Err(e) = std::fs::rename(&warm.dir, dir) {
            self.discard(warm).await;
            return Err(internal("move a pool VM to its pod's directory", e));
        }
        let pid = warm.endpoints.pid;
        let endpoints = self.hypervisor.endpoints(dir, pid);
        warm.transport.retarget(&endpoints.agent_socket);
        undo.vm = Some((warm.name.clone(), endpoints.clone()));
        undo.virtiofsd = Some(warm.virtiofsd);
        undo.cgroup = warm.cgroup.clone();
        let netns = self.pod_netns(id, undo)?;
        let mut pids = vec![pid, warm.virtiofsd];
        pids.extend(crate::stats::children(warm.virtiofsd));
        let target: Resources = (*size).into();
        let cgroup = self.place_vm(id, config, &pids, &target)?;
        if let Some(pool) = &warm.cgroup {
            self.remove_vm_cgroup(pool);
        }
        undo.cgroup = cgroup.clone();
        let attach = async {
            match &netns {
                Some(ns) => {
                    let booted_with = warm.netns.as_ref().filter(|_| warm.boot_mac.is_some());
                    self.attach_network(id, config, ns, &endpoints, booted_with)
                        .await
                }
                None => (None, Ok(())),
            }
        };
        let grow = async {
            if *size == warm.size {
                return Ok(());
            }
            let before = warm
                .agent
                .request(agent_api::calls::GuestInfo, AGENT_CALL)
                .await
                .map_err(|e| agent_failure("read the guest's size", e))?;
            self.apply_size(
                &endpoints,
                &warm.agent,
                &warm.size.into(),
                before.mem_total_kib,
                &target,
            )
            .await
            .map(drop)
        };
        let ((pod_net, plugged), grown) = tokio::join!(attach, grow);
        undo.network = pod_net.clone();
        plugged?;
        grown?;
        let ready = Instant::now();
        self.set_up_guest(
            &warm.agent,
            dir,
            config,
            pod_net.as_ref(),
            warm.boot_mac.as_deref(),
        )
        .await?;
        record_phase(StartPhase::AgentReady, ready.elapsed());
        tracing::info!(%id, pid, vm = %warm.name, vcpus = size.vcpus, memory_mib = size.memory_mib,
            took = ?started.elapsed(), "pod VM ready (from the warm pool)");
        let state = VmState {
            pid,
            dir: dir.to_path_buf(),
            accel: warm.accel,
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            max_vcpus: warm.max.vcpus,
            max_memory_mib: warm.max.memory_mib,
            boot_id: warm.boot_id.clone(),
            network: pod_net,
            virtiofsd_pid: Some(warm.virtiofsd),
            cgroup,
            launched_as: Some(warm.name.clone()),
        };
        self.track(id, endpoints, warm.agent.clone(), Some(warm.virtiofsd))?;
        Ok(state)
    }
}
