//! A SPDY/3.1 session over one byte stream, for either side.
//!
//! A reader task decodes frames and routes them to streams; a writer task owns
//! the header compressor and the write half, so header blocks are compressed
//! in wire order. Control frames jump the queue; data frames go through a
//! bounded queue after taking send window, so a slow peer stalls the senders
//! instead of growing buffers.
//!
//! Flow control: each stream and the session start with a 64 KiB send window,
//! grown by the peer's WINDOW_UPDATEs and moved by its
//! SETTINGS_INITIAL_WINDOW_SIZE. Received data is credited back to the peer
//! as it is consumed. Some peers (the Go `spdystream` library used by kubectl
//! and client-go) never send WINDOW_UPDATE at all; when a sender has been
//! blocked on the window for [`ConnConfig::legacy_flow_control_after`] and the
//! peer has never sent one, the session stops enforcing send windows and
//! relies on TCP backpressure, as those peers do.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use super::frame::{
    DEFAULT_WINDOW, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, HeaderCompressor, HeaderDecompressor,
    Headers, SETTINGS_INITIAL_WINDOW_SIZE, rst,
};

/// Largest DATA payload this side sends.
const MAX_CHUNK: usize = 16 * 1024;
/// Data frames queued for the writer at most.
const DATA_QUEUE: usize = 16;
/// Streams opened by the peer and not yet accepted, at most.
const ACCEPT_QUEUE: usize = 64;

/// Which end of the session this side is; it fixes stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens odd-numbered streams.
    Client,
    /// Accepts the client's streams; its pings are even.
    Server,
}

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Stop enforcing send windows when blocked this long on a peer that has
    /// never sent WINDOW_UPDATE; `None` always enforces them.
    pub legacy_flow_control_after: Option<Duration>,
    /// After our GOAWAY, how long to wait for the peer to close.
    pub linger: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            legacy_flow_control_after: Some(Duration::from_millis(500)),
            linger: Duration::from_secs(5),
        }
    }
}

/// A stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The session is closed
    #[error("SPDY session closed")]
    Closed,
    /// The peer reset the stream
    #[error("stream {0} reset by peer (status {1})")]
    Reset(u32, u32),
    /// The peer will accept no new streams
    #[error("peer sent GOAWAY")]
    GoingAway,
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::Reset(..) => io::ErrorKind::ConnectionReset,
            _ => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

enum Outgoing {
    Frame(Frame),
    /// Write GOAWAY, flush and shut the write half down.
    GoAway,
}

#[derive(Default)]
struct StreamState {
    send_window: i64,
    inbound: VecDeque<Bytes>,
    inbound_bytes: usize,
    /// Bytes consumed but not yet credited back to the peer.
    unacked: u32,
    remote_fin: bool,
    local_fin: bool,
    /// Status of a RST_STREAM, from either side.
    reset: Option<u32>,
    conn_closed: bool,
    reader_gone: bool,
    read_waker: Option<Waker>,
    reply: Option<oneshot::Sender<Result<Headers, u32>>>,
}

struct StreamCell {
    id: u32,
    state: Mutex<StreamState>,
}

impl StreamCell {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ConnState {
    streams: HashMap<u32, Arc<StreamCell>>,
    session_send_window: i64,
    initial_send_window: i64,
    peer_sent_window_update: bool,
    legacy_flow_control: bool,
    next_stream_id: u32,
    last_peer_stream_id: u32,
    closed: bool,
    peer_going_away: bool,
    we_go_away: bool,
}

struct Shared {
    role: Role,
    config: ConnConfig,
    state: Mutex<ConnState>,
    /// Woken when any send window grows or the session ends.
    window_changed: Notify,
    /// Woken when a reader consumed inbound data.
    space_freed: Notify,
    session_unacked: AtomicU32,
    control_tx: mpsc::UnboundedSender<Outgoing>,
    data_tx: mpsc::Sender<Outgoing>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control(&self, frame: Frame) {
        // The writer is gone only when the session is over; nothing to tell.
        let _ = self.control_tx.send(Outgoing::Frame(frame));
    }

