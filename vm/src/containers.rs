//! Containers of a VM pod: the host prepares each container's files in the
//! pod's shared directory (served to the guest by virtio-fs), and the agent
//! creates and runs the container inside the guest.
//!
//! Host layout under `<pod dir>/shared/` (the guest sees it at
//! [`GUEST_SHARED`]):
//! - `sandbox/{hosts,resolv.conf,hostname}`: the pod's files;
//! - `<container id>/rootfs`: overlay of the image snapshot (read-only lower)
//!   and the container's writable layer under `<containers dir>/<id>/`;
//! - `<container id>/mounts/<n>`: bind mount of the n-th CRI mount's host path;
//! - `<container id>/logs`: bind mount of the directory of the CRI log file.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use runtime_api::container::{
    ContainerConfig, ContainerRuntimeStatus, ContainerState, Propagation,
};
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};
use serde::{Deserialize, Serialize};

use crate::errors::internal;

/// Where the guest mounts the pod's shared directory.
pub const GUEST_SHARED: &str = "/run/frakti/shared";
/// The pod's `/dev/shm` in the guest.
pub const GUEST_SHM: &str = "/run/frakti/sandbox/shm";
/// The pod's shared PID namespace in the guest (the agent bind-mounts it).
pub const GUEST_POD_PID_NS: &str = "/run/frakti/sandbox/pidns";
/// virtio-fs tag of the shared directory.
pub const SHARE_TAG: &str = "frakti";

/// What is persisted per container of a VM pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerFiles {
    /// `<shared>/<id>` on the host.
    pub dir: PathBuf,
    /// The container's writable layer (`upper` + `work`).
    pub layer: PathBuf,
    /// Host mount points made for it, in mount order.
    pub mounts: Vec<PathBuf>,
}

fn invalid(what: impl Into<String>) -> RuntimeError {
    RuntimeError::new(RuntimeErrorKind::InvalidArgument, what)
}

/// Writes the pod's `hosts`, `resolv.conf` and `hostname` under `shared/sandbox`.
pub fn write_sandbox_files(
    shared: &Path,
    config: &SandboxConfig,
    ips: &[String],
) -> std::io::Result<()> {
    let dir = shared.join("sandbox");
    std::fs::create_dir_all(&dir)?;
    let hostname = if config.hostname.is_empty() {
        config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default()
    } else {
        config.hostname.clone()
    };
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let dns = &config.dns;
    let resolv = if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        // As other runtimes do: without DNS settings the pod gets the node's.
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        let mut text = String::new();
        if !dns.searches.is_empty() {
            text.push_str(&format!("search {}\n", dns.searches.join(" ")));
        }
        for server in &dns.servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !dns.options.is_empty() {
            text.push_str(&format!("options {}\n", dns.options.join(" ")));
        }
        text
    };
    std::fs::write(dir.join("resolv.conf"), resolv)
}

fn bind(
    source: &Path,
    target: &Path,
    propagation: Propagation,
    readonly: bool,
) -> Result<(), RuntimeError> {
    let what = || format!("bind {} on {}", source.display(), target.display());
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| internal(what(), e))?;
    let flag = match propagation {
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_PRIVATE,
    };
    mount(
        None::<&str>,
        target,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| internal(what(), e))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| internal(what(), e))?;
    }
    Ok(())
}

/// Detaches every mount in `mounts` (last first) and deletes the container's files.
pub fn remove_files(files: &ContainerFiles) -> Result<(), RuntimeError> {
    for m in files.mounts.iter().rev() {
        match umount2(m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(internal(format!("unmount {}", m.display()), e)),
        }
    }
    for dir in [&files.dir, &files.layer] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(format!("remove {}", dir.display()), e)),
        }
    }
    Ok(())
}

/// The result of preparing a container's files.
#[derive(Debug)]
pub struct Prepared {
    /// What to persist and clean up later.
    pub files: ContainerFiles,
    /// The OCI spec, with guest paths.
    pub spec: serde_json::Value,
    /// The log file as the guest sees it; empty for none.
    pub guest_log: String,
}

/// Prepares container `id`'s files on the host and builds its spec. On
/// failure nothing is left behind.
pub fn prepare(
    shared: &Path,
    containers_dir: &Path,
    sandbox: &SandboxConfig,
    id: &str,
    config: &ContainerConfig,
    log_path: &str,
) -> Result<Prepared, RuntimeError> {
    let mut files = ContainerFiles {
        dir: shared.join(id),
        layer: containers_dir.join(id),
        mounts: Vec::new(),
    };
    match prepare_steps(sandbox, id, config, log_path, &mut files) {
        Ok((spec, guest_log)) => Ok(Prepared {
            files,
            spec,
            guest_log,
        }),
        Err(e) => {
            if let Err(cleanup) = remove_files(&files) {
                tracing::warn!(container = id, "cleanup after a failed create: {cleanup}");
            }
            Err(e)
        }
    }
}

