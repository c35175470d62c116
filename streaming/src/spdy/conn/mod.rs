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
//!
//! Closing: GOAWAY, then a PING; the connection is shut down only once the
//! peer answered it (so it has processed everything before it) or closed its
//! side, or after [`ConnConfig::linger`], so our FIN never cuts off frames
//! the peer has received but not yet handled.
//!
//! The code is split by concern: `state` holds what the tasks and handles
//! share, `session` runs the reader and writer tasks, `dispatch` applies
//! received frames, and `stream` is the per-stream API with the send side of
//! flow control.

mod dispatch;
mod session;
mod state;
mod stream;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

use super::frame::{DEFAULT_WINDOW, FLAG_FIN, Frame, Headers};
use session::{read_loop, write_loop};
use state::{ConnState, Outgoing, Shared, StreamCell, StreamState};
pub use stream::{Stream, StreamReader, StreamWriter};

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
                closing_ping: None,
                closing_ping_answered: false,
                we_go_away: false,
            }),
            window_changed: Notify::new(),
            space_freed: Notify::new(),
            peer_done: Notify::new(),
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
    ///
    /// Our FIN must not overtake the peer: it may still be working through
    /// the frames it received last when the connection ends, and some peers
    /// (node's spdy-transport) drop every stream when their socket ends,
    /// unprocessed frames and all. So a PING follows the GOAWAY, and our
    /// write half is shut down only once the peer answered it or closed its
    /// side, or the linger time is up.
    pub async fn close(&self) {
        let last = {
            let mut conn = self.shared.lock();
            conn.we_go_away = true;
            conn.last_peer_stream_id
        };
        debug!(last_stream = last, "closing SPDY session");
        let deadline = tokio::time::Instant::now() + self.shared.config.linger;
        let _ = self.shared.data_tx.send(Outgoing::GoAway(deadline)).await;
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.await;
        }
        let _ = tokio::time::timeout_at(deadline, self.closed()).await;
    }
}

/// Two sessions joined by an in-memory pipe, for the tests.
#[cfg(test)]
fn pair(config: ConnConfig) -> (Connection, Connection) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (
        Connection::new(a, Role::Client, config.clone()),
        Connection::new(b, Role::Server, config),
    )
}
