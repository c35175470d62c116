//! The seam between the pod service and the runtimes that run pods.
//!
//! It owns the domain types a runtime sees (sandbox and container configs,
//! their stored records, process statuses), the traits a runtime implements
//! (sandbox side, container side, container streams), the runtime error with
//! its cause, and the streaming session types. It must not know how any
//! runtime works (VMs, agents, namespaces), how records are stored, or the
//! CRI wire format: `pods`, `vm`, the host runtime and `streaming` all
//! depend on it, and it depends on none of them.

pub mod container;
pub mod error;
pub mod runtime;
pub mod sandbox;
pub mod stats;
pub mod streams;

pub use container::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ContainerState, ExecOutput,
};
pub use error::{RuntimeError, RuntimeErrorKind, report};
pub use runtime::{
    ContainerRuntime, NotReady, PodRuntime, RuntimeEvent, SandboxRuntime, StartedSandbox,
};
pub use sandbox::{
    DnsConfig, PodMetadata, PodResources, PortMapping, SandboxConfig, SandboxRecord, SandboxState,
};
pub use stats::{ContainerUsage, LayerUsage, PodUsage};
/// Now, in nanoseconds since the epoch (0 before it, saturating far after).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub use streams::{ContainerStreams, SessionError, StreamingRuntime};
