//! The namespaces of a container's OCI spec: its own mount namespace, and the
//! pod's network, UTS, IPC and PID namespaces as its runtime reaches them (a
//! namespace file to join, or the runtime's own namespace when there is none).

use std::path::{Path, PathBuf};

use runtime_api::container::{NamespaceMode, NamespaceOptions};
use serde_json::{Value, json};

/// The pod's namespaces as the container's runtime reaches them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    /// The pod's user namespace file; `None`: the runtime's own.
    pub user: Option<PathBuf>,
    /// The pod's network namespace file; `None`: the runtime's own (the VM's, or the node's for a host-network pod).
    pub network: Option<PathBuf>,
    /// The pod's UTS namespace file; `None`: the runtime's own.
    pub uts: Option<PathBuf>,
    /// The pod's IPC namespace file (mode POD); `None`: the runtime's own.
    pub ipc: Option<PathBuf>,
    /// The pod's PID namespace file (mode POD); `None`: the runtime's own.
    pub pid: Option<PathBuf>,
    /// Whether mode NODE may be honoured (the host runtime): it means no namespace entry, i.e. the node's.
    pub node: bool,
    /// The PID namespace of the target container (mode TARGET); `None`: TARGET is refused.
    pub target_pid: Option<PathBuf>,
}

/// A container's namespace options cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The node's PID namespace is not this runtime's to give
    #[error("the node's PID namespace needs a host runtime, not a VM pod")]
    NodePid,
    /// Joining another container's PID namespace is not supported
    #[error("PID namespace mode TARGET is not supported")]
    TargetPid,
    /// The node's IPC namespace is not this runtime's to give
    #[error("IPC namespace mode Node is not supported in a VM pod")]
    NodeIpc,
    /// Joining another container's IPC namespace is not supported
    #[error("IPC namespace mode Target is not supported{}", if *.vm_pod { " in a VM pod" } else { "" })]
    TargetIpc {
        /// The refusing runtime is the VM's (it says so).
        vm_pod: bool,
    },
}

/// The `linux.namespaces` entries of a container with options `options` in a
/// pod whose namespaces are `pod`: the pod's user namespace if it has one,
/// always a mount namespace of its own, then PID, IPC, network and UTS by
/// the rules of [`PodNamespaces`].
pub fn entries(
    options: &NamespaceOptions,
    pod: &PodNamespaces,
) -> Result<Vec<Value>, NamespaceError> {
    let mut out = Vec::new();
    // The user namespace first: the others are joined or made inside it.
    if let Some(user) = &pod.user {
        out.push(json!({"type": "user", "path": user}));
    }
    out.push(json!({"type": "mount"}));
    if pod.user.is_some() {
        // cgroupfs can be mounted in a user namespace only for a cgroup
        // namespace it owns.
        out.push(json!({"type": "cgroup"}));
    }
    let join = |out: &mut Vec<Value>, kind: &str, path: &Option<PathBuf>| {
        // Without a path the pod's namespace is the runtime's own.
        if let Some(path) = path {
            out.push(json!({"type": kind, "path": path}));
        }
    };
    match options.pid {
        NamespaceMode::Container => out.push(json!({"type": "pid"})),
        NamespaceMode::Pod => join(&mut out, "pid", &pod.pid),
        NamespaceMode::Node if pod.node => {}
        NamespaceMode::Node => return Err(NamespaceError::NodePid),
        NamespaceMode::Target => match &pod.target_pid {
            Some(path) => out.push(json!({"type": "pid", "path": path})),
            None => return Err(NamespaceError::TargetPid),
        },
    }
    match options.ipc {
        NamespaceMode::Container => out.push(json!({"type": "ipc"})),
        NamespaceMode::Pod => join(&mut out, "ipc", &pod.ipc),
        NamespaceMode::Node if pod.node => {}
        NamespaceMode::Node => return Err(NamespaceError::NodeIpc),
        NamespaceMode::Target => return Err(NamespaceError::TargetIpc { vm_pod: !pod.node }),
    }
    // The network and UTS namespaces are always the pod's; the spec sets no
    // hostname: whoever made the pod's UTS namespace (the agent, the host
    // runtime) set it.
    join(&mut out, "network", &pod.network);
    join(&mut out, "uts", &pod.uts);
    Ok(out)
}

