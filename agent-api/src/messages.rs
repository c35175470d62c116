//! Messages carried in frame payloads (JSON).

use serde::{Deserialize, Serialize};

/// Host -> agent: opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Fresh random id of this connection.
    pub session: u64,
    /// The host's protocol version.
    pub protocol: u32,
}

/// Agent -> host: the session is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Echo of [`Hello::session`].
    pub session: u64,
    /// The agent's protocol version.
    pub protocol: u32,
    /// The agent's build version.
    pub agent_version: String,
    /// Random id chosen when the agent started; changes if the guest rebooted.
    pub boot_id: String,
}

/// Where the agent bind-mounts the namespaces of a pod with a user
/// namespace: `user`, and the `pid` and `ipc` namespaces it owns.
pub const POD_USERNS_DIR: &str = "/run/frakti/sandbox/userns";

/// Host -> agent requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Facts about the guest.
    GuestInfo,
    /// Prepares the guest for a pod (idempotent).
    SetupSandbox {
        /// Hostname for the guest; empty leaves it unchanged.
        hostname: String,
        /// The host's wall clock, ns since the epoch; the guest sets its clock to it (0: leave).
        #[serde(default)]
        clock_ns: i64,
        /// virtio-fs tag of the pod's shared directory; empty when there is none.
        #[serde(default)]
        share_tag: String,
        /// The pod's sysctls, set in the guest (the pod's namespaces are the VM's).
        #[serde(default)]
        sysctls: std::collections::BTreeMap<String, String>,
        /// The pod's user namespace: the agent makes it, with PID and IPC
        /// namespaces it owns, under [`POD_USERNS_DIR`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        userns: Option<runtime_api::container::UserNamespace>,
    },
    /// Configures the guest's network interfaces and routes (idempotent).
    ConfigureNetwork {
        /// Interfaces, found in the guest by MAC address.
        interfaces: Vec<NetInterface>,
        /// Routes to add.
        routes: Vec<NetRoute>,
    },
    /// Syncs and powers the guest off after answering.
    Shutdown,
    /// Creates a container (not started) from an OCI spec whose paths are guest paths.
    CreateContainer(CreateContainer),
    /// Starts a created container.
    StartContainer {
        /// Container id.
        id: String,
    },
    /// Sends `signal`, waits up to `timeout_ms`, then kills; answers with the status.
    StopContainer {
        /// Container id.
        id: String,
        /// Signal number to send first.
        signal: i32,
        /// Grace period before SIGKILL.
        timeout_ms: u64,
    },
    /// Removes a container (killing it if it runs); unknown ids succeed.
    RemoveContainer {
        /// Container id.
        id: String,
    },
    /// Status of one container.
    ContainerStatus {
        /// Container id.
        id: String,
    },
    /// Status of every container.
    ListContainers,
    /// What the guest's containers use, from their cgroups.
    Stats {
        /// Container ids; the answer has one entry per id, in order.
        containers: Vec<String>,
    },
    /// Runs a command in a container to completion.
    ExecSync {
        /// Container id.
        id: String,
        /// Command line.
        args: Vec<String>,
        /// Kill it after this long (none: wait forever).
        timeout_ms: Option<u64>,
    },
    /// Reopens a container's log file.
    ReopenLog {
        /// Container id.
        id: String,
    },
    /// Waits until a container changes state after event number `after`, or `timeout_ms`.
    WaitEvents {
        /// Last event number the host has seen (0: none).
        after: u64,
        /// Longest wait.
        timeout_ms: u64,
    },
    /// Starts a command in a container wired to stream `stream` (chosen by
    /// the host, unique per session); answers `Done` once it runs. Its exit
    /// code arrives in the stream's `StreamClose`.
    ExecStart(ExecStart),
    /// Wires stream `stream` to a running container's main process.
    Attach {
        /// Stream id chosen by the host.
        stream: u64,
        /// Container id.
        id: String,
        /// Forward the stream's stdin to the container.
        stdin: bool,
        /// Send the container's stdout (with a terminal: its output).
        stdout: bool,
        /// Send the container's stderr (never with a terminal).
        stderr: bool,
    },
    /// Connects stream `stream` to `127.0.0.1:<port>` inside the guest.
    PortForward {
        /// Stream id chosen by the host.
        stream: u64,
        /// TCP port.
        port: u16,
    },
    /// Sets the terminal size of the exec or attach on stream `stream`.
    Resize {
        /// Stream id.
        stream: u64,
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Onlines the memory the host plugged, and makes exactly `cpus` vCPUs
    /// online (onlining those the host plugged, offlining the highest ones
    /// before the host unplugs them), waiting up to `timeout_ms` for
    /// plugged vCPUs to appear; answers `GuestInfo`.
    OnlineResources {
        /// vCPUs to have online.
        cpus: u32,
        /// Longest wait.
        timeout_ms: u64,
    },
    /// Sets the limits of a created or running container's cgroup (all or
    /// nothing).
    UpdateContainer {
        /// Container id.
        id: String,
        /// The limits, whole (not a difference).
        resources: runtime_api::container::ContainerResources,
    },
    /// Unmounts a disk's filesystem (see [`GuestDisk`]) before the host
    /// unplugs it; a disk that is not mounted succeeds.
    ReleaseDisk {
        /// The disk's serial.
        serial: String,
    },
}

