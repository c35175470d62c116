//! Unit tests of the container conversions.

use std::collections::HashMap;

use pods::container::NamespaceMode;

use super::*;
use crate::convert::sandbox_config;

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
    assert!(container_config(rro.clone()).unwrap().mounts[0].recursive_read_only);
    rro.mounts[0].readonly = false;
    assert!(
        container_config(rro.clone())
            .unwrap_err()
            .contains("needs readonly")
    );
    rro.mounts[0].readonly = true;
    rro.mounts[0].propagation = proto::MountPropagation::PropagationHostToContainer as i32;
    assert!(
        container_config(rro)
            .unwrap_err()
            .contains("PROPAGATION_PRIVATE")
    );
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
        recursive_read_only: false,
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
            user: None,
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
