//! Pods with a user namespace of their own (`userns_options` mode POD): a
//! real VM pod under TCG and a host pod, whose containers run in a user
//! namespace with the kubelet's mappings, seeing their image and volumes
//! through ID-mapped mounts on the host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cri::proto;
use e2e::workload::TestPod;
use tonic::Code;

/// The first host ID of the pod's range (a multiple of 65536, as the kubelet gives).
const BASE: u32 = 65_536 * 20;

fn userns() -> proto::UserNamespace {
    let range = proto::IdMapping {
        host_id: BASE,
        container_id: 0,
        length: 65_536,
    };
    proto::UserNamespace {
        mode: proto::NamespaceMode::Pod as i32,
        uids: vec![range],
        gids: vec![range],
    }
}

/// The pod's user namespace, and an IPC sysctl that must reach the IPC
/// namespace the user namespace owns.
fn with_userns(config: &mut proto::PodSandboxConfig, userns: proto::UserNamespace) {
    config.linux = Some(proto::LinuxPodSandboxConfig {
        sysctls: [("kernel.shm_rmid_forced".to_string(), "1".to_string())].into(),
        security_context: Some(proto::LinuxSandboxSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                userns_options: Some(userns),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn words(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn vm_and_host_pods_with_a_user_namespace() {
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from-host").unwrap();
    let open = data.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();

    let mut pod = TestPod::start("userns", |c| with_userns(c, userns()))
        .await
        .unwrap();

    // Status: the VM handler (the default) and the host handler give user
    // namespaces.
    let status = pod
        .rt
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let userns_of = |name: &str| {
        status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.features)
            .map(|f| f.user_namespaces)
    };
    assert_eq!(userns_of(""), Some(true), "{:?}", status.runtime_handlers);
    assert_eq!(userns_of("host"), Some(true));

    // The pod's status gives its mappings back.
    let reported = e2e::pod_status(&mut pod.rt, &pod.id)
        .await
        .unwrap()
        .0
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options);
    assert_eq!(reported, Some(userns()));

    check_pod(&mut pod, &data, "vm").await;

    // The same in a host pod (the OSContainer annotation sends it to the
    // host runtime), in the same daemon.
    let mut config = e2e::pod_config("userns-host", &[]);
    config.log_directory = pod.logs.path().display().to_string();
    with_userns(&mut config, userns());
    config.annotations.insert(
        "runtime.frakti.alpha.kubernetes.io/OSContainer".into(),
        "true".into(),
    );
    let host_id = e2e::run_pod(&mut pod.rt, config.clone()).await.unwrap();
    let (vm_id, vm_config) = (
        std::mem::replace(&mut pod.id, host_id.clone()),
        std::mem::replace(&mut pod.config, config),
    );
    let (status, info) = e2e::pod_status(&mut pod.rt, &host_id).await.unwrap();
    assert_eq!(info["runtime"], "host", "{info}");
    let reported = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options);
    assert_eq!(reported, Some(userns()));
    check_pod(&mut pod, &data, "host").await;
    let netns = info["netns"].as_str().unwrap().to_owned();
    let holder = info["pidHolder"]["pid"].as_i64().unwrap() as i32;
    // The holder of the pod's namespaces is the pod's root, not the node's.
    let status = std::fs::read_to_string(format!("/proc/{holder}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        words(uids.as_bytes()),
        format!("Uid: {BASE} {BASE} {BASE} {BASE}")
    );
    let host_dir = Path::new(info["dir"].as_str().unwrap())
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();

    // The kubelet's next sandbox of the same pod (same mappings) starts
    // before the first is removed: the first's removal must leave the
    // second its way through the private directories.
    let mut again = pod.config.clone();
    if let Some(m) = again.metadata.as_mut() {
        m.attempt = 1;
    }
    let second = e2e::run_pod(&mut pod.rt, again.clone()).await.unwrap();
    remove_pod(&mut pod, &host_id).await;
    assert!(!Path::new(&netns).exists(), "{netns} left behind");
    assert!(!e2e::process_running(holder), "the holder outlived its pod");
    pod.id = second.clone();
    pod.config = again;
    let c = pod.container("again", &["sleep 100000"]);
    let c = pod.run(c).await;
    let out = pod.exec(&c, "id -u; cat /proc/self/uid_map").await;
    assert_eq!(words(&out.stdout), format!("0 0 {BASE} 65536"));
    pod.remove(&c).await;
    remove_pod(&mut pod, &second).await;
    // With both gone, no directory names the pod's root any more.
    for dir in [host_dir.clone(), host_dir.join("pods"), host_dir.join("c")] {
        let listed = std::process::Command::new("ls")
            .args(["-ld"])
            .arg(&dir)
            .output()
            .unwrap();
        let mode = String::from_utf8_lossy(&listed.stdout).to_string();
        assert!(
            !mode.split_whitespace().next().unwrap_or("").ends_with('+'),
            "an ACL is left on {}: {mode}",
            dir.display()
        );
    }
    pod.id = vm_id;
    pod.config = vm_config;

    // A user namespace cannot go with the node's namespaces.
    let mut config = e2e::pod_config("userns-host-net", &[]);
    with_userns(&mut config, userns());
    if let Some(ns) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = proto::NamespaceMode::Node as i32;
    }
    let status = e2e::run_pod(&mut pod.rt, config).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("network namespace"), "{status:?}");

    // Mappings that cannot work are refused before any VM starts.
    let mut bad = userns();
    bad.uids[0].length = 0;
    let mut config = e2e::pod_config("userns-bad", &[]);
    with_userns(&mut config, bad);
    let status = e2e::run_pod(&mut pod.rt, config).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

async fn remove_pod(pod: &mut TestPod, id: &str) {
    pod.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap();
    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap();
}

/// Runs a root container and a user-1000 container with `data` at `/vol`
/// in `pod` and checks what the pod's user namespace gives them; removes
/// them again.
async fn check_pod(pod: &mut TestPod, data: &Path, label: &str) {
    let open = data.join("open");
    let _ = std::fs::remove_file(data.join("by-root"));
    let _ = std::fs::remove_file(open.join("by-user"));
    let mut c = pod.container("root", &["sleep 100000"]);
    c.mounts = vec![proto::Mount {
        container_path: "/vol".into(),
        host_path: data.display().to_string(),
        ..Default::default()
    }];
    // With SYS_PTRACE (in the pod's user namespace) the pod's PID 1, the
    // holder of its namespaces, must still give nothing away ("sealed").
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            capabilities: Some(proto::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let root = pod.run(c.clone()).await;

    // Root in the container is the mapping's root; the image and the volume
    // belong to it, and what it writes to the volume is the host's root's.
    let out = pod
        .exec(
            &root,
            &format!(
                "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; \
                 stat -c %u:%g / /etc/passwd /vol/file; \
                 echo made > /vol/by-root && stat -c %u:%g /vol/by-root; \
                 echo made > /made-in-{label} && stat -c %u:%g /made-in-{label}; \
                 awk '$2 == \"/dev/mqueue\" {{print $3}}' /proc/mounts; \
                 ls /proc/self/ns/user >/dev/null && echo proc-ok; hostname; \
                 cat /proc/sys/kernel/shm_rmid_forced; \
                 ls /proc/1/root/ >/dev/null 2>&1 || echo sealed"
            ),
        )
        .await;
    let hostname = pod.config.hostname.clone();
    assert_eq!(
        words(&out.stdout),
        format!(
            "0 {BASE} 65536 0 {BASE} 65536 0 0 0:0 0:0 0:0 0:0 0:0 mqueue proc-ok {hostname} 1 sealed"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_root = std::fs::metadata(data.join("by-root")).unwrap();
    assert_eq!((by_root.uid(), by_root.gid()), (0, 0));
    // The container's writable layer holds its files as the host sees the
    // pod's root.
    let found = std::process::Command::new("find")
        .arg(pod.daemon.dir_path())
        .args(["-path", &format!("*/upper/made-in-{label}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
    let layer_file = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!((layer_file.uid(), layer_file.gid()), (BASE, BASE));

    // Root of the pod is not root of its VM or node: the files that the
    // pod's mapping does not cover are nobody's to it.
    let out = pod
        .exec(
            &root,
            "stat -c %u /sys/kernel; echo x > /sys/kernel/x || echo refused",
        )
        .await;
    assert_eq!(words(&out.stdout), "65534 refused");

    // Another user of the pod: its files on the volume are its own on the host.
    let mut user = pod.container("user", &["sleep 100000"]);
    user.mounts = c.mounts;
    user.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let user = pod.run(user).await;
    let out = pod
        .exec(
            &user,
            "id -u; echo made > /vol/open/by-user; stat -c %u /vol/open/by-user; \
             echo x > /vol/by-user || echo refused",
        )
        .await;
    assert_eq!(words(&out.stdout), "1000 1000 refused");
    assert_eq!(std::fs::metadata(open.join("by-user")).unwrap().uid(), 1000);

    let info = pod.info(&root).await;
    // On the host (a host pod's container is a host process) the pod's
    // root is the mapping's first ID, not root.
    if label == "host" {
        let pid = info["runtime"]["pid"].as_i64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert_eq!(
            words(uids.as_bytes()),
            format!("Uid: {BASE} {BASE} {BASE} {BASE}")
        );
    }
    pod.remove(&root).await;
    pod.remove(&user).await;
}
