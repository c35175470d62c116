//! Containers as OCI runtime specs: building the spec of a CRI container
//! (feature `spec`, on the host) and running it with youki's `libcontainer`
//! (feature `runner`, in the guest agent or on the host).
//!
//! It knows the domain types of `runtime-api` and the OCI runtime spec; it
//! must not know pods' records, VMs, the agent protocol or the CRI.

#[cfg(feature = "spec")]
pub mod caps;
#[cfg(feature = "runner")]
pub mod runner;
#[cfg(feature = "spec")]
pub mod seccomp;
#[cfg(feature = "spec")]
pub mod spec;
#[cfg(feature = "spec")]
pub mod users;