    /// Drops a stream from the table once neither side will send on it.
    fn maybe_forget(conn: &mut ConnState, cell: &StreamCell, st: &StreamState) {
        if st.reset.is_some() || (st.remote_fin && st.local_fin) {
            conn.streams.remove(&cell.id);
        }
    }
}

/// One SPDY/3.1 session.
pub struct Connection {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader_done: Arc<Notify>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.shared.role)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in [&self.reader, &self.writer] {
            if let Some(t) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
    }
}

impl Connection {
    /// Starts a session over `io` (already upgraded to SPDY).
    pub fn new<T>(io: T, role: Role, config: ConnConfig) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::channel(ACCEPT_QUEUE);
        let shared = Arc::new(Shared {
            role,
            config,
            state: Mutex::new(ConnState {
                streams: HashMap::new(),
                session_send_window: i64::from(DEFAULT_WINDOW),
                initial_send_window: i64::from(DEFAULT_WINDOW),
                peer_sent_window_update: false,
                legacy_flow_control: false,
                next_stream_id: if role == Role::Client { 1 } else { 2 },
                last_peer_stream_id: 0,
                closed: false,
                peer_going_away: false,
                we_go_away: false,
            }),
            window_changed: Notify::new(),
            space_freed: Notify::new(),
            session_unacked: AtomicU32::new(0),
            control_tx,
            data_tx,
        });
        let reader_done = Arc::new(Notify::new());
        let reader = tokio::spawn(read_loop(
            rd,
            shared.clone(),
            incoming_tx,
            reader_done.clone(),
        ));
        let writer = tokio::spawn(write_loop(wr, shared.clone(), control_rx, data_rx));
        Self {
            shared,
            incoming: tokio::sync::Mutex::new(incoming_rx),
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
            reader_done,
        }
    }

    /// The next stream the peer opened, or `None` once the session is over.
    pub async fn accept(&self) -> Option<Stream> {
        self.incoming.lock().await.recv().await
    }

    /// Opens a stream with `headers`; `fin` closes our side at once.
    pub fn open_stream(&self, headers: Headers, fin: bool) -> Result<Stream, StreamError> {
        let mut conn = self.shared.lock();
        if conn.closed || conn.we_go_away {
            return Err(StreamError::Closed);
        }
        if conn.peer_going_away {
            return Err(StreamError::GoingAway);
        }
        let id = conn.next_stream_id;
        conn.next_stream_id += 2;
        let (reply_tx, reply_rx) = oneshot::channel();
        let cell = Arc::new(StreamCell {
            id,
            state: Mutex::new(StreamState {
                send_window: conn.initial_send_window,
                local_fin: fin,
                reply: Some(reply_tx),
                ..Default::default()
            }),
        });
        conn.streams.insert(id, cell.clone());
        // Sent under the lock so SYN_STREAMs leave in id order.
        self.shared.control(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: if fin { FLAG_FIN } else { 0 },
            headers: headers.clone(),
        });
        Ok(Stream {
            cell,
            shared: self.shared.clone(),
            headers,
            reply: Mutex::new(Some(reply_rx)),
        })
    }

    /// Whether the peer's side of the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Waits until the peer closes the session (or it fails).
    pub async fn closed(&self) {
        let notified = self.reader_done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Ends the session gracefully: GOAWAY after all queued data, then waits
    /// (up to the linger time) for the peer to close its side.
    pub async fn close(&self) {
        let last = {
            let mut conn = self.shared.lock();
            conn.we_go_away = true;
            conn.last_peer_stream_id
        };
        debug!(last_stream = last, "closing SPDY session");
        let _ = self.shared.data_tx.send(Outgoing::GoAway).await;
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        let _ = tokio::time::timeout(self.shared.config.linger, self.closed()).await;
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    shared: Arc<Shared>,
    mut control_rx: mpsc::UnboundedReceiver<Outgoing>,
    mut data_rx: mpsc::Receiver<Outgoing>,
) {
    tokio::pin!(wr);
    let mut z = match HeaderCompressor::new() {
        Ok(z) => z,
        Err(e) => {
            warn!("SPDY writer: {e}");
            return;
        }
    };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut result: io::Result<()> = Ok(());
    'outer: loop {
        let first = tokio::select! {
            biased;
            Some(o) = control_rx.recv() => o,
            Some(o) = data_rx.recv() => o,
            else => break,
        };
        let mut next = Some(first);
        let mut go_away = false;
        // Batch whatever else is ready into one write.
        while let Some(o) = next.take() {
            match o {
                Outgoing::Frame(f) => {
                    trace!(?f, "send");
                    if let Err(e) = f.encode(&mut z, &mut buf) {
                        warn!("SPDY writer: {e}");
                        break 'outer;
                    }
                }
                Outgoing::GoAway => {
                    let last = shared.lock().last_peer_stream_id;
                    let f = Frame::GoAway {
                        last_good_stream_id: last,
                        status: 0,
                    };
                    if let Err(e) = f.encode(&mut z, &mut buf) {
                        warn!("SPDY writer: {e}");
                    }
                    go_away = true;
                    break;
                }
            }
            if buf.len() >= 64 * 1024 {
                break;
            }
            next = control_rx
                .try_recv()
                .ok()
                .or_else(|| data_rx.try_recv().ok());
        }
        if let Err(e) = wr.write_all(&buf).await {
            result = Err(e);
            break;
        }
        buf.clear();
        if let Err(e) = wr.flush().await {
            result = Err(e);
            break;
        }
        if go_away {
            // Frames still queued for the control queue are dropped with it;
            // after GOAWAY only the peer's closing matters.
            let _ = wr.shutdown().await;
            break;
        }
    }
    if let Err(e) = result {
        debug!("SPDY write side ended: {e}");
    }
    // Nothing more can be sent: fail the senders.
    let conn = shared.lock();
    for cell in conn.streams.values() {
        let mut st = cell.lock();
        st.conn_closed = true;
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
    }
    drop(conn);
    shared.lock().we_go_away = true;
    shared.window_changed.notify_waiters();
    data_rx.close();
}

