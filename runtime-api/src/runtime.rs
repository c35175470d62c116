//! The runtime seam, split by concern: the sandbox side, the container side
//! and the container streams. A [`PodRuntime`] is all three; the pod service
//! picks one per pod by its handler and calls nothing else.

use std::collections::HashSet;
use std::fmt::Debug;
use std::time::Duration;

use crate::container::{
    ContainerConfig, ContainerRecord, ContainerResources, ContainerRuntimeStatus, ExecOutput,
};
use crate::error::RuntimeError;
use crate::sandbox::{PodResources, SandboxConfig, SandboxRecord};
use crate::stats::{LayerUsage, PodUsage};
use crate::streams::ContainerStreams;

/// The sandbox side of a runtime: a pod's isolation boundary (a VM, or
/// host namespaces) from start to removal, and across daemon restarts.
#[async_trait::async_trait]
pub trait SandboxRuntime: Send + Sync + Debug {
    /// Short name of the kind of runtime (e.g. `vm`), for logs and verbose status.
    fn name(&self) -> &'static str;

    /// Whether pods of this runtime may have a user namespace of their own
    /// (mode POD), with ID-mapped mounts of their image and volumes.
    fn user_namespaces(&self) -> bool {
        false
    }

    /// Whether the runtime can start pods now; `Err` says why not.
    async fn ready(&self) -> Result<(), NotReady>;

    /// Whether pods can get a network now; `Err` says why not.
    async fn network_ready(&self) -> Result<(), NotReady>;

    /// Does in the background what the first pod would otherwise wait for
    /// (e.g. probing the accelerator). Does nothing by default.
    async fn warm_up(&self) {}

    /// Stops what `warm_up` keeps going and releases what it holds that no
    /// pod owns; the daemon is stopping.
    async fn cool_down(&self) {}

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

    /// Makes the running sandbox fit `need`, the pod's resources (the
    /// kubelet's pod-level figures or the sum of its containers' limits):
    /// it grows when it is too small, and shrinks toward `need` (never
    /// below its start size) only when `shrink` is set. A runtime whose
    /// sandboxes take what they need from the node has nothing to do.
    async fn resize_sandbox(
        &self,
        sandbox: &SandboxRecord,
        need: &PodResources,
        shrink: bool,
    ) -> Result<(), RuntimeError>;

    /// Re-attaches to a sandbox after a daemon restart; `Ok(true)` if it still runs.
    async fn adopt_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<bool, RuntimeError>;

    /// Deletes what sandboxes without a record left behind (a daemon killed
    /// in the middle of a start); `known` are the ids that have records.
    /// Returns how many were swept.
    fn sweep_orphans(&self, known: &HashSet<String>) -> usize;

    /// Extra facts for verbose status.
    async fn sandbox_info(&self, id: &str, state: &serde_json::Value) -> serde_json::Value;
}

/// The container side of a runtime: containers inside a running sandbox.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + Debug {
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

    /// Sets the container's resource limits to `resources`; on failure the
    /// old limits stay.
    async fn update_container_resources(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        resources: &ContainerResources,
    ) -> Result<(), RuntimeError>;

    /// What the pod uses now, with the usage of each of `containers` (its
    /// own, running or not), in that order. One call measures them all.
    async fn pod_stats(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<PodUsage, RuntimeError>;

    /// Where this runtime keeps containers' writable layers, and what they
    /// use in all (possibly a few seconds old).
    async fn writable_layers(&self) -> Result<LayerUsage, RuntimeError>;

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

/// Everything a pod needs from its runtime.
pub trait PodRuntime: SandboxRuntime + ContainerRuntime + ContainerStreams {}

impl<T: SandboxRuntime + ContainerRuntime + ContainerStreams> PodRuntime for T {}

/// Why a runtime cannot start pods (or give them a network) now, as the CRI
/// `RuntimeCondition` carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NotReady {
    /// A short CamelCase reason, e.g. `HypervisorNotReady`.
    pub reason: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl NotReady {
    /// Not ready for `reason`: `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
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
