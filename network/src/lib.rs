//! Pod networking: a network namespace per pod, CNI plugins run into it
//! ([`PodNetworks`], shared by every runtime), and a tap device mirrored to
//! each CNI interface with tc, for a VM to use.
//!
//! It owns netns lifecycle, CNI invocation and tc/tap plumbing. It must not
//! know pods' records, runtimes, VMs or the CRI: callers say who a network
//! is for with a [`PodIdentity`].

pub mod cni;
pub mod netns;
pub mod pod;
pub mod tap;

pub use cni::{Attachment, Cni, CniConfig, CniError, CniResult, PortMapping};
pub use netns::{Netns, NetnsError};
pub use pod::{PodIdentity, PodNetwork, PodNetworkError, PodNetworks};
pub use tap::{TapError, TapLink};
