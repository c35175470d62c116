//! Domain types for containers, independent of the CRI wire format.
//!
//! A [`ContainerConfig`] is what the kubelet asked for plus what the image
//! service resolved (image id, config, root filesystem on the host); a
//! runtime turns it into an OCI spec.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Identifies a container within its pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetadata {
    /// Container name, unique in the pod per attempt.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
}

/// The image a container runs, as resolved by the image service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// The reference the kubelet gave (tag, digest or id).
    pub user_ref: String,
    /// Image id (`sha256:` digest of its config).
    pub id: String,
    /// A `repo@digest` name of the image, or its id when it has none.
    pub image_ref: String,
    /// Root filesystem of the image on the host (read-only snapshot).
    pub rootfs: PathBuf,
    /// Process defaults from the image config.
    pub process: ImageProcess,
}

/// Process defaults from an OCI image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProcess {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User` (`uid`, `name`, `uid:gid`, `name:group`).
    pub user: String,
    /// `StopSignal` (e.g. `SIGQUIT`); empty for SIGTERM.
    pub stop_signal: String,
}

/// Mount propagation of a CRI mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// No propagation either way.
    #[default]
    Private,
    /// Mounts made on the host under the source appear in the container.
    HostToContainer,
    /// Both ways (needs a host-namespace runtime).
    Bidirectional,
}

/// A host path made visible in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Mounted read-only.
    pub readonly: bool,
    /// Propagation mode.
    pub propagation: Propagation,
    /// Every submount read-only too (needs `readonly` and private propagation).
    #[serde(default)]
    pub recursive_read_only: bool,
}

/// A host device made visible in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// cgroup permissions, e.g. `rwm`.
    pub permissions: String,
}

/// How a namespace is shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// Shared by all containers of the pod.
    #[default]
    Pod,
    /// Private to the container.
    Container,
    /// The node's namespace.
    Node,
    /// The namespace of another container (`target_id`).
    Target,
}

/// Namespace choices of a container (or of a pod, as its default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    /// Network namespace.
    pub network: NamespaceMode,
    /// PID namespace.
    pub pid: NamespaceMode,
    /// IPC namespace.
    pub ipc: NamespaceMode,
    /// Container whose namespace to join when a mode is `Target`.
    pub target_id: String,
    /// The pod's user namespace (mode POD); `None`: the node's (mode NODE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UserNamespace>,
}

/// One range of an ID mapping: `length` IDs from `container_id` inside the
/// namespace are `host_id`.. outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// First ID inside the namespace.
    pub container_id: u32,
    /// First ID outside it.
    pub host_id: u32,
    /// How many IDs the range holds.
    pub length: u32,
}

/// A user namespace of the pod's own, with its UID and GID mappings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// UID mappings.
    pub uids: Vec<IdMapping>,
    /// GID mappings.
    pub gids: Vec<IdMapping>,
}

impl UserNamespace {
    /// The ID outside the namespace of `id` inside it, by `mappings`.
    pub fn outside(mappings: &[IdMapping], id: u32) -> Option<u32> {
        mappings.iter().find_map(|m| {
            let offset = id.checked_sub(m.container_id)?;
            (offset < m.length).then_some(())?;
            m.host_id.checked_add(offset)
        })
    }

    /// The host UID and GID of the namespace's root, if root is mapped.
    pub fn root(&self) -> Option<(u32, u32)> {
        Some((Self::outside(&self.uids, 0)?, Self::outside(&self.gids, 0)?))
    }

    /// Checks what the kernel and the pod need of the mappings: on each
    /// side 1 to [`MAX_ID_RANGES`] ranges, none empty, past 2^32 or
    /// overlapping another inside or outside; and ID 0 (the pod's root)
    /// mapped. `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        check_side(&self.uids, "uids")?;
        check_side(&self.gids, "gids")?;
        if self.root().is_none() {
            return Err(
                "user namespace mode POD must map ID 0 (the pod's root) in uids and gids".into(),
            );
        }
        Ok(())
    }
}

/// Most ranges the kernel takes in one `uid_map` or `gid_map`.
pub const MAX_ID_RANGES: usize = 340;

