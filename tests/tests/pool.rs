//! The warm VM pool (TCG): a pod that takes a pool VM is indistinguishable
//! from a cold-started one of the same config (network, hostname, DNS,
//! shared files, size, stats, re-adoption after a restart); the pool
//! refills, replaces a pool VM that died, and is drained when the daemon
//! stops; `--vm-pool 0` keeps none.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cri::proto;
use e2e::registry::Registry;
use e2e::workload::{container, pull, push_box, run_container};
use e2e::{
    Daemon, pod_config, pod_status, process_running, run_pod, sample, scrape, vm_pid,
    wait_pool_ready,
};
use tokio::time::Instant;

const MIB: i64 = 1 << 20;

type Runtime = proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// The file `name` of each pool VM waiting now (`qemu.pid`, `launched-as`).
fn pool_files(daemon: &Daemon, name: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(daemon.state_dir().join("pool")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join(name)).ok())
        .collect()
}

/// The pool VMs waiting now: their QEMU pids (from the pool's pidfiles).
fn pool_pids(daemon: &Daemon) -> Vec<i32> {
    pool_files(daemon, "qemu.pid")
        .iter()
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Waits (at most `limit`) until `frakti_vm_pool_ready` is `want`; returns
/// the pool's pids then.
async fn pool_ready(daemon: &Daemon, metrics: &str, want: f64, limit: Duration) -> Vec<i32> {
    if let Err(e) = wait_pool_ready(metrics, want, limit).await {
        panic!("{e:#}\n{}", daemon.log());
    }
    pool_pids(daemon)
}

/// The IPv6 link-local address a NIC with `mac` makes (modified EUI-64).
fn link_local_of(mac: &str) -> String {
    let b: Vec<u16> = mac
        .split(':')
        .map(|x| u16::from_str_radix(x, 16).unwrap())
        .collect();
    let ip = std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        ((b[0] ^ 0x02) << 8) | b[1],
        (b[2] << 8) | 0xff,
        0xfe00 | b[3],
        (b[4] << 8) | b[5],
    );
    ip.to_string()
}

