//! Containers handled a pod at a time: exits and pod stops reported by the
//! runtime, stopping and removing every container with its pod, and loading
//! them back after a restart.

use std::time::Duration;

use runtime_api::{ContainerRuntimeStatus, SandboxRecord, SandboxState, report};

use crate::container_errors::RemoveContainerError;
use crate::containers::{is_live, name_key, pod_stopped_status};
use crate::service::PodService;
use crate::store::StoreError;
use crate::table::{ContainerSlot, lock};

impl PodService {
    /// Records a container's exit reported by the runtime.
    pub(crate) fn container_exited(
        &self,
        sandbox_id: &str,
        id: &str,
        status: ContainerRuntimeStatus,
    ) {
        let Some(slot) = lock(&self.containers).get(id).cloned() else {
            tracing::debug!(%id, "exit of an unknown container");
            return;
        };
        if slot.sandbox_id != sandbox_id {
            tracing::warn!(%id, %sandbox_id, "exit event names the wrong sandbox; ignored");
            return;
        }
        tracing::info!(%id, exit_code = status.exit_code, reason = %status.reason, "container exited");
        if let Err(e) = self.apply_status(&slot, status, None) {
            tracing::error!(%id, "cannot persist container exit: {e}");
        }
    }

    /// Marks every live container of `sandbox` exited because the pod stopped.
    pub(crate) fn containers_pod_stopped(&self, sandbox: &SandboxRecord, why: &str) {
        for (id, slot) in self.containers_of(&sandbox.id) {
            let Some(record) = slot.get() else { continue };
            if is_live(record.status.state)
                && let Err(e) = self.apply_status(
                    &slot,
                    pod_stopped_status(&record.status, why),
                    Some(sandbox),
                )
            {
                tracing::error!(%id, "cannot persist container status: {e}");
            }
        }
    }

    /// Stops every running container of the sandbox at once (the caller
    /// holds the sandbox's lock); failures are logged, as the sandbox's own
    /// stop ends them anyway.
    pub(crate) async fn stop_pod_containers(&self, sandbox: &SandboxRecord) {
        let ready = sandbox.state == SandboxState::Ready;
        for (id, slot) in self.containers_of(&sandbox.id) {
            let _op = slot.op.lock().await;
            let sandbox = ready.then_some(sandbox);
            if let Err(e) = self.stop_locked(&id, &slot, sandbox, Duration::ZERO).await {
                tracing::warn!(%id, "cannot stop container with its pod: {}", report(&e));
            }
        }
    }

    /// Removes every container of the sandbox and its record (the caller
    /// holds the sandbox's lock and has stopped the sandbox).
    pub(crate) async fn remove_pod_containers(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<(), RemoveContainerError> {
        for (id, slot) in self.containers_of(&sandbox.id) {
            let _op = slot.op.lock().await;
            self.remove_locked(&id, &slot, Some(sandbox)).await?;
        }
        Ok(())
    }

    /// Loads stored containers and reconciles the live ones with the runtime;
    /// call after the sandboxes are recovered. Returns how many were loaded.
    pub(crate) async fn recover_containers(&self) -> Result<usize, StoreError> {
        let records = self.store.load_containers()?;
        let count = records.len();
        let mut slots = Vec::new();
        for record in records {
            let id = record.id.clone();
            let key = name_key(&record.sandbox_id, &record.config);
            lock(&self.container_names).insert(key, id.clone());
            let slot = ContainerSlot::new(record);
            lock(&self.containers).insert(id.clone(), slot.clone());
            slots.push((id, slot));
        }
        for (id, slot) in slots {
            let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
            let _op = slot.op.lock().await;
            self.refresh(&id, &slot, sandbox.as_ref()).await;
        }
        Ok(count)
    }
}
