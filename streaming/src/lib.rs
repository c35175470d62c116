//! The CRI streaming server: exec, attach and port-forward sessions that
//! kubelet and crictl reach through the URLs returned by the CRI `Exec`,
//! `Attach` and `PortForward` calls.
//!
//! [`StreamingServer`] registers a request under a single-use token and
//! serves the URL; the client upgrades to SPDY/3.1 or WebSocket and speaks
//! the Kubernetes remotecommand or port-forward protocol. The work itself is
//! done by a [`StreamingRuntime`]. [`client`] holds the client side, for tests
//! and tools.
//!
//! This crate owns the HTTP server, the SPDY/3.1 and WebSocket transports and
//! the Kubernetes remotecommand and port-forward protocols. It knows nothing
//! of pods, VMs, the guest agent or the CRI's gRPC services: pod and container
//! ids are opaque strings handed to the [`StreamingRuntime`].

pub mod cache;
pub mod client;
mod portforward;
pub mod protocol;
mod remotecommand;
pub mod runtime;
pub mod server;
pub mod spdy;
pub mod wsstream;

pub use runtime::{
    AttachRequest, BoxRead, BoxWrite, Duplex, ExecRequest, PortForwardRequest, SessionError,
    StreamIo, StreamingRuntime, TerminalSize,
};
pub use server::{BindError, RequestError, ServerConfig, StreamingServer};