/// Clones a child into new namespaces `flags` that only waits (it holds
/// them), not dumpable: a container that sees it as its PID 1 cannot trace
/// it or reach its root and files without a capability in the caller's
/// user namespace. Returns its pid; the caller kills and reaps it.
pub fn hold(flags: nix::sched::CloneFlags) -> nix::Result<nix::unistd::Pid> {
    let mut stack = vec![0u8; 16 * 1024];
    let waiter: Box<dyn FnMut() -> isize> = Box::new(|| {
        // SAFETY: prctl(2) with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        loop {
            // SAFETY: pause(2) only waits for a signal.
            unsafe { libc::pause() };
        }
    });
    // SAFETY: the child runs only the closure above, which calls nothing but
    // the async-signal-safe prctl(2) and pause(2), so a clone of a
    // multi-threaded process is sound. Without CLONE_VM the child runs on
    // its own copy of `stack`, so the buffer may go when clone returns.
    unsafe { nix::sched::clone(waiter, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Sets `sysctls` (`a.b.c` or `a/b/c` names) inside the namespace of kind
/// `kind` at `file`, from a thread of their own that enters it. With
/// `owner` (the host UID and GID of the root of the user namespace that
/// owns it) the thread takes them as its effective IDs first: the kernel
/// lets only that root write an IPC namespace's sysctls, not the node's
/// root. Only that thread changes IDs (raw syscalls, not the C library's
/// process-wide ones), and it ends with the call. `Err` says what failed.
pub fn set_sysctls_in(
    file: &Path,
    kind: nix::sched::CloneFlags,
    owner: Option<(u32, u32)>,
    sysctls: &[(String, String)],
) -> Result<(), String> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let sysctls = sysctls.to_vec();
    std::thread::spawn(move || -> Result<(), String> {
        nix::sched::setns(&ns, kind).map_err(|e| format!("enter the namespace: {e}"))?;
        if let Some((uid, gid)) = owner {
            let keep = libc::c_long::from(-1i32);
            // SAFETY: setresgid(2)/setresuid(2) as raw syscalls change the
            // calling thread's credentials only; -1 keeps an ID as it is.
            let rc =
                unsafe { libc::syscall(libc::SYS_setresgid, keep, libc::c_long::from(gid), keep) };
            if rc != 0 {
                return Err(format!("take gid {gid}: {}", nix::errno::Errno::last()));
            }
            // SAFETY: as above.
            let rc =
                unsafe { libc::syscall(libc::SYS_setresuid, keep, libc::c_long::from(uid), keep) };
            if rc != 0 {
                return Err(format!("take uid {uid}: {}", nix::errno::Errno::last()));
            }
        }
        for (key, value) in &sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| format!("cannot set sysctl {key}={value}: {e}"))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the sysctl thread panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_PID: &str = "/run/frakti/sandbox/pidns";

    fn options(pid: NamespaceMode, ipc: NamespaceMode) -> NamespaceOptions {
        NamespaceOptions {
            pid,
            ipc,
            ..Default::default()
        }
    }

    fn text(options: &NamespaceOptions, pod: &PodNamespaces) -> String {
        match entries(options, pod) {
            Ok(list) => serde_json::to_string(&list).unwrap(),
            Err(e) => format!("error: {e}"),
        }
    }

    /// The VM's pod: everything is the VM's own but the pod's PID namespace.
    fn vm() -> PodNamespaces {
        PodNamespaces {
            pid: Some(POD_PID.into()),
            ..Default::default()
        }
    }

    /// A host pod with namespace files for everything.
    fn host() -> PodNamespaces {
        PodNamespaces {
            network: Some("/run/p/net".into()),
            uts: Some("/run/p/uts".into()),
            ipc: Some("/run/p/ipc".into()),
            pid: Some("/run/p/pid".into()),
            node: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_target_pid_namespace_is_joined_when_the_runtime_found_it() {
        let target = options(NamespaceMode::Target, NamespaceMode::Pod);
        assert_eq!(
            text(&target, &host()),
            "error: PID namespace mode TARGET is not supported"
        );
        let pod = PodNamespaces {
            target_pid: Some("/proc/42/ns/pid".into()),
            ..host()
        };
        assert!(
            text(&target, &pod).contains(r#"{"path":"/proc/42/ns/pid","type":"pid"}"#),
            "{}",
            text(&target, &pod)
        );
    }

    /// What the spec builder produced for VM pods before the pod's
    /// namespaces became a [`PodNamespaces`], byte for byte.
    #[test]
    fn vm_pods_get_the_namespaces_they_always_got() {
        use NamespaceMode::{Container, Node, Pod, Target};
        let cases = [
            (
                Pod,
                Pod,
                r#"[{"type":"mount"},{"path":"/run/frakti/sandbox/pidns","type":"pid"}]"#,
            ),
            (Container, Pod, r#"[{"type":"mount"},{"type":"pid"}]"#),
            (
                Pod,
                Container,
                r#"[{"type":"mount"},{"path":"/run/frakti/sandbox/pidns","type":"pid"},{"type":"ipc"}]"#,
            ),
            (
                Container,
                Container,
                r#"[{"type":"mount"},{"type":"pid"},{"type":"ipc"}]"#,
            ),
            (
                Node,
                Pod,
                "error: the node's PID namespace needs a host runtime, not a VM pod",
            ),
            (
                Target,
                Pod,
                "error: PID namespace mode TARGET is not supported",
            ),
            (
                Pod,
                Node,
                "error: IPC namespace mode Node is not supported in a VM pod",
            ),
            (
                Pod,
                Target,
                "error: IPC namespace mode Target is not supported in a VM pod",
            ),
        ];
        for (pid, ipc, want) in cases {
            assert_eq!(
                text(&options(pid, ipc), &vm()),
                want,
                "pid {pid:?}, ipc {ipc:?}"
            );
        }
    }

    #[test]
    fn pod_mode_joins_the_pods_files() {
        let all = entries(&options(NamespaceMode::Pod, NamespaceMode::Pod), &host()).unwrap();
        assert_eq!(
            all,
            [
                json!({"type": "mount"}),
                json!({"type": "pid", "path": "/run/p/pid"}),
                json!({"type": "ipc", "path": "/run/p/ipc"}),
                json!({"type": "network", "path": "/run/p/net"}),
                json!({"type": "uts", "path": "/run/p/uts"}),
            ]
        );
        // Without files: the runtime's own namespaces, no entries.
        let pod = PodNamespaces {
            node: true,
            ..Default::default()
        };
        let none = entries(&options(NamespaceMode::Pod, NamespaceMode::Pod), &pod).unwrap();
        assert_eq!(none, [json!({"type": "mount"})]);
    }

    #[test]
    fn the_pods_user_namespace_is_joined_before_the_others() {
        let pod = PodNamespaces {
            user: Some("/run/u/user".into()),
            pid: Some("/run/u/pid".into()),
            ipc: Some("/run/u/ipc".into()),
            ..Default::default()
        };
        let list = entries(&options(NamespaceMode::Pod, NamespaceMode::Pod), &pod).unwrap();
        assert_eq!(
            list,
            [
                json!({"type": "user", "path": "/run/u/user"}),
                json!({"type": "mount"}),
                json!({"type": "cgroup"}),
                json!({"type": "pid", "path": "/run/u/pid"}),
                json!({"type": "ipc", "path": "/run/u/ipc"}),
            ]
        );
    }

    #[test]
    fn network_and_uts_ignore_the_containers_mode() {
        let mut o = options(NamespaceMode::Container, NamespaceMode::Container);
        o.network = NamespaceMode::Container;
        let list = entries(&o, &host()).unwrap();
        assert_eq!(
            list,
            [
                json!({"type": "mount"}),
                json!({"type": "pid"}),
                json!({"type": "ipc"}),
                json!({"type": "network", "path": "/run/p/net"}),
                json!({"type": "uts", "path": "/run/p/uts"}),
            ]
        );
    }

    #[test]
    fn node_mode_is_the_nodes_namespace_where_allowed() {
        let mut pod = host();
        pod.network = None;
        pod.uts = None;
        let o = options(NamespaceMode::Node, NamespaceMode::Node);
        assert_eq!(entries(&o, &pod).unwrap(), [json!({"type": "mount"})]);
        pod.node = false;
        assert!(matches!(entries(&o, &pod), Err(NamespaceError::NodePid)));
        let o = options(NamespaceMode::Pod, NamespaceMode::Node);
        assert!(matches!(entries(&o, &pod), Err(NamespaceError::NodeIpc)));
    }

    #[test]
    fn target_mode_is_refused_everywhere() {
        let o = options(NamespaceMode::Target, NamespaceMode::Pod);
        assert!(matches!(
            entries(&o, &host()),
            Err(NamespaceError::TargetPid)
        ));
        let o = options(NamespaceMode::Pod, NamespaceMode::Target);
        assert_eq!(
            text(&o, &host()),
            "error: IPC namespace mode Target is not supported"
        );
    }
}
