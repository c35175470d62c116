//! The seam between pod bookkeeping and whatever actually runs a pod.

use std::fmt::Debug;

use std::time::Duration;

use crate::container::{ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ExecOutput};
use crate::model::{SandboxConfig, SandboxRecord};

/// Something that can run pod sandboxes (a VM per pod, or host namespaces).
#[async_trait::async_trait]
pub trait PodRuntime: Send + Sync + Debug {
    /// Short name, stored in each record.
    fn name(&self) -> &'static str;

    /// Whether the runtime can start pods now; `Err` carries the reason.
    async fn ready(&self) -> Result<(), String>;

    /// Whether pods can get a network now; `Err` carries the reason.
    async fn network_ready(&self) -> Result<(), String>;

    /// Starts the sandbox; returns the runtime-private state to persist and the pod's IPs.
    async fn start_sandbox(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError>;

    /// Stops the sandbox; succeeds if it is already stopped.
    async fn stop_sandbox(&self, id: &str, state: &serde_json::Value) -> Result<(), RuntimeError>;

    /// Releases everything the sandbox left behind; succeeds if nothing is left.
    async fn remove_sandbox(&self, id: &str, state: &serde_json::Value)
    -> Result<(), RuntimeError>;

    /// Re-attaches to a sandbox after a daemon restart; `Ok(true)` if it still runs.
    async fn adopt_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<bool, RuntimeError>;

    /// Extra facts for verbose status.
    async fn sandbox_info(&self, id: &str, state: &serde_json::Value) -> serde_json::Value;

    /// Creates container `id` in the running `sandbox` (not started); returns
    /// the runtime-private state to persist. `log_path` is absolute or empty.
    async fn create_container(
        &self,
        sandbox: &SandboxRecord,
        id: &str,
        config: &ContainerConfig,
        log_path: &str,
    ) -> Result<serde_json::Value, RuntimeError>;

    /// Starts a created container.
    async fn start_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError>;

    /// Stops a container: its stop signal, then SIGKILL after `timeout`
    /// (zero: at once). Succeeds if it is not running.
    async fn stop_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError>;

    /// Removes a container and its writable layer; stops it first if needed.
    /// Succeeds if nothing is left.
    async fn remove_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError>;

    /// The container's current process status.
    async fn container_status(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError>;

    /// Runs `cmd` in the container and collects its output; on `timeout` the
    /// process is killed and the call fails with `DeadlineExceeded`.
    async fn exec_sync(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Reopens the container's log file (after the kubelet rotated it).
    async fn reopen_container_log(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError>;

    /// Extra facts for verbose container status.
    async fn container_info(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> serde_json::Value;
}

/// A sandbox the runtime started.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedSandbox {
    /// Runtime-private state to persist.
    pub state: serde_json::Value,
    /// The pod's IP addresses, the primary first.
    pub ips: Vec<String>,
}

/// Something a runtime reports without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The sandbox stopped on its own (e.g. its VM died).
    SandboxExited {
        /// Sandbox id.
        id: String,
        /// What happened.
        reason: String,
    },
    /// A container's process ended.
    ContainerExited {
        /// Sandbox id.
        sandbox_id: String,
        /// Container id.
        id: String,
        /// Its final status.
        status: ContainerRuntimeStatus,
    },
}

/// A runtime operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// Broad class, for mapping to gRPC codes.
    pub kind: RuntimeErrorKind,
    /// What went wrong.
    pub message: String,
}

impl RuntimeError {
    /// An error of `kind` with `message`.
    pub fn new(kind: RuntimeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Broad classes of runtime errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeErrorKind {
    /// The request cannot be satisfied as given.
    InvalidArgument,
    /// The host lacks something the runtime needs (assets, devices).
    Unavailable,
    /// The operation did not finish in time.
    DeadlineExceeded,
    /// The object does not exist (any more) in the runtime.
    NotFound,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// Anything else.
    Internal,
}
