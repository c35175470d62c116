//! `ListContainerStats` latency over many pods: 10 pods of 3 running
//! containers each, VM pods and host pods, one call after another.

use std::time::Instant;

use anyhow::bail;
use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::{pod_config, workload};
use tonic::transport::Channel;

/// The annotation that puts a pod on the host.
const OS_CONTAINER: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";
/// Pods, and running containers in each.
pub const PODS: usize = 10;
/// Containers in each pod.
pub const CONTAINERS: usize = 3;

/// Milliseconds per `ListContainerStats` call (`calls` of them, after one
/// warming call) with [`PODS`] pods of [`CONTAINERS`] containers, on the
/// host runtime when `host`, else in VMs.
pub async fn list_stats_latencies(
    c: &mut RuntimeServiceClient<Channel>,
    image: &str,
    host: bool,
    calls: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut pods = Vec::new();
    for p in 0..PODS {
        let mut pod = pod_config(&format!("bench-stats-{host}-{p}"), &[]);
        if host {
            pod.annotations.insert(OS_CONTAINER.into(), "true".into());
        }
        let id = e2e::run_pod(c, pod.clone()).await?;
        for n in 0..CONTAINERS {
            let config = workload::container(image, &format!("c{n}"), "sleep 100000");
            workload::run_container(c, &id, &pod, config).await?;
        }
        pods.push(id);
    }
    let mut latencies = Vec::new();
    for i in 0..=calls {
        let begin = Instant::now();
        let stats = c
            .list_container_stats(proto::ListContainerStatsRequest { filter: None })
            .await?
            .into_inner()
            .stats;
        let took = begin.elapsed().as_secs_f64() * 1000.0;
        let measured = stats.iter().filter(|s| s.cpu.is_some()).count();
        if measured != PODS * CONTAINERS {
            bail!(
                "ListContainerStats measured {measured} of {} containers",
                PODS * CONTAINERS
            );
        }
        if i > 0 {
            latencies.push(took);
        }
    }
    for id in pods {
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(latencies)
}
