//! Pod sandboxes and their containers: records, their state machine, persistence, and routing of
//! each pod to a [`PodRuntime`]. This crate owns no I/O details of its own
//! beyond its record store.

pub mod container;
pub mod container_service;
pub mod model;
pub mod runtime;
pub mod service;
pub mod store;

pub use container::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerRuntimeStatus, ContainerState,
    ExecOutput,
};
pub use container_service::{
    ContainerStatusError, CreateContainerError, ExecSyncError, RemoveContainerError,
    ReopenLogError, StartContainerError, StopContainerError,
};
pub use model::{
    DnsConfig, PodMetadata, PodResources, PortMapping, SandboxConfig, SandboxFilter, SandboxRecord,
    SandboxState,
};
pub use runtime::{PodRuntime, RuntimeError, RuntimeErrorKind, RuntimeEvent, StartedSandbox};
pub use service::{PodService, RemovePodError, RunPodError, StatusPodError, StopPodError};
pub use store::{Store, StoreError};
