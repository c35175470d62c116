//! The spec's layout-dependent parts: the pod's namespaces and a privileged
//! container's `/dev`.

use super::*;
use runtime_api::container::ImageProcess;

fn config() -> ContainerConfig {
    let mut c = ContainerConfig::default();
    c.image.process = ImageProcess {
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    c
}

/// A layout of fixed paths with `dir` as the rootfs the host reads.
pub(super) fn layout(dir: &Path, namespaces: PodNamespaces) -> Layout {
    Layout {
        rootfs: "/run/c/rootfs".into(),
        host_rootfs: dir.to_path_buf(),
        mount_sources: Vec::new(),
        etc_hosts: "/run/s/hosts".into(),
        resolv_conf: "/run/s/resolv.conf".into(),
        etc_hostname: "/run/s/hostname".into(),
        shm: "/run/s/shm".into(),
        cgroup: "/frakti/c".into(),
        namespaces,
    }
}

fn namespaces_of(spec: &oci_spec::runtime::Spec) -> String {
    let linux = spec.linux().as_ref().unwrap();
    serde_json::to_string(linux.namespaces().as_ref().unwrap()).unwrap()
}

/// The VM's layout gives the namespaces VM pods always had.
#[test]
fn vm_specs_keep_their_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let vm = PodNamespaces {
        pid: Some("/run/frakti/sandbox/pidns".into()),
        ..Default::default()
    };
    let mut c = config();
    let spec = build(
        &c,
        &SandboxConfig::default(),
        &layout(dir.path(), vm.clone()),
    )
    .unwrap();
    assert_eq!(
        namespaces_of(&spec),
        r#"[{"type":"mount"},{"type":"pid","path":"/run/frakti/sandbox/pidns"}]"#
    );
    c.security.namespaces.pid = NamespaceMode::Container;
    c.security.namespaces.ipc = NamespaceMode::Container;
    let spec = build(
        &c,
        &SandboxConfig::default(),
        &layout(dir.path(), vm.clone()),
    )
    .unwrap();
    assert_eq!(
        namespaces_of(&spec),
        r#"[{"type":"mount"},{"type":"pid"},{"type":"ipc"}]"#
    );
    c.security.namespaces.pid = NamespaceMode::Node;
    let err = build(&c, &SandboxConfig::default(), &layout(dir.path(), vm)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the node's PID namespace needs a host runtime, not a VM pod"
    );
}

#[test]
fn host_pods_join_their_namespace_files() {
    let dir = tempfile::tempdir().unwrap();
    let host = PodNamespaces {
        network: Some("/run/p/net".into()),
        uts: Some("/run/p/uts".into()),
        ipc: Some("/run/p/ipc".into()),
        pid: None,
        node: true,
        ..Default::default()
    };
    let spec = build(
        &config(),
        &SandboxConfig::default(),
        &layout(dir.path(), host),
    )
    .unwrap();
    assert_eq!(
        namespaces_of(&spec),
        r#"[{"type":"mount"},{"type":"ipc","path":"/run/p/ipc"},{"type":"network","path":"/run/p/net"},{"type":"uts","path":"/run/p/uts"}]"#
    );
    assert!(spec.hostname().is_none());
}

#[test]
fn privileged_containers_get_the_runtimes_dev_and_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let layout = layout(dir.path(), PodNamespaces::default());
    let mut c = config();
    let devices = |spec: &oci_spec::runtime::Spec| {
        let linux = spec.linux().as_ref().unwrap();
        let list = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        serde_json::to_value(list).unwrap()
    };
    let destinations = |spec: &oci_spec::runtime::Spec| -> Vec<String> {
        let mounts = spec.mounts().as_ref().unwrap();
        mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect()
    };

    let spec = build(&c, &SandboxConfig::default(), &layout).unwrap();
    let dev = &spec.mounts().as_ref().unwrap()[1];
    assert_eq!(dev.typ().as_deref(), Some("tmpfs"));
    assert_eq!(devices(&spec)[0], json!({"allow": false, "access": "rwm"}));
    assert!(devices(&spec).as_array().unwrap().len() > 1);

    c.security.privileged = true;
    let spec = build(&c, &SandboxConfig::default(), &layout).unwrap();
    let dev = serde_json::to_value(&spec.mounts().as_ref().unwrap()[1]).unwrap();
    assert_eq!(
        dev,
        json!({"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "rslave"]})
    );
    let order = destinations(&spec);
    let at = |d: &str| order.iter().position(|x| x == d).unwrap();
    assert!(at("/dev") < at("/dev/pts") && at("/dev") < at("/dev/mqueue"));
    assert!(at("/dev") < at("/dev/shm"));
    assert_eq!(devices(&spec), json!([{"allow": true, "access": "rwm"}]));
}

/// In the pod's user namespace sysfs cannot be mounted without a network
/// namespace of the pod's: the runtime's `/sys` is bound read-only instead;
/// with one (a host pod), and without a user namespace, both are mounted.
#[test]
fn a_user_namespace_binds_the_runtimes_sys() {
    let dir = tempfile::tempdir().unwrap();
    let sys = |namespaces: PodNamespaces| {
        let spec = build(
            &config(),
            &SandboxConfig::default(),
            &layout(dir.path(), namespaces),
        )
        .unwrap();
        let mounts = spec.mounts().clone().unwrap_or_default();
        let first = namespaces_of(&spec).starts_with(r#"[{"type":"user","path":"/run/u/user"}"#);
        let under_sys: Vec<String> = mounts
            .iter()
            .filter(|m| m.destination().starts_with("/sys"))
            .map(|m| {
                format!(
                    "{} {} {}",
                    m.destination().display(),
                    m.typ().clone().unwrap_or_default(),
                    m.options().clone().unwrap_or_default().join(",")
                )
            })
            .collect();
        (first, under_sys)
    };
    let userns = PodNamespaces {
        user: Some("/run/u/user".into()),
        ..Default::default()
    };
    assert_eq!(
        sys(userns.clone()),
        (
            true,
            vec!["/sys bind rbind,rprivate,nosuid,noexec,nodev,ro".to_owned()]
        )
    );
    // With a network namespace of the pod's (owned by its user namespace).
    let own_network = PodNamespaces {
        network: Some("/run/u/net".into()),
        ..userns
    };
    assert_eq!(
        sys(own_network),
        (
            true,
            vec![
                "/sys sysfs nosuid,noexec,nodev,ro".to_owned(),
                "/sys/fs/cgroup cgroup nosuid,noexec,nodev,relatime,ro".to_owned()
            ]
        )
    );
    assert_eq!(
        sys(PodNamespaces::default()),
        (
            false,
            vec![
                "/sys sysfs nosuid,noexec,nodev,ro".to_owned(),
                "/sys/fs/cgroup cgroup nosuid,noexec,nodev,relatime,ro".to_owned()
            ]
        )
    );
}
