//! A fake agent for unit tests of the host side (feature `fake`).
//!
//! Connections are in-memory pipes (`tokio::io::duplex`) or a unix socket,
//! and the fake speaks the real framing and `Hello`/`Welcome` handshake, so
//! an [`AgentClient`] cannot tell it from the guest's agent.
//!
//! - [`FakeAgent`] answers every request with a closure, records what it was
//!   asked, and can drop its connections or refuse new ones.
//! - [`pipe`] hands the agent end of each connection ([`AgentConn`]) to the
//!   test instead, for scripted exchanges such as interactive streams.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::PROTOCOL_VERSION;
use crate::client::{AgentClient, Stream, Transport};
use crate::frame::{Decoder, Frame, FrameKind};
use crate::messages::{AgentError, AgentErrorKind, Hello, Request, Response, Welcome};

/// Bytes buffered per direction in an in-memory connection.
const PIPE_BUFFER: usize = 1 << 20;

/// Boot id a fake announces unless told otherwise.
pub const DEFAULT_BOOT_ID: &str = "fake-boot";

/// Sends frames on an [`AgentConn`]; cheap to clone.
#[derive(Clone)]
pub struct ConnWriter(Arc<tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>>);

impl Debug for ConnWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnWriter")
    }
}

impl ConnWriter {
    /// Writes one frame.
    pub async fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut w = self.0.lock().await;
        w.write_all(&frame.encode()).await?;
        w.flush().await
    }

    /// Writes `bytes` as they are (what a hostile agent may send instead of frames).
    pub async fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = self.0.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Answers request `id`.
    pub async fn answer(&self, id: u64, answer: &Result<Response, AgentError>) -> io::Result<()> {
        self.send(&Frame::json(FrameKind::Response, id, answer))
            .await
    }
}

/// The agent's end of one connection. [`AgentConn::recv`] answers the
/// host's `Hello` itself and returns every other frame.
pub struct AgentConn {
    read: ReadHalf<Box<dyn Stream>>,
    writer: ConnWriter,
    decoder: Decoder,
    buf: Vec<u8>,
    boot_id: String,
}

impl Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("boot_id", &self.boot_id)
            .finish_non_exhaustive()
    }
}

impl AgentConn {
    /// The agent end of the byte stream `io`, announcing [`DEFAULT_BOOT_ID`].
    pub fn new(io: Box<dyn Stream>) -> Self {
        let (read, write) = tokio::io::split(io);
        Self {
            read,
            writer: ConnWriter(Arc::new(tokio::sync::Mutex::new(write))),
            decoder: Decoder::new(),
            buf: vec![0; 64 * 1024],
            boot_id: DEFAULT_BOOT_ID.to_owned(),
        }
    }

    /// Announces `boot_id` in the `Welcome`.
    pub fn with_boot_id(mut self, boot_id: impl Into<String>) -> Self {
        self.boot_id = boot_id.into();
        self
    }

    /// A handle that sends on this connection.
    pub fn writer(&self) -> ConnWriter {
        self.writer.clone()
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.writer.send(frame).await
    }

    /// Answers request `id`.
    pub async fn answer(
        &mut self,
        id: u64,
        answer: &Result<Response, AgentError>,
    ) -> io::Result<()> {
        self.writer.answer(id, answer).await
    }

