//! Containers: CreateContainer configs in (security context, mounts,
//! seccomp, resources), records out as `Container` and `ContainerStatus`,
//! list filters.

use pods::container::{
    ContainerImage, ContainerMetadata, ContainerResources, Device, Mount, Propagation, Seccomp,
    SecurityContext, SupplementalGroupsPolicy,
};
use pods::{ContainerConfig, ContainerFilter, ContainerRecord, ContainerState};

use super::{map, namespace_options};
use crate::proto;

/// The seccomp profile: the `seccomp` field when set, else the deprecated
/// `seccomp_profile_path` (`""` is unconfined, as the API documents).
fn seccomp(profile: Option<&proto::SecurityProfile>, path: &str) -> Result<Seccomp, String> {
    use proto::security_profile::ProfileType;
    if let Some(p) = profile {
        let kind = ProfileType::try_from(p.profile_type)
            .map_err(|_| format!("unknown seccomp profile type {}", p.profile_type))?;
        if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
            return Err(format!(
                "seccomp localhost_ref {:?} is only allowed with profile type Localhost",
                p.localhost_ref
            ));
        }
        return match kind {
            ProfileType::RuntimeDefault => Ok(Seccomp::RuntimeDefault),
            ProfileType::Unconfined => Ok(Seccomp::Unconfined),
            ProfileType::Localhost => localhost_profile(&p.localhost_ref),
        };
    }
    match path {
        "" | "unconfined" => Ok(Seccomp::Unconfined),
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(file) => localhost_profile(file),
            None => Err(format!("unknown seccomp profile {other:?}")),
        },
    }
}

fn localhost_profile(path: &str) -> Result<Seccomp, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "localhost seccomp profile {path:?} must be an absolute path"
        ));
    }
    Ok(Seccomp::Localhost(path.to_owned()))
}

fn propagation(value: i32) -> Result<Propagation, String> {
    match proto::MountPropagation::try_from(value) {
        Ok(proto::MountPropagation::PropagationPrivate) => Ok(Propagation::Private),
        Ok(proto::MountPropagation::PropagationHostToContainer) => Ok(Propagation::HostToContainer),
        Ok(proto::MountPropagation::PropagationBidirectional) => Ok(Propagation::Bidirectional),
        Err(_) => Err(format!("unknown mount propagation {value}")),
    }
}

fn propagation_to_proto(p: Propagation) -> i32 {
    match p {
        Propagation::Private => proto::MountPropagation::PropagationPrivate as i32,
        Propagation::HostToContainer => proto::MountPropagation::PropagationHostToContainer as i32,
        Propagation::Bidirectional => proto::MountPropagation::PropagationBidirectional as i32,
    }
}

fn mount(m: proto::Mount) -> Result<Mount, String> {
    if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Err(format!(
            "image volume mounts are not supported (mount at {:?})",
            m.container_path
        ));
    }
    let propagation = propagation(m.propagation)?;
    // The API: recursive_read_only needs readonly and private propagation.
    if m.recursive_read_only && !m.readonly {
        return Err(format!(
            "mount at {:?}: recursive_read_only needs readonly",
            m.container_path
        ));
    }
    if m.recursive_read_only && propagation != Propagation::Private {
        return Err(format!(
            "mount at {:?}: recursive_read_only needs PROPAGATION_PRIVATE",
            m.container_path
        ));
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(format!(
            "ID-mapped mounts are not supported (mount at {:?})",
            m.container_path
        ));
    }
    Ok(Mount {
        propagation,
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
    })
}

/// CRI Linux resources as the domain's.
pub fn container_resources(r: proto::LinuxContainerResources) -> ContainerResources {
    ContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        memory_swap_limit_bytes: r.memory_swap_limit_in_bytes,
        unified: r.unified.into_iter().collect(),
        // The CRI has no task limit per container; the kubelet sets the pod's.
        pids_limit: 0,
    }
}

fn resources_to_proto(r: &ContainerResources) -> proto::LinuxContainerResources {
    proto::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| proto::HugepageLimit {
                page_size: size.clone(),
                limit: *limit,
            })
            .collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_bytes,
        unified: r.unified.clone().into_iter().collect(),
    }
}

