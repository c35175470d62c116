//! Builds the OCI runtime spec of a CRI container.
//!
//! The image config and the CRI request are merged by Kubernetes' rules; user
//! names are resolved in the container's own `/etc/passwd` and `/etc/group`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use runtime_api::container::{ContainerConfig, NamespaceMode, Propagation, Seccomp};
use runtime_api::sandbox::SandboxConfig;
use serde_json::{Value, json};

pub use crate::namespaces::PodNamespaces;
use crate::{caps, namespaces, seccomp, users};

/// `PATH` for containers whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths masked by default (as every Linux runtime does).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only by default.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where things are, as the container's runtime will see them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Root filesystem path for `root.path`.
    pub rootfs: PathBuf,
    /// The same root filesystem as the host sees it (to read `/etc/passwd`).
    pub host_rootfs: PathBuf,
    /// Source of each CRI mount, in the order of `ContainerConfig::mounts`.
    pub mount_sources: Vec<PathBuf>,
    /// File for `/etc/hosts`.
    pub etc_hosts: PathBuf,
    /// File for `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// File for `/etc/hostname`.
    pub etc_hostname: PathBuf,
    /// The pod's shared `/dev/shm`.
    pub shm: PathBuf,
    /// cgroup path of the container.
    pub cgroup: String,
    /// The pod's namespaces.
    pub namespaces: PodNamespaces,
}