    /// The next frame from the host other than `Hello`, which is answered
    /// with a `Welcome`; `None` once the host closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            while let Some(frame) = self.decoder.next_frame() {
                if frame.kind != FrameKind::Hello {
                    return Some(frame);
                }
                let Ok(hello) = frame.parse::<Hello>() else {
                    continue;
                };
                let welcome = Welcome {
                    session: hello.session,
                    protocol: PROTOCOL_VERSION,
                    agent_version: "fake".to_owned(),
                    boot_id: self.boot_id.clone(),
                };
                let reply = Frame::json(FrameKind::Welcome, hello.session, &welcome);
                self.writer.send(&reply).await.ok()?;
            }
            let n = self.read.read(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// A transport whose connections are in-memory pipes; the agent end of each
/// goes to the receiver returned by [`pipe`].
#[derive(Debug)]
pub struct PipeTransport {
    agents: mpsc::UnboundedSender<AgentConn>,
}

/// A transport and the receiver of the agent end of each connection it opens.
pub fn pipe() -> (PipeTransport, mpsc::UnboundedReceiver<AgentConn>) {
    let (agents, rx) = mpsc::unbounded_channel();
    (PipeTransport { agents }, rx)
}

#[async_trait::async_trait]
impl Transport for PipeTransport {
    async fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let (host, agent) = tokio::io::duplex(PIPE_BUFFER);
        self.agents
            .send(AgentConn::new(Box::new(agent)))
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(Box::new(host))
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, AgentError>> + Send>>;
type Handler = dyn Fn(Request) -> Answer + Send + Sync;

struct Inner {
    handler: Box<Handler>,
    boot_id: Mutex<String>,
    requests: Mutex<Vec<Request>>,
    connections: AtomicUsize,
    refuse: AtomicBool,
    live: Mutex<Vec<JoinHandle<()>>>,
}

/// A fake agent that answers each request with a closure. Cheap to clone;
/// clones share connections and records. It is also a [`Transport`] whose
/// connections are in-memory pipes.
#[derive(Clone)]
pub struct FakeAgent {
    inner: Arc<Inner>,
}

impl Debug for FakeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgent")
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl FakeAgent {
    /// A fake whose answer to each request is `handler(request)`.
    pub fn new(
        handler: impl Fn(Request) -> Result<Response, AgentError> + Send + Sync + 'static,
    ) -> Self {
        Self::new_async(move |request| std::future::ready(handler(request)))
    }

    /// A fake that answers each request when `handler(request)` completes;
    /// requests are served concurrently, as the real agent does (e.g. a
    /// `WaitEvents` may wait for its timeout).
    pub fn new_async<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, AgentError>> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                handler: Box::new(move |request| Box::pin(handler(request))),
                boot_id: Mutex::new(DEFAULT_BOOT_ID.to_owned()),
                requests: Mutex::default(),
                connections: AtomicUsize::new(0),
                refuse: AtomicBool::new(false),
                live: Mutex::default(),
            }),
        }
    }

    /// A client connected to this fake through in-memory pipes.
    pub fn client(&self) -> AgentClient {
        AgentClient::new(self.transport())
    }

    /// This fake as a transport for [`AgentClient::new`].
    pub fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.clone())
    }

    /// Announces `boot_id` in the `Welcome` of later connections (a changed
    /// id tells the host the guest rebooted).
    pub fn set_boot_id(&self, boot_id: impl Into<String>) {
        *lock(&self.inner.boot_id) = boot_id.into();
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner.requests).clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    /// Closes every open connection; requests in flight get no answer.
    pub fn drop_connections(&self) {
        for task in lock(&self.inner.live).drain(..) {
            task.abort();
        }
    }

    /// While `refuse` holds, new connections fail (pipes) or are closed at
    /// once (unix socket), as if the agent were not up.
    pub fn refuse_connections(&self, refuse: bool) {
        self.inner.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Serves one connection on `io` in a new task.
    pub fn serve(&self, io: Box<dyn Stream>) {
        self.inner.connections.fetch_add(1, Ordering::SeqCst);
        let conn = AgentConn::new(io).with_boot_id(lock(&self.inner.boot_id).clone());
        let task = tokio::spawn(serve_conn(self.inner.clone(), conn));
        let mut live = lock(&self.inner.live);
        live.retain(|t| !t.is_finished());
        live.push(task);
    }

    /// Listens on a unix socket at `path` (e.g. a VM's agent socket, for
    /// code that builds its own [`crate::UnixTransport`]) and serves each
    /// connection; stops when the returned task is aborted.
    pub fn listen(&self, path: &Path) -> io::Result<JoinHandle<()>> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let agent = self.clone();
        Ok(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if !agent.inner.refuse.load(Ordering::SeqCst) {
                    agent.serve(Box::new(stream));
                }
            }
        }))
    }
}

#[async_trait::async_trait]
impl Transport for FakeAgent {
    async fn connect(&self) -> io::Result<Box<dyn Stream>> {
        if self.inner.refuse.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (host, agent) = tokio::io::duplex(PIPE_BUFFER);
        self.serve(Box::new(agent));
        Ok(Box::new(host))
    }
}