/// The container's Linux security context.
///
/// Masked and read-only paths: the kubelet (1.12 and later) always sends
/// them, the full default list for the `Default` proc mount and an empty
/// list for `Unmasked`; an empty list therefore means "mask nothing" and is
/// passed on as `Some(vec![])`. Only a request without any security context
/// (never the kubelet's) gets `None`, the runtime's defaults.
fn security_context(
    sc: Option<proto::LinuxContainerSecurityContext>,
) -> Result<SecurityContext, String> {
    let Some(sc) = sc else {
        return Ok(SecurityContext {
            seccomp: seccomp(None, "")?,
            ..Default::default()
        });
    };
    let seccomp = seccomp(sc.seccomp.as_ref(), deprecated_seccomp_path(&sc))?;
    let caps = sc.capabilities.unwrap_or_default();
    if !caps.add_ambient_capabilities.is_empty() {
        return Err(format!(
            "ambient capabilities are not supported ({:?})",
            caps.add_ambient_capabilities
        ));
    }
    let supplemental_groups_policy =
        match proto::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
            Ok(proto::SupplementalGroupsPolicy::Merge) => SupplementalGroupsPolicy::Merge,
            Ok(proto::SupplementalGroupsPolicy::Strict) => SupplementalGroupsPolicy::Strict,
            Err(_) => {
                return Err(format!(
                    "unknown supplemental_groups_policy {}",
                    sc.supplemental_groups_policy
                ));
            }
        };
    let run_as_user = sc.run_as_user.map(|v| v.value);
    let run_as_group = sc.run_as_group.map(|v| v.value);
    if run_as_user.is_some() && !sc.run_as_username.is_empty() {
        return Err("run_as_user and run_as_username are mutually exclusive".into());
    }
    if run_as_group.is_some() && run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err("run_as_group needs run_as_user or run_as_username".into());
    }
    Ok(SecurityContext {
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        privileged: sc.privileged,
        namespaces: namespace_options(sc.namespace_options.as_ref())?,
        run_as_user,
        run_as_group,
        run_as_username: sc.run_as_username,
        readonly_rootfs: sc.readonly_rootfs,
        supplemental_groups: sc.supplemental_groups,
        supplemental_groups_policy,
        no_new_privs: sc.no_new_privs,
        masked_paths: Some(sc.masked_paths),
        readonly_paths: Some(sc.readonly_paths),
        seccomp,
    })
}

/// The deprecated `seccomp_profile_path`, still read when `seccomp` is unset.
#[allow(deprecated)]
fn deprecated_seccomp_path(sc: &proto::LinuxContainerSecurityContext) -> &str {
    &sc.seccomp_profile_path
}

/// Translates a CreateContainer config; the image is left for the caller
/// to resolve. `Err` names what is invalid.
pub fn container_config(config: proto::ContainerConfig) -> Result<ContainerConfig, String> {
    let metadata = config
        .metadata
        .ok_or_else(|| "metadata is required".to_owned())?;
    if !config.cdi_devices.is_empty() {
        return Err("CDI devices are not supported".into());
    }
    let linux = config.linux.unwrap_or_default();
    Ok(ContainerConfig {
        metadata: ContainerMetadata {
            name: metadata.name,
            attempt: metadata.attempt,
        },
        image: ContainerImage::default(),
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config
            .envs
            .into_iter()
            .map(|kv| match String::from_utf8(kv.value) {
                Ok(value) => Ok((kv.key, value)),
                Err(_) => Err(format!(
                    "the value of environment variable {:?} is not UTF-8",
                    kv.key
                )),
            })
            .collect::<Result<_, _>>()?,
        mounts: config
            .mounts
            .into_iter()
            .map(mount)
            .collect::<Result<_, _>>()?,
        devices: config
            .devices
            .into_iter()
            .map(|d| Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path: config.log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: linux.resources.map(container_resources).unwrap_or_default(),
        security: security_context(linux.security_context)?,
        stop_signal: stop_signal_name(config.stop_signal)?,
    })
}

/// The CRI `Signal` as a signal name (`SIGRTMIN+3`); empty for the runtime's default.
fn stop_signal_name(value: i32) -> Result<String, String> {
    let signal =
        proto::Signal::try_from(value).map_err(|_| format!("unknown stop signal {value}"))?;
    if signal == proto::Signal::RuntimeDefault {
        return Ok(String::new());
    }
    let name = signal.as_str_name();
    Ok(if let Some(n) = name.strip_prefix("SIGRTMINPLUS") {
        format!("SIGRTMIN+{n}")
    } else if let Some(n) = name.strip_prefix("SIGRTMAXMINUS") {
        format!("SIGRTMAX-{n}")
    } else {
        name.to_owned()
    })
}

/// A signal name as the CRI `Signal`; `RUNTIME_DEFAULT` for one the enum lacks.
fn stop_signal_to_proto(name: &str) -> i32 {
    let Ok(canonical) = container::signals::canonical_name(name) else {
        return proto::Signal::RuntimeDefault as i32;
    };
    let wire = canonical.replace('+', "PLUS").replace('-', "MINUS");
    proto::Signal::from_str_name(&wire).map_or(proto::Signal::RuntimeDefault as i32, |s| s as i32)
}

fn container_state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created => proto::ContainerState::ContainerCreated as i32,
        ContainerState::Running => proto::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => proto::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => proto::ContainerState::ContainerUnknown as i32,
    }
}

