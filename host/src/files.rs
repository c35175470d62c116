//! A host container's files: the overlay root filesystem over the image
//! snapshot with a writable layer of its own, the host paths it mounts
//! (with their propagation checked), its log directory, and the OCI spec
//! that ties them to the pod's namespaces and cgroup.

use std::path::{Path, PathBuf};

use container::mounts::{HostPathError, check_shared, check_shared_or_slave, resolve_host_path};
use container::spec::{Layout, PodNamespaces};
use nix::mount::{MntFlags, MsFlags, umount2};
use runtime_api::container::{ContainerConfig, Propagation};
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};

use crate::config::{HostContainer, HostRuntimeConfig, HostSandbox, short_id};

fn internal(
    context: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> RuntimeError {
    RuntimeError::internal(context, e)
}

fn invalid(kind: RuntimeErrorKind, message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(kind, message)
}

/// A container prepared on the host: what to persist, and its spec.
#[derive(Debug)]
pub struct Prepared {
    /// What to persist and clean up later (pid still 0).
    pub container: HostContainer,
    /// The OCI spec.
    pub spec: oci_spec::runtime::Spec,
}

/// Prepares container `id`'s files and spec in the pod `sandbox`. On
/// failure nothing is left behind.
pub fn prepare(
    cfg: &HostRuntimeConfig,
    sandbox: &SandboxConfig,
    pod: &HostSandbox,
    id: &str,
    config: &ContainerConfig,
    log_path: &str,
    target_pid: Option<PathBuf>,
) -> Result<Prepared, RuntimeError> {
    let dir = cfg.container_dir(id);
    let container = HostContainer {
        rootfs: dir.join("rootfs"),
        dir,
        name: short_id(id).to_owned(),
        layer: cfg.layers_dir.join(id),
        pid: 0,
        cgroup: pod.cgroup.container(id),
        tty: config.tty,
        mounts: Vec::new(),
    };
    let hierarchy = cgroups::Hierarchy::new(&cfg.cgroup_root);
    let mut container = container;
    match spec(
        sandbox,
        pod,
        config,
        log_path,
        &mut container,
        target_pid,
        &hierarchy,
    ) {
        Ok(spec) => Ok(Prepared { container, spec }),
        Err(e) => {
            if let Err(cleanup) = remove(&container) {
                tracing::warn!(container = id, "cleanup after a failed create: {cleanup}");
            }
            Err(e)
        }
    }
}

/// Resolves a CRI mount's host path (created when missing, as other
/// runtimes do) and checks its propagation can be honoured.
fn mount_source(m: &runtime_api::container::Mount) -> Result<PathBuf, RuntimeError> {
    let resolved = resolve_host_path(m).map_err(|e| match e {
        HostPathError::NotAbsolute { .. } => {
            invalid(RuntimeErrorKind::InvalidArgument, e.to_string())
        }
        other => internal(other.to_string(), other),
    })?;
    let (ok, needs) = match m.propagation {
        Propagation::Private => (Ok(()), ""),
        Propagation::HostToContainer => (check_shared_or_slave(&resolved), "a shared or slave"),
        Propagation::Bidirectional => (check_shared(&resolved), "a shared"),
    };
    ok.map_err(|e| {
        invalid(
            RuntimeErrorKind::FailedPrecondition,
            format!(
                "mount {}: {:?} propagation needs host path {} on {needs} mount \
                 (e.g. `mount --make-rshared` on its mount point): {e}",
                m.container_path,
                m.propagation,
                resolved.display()
            ),
        )
    })?;
    Ok(resolved)
}

fn spec(
    sandbox: &SandboxConfig,
    pod: &HostSandbox,
    config: &ContainerConfig,
    log_path: &str,
    c: &mut HostContainer,
    target_pid: Option<PathBuf>,
    hierarchy: &cgroups::Hierarchy,
) -> Result<oci_spec::runtime::Spec, RuntimeError> {
    let lower = &config.image.rootfs;
    if !lower.is_dir() {
        return Err(invalid(
            RuntimeErrorKind::NotFound,
            format!(
                "root filesystem {} of image {} is missing",
                lower.display(),
                config.image.user_ref
            ),
        ));
    }
    let mut sources = config
        .mounts
        .iter()
        .map(mount_source)
        .collect::<Result<Vec<_>, _>>()?;
    // A pod with a user namespace sees its image and volumes through that
    // namespace's ID mapping: the host's root is the pod's root.
    let userns = match &pod.userns {
        Some(u) => {
            // The pod's root sets the container up: it must reach the
            // container's directory.
            crate::acl::grant_search(&c.dir, u.root_uid)
                .map_err(|e| internal("let the pod's root reach its container", e))?;
            Some(std::fs::File::open(&u.file).map_err(|e| {
                internal(
                    format!("open the pod's user namespace {}", u.file.display()),
                    e,
                )
            })?)
        }
        None => None,
    };
    let root = sandbox.namespaces.userns.as_ref().and_then(|u| u.root());
    let idmap = match (&userns, root) {
        (Some(file), Some(root)) => Some(container::rootfs::Idmap {
            userns: std::os::fd::AsFd::as_fd(file),
            root,
        }),
        (Some(_), None) => {
            return Err(invalid(
                RuntimeErrorKind::InvalidArgument,
                "a pod's user namespace must map ID 0 (its root) in uids and gids",
            ));
        }
        _ => None,
    };
    let made =
        container::rootfs::mount_overlay(lower, &c.layer, &c.rootfs, MsFlags::empty(), idmap)
            .map_err(|e| internal(e.to_string(), e))?;
    // The root filesystem is unmounted by its own path.
    c.mounts.extend(made.into_iter().filter(|m| *m != c.rootfs));
    if let Some(idmap) = idmap {
        for (n, (m, source)) in config.mounts.iter().zip(sources.iter_mut()).enumerate() {
            container::mounts::check_idmapped_propagation(m)
                .map_err(|e| invalid(RuntimeErrorKind::InvalidArgument, e))?;
            let target = c.dir.join("mounts").join(n.to_string());
            container::mounts::mount_point_for(source, &target)
                .map_err(|e| internal(format!("create {}", target.display()), e))?;
            container::mounts::bind(
                source,
                &target,
                Propagation::Private,
                false,
                Some(idmap.userns),
            )
            .map_err(|e| internal(format!("mount {}", m.container_path), e))?;
            c.mounts.push(target.clone());
            *source = target;
        }
    }
    if !log_path.is_empty() {
        let path = Path::new(log_path);
        let Some(parent) = path.parent().filter(|_| path.file_name().is_some()) else {
            return Err(invalid(
                RuntimeErrorKind::InvalidArgument,
                format!("log path {log_path:?} has no file name"),
            ));
        };
        std::fs::create_dir_all(parent)
            .map_err(|e| internal(format!("create log directory {}", parent.display()), e))?;
    }
    let layout = Layout {
        rootfs: c.rootfs.clone(),
        host_rootfs: c.rootfs.clone(),
        mount_sources: sources,
        etc_hosts: pod.dir.join("hosts"),
        resolv_conf: pod.dir.join("resolv.conf"),
        etc_hostname: pod.dir.join("hostname"),
        shm: pod.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm")),
        cgroup: c.cgroup.clone(),
        namespaces: PodNamespaces {
            network: pod.netns.clone(),
            uts: pod.namespaces.uts.clone(),
            ipc: pod.namespaces.ipc.clone(),
            pid: pod.pid_holder.as_ref().map(|h| h.file.clone()),
            node: true,
            target_pid,
            user: pod.userns.as_ref().map(|u| u.file.clone()),
        },
    };
    let mut spec = container::spec::build(config, sandbox, &layout).map_err(|e| match e {
        container::spec::SpecError::Invalid(_) => internal("build the OCI spec", e),
        other => invalid(RuntimeErrorKind::InvalidArgument, other.to_string()),
    })?;
    // Mounts made in the container under a bidirectional mount reach the
    // host only if the container's root keeps the host's peer groups (the
    // default, slave, is enough for host-to-container).
    let bidirectional = config
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional);
    if let (true, Some(linux)) = (bidirectional, spec.linux_mut().as_mut()) {
        linux.set_rootfs_propagation(Some("shared".to_owned()));
    }
    bound_capabilities(
        &mut spec,
        config.security.privileged,
        container::caps::own_bounding_set(),
    )?;
    if !hierarchy.unified() {
        own_cgroups_v1(&mut spec, hierarchy, &c.cgroup)?;
    }
    Ok(spec)
}