impl Request {
    /// The container the request is about, if any, for logs.
    pub fn container(&self) -> Option<&str> {
        match self {
            Self::CreateContainer(CreateContainer { id, .. })
            | Self::ExecStart(ExecStart { id, .. })
            | Self::StartContainer { id, .. }
            | Self::StopContainer { id, .. }
            | Self::RemoveContainer { id, .. }
            | Self::ContainerStatus { id, .. }
            | Self::ExecSync { id, .. }
            | Self::ReopenLog { id, .. }
            | Self::Attach { id, .. }
            | Self::UpdateContainer { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The variant's name, e.g. `"StartContainer"`, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping => "Ping",
            Self::GuestInfo => "GuestInfo",
            Self::SetupSandbox { .. } => "SetupSandbox",
            Self::ConfigureNetwork { .. } => "ConfigureNetwork",
            Self::Shutdown => "Shutdown",
            Self::CreateContainer(_) => "CreateContainer",
            Self::StartContainer { .. } => "StartContainer",
            Self::StopContainer { .. } => "StopContainer",
            Self::RemoveContainer { .. } => "RemoveContainer",
            Self::ContainerStatus { .. } => "ContainerStatus",
            Self::ListContainers => "ListContainers",
            Self::Stats { .. } => "Stats",
            Self::ExecSync { .. } => "ExecSync",
            Self::ReopenLog { .. } => "ReopenLog",
            Self::WaitEvents { .. } => "WaitEvents",
            Self::ExecStart(_) => "ExecStart",
            Self::Attach { .. } => "Attach",
            Self::PortForward { .. } => "PortForward",
            Self::Resize { .. } => "Resize",
            Self::OnlineResources { .. } => "OnlineResources",
            Self::UpdateContainer { .. } => "UpdateContainer",
            Self::ReleaseDisk { .. } => "ReleaseDisk",
        }
    }
}

/// A command to start on an interactive stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    /// Stream id chosen by the host.
    pub stream: u64,
    /// Container id.
    pub id: String,
    /// Command line.
    pub args: Vec<String>,
    /// Run it on a terminal (its output then comes on stdout only).
    pub tty: bool,
    /// Forward the stream's stdin to it.
    pub stdin: bool,
    /// Send its stdout.
    pub stdout: bool,
    /// Send its stderr.
    pub stderr: bool,
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainer {
    /// Container id.
    pub id: String,
    /// OCI runtime spec (JSON), with guest paths.
    pub spec: serde_json::Value,
    /// Guest path of the CRI log file; empty for no log.
    pub log_path: String,
    /// Keep a stdin pipe open.
    pub stdin: bool,
    /// Close stdin after the first attach.
    pub stdin_once: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Disks of the pod that the container uses.
    #[serde(default)]
    pub disks: Vec<GuestDisk>,
}

/// A disk the host attached to the VM, as one container uses it. The agent
/// finds it by serial; its filesystem is mounted once per pod at
/// [`disk_mount_dir`], which the spec's mounts name as their source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDisk {
    /// The disk's serial (`/sys/block/vd*/serial`).
    pub serial: String,
    /// Mount its filesystem (detected) at [`disk_mount_dir`].
    pub mount: bool,
    /// The disk is attached read-only; so is its mount.
    pub read_only: bool,
    /// Device nodes of the disk to put in the container.
    pub nodes: Vec<DiskNode>,
}

