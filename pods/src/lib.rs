//! Pod sandboxes and their containers: records, their state machine,
//! persistence, routing of each pod to the runtime of its handler, and the
//! routing of streaming sessions.
//!
//! It owns the policy of which runtime runs a pod ([`Registry::route`]) and
//! every state check before a runtime is called. It must not know how a
//! runtime works (VMs, agents, namespaces, CNI) nor the CRI wire format;
//! beyond its record store it does no I/O of its own.

mod container_errors;
mod container_update;
pub mod containers;
pub mod events;
pub mod filter;
mod pod_containers;
pub mod registry;
mod sandboxes;
pub mod service;
mod sizing;
pub mod stats;
pub mod store;
pub mod streams;
mod table;
mod validate;

pub use container_errors::{
    ContainerStatusError, CreateContainerError, ExecSyncError, RemoveContainerError,
    ReopenLogError, StartContainerError, StopContainerError,
};
pub use container_update::UpdateResourcesError;
pub use events::{ContainerEvent, ContainerEventKind};
pub use filter::{ContainerFilter, SandboxFilter};
pub use registry::{HostPolicy, OS_CONTAINER_ANNOTATION, Registry, RouteError};
pub use runtime_api::container;
pub use runtime_api::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ContainerState, ContainerUsage,
    DnsConfig, ExecOutput, LayerUsage, PodMetadata, PodResources, PodRuntime, PodUsage,
    PortMapping, RuntimeError, RuntimeErrorKind, RuntimeEvent, SandboxConfig, SandboxRecord,
    SandboxState, StartedSandbox, report,
};
pub use sandboxes::{RemovePodError, RunPodError, StatusPodError, StopPodError};
pub use service::PodService;
pub use sizing::UpdatePodResourcesError;
pub use stats::{ContainerStats, PodStats, StatsError};
pub use store::{Store, StoreError};
pub use streams::{StreamRouter, TargetError};
pub use table::{new_id, now_ns};
pub use validate::absolute_log_path;