/// Answers the requests of one connection until it closes; aborting the
/// task drops the connection and every answer in flight.
async fn serve_conn(inner: Arc<Inner>, mut conn: AgentConn) {
    let mut answering = JoinSet::new();
    while let Some(frame) = conn.recv().await {
        while answering.try_join_next().is_some() {}
        if frame.kind != FrameKind::Request {
            continue;
        }
        let writer = conn.writer();
        let id = frame.id;
        match frame.parse::<Request>() {
            Ok(request) => {
                lock(&inner.requests).push(request.clone());
                let answer = (inner.handler)(request);
                answering.spawn(async move {
                    let answer = answer.await;
                    let _ = writer.answer(id, &answer).await;
                });
            }
            Err(e) => {
                let err = AgentError::new(
                    AgentErrorKind::InvalidArgument,
                    format!("cannot parse request: {e}"),
                );
                let _ = writer.answer(id, &Err(err)).await;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::CallError;
    use crate::calls;
    use crate::messages::{ContainerInfo, ContainerState};

    const LIMIT: Duration = Duration::from_secs(5);

    fn info(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.to_owned(),
            state: ContainerState::Running,
            pid: 7,
            started_at_ns: 1,
            finished_at_ns: 0,
            exit_code: 0,
            oom_killed: false,
            message: String::new(),
            user: None,
        }
    }

    fn agent() -> FakeAgent {
        FakeAgent::new(|request| match request {
            Request::Ping => Ok(Response::Pong),
            Request::StartContainer { id } => Ok(Response::Container(info(&id))),
            // Wrong on purpose: a status must answer `Container`.
            Request::ContainerStatus { .. } => Ok(Response::Done),
            Request::RemoveContainer { id } => Err(AgentError::new(
                AgentErrorKind::NotFound,
                format!("container {id} not found"),
            )),
            _ => Ok(Response::Done),
        })
    }

    #[tokio::test]
    async fn a_limit_beyond_any_instant_saturates() {
        // CRI timeouts are client-chosen: i64::MAX seconds must not panic.
        let client = agent().client();
        client
            .request(calls::Ping, Duration::from_secs(i64::MAX as u64))
            .await
            .unwrap();
        client.request(calls::Ping, Duration::MAX).await.unwrap();
    }

    #[tokio::test]
    async fn a_typed_call_gets_its_reply() {
        let fake = agent();
        let client = fake.client();
        let started = client
            .request(calls::StartContainer { id: "c1".into() }, LIMIT)
            .await
            .unwrap();
        assert_eq!(started, info("c1"));
        client.request(calls::Ping, LIMIT).await.unwrap();
        assert_eq!(
            fake.requests(),
            [Request::StartContainer { id: "c1".into() }, Request::Ping]
        );
        let welcome = client.welcome().await.unwrap();
        assert_eq!(welcome.boot_id, DEFAULT_BOOT_ID);
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_kind_is_unexpected() {
        let client = agent().client();
        let err = client
            .request(calls::ContainerStatus { id: "c1".into() }, LIMIT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Unexpected { call: "ContainerStatus", ref answer } if answer == "Done"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_agent_error_is_an_agent_error() {
        let client = agent().client();
        let err = client
            .request(calls::RemoveContainer { id: "c9".into() }, LIMIT)
            .await
            .unwrap_err();
        let CallError::Agent(e) = err else {
            panic!("{err:?}");
        };
        assert_eq!(e.kind, AgentErrorKind::NotFound);
        assert_eq!(e.message, "container c9 not found");
    }

    #[tokio::test]
    async fn dropped_connections_fail_calls_in_flight_and_the_client_reconnects() {
        let fake = FakeAgent::new_async(|request| async move {
            if let Request::WaitEvents { .. } = request {
                std::future::pending::<()>().await;
            }
            Ok(Response::Pong)
        });
        fake.set_boot_id("first");
        let client = Arc::new(fake.client());
        client.request(calls::Ping, LIMIT).await.unwrap();
        let waiting = {
            let client = client.clone();
            tokio::spawn(async move {
                let wait = calls::WaitEvents {
                    after: 0,
                    timeout_ms: 60_000,
                };
                client.request(wait, LIMIT).await
            })
        };
        // The wait is in flight once the agent has recorded it.
        while fake.requests().len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        fake.set_boot_id("second");
        fake.drop_connections();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, CallError::Disconnected), "{err:?}");
        client.request(calls::Ping, LIMIT).await.unwrap();
        assert_eq!(fake.connections(), 2);
        assert_eq!(client.welcome().await.unwrap().boot_id, "second");
    }

    #[tokio::test]
    async fn refused_connections_fail_to_connect() {
        let fake = agent();
        fake.refuse_connections(true);
        let client = fake.client();
        let err = client
            .request(calls::Ping, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Connect(_)), "{err:?}");
        fake.refuse_connections(false);
        client.request(calls::Ping, LIMIT).await.unwrap();
    }

    #[tokio::test]
    async fn serves_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let fake = agent();
        let listener = fake.listen(&path).unwrap();
        let client = AgentClient::new(Arc::new(crate::UnixTransport::new(&path)));
        client.request(calls::Ping, LIMIT).await.unwrap();
        assert_eq!(fake.connections(), 1);
        listener.abort();
    }
}
