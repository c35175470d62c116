//! The host runtime: pods that need the node (privileged, a node namespace,
//! the OS-container annotation, the `host` handler) run as ordinary
//! namespace containers on the host, beside the VM pods, behind the same
//! CRI socket.
//!
//! A pod is a set of namespaces held without a pause process (network by
//! CNI through `network`, UTS and IPC as bind-mounted nsfs files, PID by a
//! tiny init only when shared), its `/etc` files, `/dev/shm` and cgroup. A
//! container is made from the same OCI spec builder the VM pods use
//! (`container::spec`), by its own `frakti-monitor` process, which stays
//! its parent across daemon restarts, writes its CRI log and records its
//! exit.
//!
//! It implements the three `runtime-api` traits; it must not know pods'
//! records, the CRI, VMs or the agent.

mod acl;
pub mod config;
mod container_ops;
mod exec;
pub mod files;
pub mod namespaces;
mod runtime;
mod sandbox;
mod stats;
mod streams;
mod supervise;

pub use config::HostRuntimeConfig;
pub use runtime::HostRuntime;

pub(crate) use runtime_api::now_ns;
