//! The per-container monitor of the host runtime, as the daemon sees it.
//!
//! `frakti-monitor` (this crate's binary) is started by the daemon once per
//! host container: it creates the container with libcontainer and stays its
//! parent (a child subreaper), copies its stdio into the CRI log file and to
//! attached clients, and records its exit in a file, so containers outlive a
//! restart of the daemon. The daemon speaks to it over a unix socket.
//!
//! This library is what the daemon needs for that and nothing more; it has no
//! async runtime (the daemon does its own I/O with the framing functions):
//!
//! - [`args`]: the command lines of the subcommands, as typed structs;
//! - [`protocol`]: requests and replies on the socket, and the frames of an
//!   attached connection;
//! - [`client`]: a small blocking client (run it on a blocking thread);
//! - [`exitfile`]: the exit file of a container and the report of an exec;
//! - [`holds_namespace`]: whether a process is the holder of a pod's PID
//!   namespace file made by `frakti-monitor pidns`.

pub mod args;
pub mod client;
pub mod exitfile;
pub mod protocol;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether process `pid`'s PID namespace is the one bind-mounted at `file`
/// (same device and inode); false when either cannot be looked at.
///
/// The daemon checks this before it sends SIGTERM to the holder recorded for
/// a pod, so a recycled pid is never signalled.
pub fn holds_namespace(pid: i32, file: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    let (Ok(proc_ns), Ok(held)) = (
        std::fs::metadata(format!("/proc/{pid}/ns/pid")),
        std::fs::metadata(file),
    ) else {
        return false;
    };
    proc_ns.dev() == held.dev() && proc_ns.ino() == held.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_held_by_self_only_through_its_proc_link() {
        let me = std::process::id() as i32;
        let own = format!("/proc/{me}/ns/pid");
        assert!(holds_namespace(me, Path::new(&own)));
        assert!(!holds_namespace(me, Path::new("/proc/self/ns/net")));
        assert!(!holds_namespace(0, Path::new(&own)));
        assert!(!holds_namespace(-1, Path::new(&own)));
        assert!(!holds_namespace(me, Path::new("/nonexistent/pidns")));
    }
}
