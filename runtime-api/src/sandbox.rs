//! Pod sandboxes as runtimes see them: what the kubelet asked for, and the
//! stored record, independent of the CRI wire format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies a pod to Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Attempt number of this sandbox for the pod.
    pub attempt: u32,
}

impl PodMetadata {
    /// The key that must be unique among live sandboxes.
    pub fn reservation_key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// Linux resource limits, as CRI expresses them (0 = unset).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodResources {
    /// CFS period in microseconds.
    pub cpu_period: i64,
    /// CFS quota in microseconds per period.
    pub cpu_quota: i64,
    /// Relative CPU weight.
    pub cpu_shares: i64,
    /// Memory limit in bytes.
    pub memory_limit_bytes: i64,
}

impl PodResources {
    /// CPU in thousandths of a core (quota over period), if limited.
    pub fn cpu_millis(&self) -> Option<u64> {
        if self.cpu_quota <= 0 || self.cpu_period <= 0 {
            return None;
        }
        let quota = u64::try_from(self.cpu_quota).ok()?;
        let period = u64::try_from(self.cpu_period).ok()?;
        Some(quota.saturating_mul(1000).div_ceil(period))
    }

    /// The sum of `limits`, as one pod's figures (CPU over a 100 ms period).
    pub fn sum<'a>(
        limits: impl IntoIterator<Item = &'a crate::container::ContainerResources>,
    ) -> Self {
        let mut millis = 0u64;
        let mut total = Self::default();
        for r in limits {
            let one = Self {
                cpu_quota: r.cpu_quota,
                cpu_period: r.cpu_period,
                ..Self::default()
            };
            millis = millis.saturating_add(one.cpu_millis().unwrap_or(0));
            total.cpu_shares = total.cpu_shares.saturating_add(r.cpu_shares.max(0));
            total.memory_limit_bytes = total
                .memory_limit_bytes
                .saturating_add(r.memory_limit_bytes.max(0));
        }
        if millis > 0 {
            total.cpu_period = 100_000;
            total.cpu_quota = i64::try_from(millis.saturating_mul(100)).unwrap_or(i64::MAX);
        }
        total
    }

    /// Per figure, the larger of the two.
    pub fn max(&self, other: &Self) -> Self {
        let (a, b) = (
            self.cpu_millis().unwrap_or(0),
            other.cpu_millis().unwrap_or(0),
        );
        let cpu = if a >= b { self } else { other };
        Self {
            cpu_quota: cpu.cpu_quota,
            cpu_period: cpu.cpu_period,
            cpu_shares: self.cpu_shares.max(other.cpu_shares),
            memory_limit_bytes: self.memory_limit_bytes.max(other.memory_limit_bytes),
        }
    }
}

/// What the kubelet asked for when it ran the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Pod identity.
    pub metadata: Option<PodMetadata>,
    /// Hostname for the pod.
    pub hostname: String,
    /// Directory for container logs on the host.
    pub log_directory: String,
    /// Labels, for selection.
    pub labels: BTreeMap<String, String>,
    /// Annotations, opaque to the runtime except those it documents.
    pub annotations: BTreeMap<String, String>,
    /// Runtime handler (RuntimeClass); empty is the default.
    pub runtime_handler: String,
    /// Resources of the whole pod, when the kubelet sent them.
    pub resources: Option<PodResources>,
    /// Sandbox overhead, when the kubelet sent it.
    pub overhead: Option<PodResources>,
    /// hostPort mappings.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// DNS settings for the pod's `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Namespace sysctls to set for the pod.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Pod-level namespace choices (containers inherit them).
    #[serde(default)]
    pub namespaces: crate::container::NamespaceOptions,
    /// The pod asks for privileged containers.
    #[serde(default)]
    pub privileged: bool,
    /// The pod's parent cgroup on the host (cgroupfs path, or a systemd
    /// `.slice`); empty when the kubelet sent none.
    #[serde(default)]
    pub cgroup_parent: String,
}

/// DNS settings of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options (e.g. `ndots:5`).
    pub options: Vec<String>,
}

/// A hostPort mapping of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Port inside the pod.
    pub container_port: i32,
    /// Port on the host.
    pub host_port: i32,
    /// Host address, empty for all.
    pub host_ip: String,
}

/// CRI sandbox states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Running and able to host containers.
    Ready,
    /// Stopped, or its VM is gone.
    NotReady,
}

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// 64 hex characters.
    pub id: String,
    /// The request that created it.
    pub config: SandboxConfig,
    /// Current state.
    pub state: SandboxState,
    /// Why it is not ready, when it is not.
    pub reason: String,
    /// Creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// The runtime handler that runs it, chosen once when it was created.
    #[serde(alias = "runtime")]
    pub handler: String,
    /// Runtime-private state (e.g. the VM's pid and directories).
    pub runtime_state: serde_json::Value,
    /// The pod's IP addresses, the primary first.
    #[serde(default)]
    pub ips: Vec<String>,
}

impl SandboxRecord {
    /// The pod's metadata (records are only created with metadata).
    pub fn metadata(&self) -> Option<&PodMetadata> {
        self.config.metadata.as_ref()
    }
}
