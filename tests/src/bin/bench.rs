//! `make bench`: pod sandbox start against the bare VM boot floor, the host
//! memory of an idle pod, container start and ExecSync in a running pod, and
//! ping/HTTP host -> pod next to a plain network namespace on the same CNI
//! network. Prints figures; asserts nothing.
//!
//! Also: pull wall time of a multi-layer ~100 MB image from a local registry
//! into an empty store, next to `skopeo copy` of the same image into an OCI
//! directory in the same run.
//!
//! Also: streaming through a pod VM: exec round trip of `true` over SPDY
//! (CRI `Exec` call to exit status), and port-forward throughput of one
//! connection to an HTTP server inside the pod.
//!
//! Also: host-pod start (RunPodSandbox + CreateContainer + StartContainer
//! until RUNNING) beside the VM pod's; `ListContainerStats` latency with 10
//! pods of 3 containers (VM pods, then host pods).
//!
//! VM resize: UpdateContainerResources until the new vCPU and memory are
//! online in the guest.
//!
//! Pod start alone (`--boot-only`): RunPodSandbox against the bare QEMU floor.
//!
//! Side by side (`--side-by-side-only`, and first in every full run): the
//! same CRI calls against Debian's containerd + runc (installed and run by
//! the bench itself) and frakti with a warm VM pool and without.
//! `--quick`: that comparison and the pod start, 3 runs each.
//!
//! Parallel starts (`--parallel-only`): 10 pods at once, cold and from a
//! warm pool of 10, next to the serial pod start.
//!
//! Usage: frakti-bench [--runs N] [--accel auto|kvm|tcg] [--quick] [--side-by-side-only] [--parallel-only] [--pull-only] [--streaming-only] [--stats-only] [--resize-only] [--overhead-only] [--boot-only]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cri::proto;
use e2e::registry::Registry;
use e2e::{Daemon, guest_dir, pod_config, pod_status, run_pod, vm_pid, workload};
use hypervisor::{Accel, Hypervisor, Qemu, QemuConfig, VmSpec};

#[path = "bench/containerd.rs"]
mod containerd;
#[path = "bench/host_pods.rs"]
mod host_pods;
#[path = "bench/overhead.rs"]
mod overhead;
#[path = "bench/parallel.rs"]
mod parallel;
#[path = "bench/resize.rs"]
mod resize;
#[path = "bench/side_by_side.rs"]
mod side_by_side;
#[path = "bench/stats.rs"]
mod stats;

/// ExecSync of `true` in container `id`: how long the call took.
async fn exec_true(
    c: &mut proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<Duration> {
    let begin = Instant::now();
    let r = c
        .exec_sync(proto::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            timeout: 30,
        })
        .await?
        .into_inner();
    if r.exit_code != 0 {
        bail!("ExecSync true exited {}", r.exit_code);
    }
    Ok(begin.elapsed())
}

