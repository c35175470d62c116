//! The pod's namespaces in the guest, each kept alive by a holder process
//! that only waits, and bind-mounted where containers join them by path.
//!
//! A pod without a user namespace shares one PID namespace ([`POD_PID_NS`]).
//! A pod with one gets a user namespace with its mappings, and PID and IPC
//! namespaces that it owns (under [`POD_USERNS_DIR`]): a container in the
//! user namespace can mount `/proc` and `mqueue` only for namespaces its
//! user namespace owns.

use std::fs;
use std::path::Path;

use agent_api::AgentError;
use agent_api::messages::{AgentErrorKind, POD_USERNS_DIR};
use nix::mount::{MsFlags, mount};
use nix::sched::CloneFlags;
use runtime_api::container::{IdMapping, UserNamespace};

use crate::init::is_mount_point;

/// The pod's shared PID namespace, bind-mounted (containers join it by path).
pub const POD_PID_NS: &str = "/run/frakti/sandbox/pidns";

fn fail(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(
        AgentErrorKind::Internal,
        format!("pod namespaces: {what}: {e}"),
    )
}

/// Clones a child into new namespaces `flags` that only waits; returns its pid.
fn holder(flags: CloneFlags) -> Result<nix::unistd::Pid, AgentError> {
    let mut stack = vec![0u8; 16 * 1024];
    let waiter: Box<dyn FnMut() -> isize> = Box::new(|| {
        // Not dumpable: a container that sees the holder as its PID 1
        // cannot trace it or reach its root and files without a capability
        // in the guest's own user namespace.
        // SAFETY: prctl(2) with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        loop {
            // SAFETY: pause(2) only waits for a signal.
            unsafe { libc::pause() };
        }
    });
    // SAFETY: the child runs only the closure above, which calls nothing but
    // the async-signal-safe prctl(2) and pause(2), so a clone of this
    // multi-threaded process is sound. Without CLONE_VM the child runs on its own copy of
    // `stack`, so the buffer may go when clone returns.
    unsafe { nix::sched::clone(waiter, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| fail("clone", e))
}

/// Bind-mounts namespace `kind` of process `pid` on `target` (a new file).
fn bind_namespace(pid: nix::unistd::Pid, kind: &str, target: &Path) -> Result<(), AgentError> {
    let _ = fs::create_dir_all(target.parent().unwrap_or(Path::new("/")));
    fs::write(target, b"").map_err(|e| fail("create the mount point", e))?;
    let source = format!("/proc/{pid}/ns/{kind}");
    mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail(&format!("bind-mount {source}"), e))
}

/// Creates the pod's shared PID namespace once, at [`POD_PID_NS`].
/// Containers that share it see each other but not the agent.
pub fn pod_pid_namespace() -> Result<(), AgentError> {
    let target = Path::new(POD_PID_NS);
    if is_mount_point(target) {
        return Ok(());
    }
    let pid = holder(CloneFlags::CLONE_NEWPID)?;
    bind_namespace(pid, "pid", target)
}

/// Checks mappings from the host before the kernel sees them: at least one
/// range, none empty or past 32 bits, at most the kernel's 340.
fn checked(what: &str, list: &[IdMapping]) -> Result<String, AgentError> {
    let bad = |why: &str| {
        AgentError::new(
            AgentErrorKind::InvalidArgument,
            format!("user namespace {what}: {why}"),
        )
    };
    if list.is_empty() || list.len() > 340 {
        return Err(bad("needs 1 to 340 ranges"));
    }
    let mut text = String::new();
    for m in list {
        let end = |start: u32| u64::from(start) + u64::from(m.length);
        if m.length == 0 || end(m.container_id) > 1 << 32 || end(m.host_id) > 1 << 32 {
            return Err(bad("a range is empty or passes 2^32"));
        }
        text.push_str(&format!("{} {} {}\n", m.container_id, m.host_id, m.length));
    }
    Ok(text)
}

/// Creates the pod's user namespace with `userns`'s mappings, and PID and
/// IPC namespaces it owns, once, under [`POD_USERNS_DIR`].
pub fn pod_user_namespace(userns: &UserNamespace) -> Result<(), AgentError> {
    let dir = Path::new(POD_USERNS_DIR);
    if is_mount_point(&dir.join("user")) {
        return Ok(());
    }
    let (uid_map, gid_map) = (
        checked("uids", &userns.uids)?,
        checked("gids", &userns.gids)?,
    );
    // With CLONE_NEWUSER the other new namespaces are owned by the new
    // user namespace. The holder needs no mapping to wait.
    let pid =
        holder(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC)?;
    let made = (|| {
        fs::write(format!("/proc/{pid}/uid_map"), uid_map).map_err(|e| fail("write uid_map", e))?;
        fs::write(format!("/proc/{pid}/gid_map"), gid_map).map_err(|e| fail("write gid_map", e))?;
        // The user namespace last: it marks the whole set as made.
        for kind in ["pid", "ipc", "user"] {
            bind_namespace(pid, kind, &dir.join(kind))?;
        }
        Ok(())
    })();
    if made.is_err() {
        for kind in ["pid", "ipc", "user"] {
            let _ = nix::mount::umount2(&dir.join(kind), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_from_the_host_are_checked() {
        let range = |container_id, host_id, length| IdMapping {
            container_id,
            host_id,
            length,
        };
        assert_eq!(
            checked("uids", &[range(0, 100_000, 65_536)]).unwrap(),
            "0 100000 65536\n"
        );
        for bad in [vec![], vec![range(0, 1, 0)], vec![range(0, u32::MAX, 2)]] {
            let e = checked("uids", &bad).unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