/// One side (`what`: uids or gids) of [`UserNamespace::check`].
fn check_side(list: &[IdMapping], what: &str) -> Result<(), String> {
    if list.is_empty() {
        return Err(format!("user namespace mode POD needs {what} mappings"));
    }
    if list.len() > MAX_ID_RANGES {
        return Err(format!(
            "user namespace {what}: {} ranges, the kernel takes at most {MAX_ID_RANGES}",
            list.len()
        ));
    }
    for (n, m) in list.iter().enumerate() {
        let end = |start: u32| u64::from(start) + u64::from(m.length);
        if m.length == 0 || end(m.container_id) > 1 << 32 || end(m.host_id) > 1 << 32 {
            return Err(format!(
                "user namespace {what} mapping {}:{}:{} is empty or passes 2^32",
                m.container_id, m.host_id, m.length
            ));
        }
        let overlaps = |a: u32, b: u32, other: &IdMapping| {
            u64::from(a) < u64::from(b) + u64::from(other.length) && u64::from(b) < end(a)
        };
        if let Some(o) = list[..n].iter().find(|o| {
            overlaps(m.container_id, o.container_id, o) || overlaps(m.host_id, o.host_id, o)
        }) {
            return Err(format!(
                "user namespace {what} mappings {}:{}:{} and {}:{}:{} overlap",
                m.container_id, m.host_id, m.length, o.container_id, o.host_id, o.length
            ));
        }
    }
    Ok(())
}

/// Seccomp profile of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// No filter.
    #[default]
    Unconfined,
    /// The runtime's default filter.
    RuntimeDefault,
    /// A profile from a JSON file on the host (absolute path).
    Localhost(String),
}

/// Which supplementary groups a container's process gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The user's groups in the image's `/etc/group`, plus those asked for.
    #[default]
    Merge,
    /// Only those asked for (and the primary group).
    Strict,
}

/// Linux security settings of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// Capabilities to add (`CAP_` prefix optional; `ALL` allowed).
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop (`ALL` allowed).
    pub drop_capabilities: Vec<String>,
    /// Privileged container.
    pub privileged: bool,
    /// Namespace choices.
    pub namespaces: NamespaceOptions,
    /// UID to run as.
    pub run_as_user: Option<i64>,
    /// GID to run as.
    pub run_as_group: Option<i64>,
    /// User name to run as, resolved in the container's `/etc/passwd`.
    pub run_as_username: String,
    /// Root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Extra groups.
    pub supplemental_groups: Vec<i64>,
    /// Whether the user's groups in the image's `/etc/group` are added.
    #[serde(default)]
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    /// Sets `no_new_privs`.
    pub no_new_privs: bool,
    /// Paths masked in the container; `None` means the runtime's defaults.
    pub masked_paths: Option<Vec<String>>,
    /// Paths made read-only in the container; `None` means the runtime's defaults.
    pub readonly_paths: Option<Vec<String>>,
    /// Seccomp profile.
    pub seccomp: Seccomp,
}

/// Linux resources of a container (0 = unset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerResources {
    /// CFS period in microseconds.
    pub cpu_period: i64,
    /// CFS quota in microseconds per period.
    pub cpu_quota: i64,
    /// Relative CPU weight.
    pub cpu_shares: i64,
    /// Memory limit in bytes.
    pub memory_limit_bytes: i64,
    /// OOM score adjustment.
    pub oom_score_adj: i64,
    /// CPUs allowed (cpuset list).
    pub cpuset_cpus: String,
    /// Memory nodes allowed.
    pub cpuset_mems: String,
    /// Hugepage limits in bytes, by page size (`2MB`, `1GB`).
    #[serde(default)]
    pub hugepage_limits: BTreeMap<String, u64>,
    /// Memory plus swap limit in bytes (0 = unset, -1 = unlimited).
    #[serde(default)]
    pub memory_swap_limit_bytes: i64,
    /// cgroup v2 files and the values written to them.
    #[serde(default)]
    pub unified: BTreeMap<String, String>,
    /// Most tasks (processes and threads) in the cgroup (`pids.max`).
    #[serde(default)]
    pub pids_limit: i64,
}