async fn read_loop<R: AsyncRead>(
    rd: R,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
    done: Arc<Notify>,
) {
    tokio::pin!(rd);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut z = HeaderDecompressor::new();
    let outcome: Result<(), String> = async {
        loop {
            while let Some(frame) = Frame::decode(&mut buf, &mut z).map_err(|e| e.to_string())? {
                trace!(?frame, "recv");
                handle_frame(&shared, &incoming, frame).await;
            }
            if buf.capacity() - buf.len() < 8 * 1024 {
                buf.reserve(64 * 1024);
            }
            let n = rd.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
        }
    }
    .await;
    match outcome {
        Ok(()) => debug!("SPDY peer closed the session"),
        Err(e) => {
            debug!("SPDY session read failed: {e}");
            shared.control(Frame::GoAway {
                last_good_stream_id: shared.lock().last_peer_stream_id,
                status: 1,
            });
        }
    }
    let mut conn = shared.lock();
    conn.closed = true;
    for cell in conn.streams.values() {
        let mut st = cell.lock();
        st.conn_closed = true;
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
        if let Some(r) = st.reply.take() {
            let _ = r.send(Err(rst::CANCEL));
        }
    }
    conn.streams.clear();
    drop(conn);
    shared.window_changed.notify_waiters();
    drop(incoming);
    done.notify_waiters();
}

