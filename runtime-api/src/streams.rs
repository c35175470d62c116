//! Interactive sessions (exec, attach, port-forward): what a session asks,
//! the byte channels it hands over, and the two seams it crosses — the
//! streaming server's view ([`StreamingRuntime`], by container or pod id) and
//! a runtime's view ([`ContainerStreams`], with the records resolved).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::container::ContainerRecord;
use crate::sandbox::SandboxRecord;

/// A command to run in a container (the CRI `ExecRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecRequest {
    /// The container.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Run it on a terminal.
    pub tty: bool,
    /// Stream stdin to it.
    pub stdin: bool,
    /// Stream its stdout back.
    pub stdout: bool,
    /// Stream its stderr back (not with `tty`).
    pub stderr: bool,
}

/// Attachment to a running container's main process (the CRI `AttachRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttachRequest {
    /// The container.
    pub container_id: String,
    /// The container has a terminal.
    pub tty: bool,
    /// Stream stdin to it.
    pub stdin: bool,
    /// Stream its stdout back.
    pub stdout: bool,
    /// Stream its stderr back (not with `tty`).
    pub stderr: bool,
}

/// Port forwarding into a pod's network namespace (the CRI `PortForwardRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortForwardRequest {
    /// The pod sandbox.
    pub pod_sandbox_id: String,
    /// Ports to forward; SPDY clients name the port per stream instead, so
    /// this may be empty for them.
    pub ports: Vec<u16>,
}

/// A terminal size, as the remotecommand resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A boxed byte source.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed byte sink.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A bidirectional byte stream, such as a TCP connection.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// The client's streams for one exec or attach.
///
/// Writers are bounded pipes to the client: a write waits while the client is
/// slow. Shutting a writer down (or dropping it) half-closes that stream, and
/// the session waits for every writer to be dropped before it reports the
/// exit status, so a runtime must not keep them past its return.
pub struct StreamIo {
    /// The client's stdin; EOF when the client closes it.
    pub stdin: Option<BoxRead>,
    /// To the client's stdout.
    pub stdout: Option<BoxWrite>,
    /// To the client's stderr (never with a terminal).
    pub stderr: Option<BoxWrite>,
    /// Terminal size changes, the first one as soon as the client sends it.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Whether the process runs on a terminal.
    pub tty: bool,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .field("tty", &self.tty)
            .finish()
    }
}

/// The runtime could not do what a session asked.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The container or sandbox does not exist or is not running
    #[error("{0} not found")]
    NotFound(String),
    /// The operation failed
    #[error("{0}")]
    Failed(String),
}

/// What the streaming server needs: sessions addressed by container or pod id.
#[async_trait]
pub trait StreamingRuntime: Send + Sync + 'static {
    /// Runs `req.cmd` in the container wired to `io`; returns its exit code.
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, SessionError>;

    /// Attaches `io` to the container's main process until it exits or the
    /// client goes away.
    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), SessionError>;

    /// Opens a connection to `port` inside the pod's network namespace.
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError>;
}

/// A runtime's side of the sessions, for a container or pod the caller has
/// already found and checked (the sandbox is ready, the container runs).
#[async_trait]
pub trait ContainerStreams: Send + Sync {
    /// Runs `req.cmd` in `container` wired to `io`; returns its exit code.
    async fn exec(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        req: &ExecRequest,
        io: StreamIo,
    ) -> Result<i32, SessionError>;

    /// Attaches `io` to the main process of `container` until it exits or
    /// the client goes away.
    async fn attach(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        req: &AttachRequest,
        io: StreamIo,
    ) -> Result<(), SessionError>;

    /// Opens a connection to `port` inside the pod's network namespace.
    async fn port_forward(
        &self,
        sandbox: &SandboxRecord,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError>;
}
