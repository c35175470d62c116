//! UpdateContainerResources: new limits for a created or running
//! container, applied by its runtime first and stored only when they took.

use runtime_api::container::ContainerResources;
use runtime_api::{ContainerState, RuntimeError, SandboxState};

use crate::service::PodService;
use crate::store::StoreError;
use crate::table::{Lookup, lock, lookup_in};

/// UpdateContainerResources failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateResourcesError {
    /// The request is invalid
    #[error("invalid resources: {0}")]
    Invalid(String),
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a created or running container in a ready pod can be updated
    #[error("container {id} is {state:?} (or its pod is not ready); its resources cannot change")]
    NotLive {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The runtime could not apply the limits
    #[error("cannot update the resources of container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The new limits could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn validate(r: &ContainerResources) -> Result<(), UpdateResourcesError> {
    for (field, value) in [
        ("cpu_period", r.cpu_period),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_bytes),
    ] {
        if value < 0 {
            return Err(UpdateResourcesError::Invalid(format!(
                "{field} {value} must not be negative"
            )));
        }
    }
    if r.cpu_quota < -1 {
        return Err(UpdateResourcesError::Invalid(format!(
            "cpu_quota {} must be -1 (unlimited), 0 (unchanged) or positive",
            r.cpu_quota
        )));
    }
    if r.memory_swap_limit_bytes < -1 {
        return Err(UpdateResourcesError::Invalid(format!(
            "memory_swap_limit_in_bytes {} must be -1 (unlimited), 0 (unchanged) or positive",
            r.memory_swap_limit_bytes
        )));
    }
    if r.cpu_period != 0 && !(1_000..=1_000_000).contains(&r.cpu_period) {
        return Err(UpdateResourcesError::Invalid(format!(
            "cpu_period {} must be between 1000 and 1000000 microseconds",
            r.cpu_period
        )));
    }
    Ok(())
}

impl PodService {
    /// Applies `resources` to container `id` and stores them in its record.
    pub async fn update_container_resources(
        &self,
        id: &str,
        resources: ContainerResources,
    ) -> Result<(), UpdateResourcesError> {
        validate(&resources)?;
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(UpdateResourcesError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(UpdateResourcesError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let _op = slot.op.lock().await;
        let record = slot
            .get()
            .ok_or_else(|| UpdateResourcesError::NotFound(id.clone()))?;
        let live = matches!(
            record.status.state,
            ContainerState::Created | ContainerState::Running
        );
        let sandbox = match sandbox {
            Some(s) if live && s.state == SandboxState::Ready => s,
            _ => {
                return Err(UpdateResourcesError::NotLive {
                    id,
                    state: record.status.state,
                });
            }
        };
        let runtime =
            self.runtime_of(&sandbox)
                .map_err(|source| UpdateResourcesError::Runtime {
                    id: id.clone(),
                    source,
                })?;
        let runtime_error = |source| UpdateResourcesError::Runtime {
            id: id.clone(),
            source,
        };
        // The limits in force after the update: unset fields keep theirs.
        let merged = record.config.resources.updated_by(&resources);
        let before = self.pod_need(&sandbox, None);
        let after = self.pod_need(&sandbox, Some((&id, &merged)));
        // The sandbox grows before the container may use more, and shrinks
        // only once the container uses less.
        runtime
            .resize_sandbox(&sandbox, &before.max(&after), false)
            .await
            .map_err(runtime_error)?;
        runtime
            .update_container_resources(&sandbox, &record, &merged)
            .await
            .map_err(runtime_error)?;
        {
            let mut guard = lock(&slot.record);
            if let Some(record) = guard.as_mut() {
                let before = std::mem::replace(&mut record.config.resources, merged);
                if let Err(e) = self.store.save_container(record) {
                    record.config.resources = before;
                    return Err(e.into());
                }
            }
        }
        if after != before.max(&after)
            && let Err(e) = runtime.resize_sandbox(&sandbox, &after, true).await
        {
            tracing::warn!(%id, sandbox = %sandbox.id, "the pod's sandbox keeps its size: {}", runtime_api::report(&e));
        }
        Ok(())
    }
}
