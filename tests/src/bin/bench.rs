//! `make bench`: pod sandbox start against the bare VM boot floor, and the
//! host memory of an idle pod. Prints figures; asserts nothing.
//!
//! Usage: frakti-bench [--runs N] [--accel auto|kvm|tcg]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cri::proto;
use e2e::{Daemon, guest_dir, pod_config, pod_status, run_pod, vm_pid};
use hypervisor::{Accel, Qemu, QemuConfig, VmSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut runs = 8usize;
    let mut accel = "tcg".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--accel" => accel = args.next().context("--accel MODE")?,
            other => {
                bail!("unknown argument {other:?} (usage: frakti-bench [--runs N] [--accel MODE])")
            }
        }
    }
    let daemon = Daemon::start(&["--accel", &accel]).await?;
    let mut c = daemon.runtime().await?;
    let mut accel_used = Accel::Tcg;

    // Pod start (RunPodSandbox call until it returns a READY sandbox) and the
    // floor (the same QEMU command line, no daemon, until the agent's first
    // console line), interleaved so that drift in host load hits both alike.
    let mut starts = Vec::new();
    let mut floors = Vec::new();
    for i in 0..=runs {
        let begin = Instant::now();
        let id = run_pod(&mut c, pod_config(&format!("bench-{i}"), &[])).await?;
        let took = begin.elapsed();
        let (status, info) = pod_status(&mut c, &id).await?;
        if status.state != proto::PodSandboxState::SandboxReady as i32 {
            bail!("pod {id} not READY after RunPodSandbox");
        }
        let vm_accel = if info["vm"]["accel"] == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        let floor = floor_boot(&daemon, vm_accel, i).await?;
        accel_used = vm_accel;
        // The first round warms caches; it is not counted.
        if i > 0 {
            starts.push(took.as_secs_f64());
            floors.push(floor);
        }
    }

    // Host memory of one idle pod, and ICMP round trips host -> pod IP.
    let id = run_pod(&mut c, pod_config("bench-idle", &[])).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, info) = pod_status(&mut c, &id).await?;
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    let mut pod_rtt = ping_rtts(&pod_ip, 40)?;
    let mut floor_rtt = plain_netns_rtts(daemon.dir_path(), 40).await?;
    let pid = vm_pid(&info);
    let rss_kib = hypervisor::process::rss_kib(pid).unwrap_or(0);
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await?;

    let (s50, s90) = (percentile(&mut starts, 50), percentile(&mut starts, 90));
    let (f50, f90) = (percentile(&mut floors, 50), percentile(&mut floors, 90));
    println!("frakti bench: {runs} runs, accel {accel_used}, default pod size (1 vCPU, 256 MiB)");
    println!(
        "pod start (RunPodSandbox -> READY): p50 {:.3} s  p90 {:.3} s",
        s50, s90
    );
    println!(
        "floor (same QEMU, boot to agent init): p50 {:.3} s  p90 {:.3} s",
        f50, f90
    );
    println!(
        "ratio pod start / floor: p50 {:.3}  p90 {:.3}",
        s50 / f50,
        s90 / f90
    );
    let (p50, f50) = (percentile(&mut pod_rtt, 50), percentile(&mut floor_rtt, 50));
    println!(
        "ping host -> pod IP: p50 {p50:.3} ms; plain netns on the same CNI network, no VM: p50 {f50:.3} ms; ratio {:.1}",
        p50 / f50
    );
    println!(
        "idle pod host RSS: {:.1} MiB (QEMU, the pod's only host process)",
        rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// Boots the pod VM's exact QEMU command and times it until the agent's first console line.
async fn floor_boot(daemon: &Daemon, accel: Accel, i: usize) -> anyhow::Result<f64> {
    let dir = daemon.dir_path().join(format!("floor-{i}"));
    std::fs::create_dir_all(&dir)?;
    let qemu = Qemu::new(QemuConfig::default());
    let spec = VmSpec {
        id: format!("floor-{i}"),
        dir: dir.clone(),
        vcpus: 1,
        memory_mib: 256,
        kernel: guest_dir().join("vmlinux"),
        initrd: guest_dir().join("initramfs.img"),
        extra_cmdline: Vec::new(),
        accel,
        netns: None,
        nics: Vec::new(),
    };
    let console = dir.join("console.log");
    let begin = Instant::now();
    let mut child = std::process::Command::new(&qemu.config().binary)
        .args(qemu.args(&spec))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = begin + Duration::from_secs(60);
    let took = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(": init") {
            break begin.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("floor VM printed no init marker in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(took)
}

/// Round-trip times (ms) of `count` pings to `ip`.
fn ping_rtts(ip: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let out = std::process::Command::new("ping")
        .args(["-c", &count.to_string(), "-i", "0.05", "-W", "2", ip])
        .output()
        .context("run ping")?;
    let rtts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("time=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if rtts.is_empty() {
        bail!("no ping replies from {ip}");
    }
    Ok(rtts)
}

/// The floor for pod network latency: a namespace on the same CNI network, no VM.
async fn plain_netns_rtts(dir: &std::path::Path, count: usize) -> anyhow::Result<Vec<f64>> {
    let cni = network::Cni::new(dir.join("net.d"), network::cni::default_bin_dirs());
    let config = cni.load()?;
    let ns = network::Netns::new(format!("frakti-bench-{}", std::process::id()));
    ns.create()?;
    let attachment = network::cni::Attachment {
        container_id: ns.name().to_owned(),
        netns: ns.path(),
        ifname: "eth0".into(),
        pod_namespace: "bench".into(),
        pod_name: "floor".into(),
        pod_uid: "floor".into(),
    };
    let result = cni.add(&config, &attachment, &[]).await;
    let rtts = match &result {
        Ok(r) => ping_rtts(r.pod_ips().first().map_or("", String::as_str), count),
        Err(e) => Err(anyhow::anyhow!("CNI ADD for the floor: {e}")),
    };
    let _ = cni
        .del(&config, &attachment, result.as_ref().ok(), &[])
        .await;
    let _ = ns.remove();
    rtts
}

fn percentile(values: &mut [f64], p: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let idx = ((values.len() * p).div_ceil(100)).clamp(1, values.len()) - 1;
    values[idx]
}
