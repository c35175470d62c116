//! What a host pod and its containers use: their cgroups, the counters of
//! the pod's network namespace, and their writable layers on the host.

use std::path::Path;

use runtime_api::container::{ContainerRecord, ContainerState};
use runtime_api::{ContainerUsage, LayerUsage, PodUsage, RuntimeError, SandboxRecord};

use crate::config::{self, HostContainer, HostSandbox};
use crate::runtime::HostRuntime;

impl HostRuntime {
    /// Measures the pod and `containers` (blocking file reads, off the runtime).
    pub(crate) async fn measure_pod(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<PodUsage, RuntimeError> {
        let pod: HostSandbox = config::parse("sandbox", &sandbox.runtime_state)?;
        let wanted = containers
            .iter()
            .map(|c| {
                let running = c.status.state == ContainerState::Running;
                config::parse::<HostContainer>("container", &c.runtime_state)
                    .map(|state| (c.id.clone(), running, state))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let root = self.config.cgroup_root.clone();
        let layers = self.config.layers_dir.clone();
        tokio::task::spawn_blocking(move || measure(&root, &layers, &pod, &wanted))
            .await
            .map_err(|e| RuntimeError::internal("measure the pod", e))?
    }
}

fn measure(
    root: &Path,
    layers: &Path,
    pod: &HostSandbox,
    containers: &[(String, bool, HostContainer)],
) -> Result<PodUsage, RuntimeError> {
    let timestamp_ns = crate::now_ns();
    let pod_cgroup = usage::cgroup::read_cgroup(root, &pod.cgroup.path)
        .map_err(|e| RuntimeError::internal("read the pod's cgroup", e))?;
    let interfaces = match &pod.netns {
        Some(netns) => network::netns::interface_counters(netns)
            .map_err(|e| RuntimeError::internal("read the pod's network counters", e))?,
        None => Vec::new(),
    };
    let default_interface = interfaces
        .iter()
        .any(|i| i.name == network::pod::IFNAME)
        .then(|| network::pod::IFNAME.to_owned());
    let containers = containers
        .iter()
        .map(|(id, running, c)| container_usage(root, layers, id, *running, c))
        .collect();
    Ok(PodUsage {
        timestamp_ns,
        cpu: Some(pod_cgroup.cpu),
        memory: Some(pod_cgroup.memory),
        interfaces,
        default_interface,
        processes: pod_cgroup.processes,
        containers,
    })
}

/// A container's figures; a cgroup that cannot be read (it just exited)
/// leaves CPU and memory out.
fn container_usage(
    root: &Path,
    layers: &Path,
    id: &str,
    running: bool,
    c: &HostContainer,
) -> ContainerUsage {
    let cgroup = running
        .then(|| usage::cgroup::read_cgroup(root, &c.cgroup))
        .and_then(|r| {
            r.inspect_err(|e| tracing::debug!(%id, "cannot read the container's cgroup: {e}"))
                .ok()
        });
    let writable_layer = usage::dir::read_dir_usage(&c.layer.join("upper"))
        .inspect_err(|e| tracing::debug!(%id, "cannot measure the writable layer: {e}"))
        .ok()
        .map(|usage| LayerUsage {
            mountpoint: layers.display().to_string(),
            usage,
        });
    ContainerUsage {
        id: id.to_owned(),
        cpu: cgroup.map(|c| c.cpu),
        memory: cgroup.map(|c| c.memory),
        writable_layer,
    }
}