impl ContainerResources {
    /// These limits changed by `update`: its set (non-zero, non-empty)
    /// fields replace these; the OOM score stays, as the CRI has it fixed
    /// at creation.
    pub fn updated_by(&self, update: &Self) -> Self {
        let pick = |n: i64, o: i64| if n != 0 { n } else { o };
        let text = |n: &String, o: &String| if n.is_empty() { o.clone() } else { n.clone() };
        Self {
            cpu_period: pick(update.cpu_period, self.cpu_period),
            cpu_quota: pick(update.cpu_quota, self.cpu_quota),
            cpu_shares: pick(update.cpu_shares, self.cpu_shares),
            memory_limit_bytes: pick(update.memory_limit_bytes, self.memory_limit_bytes),
            oom_score_adj: self.oom_score_adj,
            cpuset_cpus: text(&update.cpuset_cpus, &self.cpuset_cpus),
            cpuset_mems: text(&update.cpuset_mems, &self.cpuset_mems),
            hugepage_limits: merged(&self.hugepage_limits, &update.hugepage_limits),
            memory_swap_limit_bytes: pick(
                update.memory_swap_limit_bytes,
                self.memory_swap_limit_bytes,
            ),
            unified: merged(&self.unified, &update.unified),
            pids_limit: pick(update.pids_limit, self.pids_limit),
        }
    }
}

#[cfg(test)]
mod resources_tests {
    use super::*;

    #[test]
    fn an_update_changes_only_what_it_sets() {
        let mut old = ContainerResources {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_bytes: 64 << 20,
            oom_score_adj: 10,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        old.hugepage_limits.insert("2MB".into(), 1 << 20);
        let mut update = ContainerResources {
            memory_limit_bytes: 128 << 20,
            memory_swap_limit_bytes: 256 << 20,
            oom_score_adj: -999,
            ..Default::default()
        };
        update.hugepage_limits.insert("1GB".into(), 1 << 30);
        let new = old.updated_by(&update);
        assert_eq!((new.cpu_quota, new.cpu_period), (50_000, 100_000));
        assert_eq!(new.memory_limit_bytes, 128 << 20);
        assert_eq!(new.memory_swap_limit_bytes, 256 << 20);
        assert_eq!(new.oom_score_adj, 10, "fixed at creation");
        assert_eq!(new.cpuset_cpus, "0");
        assert_eq!(new.hugepage_limits.len(), 2);
    }
}

/// `old` with the entries of `new` put over it.
fn merged<V: Clone>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    let mut out = old.clone();
    out.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// What the kubelet asked for when it created a container, with its image resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Name and attempt.
    pub metadata: ContainerMetadata,
    /// The image, resolved.
    pub image: ContainerImage,
    /// Overrides the image's entrypoint.
    pub command: Vec<String>,
    /// Overrides the image's cmd.
    pub args: Vec<String>,
    /// Overrides the image's working directory.
    pub working_dir: String,
    /// Environment, in order; later entries win.
    pub envs: Vec<(String, String)>,
    /// Host paths to mount.
    pub mounts: Vec<Mount>,
    /// Host devices.
    pub devices: Vec<Device>,
    /// Labels, for selection.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Log path relative to the pod's log directory; empty for no log.
    pub log_path: String,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Resources.
    pub resources: ContainerResources,
    /// Security settings.
    pub security: SecurityContext,
    /// The stop signal the kubelet asked for (e.g. `SIGRTMIN+3`); empty for
    /// the image's.
    #[serde(default)]
    pub stop_signal: String,
}

impl ContainerConfig {
    /// The signal that stops the container: the kubelet's, else the image's
    /// (empty means SIGTERM).
    pub fn effective_stop_signal(&self) -> &str {
        if self.stop_signal.is_empty() {
            &self.image.process.stop_signal
        } else {
            &self.stop_signal
        }
    }
}

/// CRI container states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Exited,
    /// Its state cannot be known (e.g. its pod VM is gone).
    Unknown,
}

/// What a runtime reports about a container's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRuntimeStatus {
    /// State.
    pub state: ContainerState,
    /// Start time, ns since the epoch (0 if never started).
    pub started_at_ns: i64,
    /// End time, ns since the epoch (0 if not ended).
    pub finished_at_ns: i64,
    /// Exit code (meaningful once exited).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, or empty.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// The identity the container's process started with, once known.
    #[serde(default)]
    pub user: Option<usage::process::ProcessIds>,
}

impl ContainerRuntimeStatus {
    /// A container that was created and never started.
    pub fn created() -> Self {
        Self {
            state: ContainerState::Created,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            user: None,
        }
    }
}

/// A container as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Its pod sandbox.
    pub sandbox_id: String,
    /// The request that created it.
    pub config: ContainerConfig,
    /// Creation time, ns since the epoch.
    pub created_at_ns: i64,
    /// Last known process status.
    pub status: ContainerRuntimeStatus,
    /// Absolute log path on the host; empty for none.
    pub log_path: String,
    /// Runtime-private state.
    pub runtime_state: serde_json::Value,
}

/// Output of a command run to completion in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}