fn ping(ip: &str) -> bool {
    Command::new("ping")
        .args(["-c", "2", "-W", "3", ip])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A pod asking for 2 vCPUs and 384 MiB (the default is 1 and 256), with
/// DNS settings and a host directory mounted into its container.
fn config(name: &str, logs: &Path) -> proto::PodSandboxConfig {
    let mut config = pod_config(name, &[]);
    config.log_directory = logs.display().to_string();
    config.dns_config = Some(proto::DnsConfig {
        servers: vec!["10.9.8.7".into()],
        searches: vec!["pool.example".into()],
        options: vec!["ndots:3".into()],
    });
    config.linux = Some(proto::LinuxPodSandboxConfig {
        resources: Some(proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            memory_limit_in_bytes: 384 * MIB,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// What the pod's container sees of its pod, one value per line.
const LOOK: &str = "hostname; nproc; grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2; \
     grep -c '^nameserver 10.9.8.7$' /etc/resolv.conf; grep -c 'search pool.example' /etc/resolv.conf; \
     cat /data/hello; ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f4 | cut -d/ -f1; \
     cat /sys/class/net/eth0/address; \
     ip -6 -o addr show dev eth0 scope link | tr -s ' ' | cut -d' ' -f4 | cut -d/ -f1";

/// A pod's view: hostname, vCPUs, MemTotal (KiB), DNS lines found, the
/// shared file, its IP, its NIC's MAC and IPv6 link-local address.
#[derive(Debug)]
struct View {
    hostname: String,
    cpus: u32,
    mem_kib: u64,
    dns: (u32, u32),
    shared: String,
    ip: String,
    mac: String,
    link_local: String,
}

struct Pod {
    name: String,
    id: String,
    container: String,
}

async fn start_pod(rt: &mut Runtime, image: &str, name: &str, logs: &Path, data: &Path) -> Pod {
    let config = config(name, logs);
    let id = run_pod(rt, config.clone()).await.expect("RunPodSandbox");
    let mut c = container(image, "look", "sleep 100000");
    c.mounts = vec![proto::Mount {
        container_path: "/data".into(),
        host_path: data.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let container = run_container(rt, &id, &config, c)
        .await
        .expect("run the container");
    Pod {
        name: name.into(),
        id,
        container,
    }
}

async fn look(rt: &mut Runtime, pod: &Pod) -> View {
    let out = rt
        .exec_sync(proto::ExecSyncRequest {
            container_id: pod.container.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), LOOK.into()],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 9, "{text:?}");
    View {
        hostname: lines[0].into(),
        cpus: lines[1].parse().unwrap(),
        mem_kib: lines[2].parse().unwrap(),
        dns: (lines[3].parse().unwrap(), lines[4].parse().unwrap()),
        shared: lines[5].into(),
        ip: lines[6].into(),
        mac: lines[7].into(),
        link_local: lines[8].into(),
    }
}

#[tokio::test]
async fn a_pod_from_the_pool_is_like_a_cold_one_and_the_pool_refills() {
    let registry = Registry::start(None).await.unwrap();
    let image = push_box(&registry).await.unwrap();
    let metrics = format!("127.0.0.1:{}", e2e::free_port().unwrap());
    let mut daemon = Daemon::start(&[
        "--accel",
        "tcg",
        "--vm-pool",
        "1",
        "--metrics-address",
        &metrics,
    ])
    .await
    .unwrap();
    pull(&daemon, &image).await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello"), "from the host\n").unwrap();
    let mut rt = daemon.runtime().await.unwrap();

    let pooled = pool_ready(&daemon, &metrics, 1.0, Duration::from_secs(180)).await;
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    // It waits in a cgroup of frakti's with the least CPU weight.
    let name = pool_files(&daemon, "launched-as").pop().unwrap();
    let pool_cgroup = format!("/sys/fs/cgroup/cpu/frakti/{name}");
    let shares = std::fs::read_to_string(format!("{pool_cgroup}/cpu.shares")).unwrap();
    assert_eq!(shares.trim(), "2", "{pool_cgroup}");
    let procs = std::fs::read_to_string(format!("{pool_cgroup}/vm/cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pooled[0].to_string()), "{procs}");

    // Two pods at once: one takes the pool VM, the other starts cold (the
    // pool takes a whole boot to refill).
    let mut rt2 = daemon.runtime().await.unwrap();
    let (first, second) = tokio::join!(
        start_pod(&mut rt, &image, "pool-a", logs.path(), data.path()),
        start_pod(&mut rt2, &image, "pool-b", logs.path(), data.path()),
    );
    let from_pool = |info: &serde_json::Value| {
        info["vm"]["launched_as"]
            .as_str()
            .is_some_and(|n| n.starts_with("pool-"))
    };
    let (_, info_first) = pod_status(&mut rt, &first.id).await.unwrap();
    let (a, b) = if from_pool(&info_first) {
        (first, second)
    } else {
        (second, first)
    };
    let (status_a, info_a) = pod_status(&mut rt, &a.id).await.unwrap();
    let (status_b, info_b) = pod_status(&mut rt, &b.id).await.unwrap();
    assert!(from_pool(&info_a), "{info_a}");
    assert_eq!(vm_pid(&info_a), pooled[0], "{info_a}");
    assert!(info_b["vm"]["launched_as"].is_null(), "{info_b}");
    assert_ne!(vm_pid(&info_b), pooled[0]);
    // Its directory is the pod's now, not the pool's.
    let dir_a = PathBuf::from(info_a["vm"]["dir"].as_str().unwrap());
    assert_eq!(dir_a, daemon.state_dir().join(&a.id));
    assert!(dir_a.join("qemu.pid").is_file());

    let view_a = look(&mut rt, &a).await;
    let view_b = look(&mut rt, &b).await;
    for (view, status, pod) in [(&view_a, &status_a, &a), (&view_b, &status_b, &b)] {
        let name = &pod.name;
        assert_eq!(&view.hostname, name);
        assert_eq!(view.cpus, 2, "1.5 CPUs need 2 vCPUs: {view:?}");
        assert_eq!(view.dns, (1, 1), "{view:?}");
        assert_eq!(view.shared, "from the host");
        let ip = &status.network.as_ref().unwrap().ip;
        assert_eq!(&view.ip, ip, "{view:?}");
        // The guest NIC has the pod's MAC (the CNI interface's), and the
        // link-local address made from it, not from a pool VM's first MAC.
        let (_, info) = pod_status(&mut rt, &pod.id).await.unwrap();
        let cni_mac = info["vm"]["network"]["tap"]["mac"].as_str().unwrap();
        assert_eq!(view.mac, cni_mac, "{view:?}");
        assert_eq!(view.link_local, link_local_of(cni_mac), "{view:?}");
        assert!(ping(ip), "pod {name} at {ip} does not answer ping");
    }
    // The same size as a cold VM of that config (the guest rounds to its
    // memory blocks): 384 MiB, not the pool's 256.
    let diff = view_a.mem_kib.abs_diff(view_b.mem_kib);
    assert!(diff <= 8 * 1024, "{view_a:?} vs {view_b:?}");
    assert!(view_a.mem_kib > 300 * 1024, "{view_a:?}");

    // Stats: the host's cost of the VM, the container's share of the guest.
    for pod in [&a, &b] {
        let stats = rt
            .pod_sandbox_stats(proto::PodSandboxStatsRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let linux = stats.linux.unwrap();
        let memory = linux.memory.unwrap();
        assert!(memory.working_set_bytes.unwrap().value > 0, "{memory:?}");
        assert_eq!(linux.containers.len(), 1);
    }
    // The VM's host cgroup is the pod's, its limits those of a 384 MiB VM.
    let cgroup = info_a["vm"]["cgroup"]["path"].as_str().unwrap().to_owned();
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/memory{cgroup}/cgroup.procs"))
        .unwrap_or_default();
    assert!(
        procs.lines().any(|l| l == pooled[0].to_string()),
        "{cgroup}: {procs}"
    );
    assert!(cgroup.ends_with(&format!("{}/vm", a.id)), "{cgroup}");

    // The pool refills with another VM.
    let refilled = pool_ready(&daemon, &metrics, 1.0, Duration::from_secs(180)).await;
    assert_eq!(refilled.len(), 1);
    assert_ne!(refilled[0], pooled[0]);

    // A pool VM that dies is replaced.
    // SAFETY: kill(2) on the pool's QEMU, which this test's daemon started.
    unsafe { libc::kill(refilled[0], libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(180);
    let replaced = loop {
        let now = pool_ready(&daemon, &metrics, 1.0, Duration::from_secs(180)).await;
        if now.len() == 1 && now[0] != refilled[0] {
            break now[0];
        }
        assert!(
            Instant::now() < deadline,
            "the dead pool VM was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(daemon.log().contains("died while it waited"));

    // A restart: the pod keeps its pool-born VM; the waiting one is drained
    // at the stop and a new one boots.
    daemon.restart().await.unwrap();
    assert!(
        !process_running(replaced),
        "the stopping daemon drained its pool"
    );
    let mut rt = daemon.runtime().await.unwrap();
    let again = look(&mut rt, &a).await;
    assert_eq!(again.hostname, a.name);
    let (_, info) = pod_status(&mut rt, &a.id).await.unwrap();
    assert_eq!(vm_pid(&info), pooled[0]);
    assert_eq!(info["running"], true, "{info}");
    let after_restart = pool_ready(&daemon, &metrics, 1.0, Duration::from_secs(180)).await;
    assert_ne!(after_restart[0], replaced);

    for pod in [&a, &b] {
        rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    }
    assert!(
        !process_running(pooled[0]),
        "a pool-born VM stops with its pod"
    );
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{cgroup}")).exists());

    // The daemon stops: no pool VM outlives it.
    daemon.kill(libc::SIGTERM);
    assert!(!process_running(after_restart[0]));
    assert!(pool_pids(&daemon).is_empty());
}

#[tokio::test]
async fn vm_pool_0_boots_nothing_ahead() {
    let metrics = format!("127.0.0.1:{}", e2e::free_port().unwrap());
    let daemon = Daemon::start(&[
        "--accel",
        "tcg",
        "--vm-pool",
        "0",
        "--metrics-address",
        &metrics,
    ])
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, text) = scrape(&metrics).await.unwrap();
    let pool = |name| sample(&text, name, &[("handler", "frakti")]);
    assert_eq!(pool("frakti_vm_pool_target"), Some(0.0), "{text}");
    assert_eq!(pool("frakti_vm_pool_ready"), Some(0.0), "{text}");
    assert!(pool_pids(&daemon).is_empty());
    assert!(!daemon.log().contains("pool VM ready"));
}
