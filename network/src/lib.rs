//! Pod networking: a network namespace per pod, CNI plugins run into it, and
//! a tap device mirrored to each CNI interface with tc, for a VM to use.

pub mod cni;
pub mod netns;
pub mod tap;

pub use cni::{Attachment, Cni, CniConfig, CniError, CniResult, PortMapping};
pub use netns::{Netns, NetnsError};
pub use tap::{TapError, TapLink};
