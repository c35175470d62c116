//! The container side of the VM runtime: the host prepares each
//! container's files in the pod's shared directory, and the agent creates
//! and runs it in the guest.

use std::time::Duration;

use agent_api::calls;
use runtime_api::{
    ContainerConfig, ContainerRecord, ContainerRuntime, ContainerRuntimeStatus, ExecOutput,
    RuntimeError, RuntimeErrorKind, SandboxRecord,
};

use crate::config::VmState;
use crate::containers;
use crate::disks;
use crate::errors::{agent_failure, internal};
use crate::runtime::{AGENT_CALL, VmRuntime};

/// Deadline for container requests that fork in the guest.
const CONTAINER_CALL: Duration = Duration::from_secs(30);

#[async_trait::async_trait]
impl ContainerRuntime for VmRuntime {
    async fn create_container(
        &self,
        sandbox: &SandboxRecord,
        id: &str,
        config: &ContainerConfig,
        log_path: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        let vm = self.vm_of(sandbox)?;
        let agent = vm.agent.clone();
        let state = VmState::parse(&sandbox.runtime_state)?;
        let wanted = disks::wanted(config, &sandbox.config)?;
        let granted = self.attach_disks(&vm, &state, id, &wanted).await?;
        let undo_disks = async || {
            if let Err(undo) = self
                .release_disks(&sandbox.id, &state, id, &granted.serials)
                .await
            {
                tracing::warn!(
                    container = id,
                    "release the disks after a failed create: {undo}"
                );
            }
        };
        let prepared = containers::prepare(
            &state.shared_dir(),
            &self.config.containers_dir,
            &sandbox.config,
            id,
            config,
            log_path,
            &granted.sources,
        );
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                undo_disks().await;
                return Err(e);
            }
        };
        prepared.files.disks = granted.serials.clone();
        tracing::debug!(container = id, spec = %prepared.spec, "OCI spec");
        let request = calls::CreateContainer {
            id: id.to_owned(),
            spec: prepared.spec,
            log_path: prepared.guest_log,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
            disks: granted.guest.clone(),
        };
        if let Err(e) = agent.request(request, CONTAINER_CALL).await {
            if let Err(undo) = containers::remove_files(&prepared.files) {
                tracing::warn!(container = id, "cleanup after a failed create: {undo}");
            }
            undo_disks().await;
            return Err(agent_failure("create the container", e));
        }
        serde_json::to_value(&prepared.files).map_err(|e| internal("encode the container state", e))
    }

    async fn start_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = calls::StartContainer {
            id: container.id.clone(),
        };
        let info = agent
            .request(request, CONTAINER_CALL)
            .await
            .map_err(|e| agent_failure("start the container", e))?;
        Ok(containers::runtime_status(&info))
    }

    async fn stop_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let signal = container::signals::stop_signal(container.config.effective_stop_signal())
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::InvalidArgument, e.to_string()))?;
        let request = calls::StopContainer {
            id: container.id.clone(),
            signal,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let info = agent
            .request(request, timeout.saturating_add(CONTAINER_CALL))
            .await
            .map_err(|e| agent_failure("stop the container", e))?;
        Ok(containers::runtime_status(&info))
    }

    async fn remove_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        // A pod whose VM is gone has no container left to remove in the guest.
        if let Ok(agent) = self.agent_of(sandbox) {
            let request = calls::RemoveContainer {
                id: container.id.clone(),
            };
            agent
                .request(request, CONTAINER_CALL)
                .await
                .map_err(|e| agent_failure("remove the container", e))?;
        }
        if container.runtime_state.is_null() {
            return Ok(());
        }
        let files: containers::ContainerFiles =
            serde_json::from_value(container.runtime_state.clone())
                .map_err(|e| internal("unreadable container state", e))?;
        containers::remove_files(&files)?;
        if files.disks.is_empty() {
            return Ok(());
        }
        let state = VmState::parse(&sandbox.runtime_state)?;
        self.release_disks(&sandbox.id, &state, &container.id, &files.disks)
            .await
    }

    async fn container_status(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = calls::ContainerStatus {
            id: container.id.clone(),
        };
        let info = agent
            .request(request, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("read the container's status", e))?;
        Ok(containers::runtime_status(&info))
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
        let request = calls::ExecSync {
            id: container.id.clone(),
            args: cmd.to_vec(),
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        // Without a timeout the command may run as long as it likes.
        let limit = timeout.map_or(Duration::from_secs(365 * 24 * 3600), |t| {
            t.saturating_add(CONTAINER_CALL)
        });
        let out = agent
            .request(request, limit)
            .await
            .map_err(|e| agent_failure("exec in the container", e))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| {
            b64.decode(s)
                .map_err(|e| internal("bad exec output from the agent", e))
        };
        Ok(ExecOutput {
            stdout: decode(&out.stdout)?,
            stderr: decode(&out.stderr)?,
            exit_code: out.exit_code,
        })
    }

    async fn update_container_resources(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        resources: &runtime_api::container::ContainerResources,
    ) -> Result<(), RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = calls::UpdateContainer {
            id: container.id.clone(),
            resources: resources.clone(),
        };
        agent
            .request(request, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("update the container's limits", e))
    }

    async fn pod_stats(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<runtime_api::PodUsage, RuntimeError> {
        self.measure_pod(sandbox, containers).await
    }

    async fn writable_layers(&self) -> Result<runtime_api::LayerUsage, RuntimeError> {
        runtime_api::stats::measure_layers(self.layers.clone()).await
    }

    async fn reopen_container_log(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        let agent = self.agent_of(sandbox)?;
        let request = calls::ReopenLog {
            id: container.id.clone(),
        };
        agent
            .request(request, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("reopen the container log", e))
    }

    async fn container_info(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> serde_json::Value {
        serde_json::json!({ "runtime": "vm", "files": container.runtime_state })
    }
}