pub(crate) fn container_metadata(record: &ContainerRecord) -> Option<proto::ContainerMetadata> {
    Some(proto::ContainerMetadata {
        name: record.config.metadata.name.clone(),
        attempt: record.config.metadata.attempt,
    })
}

fn image_spec(record: &ContainerRecord) -> Option<proto::ImageSpec> {
    Some(proto::ImageSpec {
        image: record.config.image.user_ref.clone(),
        user_specified_image: record.config.image.user_ref.clone(),
        ..Default::default()
    })
}

/// A record as a `Container` list entry.
pub fn container(record: &ContainerRecord) -> proto::Container {
    proto::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.sandbox_id.clone(),
        metadata: container_metadata(record),
        image: image_spec(record),
        image_ref: record.config.image.image_ref.clone(),
        state: container_state(record.status.state),
        created_at: record.created_at_ns,
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        image_id: record.config.image.id.clone(),
    }
}

/// A record as a `ContainerStatus`.
pub fn container_status(record: &ContainerRecord) -> proto::ContainerStatus {
    let s = &record.status;
    proto::ContainerStatus {
        id: record.id.clone(),
        metadata: container_metadata(record),
        state: container_state(s.state),
        created_at: record.created_at_ns,
        started_at: s.started_at_ns,
        finished_at: s.finished_at_ns,
        exit_code: s.exit_code,
        image: image_spec(record),
        image_ref: record.config.image.image_ref.clone(),
        reason: s.reason.clone(),
        message: s.message.clone(),
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        mounts: record
            .config
            .mounts
            .iter()
            .map(|m| proto::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: propagation_to_proto(m.propagation),
                ..Default::default()
            })
            .collect(),
        log_path: record.log_path.clone(),
        stop_signal: stop_signal_to_proto(record.config.effective_stop_signal()),
        resources: Some(proto::ContainerResources {
            linux: Some(resources_to_proto(&record.config.resources)),
            windows: None,
        }),
        image_id: record.config.image.id.clone(),
        user: s.user.as_ref().map(|u| proto::ContainerUser {
            linux: Some(proto::LinuxContainerUser {
                uid: u.uid,
                gid: u.gid,
                supplemental_groups: u.groups.clone(),
            }),
        }),
    }
}

/// Translates a ListContainers filter; `Err` names what is invalid.
pub fn container_filter(filter: Option<proto::ContainerFilter>) -> Result<ContainerFilter, String> {
    let Some(f) = filter else {
        return Ok(ContainerFilter::default());
    };
    let state = match f.state.map(|s| proto::ContainerState::try_from(s.state)) {
        None => None,
        Some(Ok(proto::ContainerState::ContainerCreated)) => Some(ContainerState::Created),
        Some(Ok(proto::ContainerState::ContainerRunning)) => Some(ContainerState::Running),
        Some(Ok(proto::ContainerState::ContainerExited)) => Some(ContainerState::Exited),
        Some(Ok(proto::ContainerState::ContainerUnknown)) => Some(ContainerState::Unknown),
        Some(Err(e)) => return Err(format!("unknown container state in filter: {e}")),
    };
    Ok(ContainerFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        sandbox_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        state,
        label_selector: f.label_selector.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests;
