//! What the host runtime is configured with, and what it persists per pod
//! and per container.

use std::path::{Path, PathBuf};

use network::{PodNetwork, PodNetworks};
use runtime_api::{RuntimeError, RuntimeErrorKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::namespaces::NamespaceFiles;
use cgroups::PodCgroup;

/// Settings of the host runtime.
#[derive(Debug, Clone)]
pub struct HostRuntimeConfig {
    /// Runtime files of host pods and containers go under this directory
    /// (`pods/<pod id>/`, `c/<short id>/`, libcontainer state, bundles).
    pub state_dir: PathBuf,
    /// Containers' writable layers go to `<layers_dir>/<container id>/`.
    pub layers_dir: PathBuf,
    /// The `frakti-monitor` binary.
    pub monitor: PathBuf,
    /// Pod networking; `None` leaves pods without a network.
    pub networks: Option<PodNetworks>,
    /// Where the cgroup hierarchy is mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

impl HostRuntimeConfig {
    /// The directory of pod `id`.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    /// The directory of container `id` (short, to keep its sockets' paths
    /// within a `sun_path`).
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("c").join(short_id(id))
    }

    /// libcontainer's state root.
    pub fn libcontainer_root(&self) -> PathBuf {
        self.state_dir.join("lc")
    }

    /// Where OCI bundles go.
    pub fn bundles(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    /// Unix socket paths this runtime makes, for the longest ids (to check
    /// they fit a `sun_path`).
    pub fn socket_paths(state_dir: &Path) -> Vec<PathBuf> {
        let id = "f".repeat(64);
        let c = state_dir.join("c").join(short_id(&id));
        vec![
            c.join(MONITOR_SOCKET),
            c.join(format!("{MONITOR_SOCKET}.tty")),
            c.join("exec-ffffffffffffffff.sock"),
            state_dir.join("lc").join(short_id(&id)).join("notify.sock"),
        ]
    }
}

/// The monitor's socket in a container's directory.
pub const MONITOR_SOCKET: &str = "m.sock";

/// The short form of a container id that names its directory and its
/// libcontainer container.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(16)]
}

/// What is persisted per host sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSandbox {
    /// The pod's runtime directory.
    pub dir: PathBuf,
    /// The pod uses the node's network namespace.
    pub host_network: bool,
    /// The pod's network, when it has its own namespace and a CNI network.
    pub network: Option<PodNetwork>,
    /// The pod's network namespace file, when it has its own.
    pub netns: Option<PathBuf>,
    /// The pod's UTS and IPC namespace files.
    pub namespaces: NamespaceFiles,
    /// The pod's PID namespace holder (mode POD): its pid and namespace file.
    pub pid_holder: Option<PidHolder>,
    /// The pod's `/dev/shm` (a tmpfs), when it has its own IPC namespace.
    pub shm: Option<PathBuf>,
    /// The pod's cgroup.
    pub cgroup: PodCgroup,
    /// The pod's user namespace, when it has one of its own (its holder
    /// is `pid_holder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<PodUserns>,
}

/// A host pod's own user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUserns {
    /// The bind-mounted namespace file.
    pub file: PathBuf,
    /// The host uid of the pod's root, which may search the pod's
    /// directories (see [`crate::acl`]).
    pub root_uid: u32,
}

/// The process that holds a pod's PID namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidHolder {
    /// Its pid on the host.
    pub pid: i32,
    /// The bind-mounted namespace file.
    pub file: PathBuf,
}

/// What is persisted per host container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostContainer {
    /// Its runtime directory (monitor socket, exit file, root mount).
    pub dir: PathBuf,
    /// Its libcontainer id (the short id).
    pub name: String,
    /// Its writable layer (`upper` + `work`).
    pub layer: PathBuf,
    /// The mounted root filesystem.
    pub rootfs: PathBuf,
    /// The init process's pid on the host.
    pub pid: i32,
    /// Its cgroup path.
    pub cgroup: String,
    /// It runs on a terminal.
    pub tty: bool,
    /// Host mounts made for it besides the root filesystem (a pod with a
    /// user namespace: the ID-mapped image and volumes), in mount order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PathBuf>,
}

impl HostContainer {
    /// The monitor's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(MONITOR_SOCKET)
    }

    /// The exit file the monitor writes.
    pub fn exit_file(&self) -> PathBuf {
        self.dir.join("exit")
    }
}

/// Reads a persisted state value.
pub fn parse<T: DeserializeOwned>(
    what: &str,
    state: &serde_json::Value,
) -> Result<T, RuntimeError> {
    serde_json::from_value(state.clone()).map_err(|e| {
        RuntimeError::caused(
            RuntimeErrorKind::Internal,
            format!("unreadable host {what} state"),
            e,
        )
    })
}

/// A persisted state value.
pub fn to_value<T: Serialize>(what: &str, state: &T) -> Result<serde_json::Value, RuntimeError> {
    serde_json::to_value(state).map_err(|e| {
        RuntimeError::caused(
            RuntimeErrorKind::Internal,
            format!("cannot encode host {what} state"),
            e,
        )
    })
}
