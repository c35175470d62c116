//! `VmRuntime`: runs every pod sandbox as its own VM, with `frakti-agent` as
//! the guest's PID 1, reached over a virtio-serial channel.
//!
//! It owns what a VM pod is made of (the VM's profile and size, its boot
//! and teardown, the pod's shared directory and container files, the tap
//! mirror of the pod network, re-adoption after a restart) and implements
//! the runtime seam of `runtime-api`. It must not know pod records' storage,
//! routing or the CRI, nor any backend's file names or command line (that is
//! `hypervisor`'s), nor the agent's wire format (that is `agent-api`'s).
//!
//! Modules by phase: `profile` (accelerator, size), `boot`, `teardown`,
//! `recovery`, `sandbox` and `container_ops` (the seam's two sides),
//! `streams`; beneath them `runtime` (the running VMs), `config`, `guest`,
//! `containers` (host files of containers), `net`, `errors`.

mod boot;
pub mod config;
mod container_ops;
pub mod containers;
mod disks;
mod errors;
mod guest;
pub mod host_cgroup;
pub mod net;
mod pool;
pub mod profile;
mod recovery;
mod resize;
mod runtime;
mod sandbox;
pub mod sizing;
mod stats;
mod streams;
mod teardown;
mod warm;

pub use boot::{MAX_SOCKET_PATH, pod_socket_paths};
pub use config::{VmRuntimeConfig, VmState};
pub use pool::PoolFigures;
pub use profile::{AccelVerdict, VmSize, size_for};
pub use runtime::VmRuntime;