/// Keeps the spec's capabilities within the runtime's own bounding set
/// (`mask`): a privileged container gets all the runtime has; a capability
/// asked for by name that the node does not have is refused.
fn bound_capabilities(
    spec: &mut oci_spec::runtime::Spec,
    privileged: bool,
    mask: Option<u64>,
) -> Result<(), RuntimeError> {
    let (Some(mask), Some(process)) = (mask, spec.process_mut().as_mut()) else {
        return Ok(());
    };
    let Some(mut caps) = process.capabilities().clone() else {
        return Ok(());
    };
    let has =
        |c: &oci_spec::runtime::Capability| container::caps::in_bounding_set(&cap_name(c), mask);
    let keep = |set: &Option<oci_spec::runtime::Capabilities>| {
        set.as_ref().map(|set| {
            set.iter()
                .filter(|c| has(c))
                .copied()
                .collect::<oci_spec::runtime::Capabilities>()
        })
    };
    if !privileged
        && let Some(missing) = caps
            .bounding()
            .as_ref()
            .and_then(|set| set.iter().find(|c| !has(c)))
    {
        return Err(invalid(
            RuntimeErrorKind::InvalidArgument,
            format!(
                "capability {} is not in this node's bounding set",
                cap_name(missing)
            ),
        ));
    }
    let (bounding, effective, permitted, inheritable, ambient) = (
        keep(caps.bounding()),
        keep(caps.effective()),
        keep(caps.permitted()),
        keep(caps.inheritable()),
        keep(caps.ambient()),
    );
    caps.set_bounding(bounding)
        .set_effective(effective)
        .set_permitted(permitted)
        .set_inheritable(inheritable)
        .set_ambient(ambient);
    process.set_capabilities(Some(caps));
    Ok(())
}