/// Pods of the parallel-start burst.
const PARALLEL_PODS: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut runs = 8usize;
    let mut accel = "tcg".to_owned();
    let mut pull_only = false;
    let mut streaming_only = false;
    let mut stats_only = false;
    let mut resize_only = false;
    let mut overhead_only = false;
    let mut boot_only = false;
    let mut side_only = false;
    let mut parallel_only = false;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--accel" => accel = args.next().context("--accel MODE")?,
            "--pull-only" => pull_only = true,
            "--streaming-only" => streaming_only = true,
            "--stats-only" => stats_only = true,
            "--resize-only" => resize_only = true,
            "--overhead-only" => overhead_only = true,
            "--boot-only" => boot_only = true,
            "--side-by-side-only" => side_only = true,
            "--parallel-only" => parallel_only = true,
            "--quick" => quick = true,
            other => {
                bail!(
                    "unknown argument {other:?} (usage: frakti-bench [--runs N] [--accel MODE] [--quick] [--side-by-side-only] [--parallel-only] [--pull-only] [--streaming-only] [--stats-only] [--resize-only] [--overhead-only] [--boot-only])"
                )
            }
        }
    }
    if quick {
        side_by_side::side_by_side(&accel, 3).await?;
        return boot_bench(&accel, 3).await;
    }
    if side_only {
        return side_by_side::side_by_side(&accel, runs).await;
    }
    if parallel_only {
        return parallel::parallel_starts(&accel, PARALLEL_PODS).await;
    }
    if streaming_only {
        return streaming_bench(&accel, runs).await;
    }
    if stats_only {
        return stats_bench(&accel).await;
    }
    if resize_only {
        return resize_bench(&accel, runs).await;
    }
    if boot_only {
        return boot_bench(&accel, runs).await;
    }
    if overhead_only {
        return overhead_bench(&accel, runs.clamp(1, 5)).await;
    }
    if !pull_only {
        side_by_side::side_by_side(&accel, runs).await?;
        parallel::parallel_starts(&accel, PARALLEL_PODS).await?;
    }
    pull_bench(runs.clamp(1, 5)).await?;
    if pull_only {
        return Ok(());
    }
    let daemon = Daemon::start(&["--accel", &accel]).await?;
    let mut c = daemon.runtime().await?;

    let (mut starts, mut floors, accel_used) = pod_starts(&daemon, &mut c, runs).await?;

    // Host memory of one idle pod, and ICMP round trips host -> pod IP.
    let pod = pod_config("bench-idle", &[]);
    let id = run_pod(&mut c, pod.clone()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, info) = pod_status(&mut c, &id).await?;
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    let mut pod_rtt = ping_rtts(&pod_ip, 40)?;
    let floor_net = plain_netns_floor(daemon.dir_path(), 40).await?;
    let mut floor_rtt = floor_net.rtts.clone();
    let pid = vm_pid(&info);
    let fs_pid = info["vm"]["virtiofsd_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(0);
    let rss_kib = hypervisor::process::rss_kib(pid).unwrap_or(0)
        + hypervisor::process::rss_kib(fs_pid).unwrap_or(0);

    // Containers in the running pod: start, ExecSync, and HTTP to a server in it.
    let registry = Registry::start(None).await?;
    let image = workload::push_box(&registry).await?;
    workload::pull(&daemon, &image).await?;
    let mut container_starts = Vec::new();
    for i in 0..=runs {
        let config = workload::container(&image, &format!("start-{i}"), "sleep 100000");
        let begin = Instant::now();
        let cid = workload::run_container(&mut c, &id, &pod, config).await?;
        let took = begin.elapsed().as_secs_f64();
        if i > 0 {
            container_starts.push(took);
        }
        c.remove_container(proto::RemoveContainerRequest { container_id: cid })
            .await?;
    }
    let server = workload::container(
        &image,
        "web",
        &format!(
            "mkdir -p /www && head -c {BULK_BYTES} /dev/zero > /www/bulk && echo ok > /www/small && httpd -f -p 80 -h /www"
        ),
    );
    let web = workload::run_container(&mut c, &id, &pod, server).await?;
    let mut execs = Vec::new();
    for _ in 0..20 {
        execs.push(exec_true(&mut c, &web).await?.as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pod_http = http_bench(&pod_ip).await?;
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await?;
    let mut host_starts = host_pods::host_pod_starts(&mut c, &image, runs).await?;

    let s50 = print_pod_starts(runs, accel_used, &mut starts, &mut floors);
    let (p50, f50) = (percentile(&mut pod_rtt, 50), percentile(&mut floor_rtt, 50));
    println!(
        "ping host -> pod IP: p50 {p50:.3} ms; plain netns on the same CNI network, no VM: p50 {f50:.3} ms; ratio {:.1}",
        p50 / f50
    );
    println!(
        "idle pod host RSS: {:.1} MiB (QEMU and virtiofsd)",
        rss_kib as f64 / 1024.0
    );
    let (c50, c90) = (
        percentile(&mut container_starts, 50),
        percentile(&mut container_starts, 90),
    );
    println!(
        "container start in a running pod (CreateContainer + StartContainer -> RUNNING): p50 {c50:.3} s  p90 {c90:.3} s"
    );
    let (h50, h90) = (
        percentile(&mut host_starts, 50),
        percentile(&mut host_starts, 90),
    );
    println!(
        "host pod start (RunPodSandbox + CreateContainer + StartContainer -> RUNNING): p50 {h50:.3} s  p90 {h90:.3} s; \
         VM pod, the same steps: p50 {:.3} s",
        s50 + c50
    );
    println!(
        "ExecSync `true` round trip: p50 {:.1} ms",
        percentile(&mut execs, 50)
    );
    let mut pod_lat = pod_http.latencies_ms.clone();
    let mut floor_lat = floor_net.http.latencies_ms.clone();
    println!(
        "HTTP GET host -> pod (new connection each): p50 {:.2} ms; plain netns, no VM: p50 {:.2} ms",
        percentile(&mut pod_lat, 50),
        percentile(&mut floor_lat, 50)
    );
    println!(
        "HTTP bulk host -> pod ({} MB): {:.1} MB/s; plain netns, no VM: {:.1} MB/s",
        BULK_BYTES / 1_000_000,
        pod_http.bulk_mb_s,
        floor_net.http.bulk_mb_s
    );
    drop(c);
    drop(daemon);
    stats_bench(&accel).await?;
    resize_bench(&accel, runs).await?;
    streaming_bench(&accel, runs).await
}

/// `UpdateContainerResources` until the new vCPU and memory are online in
/// the guest, p50 of `runs` rounds each way.
async fn resize_bench(accel: &str, runs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(&["--accel", accel, "--cpu", "1", "--max-cpu", "2"]).await?;
    let mut c = daemon.runtime().await?;
    let registry = Registry::start(None).await?;
    let image = workload::push_box(&registry).await?;
    workload::pull(&daemon, &image).await?;
    let mut r = resize::resize_latencies(&mut c, &image, runs.clamp(1, 10)).await?;
    println!(
        "UpdateContainerResources until online in the guest, 1 -> 2 vCPUs and 256 -> 512 MiB: \
         p50 {:.0} ms; back to 1 vCPU and 256 MiB: p50 {:.0} ms",
        percentile(&mut r.grow, 50),
        percentile(&mut r.shrink, 50)
    );
    Ok(())
}

/// The fixed host cost of an idle pod at the shipped default size (512 MiB),
/// and the RuntimeClass `overhead.podFixed` it calls for.
async fn overhead_bench(accel: &str, runs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(&["--accel", accel, "--memory", "512"]).await?;
    let mut c = daemon.runtime().await?;
    let pods = overhead::idle_pods(&mut c, runs).await?;
    let mut rss: Vec<f64> = pods.iter().map(|p| p.rss_mib).collect();
    let mut pss: Vec<f64> = pods.iter().map(|p| p.pss_mib).collect();
    let mut cpu: Vec<f64> = pods.iter().map(|p| p.cpu_millicores).collect();
    let (rss90, cpu90) = (percentile(&mut rss, 90), percentile(&mut cpu, 90));
    println!(
        "idle pod overhead, {runs} pods, 512 MiB guest (QEMU and virtiofsd): RSS p50 {:.1} MiB p90 {rss90:.1} MiB; \
         PSS p50 {:.1} MiB p90 {:.1} MiB; CPU p50 {:.0} m p90 {cpu90:.0} m",
        percentile(&mut rss, 50),
        percentile(&mut pss, 50),
        percentile(&mut pss, 90),
        percentile(&mut cpu, 50),
    );
    println!(
        "RuntimeClass overhead.podFixed for this host: memory {}Mi, cpu {}m",
        ((rss90 / 16.0).ceil() * 16.0) as u64,
        ((cpu90 / 10.0).ceil() * 10.0).max(10.0) as u64
    );
    Ok(())
}

/// `ListContainerStats` latency, p50 and p99 of 100 calls, over VM pods and
/// over host pods.
async fn stats_bench(accel: &str) -> anyhow::Result<()> {
    let daemon = Daemon::start(&["--accel", accel]).await?;
    let mut c = daemon.runtime().await?;
    let registry = Registry::start(None).await?;
    let image = workload::push_box(&registry).await?;
    workload::pull(&daemon, &image).await?;
    for layout in stats::LAYOUTS {
        for (host, kind) in [(false, "VM pods"), (true, "host pods")] {
            let mut ms = stats::list_stats_latencies(&mut c, &image, host, layout, 100).await?;
            println!(
                "ListContainerStats, {} {kind} x {} containers: p50 {:.1} ms  p99 {:.1} ms",
                layout.0,
                layout.1,
                percentile(&mut ms, 50),
                percentile(&mut ms, 99)
            );
        }
    }
    Ok(())
}

/// Exec round trip of `true` over SPDY, and port-forward throughput, in one pod VM.
async fn streaming_bench(accel: &str, runs: usize) -> anyhow::Result<()> {
    use e2e::registry::{Compression, Registry, TestImage, busybox_layer};
    use streaming::client::{CommandIo, PortForwarder, exec_spdy};
    use streaming::protocol::SPDY_REMOTECOMMAND;
    use tokio::io::AsyncReadExt;

    const BIG_MIB: usize = 64;
    let reg = Registry::start(None).await?;
    let layer = busybox_layer().build(Compression::Gzip);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    let image = TestImage {
        layers: vec![layer],
        config: serde_json::to_vec(&config)?,
    };
    reg.push_image("bench/stream", "1", &image).await?;
    let image = format!("{}/bench/stream:1", reg.host);
    let daemon = Daemon::start(&["--accel", accel]).await?;
    daemon
        .images()
        .await?
        .pull_image(proto::PullImageRequest {
            image: Some(proto::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let mut c = daemon.runtime().await?;
    let pod_cfg = pod_config("bench-stream", &[]);
    let pod = run_pod(&mut c, pod_cfg.clone()).await?;
    let script = format!(
        "busybox mkdir -p /tmp/www && busybox dd if=/dev/zero of=/tmp/www/big bs=1048576 count={BIG_MIB} 2>/dev/null && exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www"
    );
    let container = c
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                }),
                image: Some(proto::ImageSpec {
                    image,
                    ..Default::default()
                }),
                args: vec![script],
                ..Default::default()
            }),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    c.start_container(proto::StartContainerRequest {
        container_id: container.clone(),
    })
    .await?;

    // Exec round trip: CRI Exec, SPDY upgrade, run `true`, exit status.
    let mut trips = Vec::new();
    for i in 0..=runs.max(10) {
        let begin = Instant::now();
        let url = c
            .exec(proto::ExecRequest {
                container_id: container.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .url;
        let (w, mut r) = tokio::io::duplex(4096);
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink).await;
        });
        let io = CommandIo {
            stdout: Some(Box::new(w)),
            ..Default::default()
        };
        let status = exec_spdy(&url, SPDY_REMOTECOMMAND, io).await?;
        let _ = drain.await;
        if status.exit_code_of() != Some(0) {
            bail!("exec of `true` failed: {status:?}");
        }
        if i > 0 {
            trips.push(begin.elapsed().as_secs_f64() * 1000.0);
        }
    }

    // Reference: ExecSync of `true` (no streaming), same container.
    let mut syncs = Vec::new();
    for _ in 0..runs.max(10) {
        let begin = Instant::now();
        c.exec_sync(proto::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["true".into()],
            timeout: 30,
        })
        .await?;
        syncs.push(begin.elapsed().as_secs_f64() * 1000.0);
    }

    // Exec output throughput: BIG_MIB of zeros on stdout.
    let mut exec_rates = Vec::new();
    for _ in 0..3 {
        let url = c
            .exec(proto::ExecRequest {
                container_id: container.clone(),
                cmd: vec![
                    "busybox".into(),
                    "dd".into(),
                    "if=/dev/zero".into(),
                    "bs=65536".into(),
                    format!("count={}", BIG_MIB * 16),
                ],
                stdout: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .url;
        let (w, mut r) = tokio::io::duplex(256 * 1024);
        let begin = Instant::now();
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0usize;
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got += n;
            }
            got
        });
        let io = CommandIo {
            stdout: Some(Box::new(w)),
            ..Default::default()
        };
        exec_spdy(&url, SPDY_REMOTECOMMAND, io).await?;
        let got = drain.await?;
        if got != BIG_MIB << 20 {
            bail!("exec output: got {got} bytes");
        }
        exec_rates.push(got as f64 / 1e6 / begin.elapsed().as_secs_f64());
    }

    // Port-forward throughput: GET a BIG_MIB file from httpd on 127.0.0.1 in the pod.
    let url = c
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await?
        .into_inner()
        .url;
    let forwarder = PortForwarder::connect(&url).await?;
    let want = BIG_MIB << 20;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rates = Vec::new();
    while rates.len() < 3 {
        let conn = forwarder.open(8080).await?;
        conn.writer()
            .write(b"GET /big HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let begin = Instant::now();
        let mut reader = conn.reader();
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let took = begin.elapsed().as_secs_f64();
        if got >= want {
            rates.push(got as f64 / 1e6 / took);
        } else if Instant::now() > deadline {
            bail!("port-forward got {got} bytes, not the {want} of the file");
        } else {
            // httpd is still starting (or the file still being written).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    forwarder.close().await;
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    let (t50, t90) = (percentile(&mut trips, 50), percentile(&mut trips, 90));
    println!(
        "exec `true` round trip over SPDY (CRI Exec -> exit status), {} runs: p50 {t50:.1} ms  p90 {t90:.1} ms",
        trips.len()
    );
    println!(
        "for reference, ExecSync `true` (no streaming): p50 {:.1} ms",
        percentile(&mut syncs, 50)
    );
    let e50 = percentile(&mut exec_rates, 50);
    println!("exec output throughput, {BIG_MIB} MiB on stdout (dd): p50 {e50:.1} MB/s");
    let r50 = percentile(&mut rates, 50);
    println!(
        "port-forward throughput, one connection, {BIG_MIB} MiB over HTTP from 127.0.0.1 in the pod: p50 {r50:.1} MB/s"
    );
    Ok(())
}

/// Size of the file the HTTP throughput bench downloads.
const BULK_BYTES: usize = 20_000_000;

/// HTTP figures against one server.
#[derive(Debug, Clone)]
struct HttpFigures {
    latencies_ms: Vec<f64>,
    bulk_mb_s: f64,
}

/// GETs `/small` 40 times (a new connection each) and `/bulk` once from `ip`.
async fn http_bench(ip: &str) -> anyhow::Result<HttpFigures> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut ready = false;
    for _ in 0..50 {
        if client
            .get(format!("http://{ip}/small"))
            .send()
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !ready {
        bail!("no HTTP server answers on {ip}");
    }
    let mut latencies_ms = Vec::new();
    for _ in 0..40 {
        let begin = Instant::now();
        let body = client
            .get(format!("http://{ip}/small"))
            .send()
            .await?
            .bytes()
            .await?;
        if body.as_ref() != b"ok\n" {
            bail!("unexpected body from {ip}");
        }
        latencies_ms.push(begin.elapsed().as_secs_f64() * 1000.0);
    }
    let begin = Instant::now();
    let bulk = client
        .get(format!("http://{ip}/bulk"))
        .send()
        .await?
        .bytes()
        .await?;
    if bulk.len() != BULK_BYTES {
        bail!("bulk download from {ip}: {} bytes", bulk.len());
    }
    let bulk_mb_s = bulk.len() as f64 / 1e6 / begin.elapsed().as_secs_f64();
    Ok(HttpFigures {
        latencies_ms,
        bulk_mb_s,
    })
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
        max_vcpus: 1,
        max_memory_mib: 256,
        kernel: guest_dir().join("vmlinux"),
        initrd: guest_dir().join("initramfs.img"),
        extra_cmdline: Vec::new(),
        accel,
        netns: None,
        nics: Vec::new(),
        shares: Vec::new(),
        disks: Vec::new(),
    };
    let begin = Instant::now();
    // The pod's own launch (files handed over open), without a pod around it.
    let vm = qemu.launch(&spec).await?;
    let deadline = begin + Duration::from_secs(60);
    let took = loop {
        let text = std::fs::read_to_string(&vm.console_log).unwrap_or_default();
        if text.contains(": init") {
            break Ok(begin.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("floor VM printed no init marker in 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    qemu.stop(&spec.id, &vm, Duration::from_secs(1)).await?;
    took
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
/// Ping and HTTP figures of a plain network namespace on the same CNI network.
struct NetFloor {
    rtts: Vec<f64>,
    http: HttpFigures,
}

/// A plain netns on the pod network (no VM): ping RTTs and busybox httpd in it.
async fn plain_netns_floor(dir: &std::path::Path, count: usize) -> anyhow::Result<NetFloor> {
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
    let measured = match &result {
        Ok(r) => {
            let ip = r.pod_ips().first().cloned().unwrap_or_default();
            serve_and_measure(&ns, &ip, dir, count).await
        }
        Err(e) => Err(anyhow::anyhow!("CNI ADD for the floor: {e}")),
    };
    let _ = cni
        .del(&config, &attachment, result.as_ref().ok(), &[])
        .await;
    let _ = ns.remove();
    measured
}

async fn serve_and_measure(
    ns: &network::Netns,
    ip: &str,
    dir: &std::path::Path,
    count: usize,
) -> anyhow::Result<NetFloor> {
    let rtts = ping_rtts(ip, count)?;
    let www = dir.join("floor-www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("small"), "ok\n")?;
    std::fs::write(www.join("bulk"), vec![0u8; BULK_BYTES])?;
    let mut httpd = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
        ])
        .arg(&www)
        .spawn()?;
    let http = http_bench(ip).await;
    let _ = httpd.kill();
    let _ = httpd.wait();
    Ok(NetFloor { rtts, http: http? })
}

fn percentile(values: &mut [f64], p: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return 0.0;
    }
    let idx = ((values.len() * p).div_ceil(100)).clamp(1, values.len()) - 1;
    values[idx]
}

/// Deterministic filler: half noise (incompressible), half text (compressible).
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 4096) % 2 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(format!("line {x:020} of some log text\n").as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Pull of a ~100 MB, 5-layer image: frakti (download, verify, unpack) vs
/// `skopeo copy` (download into an OCI layout), interleaved, medians.
async fn pull_bench(runs: usize) -> anyhow::Result<()> {
    use e2e::registry::{Compression, LayerBuilder, Registry, TestImage, busybox_layer};
    let reg = Registry::start(None).await?;
    let mut layers = vec![busybox_layer().build(Compression::Gzip)];
    for i in 0..4u64 {
        let mut l = LayerBuilder::default().dir(&format!("data{i}"));
        for f in 0..8u64 {
            l = l.file(
                &format!("data{i}/f{f}"),
                &filler(3 << 20, i * 100 + f),
                0o644,
            );
        }
        layers.push(l.build(Compression::Gzip));
    }
    let image = TestImage::new(layers, "", "amd64");
    let total: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    reg.push_image("bench/pull", "1", &image).await?;
    let name = format!("{}/bench/pull:1", reg.host);
    let hosts = tempfile::tempdir()?;
    let daemon = Daemon::start(&[
        "--accel",
        "tcg",
        "--registry-config-dir",
        hosts.path().to_str().unwrap_or("/nonexistent"),
    ])
    .await?;
    let mut c = daemon.images().await?;
    let layout = tempfile::tempdir()?;
    let (mut frakti, mut skopeo) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        c.remove_image(proto::RemoveImageRequest {
            image: Some(proto::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
        })
        .await?;
        let begin = Instant::now();
        c.pull_image(proto::PullImageRequest {
            image: Some(proto::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await?;
        let took_frakti = begin.elapsed().as_secs_f64();
        let dest = layout.path().join(format!("run-{i}"));
        let begin = Instant::now();
        let out = std::process::Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{name}"))
            .arg(format!("oci:{}:bench", dest.display()))
            .output()
            .context("run skopeo (Debian package skopeo)")?;
        let took_skopeo = begin.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "skopeo copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_dir_all(&dest);
        // The first round warms caches; it is not counted.
        if i > 0 {
            frakti.push(took_frakti);
            skopeo.push(took_skopeo);
        }
    }
    if std::env::var_os("FRAKTI_BENCH_LOG").is_some() {
        eprintln!("{}", daemon.log());
    }
    let (f, s) = (percentile(&mut frakti, 50), percentile(&mut skopeo, 50));
    println!(
        "image pull: {} layers, {:.1} MB compressed, {runs} runs, empty store each time",
        image.layers.len(),
        total as f64 / 1e6
    );
    println!("frakti PullImage (download + verify + unpack): p50 {f:.3} s");
    println!("skopeo copy to an OCI dir (download only):     p50 {s:.3} s");
    println!("ratio frakti / skopeo: {:.3}", f / s);
    Ok(())
}

/// Pod start (RunPodSandbox call until it returns a READY sandbox) and the
/// floor (the same QEMU command line, no daemon, until the agent's first
/// console line), interleaved so that drift in host load hits both alike:
/// `runs` of each (after one warm-up round), and the accelerator used.
async fn pod_starts(
    daemon: &Daemon,
    c: &mut proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Accel)> {
    let mut accel_used = Accel::Tcg;
    let mut starts = Vec::new();
    let mut floors = Vec::new();
    for i in 0..=runs {
        let begin = Instant::now();
        let id = run_pod(c, pod_config(&format!("bench-{i}"), &[])).await?;
        let took = begin.elapsed();
        let (status, info) = pod_status(c, &id).await?;
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
        let floor = floor_boot(daemon, vm_accel, i).await?;
        accel_used = vm_accel;
        // The first round warms caches; it is not counted.
        if i > 0 {
            starts.push(took.as_secs_f64());
            floors.push(floor);
        }
    }

    Ok((starts, floors, accel_used))
}

/// Prints the pod start figures; returns the p50 pod start.
fn print_pod_starts(runs: usize, accel: Accel, starts: &mut [f64], floors: &mut [f64]) -> f64 {
    let (s50, s90) = (percentile(starts, 50), percentile(starts, 90));
    let (f50, f90) = (percentile(floors, 50), percentile(floors, 90));
    println!("frakti bench: {runs} runs, accel {accel}, default pod size (1 vCPU, 256 MiB)");
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
    s50
}

/// `--boot-only`: pod start against the bare QEMU floor, alone.
async fn boot_bench(accel: &str, runs: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(&["--accel", accel]).await?;
    let mut c = daemon.runtime().await?;
    let modules = guest_dir().join("modules.img");
    println!(
        "guest module disk: {}",
        if modules.is_file() {
            "attached (modules on demand)"
        } else {
            "absent (initramfs modules only)"
        }
    );
    let (mut starts, mut floors, accel_used) = pod_starts(&daemon, &mut c, runs).await?;
    print_pod_starts(runs, accel_used, &mut starts, &mut floors);
    Ok(())
}
