//! The figures, as plain serialisable values.

use serde::{Deserialize, Serialize};

/// CPU time used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// Cumulative CPU time, in ns, over all cores.
    pub usage_core_ns: u64,
}

/// Memory used, in bytes unless said otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Everything charged (page cache included).
    pub usage_bytes: u64,
    /// `usage_bytes` minus inactive file pages: what cannot be reclaimed
    /// easily, the figure the kubelet evicts on.
    pub working_set_bytes: u64,
    /// Anonymous memory and swap cache.
    pub rss_bytes: u64,
    /// The limit minus the working set; `None` without a limit.
    pub available_bytes: Option<u64>,
    /// Cumulative minor page faults.
    pub page_faults: u64,
    /// Cumulative major page faults.
    pub major_page_faults: u64,
    /// Swap used; `None` where swap is not accounted.
    pub swap_bytes: Option<u64>,
    /// The swap limit minus swap used; `None` without a limit or accounting.
    pub swap_available_bytes: Option<u64>,
}

/// What a cgroup uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUsage {
    /// CPU.
    pub cpu: CpuUsage,
    /// Memory.
    pub memory: MemoryUsage,
    /// Processes (threads count as tasks in v1's `pids.current`).
    pub processes: Option<u64>,
}

/// Space and inodes a directory tree uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsUsage {
    /// Bytes of allocated blocks.
    pub used_bytes: u64,
    /// Inodes (files, directories, links), each counted once.
    pub inodes_used: u64,
}

/// Counters of one network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceUsage {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}
