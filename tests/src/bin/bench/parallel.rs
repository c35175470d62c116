//! Pods started at once: `n` RunPodSandbox calls in parallel on one daemon
//! booting every VM cold, next to that daemon's serial pod start; then the
//! same burst on a daemon whose warm pool holds `n` VMs.

use std::time::{Duration, Instant};

use cri::proto;
use e2e::{Daemon, pod_config, run_pod};

use super::percentile;

type Runtime = proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// What a burst of pod starts took.
struct Burst {
    wall: f64,
    each: Vec<f64>,
    failures: usize,
}

/// Starts `n` pods at once; removes them after.
async fn burst(daemon: &Daemon, n: usize, tag: &str) -> anyhow::Result<Burst> {
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = daemon.runtime().await?;
        let name = format!("{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let id = run_pod(&mut c, pod_config(&name, &[])).await;
            (id, t.elapsed().as_secs_f64())
        }));
    }
    let mut each = Vec::new();
    let mut ids = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (id, took) = task.await?;
        match id {
            Ok(id) => {
                each.push(took);
                ids.push(id);
            }
            Err(e) => {
                eprintln!("a pod of the burst failed: {e:#}");
                failures += 1;
            }
        }
    }
    let wall = begin.elapsed().as_secs_f64();
    remove(&mut daemon.runtime().await?, ids).await?;
    Ok(Burst {
        wall,
        each,
        failures,
    })
}

async fn remove(c: &mut Runtime, ids: Vec<String>) -> anyhow::Result<()> {
    for id in ids {
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(())
}

/// Runs both bursts and prints them.
pub async fn parallel_starts(accel: &str, n: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(&["--accel", accel]).await?;
    let mut c = daemon.runtime().await?;
    // Serial starts first (the first not counted).
    let mut serial = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let id = run_pod(&mut c, pod_config(&format!("serial-{i}"), &[])).await?;
        if i > 0 {
            serial.push(t.elapsed().as_secs_f64());
        }
        remove(&mut c, vec![id]).await?;
    }
    let s50 = percentile(&mut serial, 50);
    let mut cold = burst(&daemon, n, "cold").await?;
    drop(daemon);

    let metrics = format!("127.0.0.1:{}", e2e::free_port()?);
    let pool = n.to_string();
    let pooled = Daemon::start(&[
        "--accel",
        accel,
        "--vm-pool",
        &pool,
        "--metrics-address",
        &metrics,
    ])
    .await?;
    e2e::wait_pool_ready(&metrics, n as f64, Duration::from_secs(60 * n as u64)).await?;
    let mut warm = burst(&pooled, n, "warm").await?;
    drop(pooled);

    let (c50, c99) = (
        percentile(&mut cold.each, 50),
        percentile(&mut cold.each, 99),
    );
    println!(
        "{n} pods started at once, every VM cold: all READY in {:.2} s ({} failed), each p50 {c50:.2} s p99 {c99:.2} s; \
         serial pod start p50 {s50:.2} s, so {n} in a row {:.2} s: ratio {:.2}",
        cold.wall,
        cold.failures,
        n as f64 * s50,
        cold.wall / (n as f64 * s50)
    );
    let (w50, w99) = (
        percentile(&mut warm.each, 50),
        percentile(&mut warm.each, 99),
    );
    println!(
        "{n} pods started at once from a warm pool of {n}: all READY in {:.2} s ({} failed), each p50 {w50:.3} s p99 {w99:.3} s, p99 / p50 {:.2}",
        warm.wall,
        warm.failures,
        w99 / w50
    );
    Ok(())
}