/// The spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No process to run
    #[error("the container has no command: neither the request nor the image sets one")]
    NoCommand,
    /// A user or group cannot be resolved
    #[error(transparent)]
    User(#[from] users::UserError),
    /// A capability name is unknown
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// The seccomp profile cannot be used
    #[error(transparent)]
    Seccomp(#[from] seccomp::ProfileError),
    /// A mount cannot be honoured
    #[error("mount of {0}: {1}")]
    Mount(String, String),
    /// A namespace option cannot be honoured
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    /// A device cannot be given to the container
    #[error("device {0}: {1}")]
    Device(String, String),
    /// The result is not a valid OCI spec (a bug)
    #[error("the built spec is not valid OCI: {0}")]
    Invalid(String),
}

/// The command line: Kubernetes' rules for `command`/`args` over `Entrypoint`/`Cmd`.
pub fn process_args(config: &ContainerConfig) -> Result<Vec<String>, SpecError> {
    let image = &config.image.process;
    let args = if !config.command.is_empty() {
        config
            .command
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else if !config.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else {
        image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect::<Vec<_>>()
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The environment: the image's, overridden key by key by the request's.
pub fn process_env(config: &ContainerConfig) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let image = config.image.process.env.iter().map(|entry| {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        (k.to_owned(), v.to_owned())
    });
    for (k, v) in image.chain(config.envs.iter().cloned()) {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    }
    if !values.contains_key("PATH") {
        order.push("PATH".to_owned());
        values.insert("PATH".to_owned(), DEFAULT_PATH.to_owned());
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect()
}

/// Builds the OCI spec for `config` in `sandbox`, laid out as `layout` says.
pub fn build(
    config: &ContainerConfig,
    sandbox: &SandboxConfig,
    layout: &Layout,
) -> Result<oci_spec::runtime::Spec, SpecError> {
    let sec = &config.security;
    let args = process_args(config)?;
    let env = process_env(config);
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !config.image.process.working_dir.is_empty() {
        config.image.process.working_dir.clone()
    } else {
        "/".to_owned()
    };
    let user = users::resolve(
        &layout.host_rootfs,
        &config.image.process.user,
        sec.run_as_user,
        sec.run_as_group,
        &sec.run_as_username,
        &sec.supplemental_groups,
        sec.supplemental_groups_policy,
    )?;
    let capabilities = if sec.privileged {
        caps::ALL.iter().map(|c| c.to_string()).collect()
    } else {
        caps::effective(&sec.add_capabilities, &sec.drop_capabilities)
            .map_err(SpecError::Capability)?
    };
    let no_new_privs = sec.no_new_privs;

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        // A privileged container gets the runtime's whole /dev (and may use
        // every device), as with other runtimes.
        if sec.privileged {
            json!({"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "rslave"]})
        } else {
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]})
        },
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    if layout.namespaces.user.is_some() && layout.namespaces.network.is_none() {
        // In a user namespace sysfs can be mounted only for a network
        // namespace it owns: in a VM pod the network is the guest's, whose
        // /sys (with its cgroup tree, the VM's alone) is bound read-only.
        // A host pod's network namespace is the pod's own: sysfs and
        // cgroupfs are mounted as below (the container has a cgroup
        // namespace of its own; on cgroup v1 the host runtime binds the
        // container's own cgroups instead).
        mounts.push(json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"]}));
    } else {
        mounts.push(json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if sec.privileged { "rw" } else { "ro" }]}));
        mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if sec.privileged { "rw" } else { "ro" }]}));
    }
    let has_mount = |dest: &str| config.mounts.iter().any(|m| m.container_path == dest);
    for (dest, source) in [
        ("/etc/hosts", &layout.etc_hosts),
        ("/etc/resolv.conf", &layout.resolv_conf),
        ("/etc/hostname", &layout.etc_hostname),
    ] {
        if !has_mount(dest) {
            let ro = if sec.readonly_rootfs { "ro" } else { "rw" };
            mounts.push(json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate", ro]}));
        }
    }
    if !has_mount("/dev/shm") {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": layout.shm, "options": ["rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"]}));
    }
    if config.mounts.len() != layout.mount_sources.len() {
        return Err(SpecError::Invalid(
            "mount sources do not match the mounts".into(),
        ));
    }
    for (m, source) in config.mounts.iter().zip(&layout.mount_sources) {
        if !m.container_path.starts_with('/') {
            return Err(SpecError::Mount(
                m.container_path.clone(),
                "container_path must be absolute".into(),
            ));
        }
        let propagation = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        let mut options = vec!["rbind", propagation, if m.readonly { "ro" } else { "rw" }];
        if m.recursive_read_only {
            // Every submount too, by mount_setattr(AT_RECURSIVE).
            options.push("rro");
        }
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": source, "options": options}));
    }

    let namespaces = namespaces::entries(&sec.namespaces, &layout.namespaces)?;

    // The pod's sysctls are set in the pod's (the VM's) namespaces when it
    // starts; a container with an IPC namespace of its own gets the IPC ones.
    let sysctls: BTreeMap<&String, &String> = if sec.namespaces.ipc == NamespaceMode::Container {
        sandbox
            .sysctls
            .iter()
            .filter(|(k, _)| is_ipc_sysctl(k))
            .collect()
    } else {
        BTreeMap::new()
    };
    let (device_nodes, device_rules) = host_devices::nodes_and_rules(&config.devices)?;
    let mut resources = resources(config);
    if let Some(list) = resources["devices"].as_array_mut() {
        list.extend(device_rules);
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": layout.cgroup,
        "resources": resources,
        "sysctl": sysctls,
    });
    if !device_nodes.is_empty() {
        linux["devices"] = json!(device_nodes);
    }
    if !sec.privileged {
        let masked = sec
            .masked_paths
            .clone()
            .unwrap_or_else(|| DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect());
        let readonly = sec.readonly_paths.clone().unwrap_or_else(|| {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(readonly);
    }
    let profile = match &sec.seccomp {
        Seccomp::Unconfined => None,
        _ if sec.privileged => None,
        Seccomp::RuntimeDefault => Some(seccomp::runtime_default(&capabilities)),
        Seccomp::Localhost(path) => Some(seccomp::localhost(Path::new(path))?),
    };
    if let Some(profile) = profile {
        linux["seccomp"] = profile;
    }

    let mut process = json!({
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
        },
    });
    // libcontainer reads a present `noNewPrivileges`, even `false`, as "set"
    // and then loads seccomp after dropping capabilities, which fails.
    if no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    if config.resources.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(config.resources.oom_score_adj);
    }
    let annotations: BTreeMap<&String, &String> = config.annotations.iter().collect();
    let spec = json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": layout.rootfs, "readonly": sec.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    });
    serde_json::from_value(spec).map_err(|e| SpecError::Invalid(e.to_string()))
}

