//! The stream router: the streaming server's sessions name a container or a
//! pod; the router finds its records, checks their state, and hands the
//! session to the runtime of the pod's handler.

use std::sync::Arc;

use async_trait::async_trait;
use runtime_api::streams::{AttachRequest, Duplex, ExecRequest, StreamIo};
use runtime_api::{
    ContainerRecord, ContainerState, SandboxRecord, SandboxState, SessionError, StreamingRuntime,
};

use crate::service::PodService;
use crate::table::{Lookup, lookup_in};

/// A streaming session's target could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No such container
    #[error("container {0:?} not found")]
    ContainerNotFound(String),
    /// The container id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    ContainerAmbiguous(String),
    /// The container does not run
    #[error("container {id} is not running ({state:?})")]
    ContainerNotRunning {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// No such sandbox
    #[error("pod sandbox {0:?} not found")]
    SandboxNotFound(String),
    /// The sandbox id prefix matches several sandboxes
    #[error("pod sandbox id prefix {0:?} is ambiguous")]
    SandboxAmbiguous(String),
    /// The sandbox is not ready
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
}

impl PodService {
    /// The record of running container `id` (an id or unique prefix).
    pub fn running_container(&self, id: &str) -> Result<ContainerRecord, TargetError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(TargetError::ContainerNotFound(id.into())),
            Lookup::Ambiguous => return Err(TargetError::ContainerAmbiguous(id.into())),
        };
        let record = slot.get().ok_or(TargetError::ContainerNotFound(id))?;
        if record.status.state != ContainerState::Running {
            return Err(TargetError::ContainerNotRunning {
                id: record.id,
                state: record.status.state,
            });
        }
        Ok(record)
    }

    /// The record of ready sandbox `id` (an id or unique prefix).
    pub async fn ready_sandbox(&self, id: &str) -> Result<SandboxRecord, TargetError> {
        let slot = match self.lookup(id) {
            Lookup::Found(_, slot) => slot,
            Lookup::Missing => return Err(TargetError::SandboxNotFound(id.into())),
            Lookup::Ambiguous => return Err(TargetError::SandboxAmbiguous(id.into())),
        };
        let record = slot
            .lock()
            .await
            .clone()
            .ok_or_else(|| TargetError::SandboxNotFound(id.into()))?;
        if record.state != SandboxState::Ready {
            return Err(TargetError::SandboxNotReady(record.id));
        }
        Ok(record)
    }

    /// The router that serves the streaming server's sessions from this service.
    pub fn stream_router(self: &Arc<Self>) -> StreamRouter {
        StreamRouter { pods: self.clone() }
    }

    /// A running container and its ready sandbox.
    async fn stream_target(
        &self,
        container_id: &str,
    ) -> Result<(SandboxRecord, ContainerRecord), SessionError> {
        let container = self.running_container(container_id).map_err(not_found)?;
        let sandbox = self
            .ready_sandbox(&container.sandbox_id)
            .await
            .map_err(not_found)?;
        Ok((sandbox, container))
    }
}

fn not_found(e: TargetError) -> SessionError {
    SessionError::NotFound(e.to_string())
}

fn failed(e: runtime_api::RuntimeError) -> SessionError {
    SessionError::Failed(runtime_api::report(&e))
}

/// Serves streaming sessions through the pod service's records and runtimes.
#[derive(Debug, Clone)]
pub struct StreamRouter {
    pods: Arc<PodService>,
}

#[async_trait]
impl StreamingRuntime for StreamRouter {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, SessionError> {
        let (sandbox, container) = self.pods.stream_target(&req.container_id).await?;
        let runtime = self.pods.runtime_of(&sandbox).map_err(failed)?;
        runtime.exec(&sandbox, &container, req, io).await
    }

    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), SessionError> {
        let (sandbox, container) = self.pods.stream_target(&req.container_id).await?;
        let runtime = self.pods.runtime_of(&sandbox).map_err(failed)?;
        runtime.attach(&sandbox, &container, req, io).await
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        let sandbox = self
            .pods
            .ready_sandbox(pod_sandbox_id)
            .await
            .map_err(not_found)?;
        let runtime = self.pods.runtime_of(&sandbox).map_err(failed)?;
        runtime.port_forward(&sandbox, port).await
    }
}
