//! What a pod and its containers use, as a runtime measures it.

pub use usage::{CpuUsage, FsUsage, InterfaceUsage, MemoryUsage};

/// A container's writable layer: where it lives and what it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUsage {
    /// The mount point of the filesystem that holds it.
    pub mountpoint: String,
    /// Space and inodes.
    pub usage: FsUsage,
}

/// How old the total of a runtime's writable layers may be.
pub const LAYERS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// What the writable layers under `layers`' root use in all (the root is
/// made if missing), off the async runtime.
pub async fn measure_layers(
    layers: std::sync::Arc<usage::dir::CachedDirUsage>,
) -> Result<LayerUsage, crate::RuntimeError> {
    let failed = |e: String| crate::RuntimeError::internal("measure the writable layers", e);
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(layers.root()).map_err(|e| failed(e.to_string()))?;
        let usage = layers.get().map_err(|e| failed(e.to_string()))?;
        Ok(LayerUsage {
            mountpoint: layers.root().display().to_string(),
            usage,
        })
    })
    .await
    .map_err(|e| failed(e.to_string()))?
}

/// What one container uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// Container id.
    pub id: String,
    /// CPU, while it runs.
    pub cpu: Option<CpuUsage>,
    /// Memory, while it runs.
    pub memory: Option<MemoryUsage>,
    /// Its writable layer.
    pub writable_layer: Option<LayerUsage>,
}

/// What a pod uses, with the containers asked about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodUsage {
    /// When it was measured, ns since the epoch (host clock).
    pub timestamp_ns: i64,
    /// CPU of the whole pod (for a VM pod: what the VM costs on the host).
    pub cpu: Option<CpuUsage>,
    /// Memory of the whole pod (for a VM pod: what the VM costs on the host).
    pub memory: Option<MemoryUsage>,
    /// The pod's network interfaces; empty for the node's network.
    pub interfaces: Vec<InterfaceUsage>,
    /// Name of the pod's default interface, when it has one.
    pub default_interface: Option<String>,
    /// Processes in the pod.
    pub processes: Option<u64>,
    /// The containers asked about, in the order asked.
    pub containers: Vec<ContainerUsage>,
}
