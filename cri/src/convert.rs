//! CRI messages <-> domain types.

use std::collections::HashMap;

use pods::container::{
    ContainerImage, ContainerMetadata, ContainerResources, Device, ImageProcess, Mount,
    NamespaceMode, NamespaceOptions, Propagation, Seccomp, SecurityContext,
};
use pods::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerState, DnsConfig, PodMetadata,
    PodResources, PortMapping, SandboxConfig, SandboxFilter, SandboxRecord, SandboxState,
};

use crate::proto;

/// The kubelet's `NamespaceMode::NODE`.
const NAMESPACE_MODE_NODE: i32 = proto::NamespaceMode::Node as i32;

/// Translates a RunPodSandbox config; `Err` names what is invalid.
pub fn sandbox_config(
    config: proto::PodSandboxConfig,
    runtime_handler: String,
) -> Result<SandboxConfig, String> {
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    if let Some(ns) = security.namespace_options.as_ref() {
        for (what, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
            if mode == NAMESPACE_MODE_NODE {
                return Err(format!(
                    "pods in the host {what} namespace cannot run in a VM sandbox \
                     (host-namespace pods are not supported yet)"
                ));
            }
        }
    }
    let namespaces = namespace_options(security.namespace_options.as_ref())?;
    let dns = config
        .dns_config
        .map_or_else(DnsConfig::default, |d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        });
    let resources = |r: Option<proto::LinuxContainerResources>| {
        r.map(|r| PodResources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_bytes: r.memory_limit_in_bytes,
        })
    };
    Ok(SandboxConfig {
        metadata: config.metadata.map(|m| PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        }),
        hostname: config.hostname,
        log_directory: config.log_directory,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        runtime_handler,
        resources: resources(linux.resources),
        overhead: resources(linux.overhead),
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| PortMapping {
                // An unknown enum value is kept visible, and refused by validation.
                protocol: proto::Protocol::try_from(p.protocol).map_or_else(
                    |_| format!("unknown protocol {}", p.protocol),
                    |p| p.as_str_name().to_lowercase(),
                ),
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns,
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces,
        privileged: security.privileged,
    })
}

