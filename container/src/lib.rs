//! Containers as OCI runtime specs: building the spec of a CRI container
//! (feature `spec`, on the host) and running it with youki's `libcontainer`
//! (feature `runner`, in the guest agent or on the host).

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
