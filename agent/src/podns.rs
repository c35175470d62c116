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
use runtime_api::container::UserNamespace;

use crate::init::is_mount_point;

/// The pod's shared PID namespace, bind-mounted (containers join it by path).
pub const POD_PID_NS: &str = "/run/frakti/sandbox/pidns";

fn fail(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(
        AgentErrorKind::Internal,
        format!("pod namespaces: {what}: {e}"),
    )
}

/// A holder of new namespaces `flags` (see [`container::namespaces::hold`]).
fn holder(flags: CloneFlags) -> Result<nix::unistd::Pid, AgentError> {
    container::namespaces::hold(flags).map_err(|e| fail("clone", e))
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

/// Creates the pod's user namespace with `userns`'s mappings, and PID and
/// IPC namespaces it owns, once, under [`POD_USERNS_DIR`].
pub fn pod_user_namespace(userns: &UserNamespace) -> Result<(), AgentError> {
    let dir = Path::new(POD_USERNS_DIR);
    if is_mount_point(&dir.join("user")) {
        return Ok(());
    }
    // The host checked them too; the kernel must not see bad ones.
    userns
        .check()
        .map_err(|e| AgentError::new(AgentErrorKind::InvalidArgument, e))?;
    // With CLONE_NEWUSER the other new namespaces are owned by the new
    // user namespace. The holder needs no mapping to wait.
    let pid =
        holder(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC)?;
    let made = (|| {
        container::idmap::write_maps(pid, userns).map_err(|e| fail("map", e))?;
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
    use runtime_api::container::IdMapping;

    #[test]
    fn mappings_from_the_host_are_checked() {
        let range = |container_id, host_id, length| IdMapping {
            container_id,
            host_id,
            length,
        };
        let pod = |uids: Vec<IdMapping>| UserNamespace {
            gids: uids.clone(),
            uids,
        };
        assert_eq!(
            container::idmap::map_text(&pod(vec![range(0, 100_000, 65_536)]).uids),
            "0 100000 65536\n"
        );
        for bad in [vec![], vec![range(0, 1, 0)], vec![range(0, u32::MAX, 2)]] {
            // Refused before any namespace is made.
            let e = pod_user_namespace(&pod(bad.clone())).unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
