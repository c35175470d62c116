//! VM resize: time from `UpdateContainerResources` until the new vCPU and
//! memory are online in the guest (the call returns once the agent saw
//! them), growing 1 vCPU / 256 MiB to 2 / 512 and shrinking back.

use std::time::Instant;

use anyhow::{Context, bail};
use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::{pod_config, workload};
use tonic::transport::Channel;

/// One direction's latencies, ms.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Growing by one vCPU and 256 MiB.
    pub grow: Vec<f64>,
    /// Shrinking back.
    pub shrink: Vec<f64>,
}

fn limits(quota: i64, memory_mib: i64) -> proto::LinuxContainerResources {
    proto::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: quota,
        memory_limit_in_bytes: memory_mib << 20,
        ..Default::default()
    }
}

/// `runs` grow-and-shrink rounds in one pod VM.
pub async fn resize_latencies(
    c: &mut RuntimeServiceClient<Channel>,
    image: &str,
    runs: usize,
) -> anyhow::Result<Latencies> {
    let pod = pod_config("bench-resize", &[]);
    let pod_id = e2e::run_pod(c, pod.clone()).await?;
    let config = workload::container(image, "work", "sleep 100000");
    let id = workload::run_container(c, &pod_id, &pod, config).await?;
    let mut out = Latencies::default();
    for _ in 0..runs {
        for (grow, linux) in [(true, limits(200_000, 384)), (false, limits(100_000, 128))] {
            let begin = Instant::now();
            c.update_container_resources(proto::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(linux),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources")?;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            let nproc = c
                .exec_sync(proto::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["nproc".into()],
                    timeout: 30,
                })
                .await?
                .into_inner();
            let want = if grow { "2" } else { "1" };
            if String::from_utf8_lossy(&nproc.stdout).trim() != want {
                bail!("after the update nproc is {:?}, not {want}", nproc.stdout);
            }
            if grow { &mut out.grow } else { &mut out.shrink }.push(ms);
        }
    }
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await?;
    Ok(out)
}