/// A device node of a disk in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskNode {
    /// Where the node appears in the container.
    pub container_path: String,
    /// cgroup access: letters of `rwm`; empty is all.
    pub permissions: String,
}

/// Where the guest mounts the filesystem of the disk `serial`.
pub fn disk_mount_dir(serial: &str) -> String {
    format!("/run/frakti/disks/{serial}")
}

/// Container states as the agent sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Its init process ended.
    Exited,
}

/// A container's process status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// State.
    pub state: ContainerState,
    /// Init pid in the guest (0 once exited).
    pub pid: i32,
    /// Start time, ns since the epoch (0: not started).
    pub started_at_ns: i64,
    /// Exit time, ns since the epoch (0: not exited).
    pub finished_at_ns: i64,
    /// Exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Detail, e.g. why it could not start.
    pub message: String,
    /// The identity its init process started with (once started).
    #[serde(default)]
    pub user: Option<usage::process::ProcessIds>,
}

/// Output of [`Request::ExecSync`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Captured stdout (base64).
    pub stdout: String,
    /// Captured stderr (base64).
    pub stderr: String,
    /// Exit code.
    pub exit_code: i32,
}

/// A guest network interface to configure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// MAC address of the virtio-net device.
    pub mac: String,
    /// The device's MAC now, when the agent must change it to `mac` (a NIC
    /// the VM booted with, before its pod's network existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_mac: Option<String>,
    /// MTU to set.
    pub mtu: u32,
    /// Addresses in CIDR form (IPv4 or IPv6).
    pub addresses: Vec<String>,
}

/// A route to add in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRoute {
    /// Destination in CIDR form.
    pub destination: String,
    /// Next hop, if any.
    pub gateway: Option<String>,
}

/// Agent -> host successful answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ping`].
    Pong,
    /// Answer to [`Request::GuestInfo`].
    GuestInfo(GuestInfo),
    /// The request was carried out.
    Done,
    /// One container's status.
    Container(ContainerInfo),
    /// Every container's status.
    Containers(Vec<ContainerInfo>),
    /// Output of an exec.
    Exec(ExecResult),
    /// Answer to [`Request::Stats`].
    Stats(GuestStats),
    /// Containers that changed after the event number asked for.
    Events {
        /// The newest event number.
        last: u64,
        /// Current status of each container that changed.
        containers: Vec<ContainerInfo>,
    },
}

/// What the guest's containers use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// One entry per container asked about, in order; `None` for one that
    /// does not run (or whose cgroup cannot be read).
    pub containers: Vec<Option<usage::CgroupUsage>>,
    /// Processes in the guest's containers.
    pub processes: Option<u64>,
}

/// Facts about the running guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// Guest kernel release (`uname -r`).
    pub kernel: String,
    /// Current hostname.
    pub hostname: String,
    /// Online CPUs.
    pub cpus: u32,
    /// `MemTotal` in KiB.
    pub mem_total_kib: u64,
    /// `MemAvailable` in KiB.
    pub mem_available_kib: u64,
    /// Seconds since the guest booted.
    pub uptime_secs: f64,
    /// Kernel modules the agent loaded at boot.
    pub modules_loaded: Vec<String>,
}

/// A request the agent could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    /// Broad class, mapped to a gRPC code by the host.
    pub kind: AgentErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

/// Broad classes of agent errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// The request was malformed.
    InvalidArgument,
    /// The object named does not exist.
    NotFound,
    /// The object is not in a state that allows the request.
    FailedPrecondition,
    /// The request did not finish in time.
    DeadlineExceeded,
    /// The guest has too little of something (e.g. memory below a new limit).
    ResourceExhausted,
    /// Anything else.
    Internal,
}

impl AgentError {
    /// An error of `kind` with `message`.
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}
