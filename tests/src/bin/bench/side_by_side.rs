//! The same CRI calls against containerd + runc and frakti (a pod VM from
//! the warm pool, and one booted cold): RunPodSandbox, CreateContainer,
//! StartContainer, ExecSync of `true`; each figure for each runtime and the
//! ratio to containerd's.

use std::time::{Duration, Instant};

use cri::proto;
use e2e::registry::Registry;
use e2e::{Daemon, pod_config, workload};

use super::containerd::{Containerd, push_pause};
use super::{exec_true, percentile};

type Runtime = proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// One step's figures in [`Steps`].
type Field = fn(&mut Steps) -> &mut Vec<f64>;

/// Seconds each step took, one entry per run.
#[derive(Debug, Default)]
struct Steps {
    run: Vec<f64>,
    create: Vec<f64>,
    start: Vec<f64>,
    total: Vec<f64>,
    exec: Vec<f64>,
}

/// `runs` pods (after one that is not counted), each with one container
/// and three ExecSync calls; `metrics` set: each pod waits for the pool.
async fn measure(
    rt: &mut Runtime,
    image: &str,
    runs: usize,
    metrics: Option<&str>,
) -> anyhow::Result<Steps> {
    let mut steps = Steps::default();
    for i in 0..=runs {
        if let Some(m) = metrics {
            e2e::wait_pool_ready(m, 1.0, Duration::from_secs(300)).await?;
        }
        let pod = pod_config(&format!("side-{i}"), &[]);
        let begin = Instant::now();
        let id = rt
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let ran = Instant::now();
        let mut config = workload::container(image, "c", "sleep 100000");
        config.log_path.clear();
        let cid = rt
            .create_container(proto::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(config),
                sandbox_config: Some(pod),
            })
            .await?
            .into_inner()
            .container_id;
        let created = Instant::now();
        rt.start_container(proto::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await?;
        let started = Instant::now();
        let mut execs = Vec::new();
        for _ in 0..3 {
            execs.push(exec_true(rt, &cid).await?.as_secs_f64());
        }
        rt.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        if i == 0 {
            continue;
        }
        steps.run.push((ran - begin).as_secs_f64());
        steps.create.push((created - ran).as_secs_f64());
        steps.start.push((started - created).as_secs_f64());
        steps.total.push((started - begin).as_secs_f64());
        steps.exec.extend(execs);
    }
    Ok(steps)
}

/// Runs the comparison and prints it.
pub async fn side_by_side(accel: &str, runs: usize) -> anyhow::Result<()> {
    let registry = Registry::start(None).await?;
    let image = workload::push_box(&registry).await?;
    let pause = push_pause(&registry).await?;

    let ctr = Containerd::start(&registry.host, &pause).await?;
    workload::pull_with(&mut ctr.images().await?, &pause).await?;
    workload::pull_with(&mut ctr.images().await?, &image).await?;
    let reference = measure(&mut ctr.runtime().await?, &image, runs, None).await;
    let version = ctr.version.clone();
    if let Err(e) = &reference {
        eprintln!(
            "containerd failed: {e:#}; its log ends:\n{}",
            ctr.log_tail(30)
        );
    }
    ctr.stop().await;
    let mut reference = reference?;

    let metrics = format!("127.0.0.1:{}", e2e::free_port()?);
    let pooled = Daemon::start(&[
        "--accel",
        accel,
        "--vm-pool",
        "1",
        "--metrics-address",
        &metrics,
    ])
    .await?;
    workload::pull(&pooled, &image).await?;
    let mut warm = measure(&mut pooled.runtime().await?, &image, runs, Some(&metrics)).await?;
    drop(pooled);

    let cold = Daemon::start(&["--accel", accel]).await?;
    workload::pull(&cold, &image).await?;
    let mut cold_steps = measure(&mut cold.runtime().await?, &image, runs, None).await?;
    drop(cold);

    println!(
        "side by side, the same CRI calls ({runs} runs, p50 / p90; {version} + runc; frakti accel {accel}):"
    );
    println!(
        "  {:<28} {:>19} {:>19} {:>7} {:>19} {:>7}",
        "step", "containerd + runc", "frakti, warm pool", "ratio", "frakti, cold", "ratio"
    );
    let rows: [(&str, Field); 5] = [
        ("RunPodSandbox", |s| &mut s.run),
        ("CreateContainer", |s| &mut s.create),
        ("StartContainer", |s| &mut s.start),
        ("pod + container, total", |s| &mut s.total),
        ("ExecSync `true`", |s| &mut s.exec),
    ];
    for (name, field) in rows {
        let fig = |s: &mut Steps| {
            let v = field(s);
            (percentile(v, 50) * 1000.0, percentile(v, 90) * 1000.0)
        };
        let (r50, r90) = fig(&mut reference);
        let (w50, w90) = fig(&mut warm);
        let (c50, c90) = fig(&mut cold_steps);
        println!(
            "  {name:<28} {:>19} {:>19} {:>7.1} {:>19} {:>7.1}",
            format!("{r50:.0} / {r90:.0} ms"),
            format!("{w50:.0} / {w90:.0} ms"),
            w50 / r50,
            format!("{c50:.0} / {c90:.0} ms"),
            c50 / r50
        );
    }
    Ok(())
}
