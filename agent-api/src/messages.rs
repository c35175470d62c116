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
}

/// A guest network interface to configure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// MAC address of the virtio-net device.
    pub mac: String,
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