fn prepare_steps(
    sandbox: &SandboxConfig,
    id: &str,
    config: &ContainerConfig,
    log_path: &str,
    files: &mut ContainerFiles,
) -> Result<(serde_json::Value, String), RuntimeError> {
    let guest_dir = Path::new(GUEST_SHARED).join(id);
    let lower = &config.image.rootfs;
    if !lower.is_dir() {
        return Err(RuntimeError::new(
            RuntimeErrorKind::NotFound,
            format!(
                "root filesystem {} of image {} is missing",
                lower.display(),
                config.image.user_ref
            ),
        ));
    }
    for m in &config.mounts {
        if m.propagation == Propagation::Bidirectional {
            return Err(invalid(format!(
                "mount {}: BIDIRECTIONAL propagation needs a host runtime (privileged pod), not a VM pod",
                m.container_path
            )));
        }
    }
    let (upper, work) = (files.layer.join("upper"), files.layer.join("work"));
    let rootfs = files.dir.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| internal(format!("create {}", d.display()), e))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| internal("mount the container's root filesystem", e))?;
    files.mounts.push(rootfs.clone());

    let mut sources = Vec::new();
    for (n, m) in config.mounts.iter().enumerate() {
        let host = Path::new(&m.host_path);
        if !host.is_absolute() {
            return Err(invalid(format!(
                "mount {}: host_path {:?} must be absolute",
                m.container_path, m.host_path
            )));
        }
        if !host.exists() {
            // Like other runtimes: a missing host directory is created.
            std::fs::create_dir_all(host)
                .map_err(|e| internal(format!("create host path {}", host.display()), e))?;
        }
        // A symlinked host path is resolved on the host.
        let resolved = std::fs::canonicalize(host)
            .map_err(|e| internal(format!("resolve host path {}", host.display()), e))?;
        let target = files.dir.join("mounts").join(n.to_string());
        std::fs::create_dir_all(files.dir.join("mounts"))
            .map_err(|e| internal("create the mounts directory", e))?;
        if resolved.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::write(&target, b"")
        }
        .map_err(|e| internal(format!("create {}", target.display()), e))?;
        bind(&resolved, &target, m.propagation, m.readonly)?;
        files.mounts.push(target);
        sources.push(guest_dir.join("mounts").join(n.to_string()));
    }

    let mut guest_log = String::new();
    if !log_path.is_empty() {
        let path = Path::new(log_path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(invalid(format!("log path {log_path:?} has no file name")));
        };
        std::fs::create_dir_all(parent)
            .map_err(|e| internal(format!("create log directory {}", parent.display()), e))?;
        let target = files.dir.join("logs");
        std::fs::create_dir_all(&target).map_err(|e| internal("create the log mount point", e))?;
        bind(parent, &target, Propagation::Private, false)?;
        files.mounts.push(target);
        guest_log = guest_dir.join("logs").join(name).display().to_string();
    }

    let guest_sandbox = Path::new(GUEST_SHARED).join("sandbox");
    let layout = container::spec::Layout {
        rootfs: guest_dir.join("rootfs"),
        host_rootfs: rootfs,
        mount_sources: sources,
        etc_hosts: guest_sandbox.join("hosts"),
        resolv_conf: guest_sandbox.join("resolv.conf"),
        etc_hostname: guest_sandbox.join("hostname"),
        shm: PathBuf::from(GUEST_SHM),
        cgroup: format!("/frakti/{id}"),
        pod_pid_namespace: Some(PathBuf::from(GUEST_POD_PID_NS)),
    };
    let spec = container::spec::build(config, sandbox, &layout).map_err(|e| match e {
        container::spec::SpecError::Invalid(_) => internal("build the OCI spec", e),
        other => invalid(other.to_string()),
    })?;
    let spec = serde_json::to_value(spec).map_err(|e| internal("encode the OCI spec", e))?;
    Ok((spec, guest_log))
}

/// The signal number of an image's `StopSignal` (`SIGQUIT`, `QUIT`, `3`); SIGTERM if empty.
pub fn stop_signal(name: &str) -> Result<i32, RuntimeError> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(libc::SIGTERM);
    }
    if let Ok(n) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|s| s as i32)
            .map_err(|_| invalid(format!("unknown stop signal {name}")));
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| invalid(format!("unknown stop signal {name}")))
}

/// The CRI view of the agent's container status.
pub fn runtime_status(info: &agent_api::messages::ContainerInfo) -> ContainerRuntimeStatus {
    use agent_api::messages::ContainerState as S;
    let state = match info.state {
        S::Created => ContainerState::Created,
        S::Running => ContainerState::Running,
        S::Exited => ContainerState::Exited,
    };
    let reason = match info.state {
        S::Exited if info.oom_killed => "OOMKilled",
        S::Exited if info.exit_code == 0 => "Completed",
        S::Exited => "Error",
        _ => "",
    };
    ContainerRuntimeStatus {
        state,
        started_at_ns: info.started_at_ns,
        finished_at_ns: info.finished_at_ns,
        exit_code: info.exit_code,
        reason: reason.to_owned(),
        message: info.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_in_every_form() {
        assert_eq!(stop_signal("").unwrap(), libc::SIGTERM);
        assert_eq!(stop_signal("SIGQUIT").unwrap(), libc::SIGQUIT);
        assert_eq!(stop_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(stop_signal("9").unwrap(), libc::SIGKILL);
        assert!(stop_signal("SIGBOGUS").is_err());
    }

    #[test]
    fn resolv_conf_follows_the_pod_dns_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SandboxConfig {
            hostname: "web-0".into(),
            ..Default::default()
        };
        config.dns.servers = vec!["10.96.0.10".into()];
        config.dns.searches = vec!["ns.svc.cluster.local".into(), "cluster.local".into()];
        config.dns.options = vec!["ndots:5".into()];
        write_sandbox_files(dir.path(), &config, &["10.77.0.5".into()]).unwrap();
        let resolv = std::fs::read_to_string(dir.path().join("sandbox/resolv.conf")).unwrap();
        assert_eq!(
            resolv,
            "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        let hosts = std::fs::read_to_string(dir.path().join("sandbox/hosts")).unwrap();
        assert!(hosts.contains("10.77.0.5\tweb-0\n"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sandbox/hostname")).unwrap(),
            "web-0\n"
        );
    }
}