fn namespace_mode(mode: i32, what: &str) -> Result<NamespaceMode, String> {
    match proto::NamespaceMode::try_from(mode) {
        Ok(proto::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(proto::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(proto::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(proto::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(format!("unknown {what} namespace mode {mode}")),
    }
}

/// Namespace options; absent options are the CRI default (all POD).
fn namespace_options(ns: Option<&proto::NamespaceOption>) -> Result<NamespaceOptions, String> {
    let Some(ns) = ns else {
        return Ok(NamespaceOptions::default());
    };
    let options = NamespaceOptions {
        network: namespace_mode(ns.network, "network")?,
        pid: namespace_mode(ns.pid, "pid")?,
        ipc: namespace_mode(ns.ipc, "ipc")?,
        target_id: ns.target_id.clone(),
    };
    let targets = [options.network, options.pid, options.ipc].contains(&NamespaceMode::Target);
    if targets && options.target_id.is_empty() {
        return Err("namespace mode TARGET needs target_id".into());
    }
    Ok(options)
}

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
    if m.recursive_read_only {
        return Err(format!(
            "recursive read-only mounts are not supported (mount at {:?})",
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
        propagation: propagation(m.propagation)?,
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
    })
}

fn container_resources(r: proto::LinuxContainerResources) -> ContainerResources {
    ContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
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
        ..Default::default()
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
    if sc.supplemental_groups_policy == proto::SupplementalGroupsPolicy::Strict as i32 {
        return Err("supplemental_groups_policy Strict is not supported".into());
    }
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
            .map(|kv| (kv.key, kv.value))
            .collect(),
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
    })
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Process defaults from an OCI image config (`config.Entrypoint`, …).
pub fn image_process(image_config: &serde_json::Value) -> ImageProcess {
    let c = &image_config["config"];
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
    ImageProcess {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: text("WorkingDir"),
        user: text("User"),
        stop_signal: text("StopSignal"),
    }
}

fn container_state(state: ContainerState) -> i32 {
    match state {
        ContainerState::Created => proto::ContainerState::ContainerCreated as i32,
        ContainerState::Running => proto::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => proto::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => proto::ContainerState::ContainerUnknown as i32,
    }
}

fn container_metadata(record: &ContainerRecord) -> Option<proto::ContainerMetadata> {
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
        resources: Some(proto::ContainerResources {
            linux: Some(resources_to_proto(&record.config.resources)),
            windows: None,
        }),
        image_id: record.config.image.id.clone(),
        user: None,
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

fn metadata(record: &SandboxRecord) -> Option<proto::PodSandboxMetadata> {
    record.metadata().map(|m| proto::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    })
}

fn state(state: SandboxState) -> i32 {
    match state {
        SandboxState::Ready => proto::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => proto::PodSandboxState::SandboxNotready as i32,
    }
}

fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A record as a `PodSandbox` list entry.
pub fn pod_sandbox(record: &SandboxRecord) -> proto::PodSandbox {
    proto::PodSandbox {
        id: record.id.clone(),
        metadata: metadata(record),
        state: state(record.state),
        created_at: record.created_at_ns,
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        runtime_handler: record.config.runtime_handler.clone(),
    }
}

/// A record as a `PodSandboxStatus`.
pub fn pod_sandbox_status(record: &SandboxRecord) -> proto::PodSandboxStatus {
    proto::PodSandboxStatus {
        id: record.id.clone(),
        metadata: metadata(record),
        state: state(record.state),
        created_at: record.created_at_ns,
        network: Some(proto::PodSandboxNetworkStatus {
            ip: record.ips.first().cloned().unwrap_or_default(),
            additional_ips: record
                .ips
                .iter()
                .skip(1)
                .map(|ip| proto::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(proto::LinuxPodSandboxStatus {
            namespaces: Some(proto::Namespace {
                options: Some(proto::NamespaceOption::default()),
            }),
        }),
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        runtime_handler: record.config.runtime_handler.clone(),
    }
}

/// Translates a ListPodSandbox filter; `Err` names what is invalid.
pub fn sandbox_filter(filter: Option<proto::PodSandboxFilter>) -> Result<SandboxFilter, String> {
    let Some(f) = filter else {
        return Ok(SandboxFilter::default());
    };
    let state = match f.state.map(|s| s.state) {
        None => None,
        Some(s) if s == proto::PodSandboxState::SandboxReady as i32 => Some(SandboxState::Ready),
        Some(s) if s == proto::PodSandboxState::SandboxNotready as i32 => {
            Some(SandboxState::NotReady)
        }
        Some(other) => return Err(format!("unknown pod sandbox state {other} in filter")),
    };
    Ok(SandboxFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state,
        label_selector: f.label_selector.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_is_refused() {
        let config = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        network: NAMESPACE_MODE_NODE,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = sandbox_config(config, String::new()).unwrap_err();
        assert!(err.contains("host network namespace"), "{err}");
    }

    #[test]
    fn resources_and_overhead_are_carried() {
        let res = proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 1 << 28,
            ..Default::default()
        };
        let config = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                resources: Some(res.clone()),
                overhead: Some(proto::LinuxContainerResources {
                    memory_limit_in_bytes: 1 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = sandbox_config(config, "frakti".into()).unwrap();
        assert_eq!(c.resources.unwrap().cpu_quota, 50_000);
        assert_eq!(c.resources.unwrap().memory_limit_bytes, 1 << 28);
        assert_eq!(c.overhead.unwrap().memory_limit_bytes, 1 << 20);
        assert_eq!(c.runtime_handler, "frakti");
    }

    #[test]
    fn port_protocols() {
        let port = |protocol| proto::PortMapping {
            protocol,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        };
        let config = proto::PodSandboxConfig {
            port_mappings: vec![port(proto::Protocol::Udp as i32), port(9)],
            ..Default::default()
        };
        let c = sandbox_config(config, String::new()).unwrap();
        assert_eq!(c.port_mappings[0].protocol, "udp");
        assert_eq!(c.port_mappings[1].protocol, "unknown protocol 9");
    }

    #[test]
    fn filter_state_is_checked() {
        let f = proto::PodSandboxFilter {
            state: Some(proto::PodSandboxStateValue { state: 7 }),
            ..Default::default()
        };
        assert!(sandbox_filter(Some(f)).unwrap_err().contains('7'));
        let f = proto::PodSandboxFilter {
            id: "ab".into(),
            state: Some(proto::PodSandboxStateValue { state: 1 }),
            ..Default::default()
        };
        let got = sandbox_filter(Some(f)).unwrap();
        assert_eq!(got.id.as_deref(), Some("ab"));
        assert_eq!(got.state, Some(SandboxState::NotReady));
    }

    fn sec(sc: proto::LinuxContainerSecurityContext) -> Result<ContainerConfig, String> {
        container_config(proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "c".into(),
                attempt: 1,
            }),
            linux: Some(proto::LinuxContainerConfig {
                resources: None,
                security_context: Some(sc),
            }),
            ..Default::default()
        })
    }

    fn profile(kind: proto::security_profile::ProfileType, r: &str) -> proto::SecurityProfile {
        proto::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: r.into(),
        }
    }

    #[test]
    #[allow(deprecated)]
    fn seccomp_forms() {
        use proto::security_profile::ProfileType;
        let by_path = |p: &str| seccomp(None, p);
        assert_eq!(by_path(""), Ok(Seccomp::Unconfined));
        assert_eq!(by_path("unconfined"), Ok(Seccomp::Unconfined));
        assert_eq!(by_path("runtime/default"), Ok(Seccomp::RuntimeDefault));
        assert_eq!(by_path("docker/default"), Ok(Seccomp::RuntimeDefault));
        assert_eq!(
            by_path("localhost//etc/seccomp/p.json"),
            Ok(Seccomp::Localhost("/etc/seccomp/p.json".into()))
        );
        assert!(
            by_path("localhost/relative.json")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(by_path("bogus").unwrap_err().contains("bogus"));

        let field = |p: proto::SecurityProfile, path: &str| seccomp(Some(&p), path);
        // The field wins over the deprecated path.
        assert_eq!(
            field(profile(ProfileType::RuntimeDefault, ""), "unconfined"),
            Ok(Seccomp::RuntimeDefault)
        );
        assert_eq!(
            field(profile(ProfileType::Unconfined, ""), ""),
            Ok(Seccomp::Unconfined)
        );
        assert_eq!(
            field(profile(ProfileType::Localhost, "/p.json"), ""),
            Ok(Seccomp::Localhost("/p.json".into()))
        );
        assert!(field(profile(ProfileType::Localhost, ""), "").is_err());
        assert!(field(profile(ProfileType::RuntimeDefault, "/p.json"), "").is_err());
        let unknown = proto::SecurityProfile {
            profile_type: 9,
            localhost_ref: String::new(),
        };
        assert!(field(unknown, "").unwrap_err().contains('9'));

        // Through the whole container config.
        let c = sec(proto::LinuxContainerSecurityContext {
            seccomp_profile_path: "runtime/default".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.security.seccomp, Seccomp::RuntimeDefault);
    }

    #[test]
    fn mounts_and_propagation() {
        let m = |propagation| proto::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation,
            ..Default::default()
        };
        let config = proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata::default()),
            mounts: vec![
                m(proto::MountPropagation::PropagationPrivate as i32),
                m(proto::MountPropagation::PropagationHostToContainer as i32),
                m(proto::MountPropagation::PropagationBidirectional as i32),
            ],
            ..Default::default()
        };
        let c = container_config(config.clone()).unwrap();
        let got: Vec<Propagation> = c.mounts.iter().map(|m| m.propagation).collect();
        assert_eq!(
            got,
            vec![
                Propagation::Private,
                Propagation::HostToContainer,
                Propagation::Bidirectional
            ]
        );
        assert!(c.mounts[0].readonly);
        assert_eq!(c.mounts[0].host_path, "/srv/data");

        let mut bad = config.clone();
        bad.mounts = vec![m(7)];
        assert!(container_config(bad).unwrap_err().contains("propagation 7"));
        let mut image = config.clone();
        image.mounts = vec![proto::Mount {
            image: Some(proto::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..m(0)
        }];
        assert!(
            container_config(image)
                .unwrap_err()
                .contains("image volume")
        );
        let mut rro = config;
        rro.mounts = vec![proto::Mount {
            recursive_read_only: true,
            ..m(0)
        }];
        assert!(container_config(rro).unwrap_err().contains("recursive"));
    }

    #[test]
    fn namespace_options_are_carried() {
        let c = sec(proto::LinuxContainerSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                network: proto::NamespaceMode::Pod as i32,
                pid: proto::NamespaceMode::Target as i32,
                ipc: proto::NamespaceMode::Pod as i32,
                target_id: "abc".into(),
                userns_options: None,
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.security.namespaces.pid, NamespaceMode::Target);
        assert_eq!(c.security.namespaces.target_id, "abc");
        let err = sec(proto::LinuxContainerSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                pid: proto::NamespaceMode::Target as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("target_id"), "{err}");
        let err = sec(proto::LinuxContainerSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                ipc: 5,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("ipc namespace mode 5"), "{err}");

        // The pod's options become the sandbox's.
        let pod = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        pid: proto::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    privileged: true,
                    ..Default::default()
                }),
                sysctls: HashMap::from([("net.core.somaxconn".into(), "1024".into())]),
                ..Default::default()
            }),
            dns_config: Some(proto::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        let s = sandbox_config(pod, String::new()).unwrap();
        assert_eq!(s.namespaces.pid, NamespaceMode::Container);
        assert_eq!(s.namespaces.network, NamespaceMode::Pod);
        assert!(s.privileged);
        assert_eq!(s.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(s.dns.servers, vec!["10.96.0.10"]);
        assert_eq!(s.dns.searches, vec!["default.svc.cluster.local"]);
        assert_eq!(s.dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn security_context_fields() {
        let c = sec(proto::LinuxContainerSecurityContext {
            capabilities: Some(proto::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["ALL".into()],
                add_ambient_capabilities: Vec::new(),
            }),
            run_as_user: Some(proto::Int64Value { value: 1000 }),
            run_as_group: Some(proto::Int64Value { value: 3000 }),
            readonly_rootfs: true,
            supplemental_groups: vec![4000],
            no_new_privs: true,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: Vec::new(),
            ..Default::default()
        })
        .unwrap();
        let s = &c.security;
        assert_eq!(s.add_capabilities, vec!["NET_ADMIN"]);
        assert_eq!(s.drop_capabilities, vec!["ALL"]);
        assert_eq!((s.run_as_user, s.run_as_group), (Some(1000), Some(3000)));
        assert!(s.readonly_rootfs && s.no_new_privs);
        assert_eq!(s.supplemental_groups, vec![4000]);
        assert_eq!(s.masked_paths, Some(vec!["/proc/kcore".to_owned()]));
        // The kubelet's empty list (procMount Unmasked) means "none", not "defaults".
        assert_eq!(s.readonly_paths, Some(Vec::new()));
        assert_eq!(s.seccomp, Seccomp::Unconfined);

        // Without any security context, the runtime's defaults apply.
        let bare = container_config(proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata::default()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(bare.security.masked_paths, None);
        assert_eq!(bare.security.readonly_paths, None);

        let err = sec(proto::LinuxContainerSecurityContext {
            run_as_group: Some(proto::Int64Value { value: 1 }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("run_as_group"), "{err}");
        let err = sec(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 1 }),
            run_as_username: "app".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("mutually exclusive"), "{err}");
        let named = sec(proto::LinuxContainerSecurityContext {
            run_as_username: "app".into(),
            run_as_group: Some(proto::Int64Value { value: 1 }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(named.security.run_as_username, "app");
    }

    #[test]
    fn container_config_fields() {
        let config = proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "web".into(),
                attempt: 2,
            }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo".into()],
            working_dir: "/srv".into(),
            envs: vec![
                proto::KeyValue {
                    key: "A".into(),
                    value: "1".into(),
                },
                proto::KeyValue {
                    key: "A".into(),
                    value: "2".into(),
                },
            ],
            devices: vec![proto::Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: "rwm".into(),
            }],
            labels: HashMap::from([("app".into(), "web".into())]),
            annotations: HashMap::from([("a".into(), "b".into())]),
            log_path: "web/2.log".into(),
            stdin: true,
            stdin_once: true,
            tty: true,
            linux: Some(proto::LinuxContainerConfig {
                resources: Some(proto::LinuxContainerResources {
                    cpu_quota: 50_000,
                    memory_limit_in_bytes: 1 << 26,
                    oom_score_adj: 1000,
                    cpuset_cpus: "0-1".into(),
                    ..Default::default()
                }),
                security_context: None,
            }),
            ..Default::default()
        };
        let c = container_config(config).unwrap();
        assert_eq!((c.metadata.name.as_str(), c.metadata.attempt), ("web", 2));
        assert_eq!(c.command, vec!["/bin/sh"]);
        assert_eq!(c.args, vec!["-c", "echo"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(
            c.envs,
            vec![("A".into(), "1".into()), ("A".into(), "2".into())]
        );
        assert_eq!(c.devices[0].permissions, "rwm");
        assert_eq!(c.labels["app"], "web");
        assert_eq!(c.annotations["a"], "b");
        assert_eq!(c.log_path, "web/2.log");
        assert!(c.stdin && c.stdin_once && c.tty);
        assert_eq!(c.resources.cpu_quota, 50_000);
        assert_eq!(c.resources.memory_limit_bytes, 1 << 26);
        assert_eq!(c.resources.oom_score_adj, 1000);
        assert_eq!(c.resources.cpuset_cpus, "0-1");

        let err = container_config(proto::ContainerConfig::default()).unwrap_err();
        assert!(err.contains("metadata"), "{err}");
        let err = container_config(proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata::default()),
            cdi_devices: vec![proto::CdiDevice {
                name: "vendor.com/gpu=0".into(),
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("CDI"), "{err}");
    }

    #[test]
    fn image_config_process() {
        let config = serde_json::json!({
            "architecture": "amd64",
            "config": {
                "Entrypoint": ["/docker-entrypoint.sh"],
                "Cmd": ["nginx", "-g", "daemon off;"],
                "Env": ["PATH=/usr/bin"],
                "WorkingDir": "/srv",
                "User": "101:101",
                "StopSignal": "SIGQUIT"
            }
        });
        let p = image_process(&config);
        assert_eq!(p.entrypoint, vec!["/docker-entrypoint.sh"]);
        assert_eq!(p.cmd, vec!["nginx", "-g", "daemon off;"]);
        assert_eq!(p.env, vec!["PATH=/usr/bin"]);
        assert_eq!(p.working_dir, "/srv");
        assert_eq!(p.user, "101:101");
        assert_eq!(p.stop_signal, "SIGQUIT");
        let empty = image_process(&serde_json::json!({"config": {"Entrypoint": null}}));
        assert_eq!(empty, ImageProcess::default());
    }

    #[test]
    fn container_records_to_cri() {
        use pods::container::ContainerRuntimeStatus;
        let mut config = ContainerConfig {
            metadata: ContainerMetadata {
                name: "web".into(),
                attempt: 1,
            },
            image: ContainerImage {
                user_ref: "nginx:1.25".into(),
                id: "sha256:aa".into(),
                image_ref: "docker.io/library/nginx@sha256:bb".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        config.mounts.push(Mount {
            container_path: "/d".into(),
            host_path: "/h".into(),
            readonly: true,
            propagation: Propagation::HostToContainer,
        });
        config.annotations.insert("k".into(), "v".into());
        let record = ContainerRecord {
            id: "c1".into(),
            sandbox_id: "p1".into(),
            config,
            created_at_ns: 5,
            status: ContainerRuntimeStatus {
                state: ContainerState::Exited,
                started_at_ns: 6,
                finished_at_ns: 7,
                exit_code: 1,
                reason: "Error".into(),
                message: "boom".into(),
            },
            log_path: "/var/log/pods/x/web/1.log".into(),
            runtime_state: serde_json::Value::Null,
        };
        let s = container_status(&record);
        assert_eq!(s.state, proto::ContainerState::ContainerExited as i32);
        assert_eq!((s.created_at, s.started_at, s.finished_at), (5, 6, 7));
        assert_eq!(
            (s.exit_code, s.reason.as_str(), s.message.as_str()),
            (1, "Error", "boom")
        );
        assert_eq!(s.image.as_ref().unwrap().image, "nginx:1.25");
        assert_eq!(s.image_ref, "docker.io/library/nginx@sha256:bb");
        assert_eq!(s.image_id, "sha256:aa");
        assert_eq!(s.annotations["k"], "v");
        assert_eq!(
            s.mounts[0].propagation,
            proto::MountPropagation::PropagationHostToContainer as i32
        );
        assert_eq!(s.log_path, "/var/log/pods/x/web/1.log");
        let c = container(&record);
        assert_eq!((c.id.as_str(), c.pod_sandbox_id.as_str()), ("c1", "p1"));
        assert_eq!(c.metadata.unwrap().attempt, 1);
    }

    #[test]
    fn container_filter_fields() {
        assert_eq!(container_filter(None).unwrap(), ContainerFilter::default());
        let f = container_filter(Some(proto::ContainerFilter {
            id: String::new(),
            state: Some(proto::ContainerStateValue {
                state: proto::ContainerState::ContainerRunning as i32,
            }),
            pod_sandbox_id: "p1".into(),
            label_selector: HashMap::from([("a".into(), "b".into())]),
        }))
        .unwrap();
        assert_eq!(f.id, None);
        assert_eq!(f.sandbox_id.as_deref(), Some("p1"));
        assert_eq!(f.state, Some(ContainerState::Running));
        assert_eq!(f.label_selector["a"], "b");
        let bad = proto::ContainerFilter {
            state: Some(proto::ContainerStateValue { state: 9 }),
            ..Default::default()
        };
        assert!(container_filter(Some(bad)).is_err());
    }
}
