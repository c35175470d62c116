//! After a daemon restart: re-attaching to pod VMs from their records, and
//! sweeping what pods without a record left in the state directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agent_api::{AgentClient, UnixTransport};
use network::PodNetworks;
use runtime_api::RuntimeError;
use tokio::time::Instant;

use crate::config::VmState;
use crate::runtime::VmRuntime;

impl VmRuntime {
    /// Re-attaches to the VM of sandbox `id`; `Ok(false)` if it is gone.
    pub(crate) async fn adopt(&self, id: &str, vm_state: &VmState) -> Result<bool, RuntimeError> {
        let endpoints =
            match self
                .hypervisor
                .adopt(vm_state.vmm_id(id), &vm_state.dir, vm_state.pid)
            {
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
        self.track(id, endpoints, agent, vm_state.virtiofsd_pid)?;
        Ok(true)
    }

    /// Kills and deletes what pods without a record left in the state
    /// directory (a daemon killed in the middle of RunPodSandbox): their VM
    /// process, files and network namespace. Returns how many were swept.
    pub(crate) fn sweep(&self, known: &HashSet<String>) -> usize {
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
            // A VM of the warm pool was launched under its pool id.
            let launched_as = std::fs::read_to_string(entry.path().join(crate::pool::LAUNCHED_AS))
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| crate::pool::is_pool_name(n));
            let found = self
                .hypervisor
                .find(launched_as.as_deref().unwrap_or(&id), &entry.path());
            let pid = found.as_ref().ok().map(|e| e.pid);
            if let Ok(endpoints) = found {
                crate::pool::kill_and_wait(endpoints.pid);
            }
            let _ = PodNetworks::netns_for(&id).remove();
            // A daemon that died while it gave a pool VM to this pod.
            if let Some(name) = &launched_as {
                self.remove_pool_remains(name);
            }
            let _ = std::fs::remove_dir_all(entry.path());
            tracing::warn!(%id, ?pid, "swept the remains of a pod without a record");
            swept += 1;
        }
        swept
    }
}
