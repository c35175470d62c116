//! Typed agent calls: one type per [`Request`] the host sends, each naming
//! the type of its answer. Use them through [`crate::AgentClient::request`]:
//!
//! ```no_run
//! # async fn demo(agent: &agent_api::AgentClient) -> Result<(), agent_api::CallError> {
//! use agent_api::calls;
//! let limit = std::time::Duration::from_secs(10);
//! let info = agent.request(calls::StartContainer { id: "c1".into() }, limit).await?;
//! println!("{:?}", info.state);
//! # Ok(()) }
//! ```
//!
//! The types only build a [`Request`] and pick the reply out of a
//! [`Response`]; the wire format is the enums in [`crate::messages`].

use std::collections::BTreeMap;

use crate::messages::{
    self, ContainerInfo, ExecResult, GuestStats, NetInterface, NetRoute, Request, Response,
};

pub use crate::messages::{CreateContainer, ExecStart};

/// A request whose successful answer has a known type.
pub trait Call {
    /// What a successful answer carries.
    type Reply;
    /// The request's name (its [`Request`] variant), for errors.
    const NAME: &'static str;
    /// The request as sent on the wire.
    fn into_request(self) -> Request;
    /// The reply carried by `answer`, or `answer` itself if it does not fit.
    fn reply(answer: Response) -> Result<Self::Reply, Response>;
}

/// Answer to [`WaitEvents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    /// The newest event number.
    pub last: u64,
    /// Current status of each container that changed.
    pub containers: Vec<ContainerInfo>,
}

/// Implements [`Call`] for a type named like its [`Request`] variant.
///
/// `unit`: a unit variant; `fields { a, b }`: a struct variant with the same
/// fields as the type; `newtype`: a variant wrapping the type.
macro_rules! impl_call {
    (@impl $name:ident, $reply:ty, $pat:pat => $out:expr, $self_:ident => $req:expr) => {
        impl Call for $name {
            type Reply = $reply;
            const NAME: &'static str = stringify!($name);
            fn into_request($self_) -> Request {
                $req
            }
            fn reply(answer: Response) -> Result<$reply, Response> {
                match answer {
                    $pat => Ok($out),
                    other => Err(other),
                }
            }
        }
    };
    (unit $name:ident -> $reply:ty { $pat:pat => $out:expr }) => {
        impl_call!(@impl $name, $reply, $pat => $out, self => Request::$name);
    };
    (fields $name:ident { $($field:ident),* } -> $reply:ty { $pat:pat => $out:expr }) => {
        impl_call!(@impl $name, $reply, $pat => $out, self => {
            let $name { $($field),* } = self;
            Request::$name { $($field),* }
        });
    };
    (newtype $name:ident -> $reply:ty { $pat:pat => $out:expr }) => {
        impl_call!(@impl $name, $reply, $pat => $out, self => Request::$name(self));
    };
}

/// Liveness check; answered by `Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping;
impl_call!(unit Ping -> () { Response::Pong => () });

/// Facts about the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestInfo;
impl_call!(unit GuestInfo -> messages::GuestInfo { Response::GuestInfo(info) => info });

/// Prepares the guest for a pod (idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSandbox {
    /// Hostname for the guest; empty leaves it unchanged.
    pub hostname: String,
    /// The host's wall clock, ns since the epoch (0: leave the guest's).
    pub clock_ns: i64,
    /// virtio-fs tag of the pod's shared directory; empty when there is none.
    pub share_tag: String,
    /// The pod's sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// The pod's user namespace, if it has one of its own.
    pub userns: Option<runtime_api::container::UserNamespace>,
}
impl_call!(fields SetupSandbox { hostname, clock_ns, share_tag, sysctls, userns } -> ()
    { Response::Done => () });

/// Configures the guest's network interfaces and routes (idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigureNetwork {
    /// Interfaces, found in the guest by MAC address.
    pub interfaces: Vec<NetInterface>,
    /// Routes to add.
    pub routes: Vec<NetRoute>,
}
impl_call!(fields ConfigureNetwork { interfaces, routes } -> () { Response::Done => () });

/// Syncs and powers the guest off after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown;
impl_call!(unit Shutdown -> () { Response::Done => () });

impl_call!(newtype CreateContainer -> ContainerInfo { Response::Container(info) => info });

/// Starts a created container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartContainer {
    /// Container id.
    pub id: String,
}
impl_call!(fields StartContainer { id } -> ContainerInfo { Response::Container(info) => info });

/// Sends `signal`, waits up to `timeout_ms`, then kills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopContainer {
    /// Container id.
    pub id: String,
    /// Signal number to send first.
    pub signal: i32,
    /// Grace period before SIGKILL.
    pub timeout_ms: u64,
}
impl_call!(fields StopContainer { id, signal, timeout_ms } -> ContainerInfo
    { Response::Container(info) => info });

