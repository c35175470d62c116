//! `ListContainerStats` latency over many pods (10 pods of 3 running
//! containers, and of 10), VM pods and host pods, one call after another.

use std::time::Instant;

use anyhow::bail;
use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::{pod_config, workload};
use tonic::transport::Channel;

/// The annotation that puts a pod on the host.
const OS_CONTAINER: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";

/// Pods, and running containers in each: the anchor (10 x 3) and
/// a node with 100 containers (10 x 10).
pub const LAYOUTS: [(usize, usize); 2] = [(10, 3), (10, 10)];

/// Milliseconds per `ListContainerStats` call (`calls` of them, after one
/// warming call) with `pods` pods of `containers` running containers, on
/// the host runtime when `host`, else in VMs.
pub async fn list_stats_latencies(
    c: &mut RuntimeServiceClient<Channel>,
    image: &str,
    host: bool,
    (pods_wanted, containers): (usize, usize),
    calls: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut pods = Vec::new();
    for p in 0..pods_wanted {
        let mut pod = pod_config(&format!("bench-stats-{host}-{containers}-{p}"), &[]);
        if host {
            pod.annotations.insert(OS_CONTAINER.into(), "true".into());
        }
        let id = e2e::run_pod(c, pod.clone()).await?;
        for n in 0..containers {
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
        if measured != pods_wanted * containers {
            bail!(
                "ListContainerStats measured {measured} of {} containers",
                pods_wanted * containers
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