/// Whether `key` is a sysctl of the IPC namespace.
pub fn is_ipc_sysctl(key: &str) -> bool {
    let key = key.replace('/', ".");
    key.starts_with("fs.mqueue.")
        || matches!(
            key.as_str(),
            "kernel.msgmax"
                | "kernel.msgmnb"
                | "kernel.msgmni"
                | "kernel.sem"
                | "kernel.shmall"
                | "kernel.shmmax"
                | "kernel.shmmni"
                | "kernel.shm_rmid_forced"
        )
}

fn resources(config: &ContainerConfig) -> Value {
    let r = &config.resources;
    let mut out = if config.security.privileged {
        json!({"devices": [{"allow": true, "access": "rwm"}]})
    } else {
        json!({"devices": [{"allow": false, "access": "rwm"}]})
    };
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out["cpu"] = Value::Object(cpu);
    }
    if r.memory_limit_bytes > 0 {
        out["memory"] = json!({"limit": r.memory_limit_bytes});
    }
    if r.memory_swap_limit_bytes != 0 {
        out["memory"]["swap"] = json!(r.memory_swap_limit_bytes);
    }
    if !r.hugepage_limits.is_empty() {
        out["hugepageLimits"] = r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| json!({"pageSize": size, "limit": limit}))
            .collect();
    }
    if !r.unified.is_empty() {
        out["unified"] = json!(r.unified);
    }
    // The standard character devices every container may use.
    let allowed: Vec<Value> = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)]
        .iter()
        .map(|(major, minor)| json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}))
        .chain(std::iter::once(
            json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}),
        ))
        .collect();
    if let Some(list) = out["devices"].as_array_mut()
        && !config.security.privileged
    {
        list.extend(allowed);
    }
    out
}

mod host_devices;
pub use host_devices::nodes_and_rules as device_nodes_and_rules;

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_api::container::ImageProcess;

    fn config() -> ContainerConfig {
        let mut c = ContainerConfig::default();
        c.image.process = ImageProcess {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["A=image".into(), "B=image".into()],
            ..Default::default()
        };
        c
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let mut c = config();
        assert_eq!(process_args(&c).unwrap(), ["/entry", "default"]);
        c.args = vec!["x".into()];
        assert_eq!(process_args(&c).unwrap(), ["/entry", "x"]);
        c.command = vec!["/bin/sh".into()];
        assert_eq!(process_args(&c).unwrap(), ["/bin/sh", "x"]);
        c.args.clear();
        assert_eq!(process_args(&c).unwrap(), ["/bin/sh"]);
        let empty = ContainerConfig::default();
        assert!(matches!(process_args(&empty), Err(SpecError::NoCommand)));
    }

    #[test]
    fn request_env_overrides_image_env_in_place() {
        let mut c = config();
        c.envs = vec![("B".into(), "cri".into()), ("C".into(), "new".into())];
        assert_eq!(
            process_env(&c),
            ["A=image", "B=cri", "C=new", &format!("PATH={DEFAULT_PATH}")]
        );
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use runtime_api::container::{ImageProcess, Seccomp};

    fn layout(dir: &Path) -> Layout {
        layout_tests::layout(dir, PodNamespaces::default())
    }

    #[test]
    fn security_settings_reach_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ContainerConfig::default();
        c.image.process = ImageProcess {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        c.security.seccomp = Seccomp::RuntimeDefault;
        c.security.readonly_rootfs = true;
        c.security.no_new_privs = true;
        c.resources.memory_limit_bytes = 64 << 20;
        let spec = build(&c, &SandboxConfig::default(), &layout(dir.path())).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some(), "no seccomp in {spec:?}");
        assert_eq!(
            linux.masked_paths().as_ref().unwrap().len(),
            DEFAULT_MASKED_PATHS.len()
        );
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .memory()
                .as_ref()
                .unwrap()
                .limit(),
            Some(64 << 20)
        );
        c.security.seccomp = Seccomp::Unconfined;
        let spec = build(&c, &SandboxConfig::default(), &layout(dir.path())).unwrap();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
    }
}

#[cfg(test)]
mod layout_tests;