/// On a cgroup v1 host, the container's `/sys/fs/cgroup` is a tmpfs with
/// its own cgroup of each controller bound in (read-only unless the
/// `cgroup` mount was writable, i.e. privileged), as runc shows v1 cgroups.
///
/// libcontainer's own v1 `cgroup` mount looks the container's cgroups up in
/// `/proc/<pid>` with the pid of the container's PID namespace, which is
/// wrong in a pod's shared PID namespace (the pid is the host's someone
/// else's, or nobody's, and the create fails).
fn own_cgroups_v1(
    spec: &mut oci_spec::runtime::Spec,
    hierarchy: &cgroups::Hierarchy,
    cgroup: &str,
) -> Result<(), RuntimeError> {
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return Ok(());
    };
    let Some(at) = mounts.iter().position(|m| {
        m.destination() == Path::new("/sys/fs/cgroup") && m.typ().as_deref() == Some("cgroup")
    }) else {
        return Ok(());
    };
    let writable = mounts[at]
        .options()
        .as_ref()
        .is_some_and(|o| o.iter().any(|x| x == "rw"));
    let mode = if writable { "rw" } else { "ro" };
    let mut replacement = vec![serde_json::json!({
        "destination": "/sys/fs/cgroup", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "noexec", "nodev", "mode=755", "size=64k"],
    })];
    for controller in hierarchy.v1_controllers() {
        replacement.push(serde_json::json!({
            "destination": format!("/sys/fs/cgroup/{controller}"),
            "type": "bind",
            "source": hierarchy.v1(&controller, cgroup),
            "options": ["rbind", "nosuid", "noexec", "nodev", mode],
        }));
    }
    let replacement: Vec<oci_spec::runtime::Mount> =
        serde_json::from_value(serde_json::Value::Array(replacement))
            .map_err(|e| internal("build the cgroup mounts", e))?;
    mounts.splice(at..=at, replacement);
    Ok(())
}

/// The `CAP_` name of a capability, as the OCI spec writes it.
fn cap_name(c: &oci_spec::runtime::Capability) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Unmounts the container's root filesystem and deletes its directory and
/// writable layer; a missing one is not an error.
pub fn remove(c: &HostContainer) -> Result<(), RuntimeError> {
    unmount(&c.rootfs)?;
    for m in c.mounts.iter().rev() {
        unmount(m)?;
    }
    remove_dir(&c.dir)?;
    remove_dir(&c.layer)
}

/// Deletes the directory `dir` and what is in it; a missing one is not an error.
pub fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(internal(format!("remove {}", dir.display()), e)),
    }
}

/// Detaches the mount at `path`; nothing mounted there is not an error.
pub fn unmount(path: &Path) -> Result<(), RuntimeError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(internal(format!("unmount {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(caps: &[&str]) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "cwd": "/",
                "args": ["sh"],
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            },
            "root": {"path": "/tmp/r"},
        }))
        .unwrap()
    }

    #[test]
    fn capabilities_stay_within_the_bounding_set() {
        let mask = 1 << container::caps::number("CAP_CHOWN").unwrap();
        let mut spec = spec_with(&["CAP_CHOWN", "CAP_SYS_RESOURCE"]);
        bound_capabilities(&mut spec, true, Some(mask)).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let names: Vec<String> = set.as_ref().unwrap().iter().map(cap_name).collect();
            assert_eq!(names, ["CAP_CHOWN"]);
        }
        let mut spec = spec_with(&["CAP_CHOWN", "CAP_SYS_RESOURCE"]);
        let err = bound_capabilities(&mut spec, false, Some(mask)).unwrap_err();
        assert_eq!(err.kind, RuntimeErrorKind::InvalidArgument);
        assert!(err.to_string().contains("CAP_SYS_RESOURCE"), "{err}");
        let mut spec = spec_with(&["CAP_CHOWN"]);
        bound_capabilities(&mut spec, false, Some(mask)).unwrap();
    }
}
