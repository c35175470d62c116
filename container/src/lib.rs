//! Containers as OCI runtime specs: building the spec of a CRI container
//! and the host side of a pod's files and mounts (feature `spec`, on the
//! host), running it with youki's `libcontainer` (feature `runner`, in the
//! guest agent or on the host), and writing CRI log files (feature `logs`).
//!
//! It knows the domain types of `runtime-api` and the OCI runtime spec; it
//! must not know pods' records, VMs, the agent protocol or the CRI.

#[cfg(feature = "spec")]
pub mod caps;
pub mod console;
#[cfg(feature = "runner")]
pub mod devices;
#[cfg(feature = "runner")]
pub mod hugepages;
#[cfg(feature = "spec")]
pub mod idmap;
#[cfg(feature = "logs")]
pub mod logs;
#[cfg(feature = "spec")]
pub mod mounts;
#[cfg(feature = "spec")]
pub mod namespaces;
#[cfg(feature = "spec")]
pub mod podfiles;
#[cfg(feature = "spec")]
pub mod rootfs;
#[cfg(feature = "runner")]
pub mod runner;
#[cfg(feature = "spec")]
pub mod seccomp;
#[cfg(feature = "spec")]
pub mod signals;
#[cfg(feature = "spec")]
pub mod spec;
#[cfg(feature = "spec")]
pub mod users;
