//! The sandbox side of the VM runtime: a pod sandbox is a VM.

use std::collections::HashSet;
use std::time::Duration;

use agent_api::calls;
use hypervisor::AccelMode;
use hypervisor::Process;
use runtime_api::{
    NotReady, PodResources, RuntimeError, SandboxConfig, SandboxRecord, SandboxRuntime,
    StartedSandbox,
};

use crate::config::VmState;
use crate::errors::internal;
use crate::runtime::VmRuntime;

#[async_trait::async_trait]
impl SandboxRuntime for VmRuntime {
    fn name(&self) -> &'static str {
        crate::runtime::NAME
    }

    fn user_namespaces(&self) -> bool {
        self.idmap.supported(&self.config.containers_dir)
    }

    async fn ready(&self) -> Result<(), NotReady> {
        for (what, path) in [
            ("guest kernel", &self.config.kernel),
            ("guest initramfs", &self.config.initrd),
        ] {
            if !path.exists() {
                return Err(NotReady::new(
                    "GuestAssetsMissing",
                    format!("{what} {} not found (run `make build`)", path.display()),
                ));
            }
        }
        self.hypervisor
            .check_host()
            .map_err(|e| NotReady::new("HypervisorNotReady", e.to_string()))?;
        if !self.config.virtiofsd.is_file() {
            return Err(NotReady::new(
                "VirtiofsdMissing",
                format!(
                    "virtiofsd {} not found (install qemu-system-common or set --virtiofsd)",
                    self.config.virtiofsd.display()
                ),
            ));
        }
        if self.config.accel == AccelMode::Kvm
            && let Err(why) = hypervisor::accel::kvm_device_usable()
        {
            return Err(NotReady::new(
                "AcceleratorUnavailable",
                format!("accel is forced to kvm, but KVM is unavailable: {why}"),
            ));
        }
        Ok(())
    }

    async fn network_ready(&self) -> Result<(), NotReady> {
        match &self.config.networks {
            Some(networks) => networks
                .ready()
                .map(drop)
                .map_err(|e| NotReady::new("NetworkPluginNotReady", e.to_string())),
            None => Err(NotReady::new(
                "NetworkDisabled",
                "pod networking is disabled",
            )),
        }
    }

    async fn warm_up(&self) {
        self.accel().await;
        self.keep_pool().await;
    }

    async fn cool_down(&self) {
        self.drain_pool().await;
    }

    async fn start_sandbox(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError> {
        let dir = self.config.state_dir.join(id);
        match self.boot(id, config, &dir).await {
            Ok(state) => {
                let ips = state
                    .network
                    .as_ref()
                    .map(|n| n.pod.result.pod_ips())
                    .unwrap_or_default();
                let state =
                    serde_json::to_value(state).map_err(|e| internal("encode the VM state", e))?;
                Ok(StartedSandbox { state, ips })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, id: &str, state: &serde_json::Value) -> Result<(), RuntimeError> {
        self.stop_vm(id, &VmState::parse(state)?).await
    }

    async fn remove_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        self.remove_vm(id, &VmState::parse(state)?).await
    }

    async fn resize_sandbox(
        &self,
        sandbox: &SandboxRecord,
        need: &PodResources,
        shrink: bool,
    ) -> Result<(), RuntimeError> {
        self.fit(sandbox, need, shrink).await
    }

    async fn adopt_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<bool, RuntimeError> {
        self.adopt(id, &VmState::parse(state)?).await
    }

    fn sweep_orphans(&self, known: &HashSet<String>) -> usize {
        self.sweep(known) + self.sweep_pool()
    }

    async fn sandbox_info(&self, id: &str, state: &serde_json::Value) -> serde_json::Value {
        let mut info = serde_json::json!({ "runtime": "vm", "vm": state });
        if let Ok(s) = VmState::parse(state) {
            let running = Process::open(s.pid).is_ok_and(|p| p.is_running());
            info["running"] = running.into();
            if running {
                info["qemu_rss_kib"] = hypervisor::process::rss_kib(s.pid).into();
            }
            // CNI CHECK: does the network still look as ADD left it?
            if let (true, Some(networks), Some(n)) = (running, &self.config.networks, &s.network) {
                let checked = networks.check(&n.pod).await;
                info["network_check"] = match checked {
                    Ok(true) => "ok".into(),
                    Ok(false) => "not supported by the CNI version".into(),
                    Err(e) => e.to_string().into(),
                };
            }
        }
        if let Some(vm) = self.vm(id)
            && let Ok(guest) = vm
                .agent
                .request(calls::GuestInfo, Duration::from_secs(3))
                .await
        {
            info["guest"] = serde_json::to_value(guest).unwrap_or_default();
        }
        info
    }
}