async fn handle_frame(shared: &Arc<Shared>, incoming: &mpsc::Sender<Stream>, frame: Frame) {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let peer_parity = if shared.role == Role::Server { 1 } else { 0 };
            let cell = {
                let mut conn = shared.lock();
                if stream_id % 2 != peer_parity
                    || stream_id <= conn.last_peer_stream_id
                    || conn.we_go_away
                {
                    debug!(stream_id, "refusing SYN_STREAM");
                    drop(conn);
                    shared.control(Frame::RstStream {
                        stream_id,
                        status: if stream_id % 2 != peer_parity {
                            rst::PROTOCOL_ERROR
                        } else {
                            rst::REFUSED_STREAM
                        },
                    });
                    return;
                }
                conn.last_peer_stream_id = stream_id;
                let cell = Arc::new(StreamCell {
                    id: stream_id,
                    state: Mutex::new(StreamState {
                        send_window: conn.initial_send_window,
                        remote_fin: flags & FLAG_FIN != 0,
                        local_fin: flags & FLAG_UNIDIRECTIONAL != 0,
                        ..Default::default()
                    }),
                });
                conn.streams.insert(stream_id, cell.clone());
                cell
            };
            let stream = Stream {
                cell,
                shared: shared.clone(),
                headers,
                reply: Mutex::new(None),
            };
            if let Err(mpsc::error::SendError(stream)) = incoming.send(stream).await {
                stream.reset(rst::REFUSED_STREAM);
            }
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        } => {
            let mut conn = shared.lock();
            if let Some(cell) = conn.streams.get(&stream_id).cloned() {
                let mut st = cell.lock();
                if let Some(r) = st.reply.take() {
                    let _ = r.send(Ok(headers));
                }
                if flags & FLAG_FIN != 0 {
                    st.remote_fin = true;
                    if let Some(w) = st.read_waker.take() {
                        w.wake();
                    }
                    Shared::maybe_forget(&mut conn, &cell, &st);
                }
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0 {
                remote_finish(shared, stream_id);
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => handle_data(shared, stream_id, flags, data).await,
        Frame::RstStream { stream_id, status } => {
            debug!(stream_id, status, "peer reset stream");
            let mut conn = shared.lock();
            if let Some(cell) = conn.streams.remove(&stream_id) {
                let mut st = cell.lock();
                st.reset = Some(status);
                if let Some(w) = st.read_waker.take() {
                    w.wake();
                }
                if let Some(r) = st.reply.take() {
                    let _ = r.send(Err(status));
                }
            }
            drop(conn);
            shared.window_changed.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut conn = shared.lock();
            for (_, id, value) in entries {
                if id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let value = i64::from(value & 0x7fff_ffff);
                    let delta = value - conn.initial_send_window;
                    conn.initial_send_window = value;
                    conn.peer_sent_window_update = true;
                    for cell in conn.streams.values() {
                        cell.lock().send_window += delta;
                    }
                    debug!(value, "peer set the initial window size");
                }
            }
            drop(conn);
            shared.window_changed.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut conn = shared.lock();
            conn.peer_sent_window_update = true;
            if stream_id == 0 {
                conn.session_send_window += i64::from(delta);
            } else if let Some(cell) = conn.streams.get(&stream_id) {
                cell.lock().send_window += i64::from(delta);
            }
            drop(conn);
            shared.window_changed.notify_waiters();
        }
        Frame::Ping { id } => {
            let ours = if shared.role == Role::Server { 0 } else { 1 };
            if id % 2 != ours {
                shared.control(Frame::Ping { id });
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            debug!(last_good_stream_id, status, "peer sent GOAWAY");
            shared.lock().peer_going_away = true;
        }
        Frame::Unknown { frame_type } => debug!(frame_type, "ignoring unknown control frame"),
    }
}

fn remote_finish(shared: &Shared, stream_id: u32) {
    let mut conn = shared.lock();
    if let Some(cell) = conn.streams.get(&stream_id).cloned() {
        let mut st = cell.lock();
        st.remote_fin = true;
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
        Shared::maybe_forget(&mut conn, &cell, &st);
    }
}

async fn handle_data(shared: &Arc<Shared>, stream_id: u32, flags: u8, data: Bytes) {
    let len = data.len();
    let mut data = Some(data);
    loop {
        let space = shared.space_freed.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        {
            let mut conn = shared.lock();
            let Some(cell) = conn.streams.get(&stream_id).cloned() else {
                let known =
                    stream_id <= conn.last_peer_stream_id || stream_id < conn.next_stream_id;
                drop(conn);
                credit_session(shared, len);
                if !known {
                    shared.control(Frame::RstStream {
                        stream_id,
                        status: rst::INVALID_STREAM,
                    });
                }
                return;
            };
            let mut st = cell.lock();
            if st.remote_fin {
                drop(st);
                drop(conn);
                shared.control(Frame::RstStream {
                    stream_id,
                    status: rst::STREAM_ALREADY_CLOSED,
                });
                return;
            }
            let discard = st.reader_gone || st.reset.is_some();
            // A peer that honours our window never exceeds it; one that does
            // not is held back here, which stalls its TCP connection.
            let fits = st.inbound_bytes == 0 || st.inbound_bytes + len <= DEFAULT_WINDOW as usize;
            if discard || fits {
                if discard {
                    drop(st);
                    drop(conn);
                    credit_session(shared, len);
                    if flags & FLAG_FIN != 0 {
                        remote_finish(shared, stream_id);
                    }
                    return;
                }
                if let Some(d) = data.take().filter(|d| !d.is_empty()) {
                    st.inbound_bytes += d.len();
                    st.inbound.push_back(d);
                }
                if flags & FLAG_FIN != 0 {
                    st.remote_fin = true;
                    Shared::maybe_forget(&mut conn, &cell, &st);
                }
                if let Some(w) = st.read_waker.take() {
                    w.wake();
                }
                return;
            }
        }
        space.await;
    }
}

/// Credits consumed bytes to the session window, in batches.
fn credit_session(shared: &Shared, n: usize) {
    if n == 0 {
        return;
    }
    let total = shared.session_unacked.fetch_add(n as u32, Ordering::AcqRel) + n as u32;
    if total >= DEFAULT_WINDOW / 2 {
        let delta = shared.session_unacked.swap(0, Ordering::AcqRel);
        if delta > 0 {
            shared.control(Frame::WindowUpdate {
                stream_id: 0,
                delta,
            });
        }
    }
}

/// A stream of a session: headers plus a byte pipe each way.
pub struct Stream {
    cell: Arc<StreamCell>,
    shared: Arc<Shared>,
    headers: Headers,
    reply: Mutex<Option<oneshot::Receiver<Result<Headers, u32>>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.cell.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl Stream {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.cell.id
    }

    /// The headers the stream was opened with.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Accepts a peer-opened stream. The reply carries `:status` and
    /// `:version` for HTTP-minded SPDY clients; kubectl ignores them.
    pub fn reply(&self) {
        self.shared.control(Frame::SynReply {
            stream_id: self.cell.id,
            flags: 0,
            headers: Headers::new()
                .with(":status", "200")
                .with(":version", "HTTP/1.1"),
        });
    }

    /// Waits for the peer's SYN_REPLY to a stream we opened.
    pub async fn wait_reply(&self) -> Result<Headers, StreamError> {
        let rx = self.reply.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => match rx.await {
                Ok(Ok(h)) => Ok(h),
                Ok(Err(status)) => Err(StreamError::Reset(self.cell.id, status)),
                Err(_) => Err(StreamError::Closed),
            },
            None => Ok(Headers::new()),
        }
    }

    /// Aborts the stream both ways with RST_STREAM.
    pub fn reset(&self, status: u32) {
        let mut conn = self.shared.lock();
        let mut st = self.cell.lock();
        if st.reset.is_some() {
            return;
        }
        st.reset = Some(status);
        if let Some(w) = st.read_waker.take() {
            w.wake();
        }
        conn.streams.remove(&self.cell.id);
        drop(st);
        drop(conn);
        self.shared.control(Frame::RstStream {
            stream_id: self.cell.id,
            status,
        });
        self.shared.window_changed.notify_waiters();
    }

    /// The receiving half; read it from one place only.
    pub fn reader(&self) -> StreamReader {
        StreamReader {
            cell: self.cell.clone(),
            shared: self.shared.clone(),
        }
    }

    /// The sending half.
    pub fn writer(&self) -> StreamWriter {
        StreamWriter {
            cell: self.cell.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Reads a stream's data; EOF once the peer half-closed it.
pub struct StreamReader {
    cell: Arc<StreamCell>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("id", &self.cell.id)
            .finish()
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut st = self.cell.lock();
        st.reader_gone = true;
        let n = st.inbound_bytes;
        st.inbound.clear();
        st.inbound_bytes = 0;
        drop(st);
        credit_session(&self.shared, n);
        self.shared.space_freed.notify_one();
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.cell.lock();
        if !st.inbound.is_empty() {
            let mut n = 0;
            while out.remaining() > 0 {
                let Some(front) = st.inbound.front_mut() else {
                    break;
                };
                let take = front.len().min(out.remaining());
                out.put_slice(&front.split_to(take));
                n += take;
                if front.is_empty() {
                    st.inbound.pop_front();
                }
            }
            st.inbound_bytes -= n;
            st.unacked += n as u32;
            let credit = if !st.remote_fin && st.unacked >= DEFAULT_WINDOW / 2 {
                std::mem::take(&mut st.unacked)
            } else {
                0
            };
            drop(st);
            if credit > 0 {
                this.shared.control(Frame::WindowUpdate {
                    stream_id: this.cell.id,
                    delta: credit,
                });
            }
            credit_session(&this.shared, n);
            this.shared.space_freed.notify_one();
            return Poll::Ready(Ok(()));
        }
        if st.remote_fin || st.conn_closed {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = st.reset {
            return Poll::Ready(Err(StreamError::Reset(this.cell.id, status).into()));
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Sends a stream's data, within the flow-control windows.
#[derive(Clone)]
pub struct StreamWriter {
    cell: Arc<StreamCell>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.cell.id)
            .finish()
    }
}

impl StreamWriter {
    /// Sends `data` as DATA frames, waiting for window as needed.
    pub async fn write(&self, data: &[u8]) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(Bytes::copy_from_slice(data), false).await
    }

    /// Half-closes our side (empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), StreamError> {
        self.send(Bytes::new(), true).await
    }

    /// Writes `data` and half-closes in one go.
    pub async fn write_and_finish(&self, data: &[u8]) -> Result<(), StreamError> {
        self.send(Bytes::copy_from_slice(data), true).await
    }

    async fn send(&self, mut data: Bytes, fin: bool) -> Result<(), StreamError> {
        let id = self.cell.id;
        loop {
            let changed = self.shared.window_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let grant = {
                let mut conn = self.shared.lock();
                let mut st = self.cell.lock();
                if let Some(status) = st.reset {
                    return Err(StreamError::Reset(id, status));
                }
                if st.conn_closed || st.local_fin {
                    return Err(StreamError::Closed);
                }
                let avail = if conn.legacy_flow_control {
                    usize::MAX
                } else {
                    st.send_window.min(conn.session_send_window).max(0) as usize
                };
                if data.is_empty() || avail > 0 {
                    let n = data.len().min(avail).min(MAX_CHUNK);
                    st.send_window -= n as i64;
                    conn.session_send_window -= n as i64;
                    let last = n == data.len();
                    if fin && last {
                        st.local_fin = true;
                        Shared::maybe_forget(&mut conn, &self.cell, &st);
                    }
                    Some((n, last))
                } else {
                    None
                }
            };
            match grant {
                Some((n, last)) => {
                    let chunk = data.split_to(n);
                    let frame = Frame::Data {
                        stream_id: id,
                        flags: if fin && last { FLAG_FIN } else { 0 },
                        data: chunk,
                    };
                    self.shared
                        .data_tx
                        .send(Outgoing::Frame(frame))
                        .await
                        .map_err(|_| StreamError::Closed)?;
                    if last {
                        return Ok(());
                    }
                }
                None => self.wait_window(changed).await,
            }
        }
    }

    async fn wait_window(&self, changed: Pin<&mut tokio::sync::futures::Notified<'_>>) {
        let legacy_after = self.shared.config.legacy_flow_control_after;
        let peer_updates = self.shared.lock().peer_sent_window_update;
        match legacy_after {
            Some(after) if !peer_updates => {
                if tokio::time::timeout(after, changed).await.is_err() {
                    let mut conn = self.shared.lock();
                    if !conn.peer_sent_window_update && !conn.legacy_flow_control {
                        conn.legacy_flow_control = true;
                        warn!(
                            "SPDY peer sent no WINDOW_UPDATE; relying on TCP backpressure for this session"
                        );
                    }
                }
            }
            _ => changed.await,
        }
    }

    /// An `AsyncWrite` for this stream: bytes written to it are forwarded by a
    /// task that half-closes the stream once the writer is shut down or
    /// dropped. The task's result tells whether everything reached the
    /// session's send queue.
    pub fn into_async_write(
        self,
        buffer: usize,
    ) -> (DuplexStream, JoinHandle<Result<u64, StreamError>>) {
        let (wr, mut rd) = tokio::io::duplex(buffer);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_CHUNK * 2];
            let mut total = 0u64;
            loop {
                let n = rd.read(&mut buf).await.map_err(|_| StreamError::Closed)?;
                if n == 0 {
                    self.finish().await?;
                    return Ok(total);
                }
                self.write(&buf[..n]).await?;
                total += n as u64;
            }
        });
        (wr, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(config: ConnConfig) -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            Connection::new(a, Role::Client, config.clone()),
            Connection::new(b, Role::Server, config),
        )
    }

    #[tokio::test]
    async fn streams_carry_headers_data_and_fin_both_ways() {
        let (client, server) = pair(ConnConfig::default());
        let s = client
            .open_stream(Headers::new().with("streamType", "stdin"), false)
            .unwrap();
        let accepted = server.accept().await.unwrap();
        assert_eq!(accepted.headers().get("streamtype"), Some("stdin"));
        assert_eq!(accepted.id(), 1);
        accepted.reply();
        s.wait_reply().await.unwrap();
        s.writer().write_and_finish(b"ping").await.unwrap();
        let mut got = Vec::new();
        accepted.reader().read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        accepted.writer().write_and_finish(b"pong").await.unwrap();
        let mut got = Vec::new();
        s.reader().read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
        let s2 = client.open_stream(Headers::new(), true).unwrap();
        assert_eq!(s2.id(), 3);
    }

    #[tokio::test]
    async fn sender_stops_at_the_window_until_the_reader_consumes() {
        let config = ConnConfig {
            legacy_flow_control_after: None,
            ..Default::default()
        };
        let (client, server) = pair(config);
        let s = client.open_stream(Headers::new(), false).unwrap();
        let accepted = server.accept().await.unwrap();
        accepted.reply();
        let writer = accepted.writer();
        let total = 300 * 1024;
        let send = tokio::spawn(async move {
            writer.write(&vec![7u8; total]).await.unwrap();
            writer.finish().await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Nothing consumed yet: the server may only have spent its window.
        {
            let conn = server.shared.lock();
            assert_eq!(conn.session_send_window, 0);
        }
        assert_eq!(s.cell.lock().inbound_bytes, DEFAULT_WINDOW as usize);
        assert!(!send.is_finished());
        let mut got = Vec::new();
        s.reader().read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), total);
        send.await.unwrap();
    }

    #[tokio::test]
    async fn initial_window_setting_moves_stream_windows() {
        let (client, server) = pair(ConnConfig::default());
        let _s = client.open_stream(Headers::new(), false).unwrap();
        let accepted = server.accept().await.unwrap();
        client.shared.control(Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1000)],
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.cell.lock().send_window, 1000);
        assert_eq!(server.shared.lock().initial_send_window, 1000);
    }

    #[tokio::test]
    async fn silent_peer_switches_to_tcp_backpressure() {
        // The peer never credits the window: a raw socket that only reads.
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let server = Connection::new(
            a,
            Role::Server,
            ConnConfig {
                legacy_flow_control_after: Some(Duration::from_millis(50)),
                ..Default::default()
            },
        );
        let mut z = HeaderCompressor::new().unwrap();
        let mut out = BytesMut::new();
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: Headers::new(),
        }
        .encode(&mut z, &mut out)
        .unwrap();
        b.write_all(&out).await.unwrap();
        let s = server.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut n = 0usize;
            let mut buf = vec![0; 65536];
            loop {
                match b.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        s.writer()
            .write_and_finish(&vec![1u8; 200_000])
            .await
            .unwrap();
        assert!(server.shared.lock().legacy_flow_control);
        server.close().await;
        drop(server);
        let n = reader.await.unwrap();
        assert!(n > 200_000, "read {n}");
    }
}
