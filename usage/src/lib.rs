//! Resource usage as the kernel reports it: a cgroup's CPU, memory and
//! process figures (v1 or v2), a process's CPU time and resident memory,
//! network interface counters in `/proc/net/dev` form, and the space and
//! inodes a directory tree uses.
//!
//! It is a leaf: the guest agent, the host runtime and the runtime seam
//! share its types, and it knows nothing of pods, containers or the CRI.
//! Readers take the paths they read, so tests run them on fixtures.

pub mod cgroup;
pub mod dir;
pub mod net;
pub mod process;
mod types;

pub use types::{CgroupUsage, CpuUsage, FsUsage, InterfaceUsage, MemoryUsage};

/// A usage file cannot be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A file cannot be read
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds something other than what the kernel writes there
    #[error("unexpected content in {path}: {what}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

pub(crate) fn read(path: &std::path::Path) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn parse_u64(path: &std::path::Path, text: &str) -> Result<u64, UsageError> {
    text.trim().parse().map_err(|_| UsageError::Parse {
        path: path.to_owned(),
        what: format!("{:?} is not a number", text.trim()),
    })
}
