//! What a pod needs, for its sandbox to fit it: per figure, the larger of
//! the kubelet's pod-level resources and the sum of its live containers'
//! limits; and UpdatePodSandboxResources, the kubelet's pod-level resize.

use runtime_api::container::ContainerResources;
use runtime_api::{PodResources, RuntimeError, SandboxRecord, SandboxState};

use crate::containers::is_live;
use crate::service::PodService;
use crate::store::StoreError;
use crate::table::Lookup;

/// UpdatePodSandboxResources failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdatePodResourcesError {
    /// The request is invalid
    #[error("invalid pod resources: {0}")]
    Invalid(String),
    /// No such pod sandbox
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several pod sandboxes
    #[error("pod sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime could not fit the sandbox to the new figures
    #[error("cannot resize pod sandbox {id}: {source}")]
    Runtime {
        /// Pod sandbox id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The new figures could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PodService {
    /// The resources pod `sandbox` needs: its live containers' limits, with
    /// those of container `change.0` replaced by (or, for a new container,
    /// added as) `change.1`; at least its pod-level figures.
    pub(crate) fn pod_need(
        &self,
        sandbox: &SandboxRecord,
        change: Option<(&str, &ContainerResources)>,
    ) -> PodResources {
        let mut limits: Vec<ContainerResources> = self
            .containers_of(&sandbox.id)
            .into_iter()
            .filter(|(id, _)| change.is_none_or(|(changed, _)| changed != id))
            .filter_map(|(_, slot)| slot.get())
            .filter(|r| is_live(r.status.state))
            .map(|r| r.config.resources)
            .collect();
        if let Some((_, resources)) = change {
            limits.push(resources.clone());
        }
        let sum = PodResources::sum(&limits);
        match &sandbox.config.resources {
            Some(pod) => sum.max(pod),
            None => sum,
        }
    }

    /// Stores the pod-level `resources` and `overhead` the kubelet sends
    /// (each only when given) and fits the running sandbox to them; on
    /// failure the old figures stay.
    pub async fn update_pod_resources(
        &self,
        id: &str,
        resources: Option<PodResources>,
        overhead: Option<PodResources>,
    ) -> Result<(), UpdatePodResourcesError> {
        for (field, r) in [("resources", &resources), ("overhead", &overhead)] {
            if let Some(r) = r
                && [
                    r.cpu_period,
                    r.cpu_quota,
                    r.cpu_shares,
                    r.memory_limit_bytes,
                ]
                .iter()
                .any(|v| *v < -1)
            {
                return Err(UpdatePodResourcesError::Invalid(format!(
                    "{field} has a negative figure: {r:?}"
                )));
            }
        }
        let (id, slot) = match self.lookup(id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(UpdatePodResourcesError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(UpdatePodResourcesError::Ambiguous(id.into())),
        };
        let mut guard = slot.lock().await;
        let record = guard
            .as_mut()
            .ok_or_else(|| UpdatePodResourcesError::NotFound(id.clone()))?;
        let mut updated = record.clone();
        if resources.is_some() {
            updated.config.resources = resources;
        }
        if overhead.is_some() {
            updated.config.overhead = overhead;
        }
        if updated.state == SandboxState::Ready {
            let runtime =
                self.runtime_of(&updated)
                    .map_err(|source| UpdatePodResourcesError::Runtime {
                        id: id.clone(),
                        source,
                    })?;
            let need = self.pod_need(&updated, None);
            runtime
                .resize_sandbox(&updated, &need, true)
                .await
                .map_err(|source| UpdatePodResourcesError::Runtime {
                    id: id.clone(),
                    source,
                })?;
        }
        self.store.save(&updated)?;
        *record = updated;
        Ok(())
    }
}
