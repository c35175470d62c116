//! Host-side agent client: one multiplexed connection, re-established on demand.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::PROTOCOL_VERSION;
use crate::calls::Call;
use crate::frame::{Decoder, Frame, FrameKind};
use crate::messages::{AgentError, Hello, Request, Response, Welcome};
use crate::streams::{
    Channel, MAX_CHUNK, StreamEnd, WINDOW, close_frame, data_frame, eof_frame, split_payload,
    window_credit, window_frame,
};

/// A byte stream to the agent.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// How the host reaches the agent's channel.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + Debug {
    /// Opens a new byte stream to the agent's channel.
    async fn connect(&self) -> io::Result<Box<dyn Stream>>;
}

/// The QEMU chardev socket behind the agent's virtio-serial port.
#[derive(Debug)]
pub struct UnixTransport {
    path: std::sync::RwLock<PathBuf>,
}

impl UnixTransport {
    /// A transport connecting to the unix socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: std::sync::RwLock::new(path.into()),
        }
    }

    /// Later connections go to `path` (the socket was moved); an open
    /// session is kept.
    pub fn retarget(&self, path: impl Into<PathBuf>) {
        *self
            .path
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = path.into();
    }

    fn path(&self) -> PathBuf {
        self.path
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait::async_trait]
impl Transport for UnixTransport {
    async fn connect(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(
            tokio::net::UnixStream::connect(self.path()).await?,
        ))
    }
}

/// Opening a session with the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Cannot open the agent channel
    #[error("cannot open the agent channel: {0}")]
    Io(#[from] io::Error),
    /// The agent did not answer the handshake in time
    #[error("the agent did not answer the handshake within {0:?}")]
    Timeout(Duration),
    /// The agent speaks another protocol version
    #[error("the agent speaks protocol {agent}, the host speaks {host}")]
    Protocol {
        /// Version the agent announced.
        agent: u32,
        /// Version of this build.
        host: u32,
    },
}

/// A request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No session with the agent could be opened
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection closed before the answer arrived
    #[error("the agent connection closed before the answer arrived")]
    Disconnected,
    /// No answer in time
    #[error("no answer from the agent within {0:?}")]
    Timeout(Duration),
    /// The agent refused or failed the request
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    /// The agent answered something that does not fit the request
    #[error("unexpected answer from the agent to {call}: {answer}")]
    Unexpected {
        /// The request's name (a [`Request`] variant).
        call: &'static str,
        /// The answer received, debug-formatted.
        answer: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Response, AgentError>>>>>;

/// What arrives on an interactive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes on a channel.
    Data(Channel, Vec<u8>),
    /// A channel ended.
    Eof(Channel),
    /// The stream is over.
    End(StreamEnd),
}

struct StreamEntry {
    events: mpsc::UnboundedSender<StreamEvent>,
    credit: Arc<Semaphore>,
    unread: Arc<Unread>,
}

/// What the agent sent on a stream that its reader has not taken yet. An
/// agent that keeps to its credit never has more than [`WINDOW`] bytes
/// there, in at most as many events (no data frame is empty, plus the few
/// EOFs and the end): beyond either, it ignores flow control, and the host
/// disconnects it rather than buffer without bound.
#[derive(Debug, Default)]
struct Unread {
    bytes: AtomicUsize,
    events: AtomicUsize,
}

/// Events a stream may hold unread beyond one per byte of its window (the
/// two EOFs and the end, with room to spare).
const SPARE_EVENTS: usize = 16;

impl Unread {
    /// Counts an event of `len` data bytes in; false when that breaks the bounds.
    fn add(&self, len: usize) -> bool {
        let bytes = self.bytes.fetch_add(len, Ordering::SeqCst) + len;
        let events = self.events.fetch_add(1, Ordering::SeqCst) + 1;
        bytes <= WINDOW as usize && events <= WINDOW as usize + SPARE_EVENTS
    }

    /// Counts an event of `len` data bytes out, as the reader takes it.
    fn take(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::SeqCst);
        self.events.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes of garbage (no valid frame) the host takes from an agent before it
/// disconnects it; a reconnect loses at most a frame or two.
const MAX_GARBAGE: u64 = 1 << 20;
/// Frames that fail their checksum or header before the host disconnects.
const MAX_REJECTED: u64 = 64;

type Streams = Arc<Mutex<HashMap<u64, StreamEntry>>>;

/// An interactive stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The agent connection closed; the stream is lost
    #[error("the agent connection closed; the stream is lost")]
    Disconnected,
    /// The stream has ended
    #[error("the stream has ended")]
    Ended,
}

struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<Box<dyn Stream>>>,
    pending: Pending,
    streams: Streams,
    closed: Arc<AtomicBool>,
    welcome: Welcome,
    reader: JoinHandle<()>,
}

impl Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    async fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(&frame.encode()).await?;
        w.flush().await
    }
}

/// Client for one agent. Cheap to share; reconnects when the connection drops.
#[derive(Debug)]
pub struct AgentClient {
    transport: Arc<dyn Transport>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    next_stream: AtomicU64,
}

/// How often the handshake is repeated while the agent does not answer.
const HELLO_INTERVAL: Duration = Duration::from_millis(50);

impl AgentClient {
    /// A client that reaches the agent through `transport`; connects lazily.
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(rand::random::<u32>().into()),
            // Random and far apart per client, so frames a restarted daemon
            // receives for an older client's streams match none of its own.
            next_stream: AtomicU64::new(rand::random::<u64>() >> 2),
        }
    }

    /// Waits until the agent answers a handshake, retrying until `deadline`.
    pub async fn wait_ready(&self, deadline: Instant) -> Result<Welcome, ConnectError> {
        loop {
            match self.connection(deadline).await {
                Ok(conn) => return Ok(conn.welcome.clone()),
                Err(ConnectError::Io(e)) if Instant::now() < deadline => {
                    tracing::trace!("agent channel not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The session's `Welcome`, if a session is open.
    pub async fn welcome(&self) -> Option<Welcome> {
        let guard = self.conn.lock().await;
        guard
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::SeqCst))
            .map(|c| c.welcome.clone())
    }

    /// Sends the typed `call` and waits at most `limit` for its reply; an
    /// answer of the wrong kind is [`CallError::Unexpected`].
    pub async fn request<C: Call>(&self, call: C, limit: Duration) -> Result<C::Reply, CallError> {
        let answer = self.call(&call.into_request(), limit).await?;
        C::reply(answer).map_err(|other| CallError::Unexpected {
            call: C::NAME,
            answer: format!("{other:?}"),
        })
    }

    /// Sends `request` and waits at most `limit` for its answer. Prefer
    /// [`AgentClient::request`], which checks the kind of the answer.
    pub async fn call(&self, request: &Request, limit: Duration) -> Result<Response, CallError> {
        let deadline = deadline_after(limit);
        let answer = match self.connection(deadline).await {
            Ok(conn) => self.call_on(&conn, request, deadline, limit).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &answer {
            log_failure(request, e);
        }
        answer
    }

    /// Opens an interactive stream: `request` (built from the new stream's id)
    /// must be one that starts a stream and answers `Done`.
    pub async fn open_stream(
        &self,
        request: impl FnOnce(u64) -> Request,
        limit: Duration,
    ) -> Result<AgentStream, CallError> {
        let deadline = deadline_after(limit);
        let conn = self.connection(deadline).await?;
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        let unread = Arc::<Unread>::default();
        lock(&conn.streams).insert(
            id,
            StreamEntry {
                events: tx,
                credit: credit.clone(),
                unread: unread.clone(),
            },
        );
        // The reader clears the table after marking the connection closed.
        if conn.closed.load(Ordering::SeqCst) {
            lock(&conn.streams).remove(&id);
            return Err(CallError::Disconnected);
        }
        let request = request(id);
        let answer = self.call_on(&conn, &request, deadline, limit).await;
        if let Err(e) = &answer {
            log_failure(&request, e);
        }
        let failed = match answer {
            Ok(Response::Done) => None,
            Ok(other) => Some(CallError::Unexpected {
                call: request.name(),
                answer: format!("{other:?}"),
            }),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            lock(&conn.streams).remove(&id);
            // The agent may have started it after all (e.g. on a timeout).
            let _ = conn.send(&close_frame(id, &StreamEnd::default())).await;
            return Err(e);
        }
        Ok(AgentStream {
            id,
            rx,
            unread,
            sender: StreamSender { id, conn, credit },
            consumed: 0,
            ended: false,
        })
    }

    async fn call_on(
        &self,
        conn: &Arc<Conn>,
        request: &Request,
        deadline: Instant,
        limit: Duration,
    ) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        if conn.closed.load(Ordering::SeqCst) {
            lock(&conn.pending).remove(&id);
            return Err(CallError::Disconnected);
        }
        let frame = Frame::json(FrameKind::Request, id, request);
        if conn.send(&frame).await.is_err() {
            lock(&conn.pending).remove(&id);
            conn.closed.store(true, Ordering::SeqCst);
            return Err(CallError::Disconnected);
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(CallError::Disconnected),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(CallError::Timeout(limit))
            }
        }
    }

    /// Drops the current connection, if any.
    pub async fn disconnect(&self) {
        self.conn.lock().await.take();
    }

    async fn connection(&self, deadline: Instant) -> Result<Arc<Conn>, ConnectError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.closed.load(Ordering::SeqCst)
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let conn = Arc::new(self.handshake(deadline).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn handshake(&self, deadline: Instant) -> Result<Conn, ConnectError> {
        let stream = timeout_at(deadline, self.transport.connect())
            .await
            .map_err(|_| ConnectError::Io(io::ErrorKind::TimedOut.into()))??;
        let (read, write) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let streams: Streams = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (welcome_tx, mut welcome_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(
            read,
            pending.clone(),
            streams.clone(),
            closed.clone(),
            welcome_tx,
        ));
        let session: u64 = rand::random();
        let hello = Frame::json(
            FrameKind::Hello,
            session,
            &Hello {
                session,
                protocol: PROTOCOL_VERSION,
            },
        );
        let writer = tokio::sync::Mutex::new(write);
        let started = Instant::now();
        loop {
            {
                let mut w = writer.lock().await;
                w.write_all(&hello.encode()).await?;
                w.flush().await?;
            }
            let wait_until = (Instant::now() + HELLO_INTERVAL).min(deadline);
            loop {
                match timeout_at(wait_until, welcome_rx.recv()).await {
                    Ok(Some(w)) if w.session == session => {
                        if w.protocol != PROTOCOL_VERSION {
                            return Err(ConnectError::Protocol {
                                agent: w.protocol,
                                host: PROTOCOL_VERSION,
                            });
                        }
                        return Ok(Conn {
                            writer,
                            pending,
                            streams,
                            closed,
                            welcome: w,
                            reader,
                        });
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        return Err(ConnectError::Io(io::ErrorKind::ConnectionReset.into()));
                    }
                    Err(_) => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(ConnectError::Timeout(started.elapsed()));
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut read: R,
    pending: Pending,
    streams: Streams,
    closed: Arc<AtomicBool>,
    welcome_tx: mpsc::UnboundedSender<Welcome>,
) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    'conn: loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        if decoder.skipped() > MAX_GARBAGE || decoder.rejected() > MAX_REJECTED {
            tracing::warn!(
                skipped = decoder.skipped(),
                rejected = decoder.rejected(),
                "the agent sends what is not frames; disconnecting it"
            );
            break;
        }
        while let Some(frame) = decoder.next_frame() {
            match frame.kind {
                FrameKind::Welcome => {
                    if let Ok(w) = frame.parse::<Welcome>() {
                        let _ = welcome_tx.send(w);
                    }
                }
                FrameKind::Response => {
                    let answer = frame.parse::<Result<Response, AgentError>>();
                    let waiter = lock(&pending).remove(&frame.id);
                    match (waiter, answer) {
                        (Some(tx), Ok(answer)) => {
                            let _ = tx.send(answer);
                        }
                        (_, Err(e)) => tracing::warn!("bad response frame from agent: {e}"),
                        (None, Ok(_)) => tracing::debug!(id = frame.id, "late agent response"),
                    }
                }
                FrameKind::StreamData | FrameKind::StreamEof => {
                    let Some((channel, data)) = split_payload(&frame.payload) else {
                        tracing::warn!(stream = frame.id, "bad stream frame from agent");
                        continue;
                    };
                    let event = if frame.kind == FrameKind::StreamData {
                        StreamEvent::Data(channel, data.to_vec())
                    } else {
                        StreamEvent::Eof(channel)
                    };
                    let len = if frame.kind == FrameKind::StreamData {
                        data.len()
                    } else {
                        0
                    };
                    if let Some(entry) = lock(&streams).get(&frame.id) {
                        if !entry.unread.add(len) {
                            tracing::warn!(
                                stream = frame.id,
                                "the agent ignores the stream's flow control; disconnecting it"
                            );
                            break 'conn;
                        }
                        let _ = entry.events.send(event);
                    }
                }
                FrameKind::StreamWindow => {
                    if let (Some(credit), Some(entry)) =
                        (window_credit(&frame.payload), lock(&streams).get(&frame.id))
                    {
                        entry.credit.add_permits(credit as usize);
                    }
                }
                FrameKind::StreamClose => {
                    if let Some(entry) = lock(&streams).remove(&frame.id) {
                        entry.credit.close();
                        entry.unread.add(0);
                        let end = frame.parse::<StreamEnd>().unwrap_or_else(|e| StreamEnd {
                            exit_code: None,
                            error: Some(format!("bad stream end from the agent: {e}")),
                        });
                        let _ = entry.events.send(StreamEvent::End(end));
                    }
                }
                other => tracing::debug!(?other, "ignoring frame from agent"),
            }
        }
    }
    closed.store(true, Ordering::SeqCst);
    lock(&pending).clear();
    // Dropping the entries ends every stream's receiver: they are lost.
    for (_, entry) in lock(&streams).drain() {
        entry.credit.close();
    }
}

/// The host's end of an interactive stream; dropping it before the agent
/// ended the stream cancels it.
pub struct AgentStream {
    id: u64,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    unread: Arc<Unread>,
    sender: StreamSender,
    consumed: u32,
    ended: bool,
}

impl Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("id", &self.id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl AgentStream {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// A handle that sends on this stream.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    /// The next event; returning data grants the agent that much credit again.
    pub async fn recv(&mut self) -> Result<StreamEvent, StreamError> {
        if self.ended {
            return Err(StreamError::Ended);
        }
        let Some(event) = self.rx.recv().await else {
            self.ended = true;
            return Err(StreamError::Disconnected);
        };
        self.unread.take(match &event {
            StreamEvent::Data(_, data) => data.len(),
            _ => 0,
        });
        match &event {
            StreamEvent::Data(_, data) => {
                self.consumed = self.consumed.saturating_add(data.len() as u32);
                if self.consumed >= WINDOW / 4 {
                    let credit = std::mem::take(&mut self.consumed);
                    let _ = self.sender.conn.send(&window_frame(self.id, credit)).await;
                }
            }
            StreamEvent::End(_) => self.ended = true,
            StreamEvent::Eof(_) => {}
        }
        Ok(event)
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        lock(&self.sender.conn.streams).remove(&self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let sender = self.sender.clone();
            handle.spawn(async move { sender.cancel().await });
        }
    }
}

/// Sends on an interactive stream; cheap to clone.
#[derive(Clone)]
pub struct StreamSender {
    id: u64,
    conn: Arc<Conn>,
    credit: Arc<Semaphore>,
}

impl Debug for StreamSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamSender {
    /// Sends `data` on the stdin channel, waiting for credit as needed.
    pub async fn send(&self, data: &[u8]) -> Result<(), StreamError> {
        for chunk in data.chunks(MAX_CHUNK) {
            let permit = self
                .credit
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| StreamError::Ended)?;
            permit.forget();
            self.send_frame(&data_frame(self.id, Channel::Stdin, chunk))
                .await?;
        }
        Ok(())
    }

    /// Ends the stdin channel.
    pub async fn eof(&self) -> Result<(), StreamError> {
        self.send_frame(&eof_frame(self.id, Channel::Stdin)).await
    }

    /// Cancels the stream: the agent kills the exec, detaches, or closes the connection.
    pub async fn cancel(&self) {
        self.credit.close();
        let _ = self
            .send_frame(&close_frame(self.id, &StreamEnd::default()))
            .await;
    }

    async fn send_frame(&self, frame: &Frame) -> Result<(), StreamError> {
        if self.conn.closed.load(Ordering::SeqCst) {
            return Err(StreamError::Disconnected);
        }
        self.conn.send(frame).await.map_err(|_| {
            self.conn.closed.store(true, Ordering::SeqCst);
            StreamError::Disconnected
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The instant `limit` from now; a limit beyond what an `Instant` can hold
/// (callers pass client-chosen timeouts) saturates at about a century.
pub fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Every failed call is logged once, with the request and its container.
fn log_failure(request: &Request, e: &CallError) {
    tracing::warn!(
        request = request.name(),
        container = request.container().unwrap_or("-"),
        "agent call failed: {e}"
    );
}
