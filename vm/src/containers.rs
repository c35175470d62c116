//! Containers of a VM pod: the host prepares each container's files in the
//! pod's shared directory (served to the guest by virtio-fs), and the agent
//! creates and runs the container inside the guest.
//!
//! Host layout under `<pod dir>/shared/` (the guest sees it at
//! [`GUEST_SHARED`]):
//! - `sandbox/{hosts,resolv.conf,hostname}`: the pod's files;
//! - `<container id>/rootfs`: overlay of the image snapshot (read-only lower)
//!   and the container's writable layer under `<containers dir>/<id>/`;
//! - `<container id>/mounts/<n>`: bind mount of the n-th CRI mount's host path
//!   (a disk's mount is the guest's own, see `disks`);
//! - `<container id>/logs`: bind mount of the directory of the CRI log file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, umount2};
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
/// Where the agent bind-mounts the namespaces of a pod with a user
/// namespace: `user`, and the `pid` and `ipc` namespaces it owns.
pub const GUEST_POD_USERNS: &str = agent_api::messages::POD_USERNS_DIR;
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
    /// Serials of the pod's disks it uses.
    #[serde(default)]
    pub disks: Vec<String>,
}

fn invalid(what: impl Into<String>) -> RuntimeError {
    RuntimeError::new(RuntimeErrorKind::InvalidArgument, what)
}

/// Bind-mounts `source` on `target` for the guest (see [`container::mounts::bind`]).
fn bind(
    source: &Path,
    target: &Path,
    propagation: Propagation,
    readonly: bool,
    idmap: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), RuntimeError> {
    container::mounts::bind(source, target, propagation, readonly, idmap).map_err(|e| {
        internal(
            format!("bind {} on {}", source.display(), target.display()),
            e,
        )
    })
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

/// The host path of CRI mount `m`, a symlink resolved on the host.
pub(crate) fn resolve_host_path(
    m: &runtime_api::container::Mount,
) -> Result<PathBuf, RuntimeError> {
    container::mounts::resolve_host_path(m).map_err(|e| match e {
        container::mounts::HostPathError::NotAbsolute { .. } => invalid(e.to_string()),
        other => internal(other.to_string(), other),
    })
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

/// Prepares container `id`'s files on the host and builds its spec; the
/// CRI mounts in `disk_sources` (by index) are disks, mounted from the
/// guest paths given there. On failure nothing is left behind.
pub fn prepare(
    shared: &Path,
    containers_dir: &Path,
    sandbox: &SandboxConfig,
    id: &str,
    config: &ContainerConfig,
    log_path: &str,
    disk_sources: &HashMap<usize, PathBuf>,
) -> Result<Prepared, RuntimeError> {
    let mut files = ContainerFiles {
        dir: shared.join(id),
        layer: containers_dir.join(id),
        mounts: Vec::new(),
        disks: Vec::new(),
    };
    match prepare_steps(sandbox, id, config, log_path, disk_sources, &mut files) {
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
    disk_sources: &HashMap<usize, PathBuf>,
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
    let rootfs = files.dir.join("rootfs");
    // A pod with a user namespace sees its image through the pod's ID
    // mapping (the image's root is the pod's root), and so do its volumes;
    // the guest passes the IDs through, and the agent runs the container
    // in a user namespace of the same mapping.
    let userns = sandbox
        .namespaces
        .userns
        .as_ref()
        .map(|u| {
            let root = u.root().ok_or_else(|| {
                invalid("a pod's user namespace must map ID 0 (its root) in uids and gids")
            })?;
            container::idmap::user_namespace(u)
                .map_err(|e| internal("make the pod's ID mapping", e))
                .map(|fd| (fd, root))
        })
        .transpose()?;
    let idmap = userns.as_ref().map(|(fd, root)| container::rootfs::Idmap {
        userns: std::os::fd::AsFd::as_fd(fd),
        root: *root,
    });
    // nosuid and nodev on the host: what the guest writes into the layer
    // (a setuid-root binary, a device node) must be inert on the host. The
    // guest still sees the files' modes and uses them inside the VM.
    let made = container::rootfs::mount_overlay(
        lower,
        &files.layer,
        &rootfs,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        idmap,
    )
    .map_err(|e| internal(e.to_string(), e))?;
    files.mounts.extend(made);
    let idmap = idmap.map(|i| i.userns);

    let mut sources = Vec::new();
    // The guest sees a CRI mount as one virtio-fs tree, submounts included:
    // a read-only mount whose host source has submounts is read-only on the
    // host alone (its top mount), so that its submounts stay writable as on
    // any runtime; a recursive one is read-only all through on the host.
    let mut guest_config = config.clone();
    // Devices are the pod's disks: the agent adds their nodes in the guest.
    guest_config.devices.clear();
    for (n, m) in config.mounts.iter().enumerate() {
        if let Some(source) = disk_sources.get(&n) {
            sources.push(source.clone());
            continue;
        }
        if idmap.is_some() {
            container::mounts::check_idmapped_propagation(m).map_err(invalid)?;
        }
        let resolved = resolve_host_path(m)?;
        let target = files.dir.join("mounts").join(n.to_string());
        container::mounts::mount_point_for(&resolved, &target)
            .map_err(|e| internal(format!("create {}", target.display()), e))?;
        bind(&resolved, &target, m.propagation, m.readonly, idmap)?;
        files.mounts.push(target.clone());
        if m.recursive_read_only {
            container::mounts::readonly_recursively(&target)
                .map_err(|e| internal(format!("mount {}", m.container_path), e))?;
        } else if m.readonly
            && container::mounts::has_submounts(&resolved)
                .map_err(|e| internal(format!("mount {}", m.container_path), e))?
        {
            guest_config.mounts[n].readonly = false;
        }
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
        bind(parent, &target, Propagation::Private, false, None)?;
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
        namespaces: if sandbox.namespaces.userns.is_some() {
            // The agent made the pod's user namespace, and PID and IPC
            // namespaces it owns (mounting /proc and mqueue needs that).
            container::spec::PodNamespaces {
                user: Some(Path::new(GUEST_POD_USERNS).join("user")),
                ipc: Some(Path::new(GUEST_POD_USERNS).join("ipc")),
                pid: Some(Path::new(GUEST_POD_USERNS).join("pid")),
                ..Default::default()
            }
        } else {
            container::spec::PodNamespaces {
                pid: Some(PathBuf::from(GUEST_POD_PID_NS)),
                ..Default::default()
            }
        },
    };
    let spec = container::spec::build(&guest_config, sandbox, &layout).map_err(|e| match e {
        container::spec::SpecError::Invalid(_) => internal("build the OCI spec", e),
        other => invalid(other.to_string()),
    })?;
    let spec = serde_json::to_value(spec).map_err(|e| internal("encode the OCI spec", e))?;
    Ok((spec, guest_log))
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
        user: info.user.clone(),
    }
}
