//! Host-pod start: RunPodSandbox of an OS-container pod, CreateContainer and
//! StartContainer until the container is RUNNING, then the pod's removal.

use std::time::Instant;

use anyhow::bail;
use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::{pod_config, workload};
use tonic::transport::Channel;

/// The annotation that puts a pod on the host.
const OS_CONTAINER: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";

/// Seconds from RunPodSandbox to a RUNNING container, per run (the first,
/// warming, run not counted).
pub async fn host_pod_starts(
    c: &mut RuntimeServiceClient<Channel>,
    image: &str,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut starts = Vec::new();
    for i in 0..=runs {
        let mut pod = pod_config(&format!("bench-host-{i}"), &[]);
        pod.annotations.insert(OS_CONTAINER.into(), "true".into());
        let begin = Instant::now();
        let id = e2e::run_pod(c, pod.clone()).await?;
        let config = workload::container(image, "sleeper", "sleep 100000");
        let cid = workload::run_container(c, &id, &pod, config).await?;
        let took = begin.elapsed().as_secs_f64();
        let state = c
            .container_status(proto::ContainerStatusRequest {
                container_id: cid,
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .map(|s| s.state);
        if state != Some(proto::ContainerState::ContainerRunning as i32) {
            bail!("host pod container not RUNNING after StartContainer: {state:?}");
        }
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
        if i > 0 {
            starts.push(took);
        }
    }
    Ok(starts)
}