/// Removes a container (killing it if it runs); unknown ids succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveContainer {
    /// Container id.
    pub id: String,
}
impl_call!(fields RemoveContainer { id } -> () { Response::Done => () });

/// Status of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Container id.
    pub id: String,
}
impl_call!(fields ContainerStatus { id } -> ContainerInfo { Response::Container(info) => info });

/// Status of every container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListContainers;
impl_call!(unit ListContainers -> Vec<ContainerInfo> { Response::Containers(all) => all });

/// What the containers `containers` use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Container ids.
    pub containers: Vec<String>,
}
impl_call!(fields Stats { containers } -> GuestStats { Response::Stats(stats) => stats });

/// Runs a command in a container to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSync {
    /// Container id.
    pub id: String,
    /// Command line.
    pub args: Vec<String>,
    /// Kill it after this long (none: wait forever).
    pub timeout_ms: Option<u64>,
}
impl_call!(fields ExecSync { id, args, timeout_ms } -> ExecResult { Response::Exec(out) => out });

/// Reopens a container's log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenLog {
    /// Container id.
    pub id: String,
}
impl_call!(fields ReopenLog { id } -> () { Response::Done => () });

/// Waits until a container changes state after event number `after`, or `timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitEvents {
    /// Last event number the host has seen (0: none).
    pub after: u64,
    /// Longest wait.
    pub timeout_ms: u64,
}
impl_call!(fields WaitEvents { after, timeout_ms } -> Events
    { Response::Events { last, containers } => Events { last, containers } });

// The stream-opening requests; the host normally sends them through
// `AgentClient::open_stream`, which wires the stream up.
impl_call!(newtype ExecStart -> () { Response::Done => () });

/// Wires stream `stream` to a running container's main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// Stream id chosen by the host.
    pub stream: u64,
    /// Container id.
    pub id: String,
    /// Forward the stream's stdin to the container.
    pub stdin: bool,
    /// Send the container's stdout.
    pub stdout: bool,
    /// Send the container's stderr.
    pub stderr: bool,
}
impl_call!(fields Attach { stream, id, stdin, stdout, stderr } -> () { Response::Done => () });

/// Connects stream `stream` to `127.0.0.1:<port>` inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// Stream id chosen by the host.
    pub stream: u64,
    /// TCP port.
    pub port: u16,
}
impl_call!(fields PortForward { stream, port } -> () { Response::Done => () });

/// Sets the terminal size of the exec or attach on stream `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    /// Stream id.
    pub stream: u64,
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}
impl_call!(fields Resize { stream, width, height } -> () { Response::Done => () });

/// Onlines plugged memory and makes `cpus` vCPUs online; answers the guest's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineResources {
    /// vCPUs to have online.
    pub cpus: u32,
    /// Longest wait for plugged vCPUs to appear.
    pub timeout_ms: u64,
}
impl_call!(fields OnlineResources { cpus, timeout_ms } -> messages::GuestInfo { Response::GuestInfo(info) => info });

/// Sets a container's cgroup limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateContainer {
    /// Container id.
    pub id: String,
    /// The limits, whole.
    pub resources: runtime_api::container::ContainerResources,
}
impl_call!(fields UpdateContainer { id, resources } -> () { Response::Done => () });

/// Unmounts a disk's filesystem before it is unplugged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDisk {
    /// The disk's serial.
    pub serial: String,
}
impl_call!(fields ReleaseDisk { serial } -> () { Response::Done => () });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_same_requests_as_the_enum() {
        assert_eq!(Ping.into_request(), Request::Ping);
        assert_eq!(
            StopContainer {
                id: "c".into(),
                signal: 15,
                timeout_ms: 10,
            }
            .into_request(),
            Request::StopContainer {
                id: "c".into(),
                signal: 15,
                timeout_ms: 10,
            }
        );
        let wait = WaitEvents {
            after: 3,
            timeout_ms: 9,
        };
        assert_eq!(
            serde_json::to_value(wait.into_request()).unwrap(),
            serde_json::json!({"op": "wait_events", "after": 3, "timeout_ms": 9})
        );
        assert_eq!(<StartContainer as Call>::NAME, "StartContainer");
        assert_eq!(
            <StartContainer as Call>::NAME,
            StartContainer { id: "x".into() }.into_request().name()
        );
    }

    #[test]
    fn picks_the_reply_or_hands_the_answer_back() {
        assert_eq!(Ping::reply(Response::Pong), Ok(()));
        assert_eq!(Ping::reply(Response::Done), Err(Response::Done));
        let events = Response::Events {
            last: 4,
            containers: Vec::new(),
        };
        assert_eq!(
            WaitEvents::reply(events),
            Ok(Events {
                last: 4,
                containers: Vec::new(),
            })
        );
        assert_eq!(ListContainers::reply(Response::Pong), Err(Response::Pong));
    }
}
