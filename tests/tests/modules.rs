//! The guest kernel loads its modules on demand (TCG): the kernel's own
//! requests are served from the module disk by the agent's `modprobe`. A
//! container with NET_ADMIN creates a bridge and a vlan in its VM pod, and
//! exactly their modules are loaded; a container without the capability is
//! refused before the kernel asks for anything, and a kind no module
//! provides fails without loading anything.

use std::collections::BTreeSet;

use cri::proto;
use e2e::workload::TestPod;

/// The guest's loaded modules, as a container reads `/proc/modules`.
async fn loaded(pod: &mut TestPod, id: &str) -> BTreeSet<String> {
    let out = pod.exec(id, "cut -d' ' -f1 /proc/modules").await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn net_admin(mut c: proto::ContainerConfig) -> proto::ContainerConfig {
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            capabilities: Some(proto::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

#[tokio::test]
async fn the_guest_kernel_loads_what_a_container_asks_for() {
    let mut pod = TestPod::start("modules", |_| {}).await.unwrap();
    let plain = pod.container("plain", &["sleep 100000"]);
    let plain = pod.run(plain).await;
    let before = loaded(&mut pod, &plain).await;
    assert!(before.contains("virtio_net"), "boot modules: {before:?}");
    for m in ["bridge", "8021q", "stp", "llc"] {
        assert!(!before.contains(m), "{m} loaded at boot: {before:?}");
    }

    // No NET_ADMIN: refused before the kernel asks for a module.
    let out = pod.exec(&plain, "ip link add br0 type bridge").await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert_eq!(loaded(&mut pod, &plain).await, before);

    let admin = pod.container("admin", &["sleep 100000"]);
    let admin = pod.run(net_admin(admin)).await;
    let out = pod
        .exec(
            &admin,
            "ip link add br0 type bridge && ip link add link br0 name br0.5 type vlan id 5 \
             && ip link set br0 up && ip link set br0.5 up \
             && ls /sys/class/net/br0/bridge/stp_state && cat /proc/net/vlan/config",
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert!(text.contains("stp_state"), "{text}");
    assert!(text.contains("br0.5") && text.contains("| 5"), "{text}");
    let after = loaded(&mut pod, &admin).await;
    let added: BTreeSet<&str> = after.difference(&before).map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["8021q", "bridge", "garp", "llc", "mrp", "stp"]),
        "only the bridge, the vlan and their dependencies"
    );
    // The plain container sees the bridge made in the pod's network.
    let out = pod.exec(&plain, "cat /sys/class/net/br0.5/operstate").await;
    assert_eq!(out.exit_code, 0, "{out:?}");

    // A kind that no module provides: the request fails, nothing is loaded.
    let out = pod.exec(&admin, "ip link add x0 type frakti-none").await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert_eq!(loaded(&mut pod, &admin).await, after);

    // The helper is the kernel's, not the containers': none is in sight.
    let out = pod
        .exec(&admin, "test -e /lib/modules || echo no-tree")
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no-tree\n");
}
