//! The state a session's tasks and handles share: the stream table, each
//! stream's buffers and flags, the send windows, and the queues to the writer
//! task; plus the batching of window credit returned to the peer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{ConnConfig, Role};
use crate::spdy::frame::{DEFAULT_WINDOW, Frame, Headers};

pub(super) enum Outgoing {
    Frame(Frame),
    /// Write GOAWAY and a PING, then leave the connection open until the peer
    /// has answered that PING (so it has processed everything before it) or
    /// closed its side, or until the given time; only then shut the write
    /// half down.
    GoAway(Instant),
}

#[derive(Default)]
pub(super) struct StreamState {
    pub(super) send_window: i64,
    pub(super) inbound: VecDeque<Bytes>,
    pub(super) inbound_bytes: usize,
    /// Bytes consumed but not yet credited back to the peer.
    pub(super) unacked: u32,
    pub(super) remote_fin: bool,
    pub(super) local_fin: bool,
    /// Status of a RST_STREAM, from either side.
    pub(super) reset: Option<u32>,
    pub(super) conn_closed: bool,
    pub(super) reader_gone: bool,
    pub(super) read_waker: Option<Waker>,
    pub(super) reply: Option<oneshot::Sender<Result<Headers, u32>>>,
}

pub(super) struct StreamCell {
    pub(super) id: u32,
    pub(super) state: Mutex<StreamState>,
}

impl StreamCell {
    pub(super) fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct ConnState {
    pub(super) streams: HashMap<u32, Arc<StreamCell>>,
    pub(super) session_send_window: i64,
    pub(super) initial_send_window: i64,
    pub(super) peer_sent_window_update: bool,
    pub(super) legacy_flow_control: bool,
    pub(super) next_stream_id: u32,
    pub(super) last_peer_stream_id: u32,
    pub(super) closed: bool,
    pub(super) peer_going_away: bool,
    /// The PING sent after our GOAWAY, once sent.
    pub(super) closing_ping: Option<u32>,
    /// The peer answered `closing_ping`.
    pub(super) closing_ping_answered: bool,
    pub(super) we_go_away: bool,
}

pub(super) struct Shared {
    pub(super) role: Role,
    pub(super) config: ConnConfig,
    pub(super) state: Mutex<ConnState>,
    /// Woken when any send window grows or the session ends.
    pub(super) window_changed: Notify,
    /// Woken when a reader consumed inbound data.
    pub(super) space_freed: Notify,
    /// Woken when the peer closed its side or answered our closing PING.
    pub(super) peer_done: Notify,
    pub(super) session_unacked: AtomicU32,
    pub(super) control_tx: mpsc::UnboundedSender<Outgoing>,
    pub(super) data_tx: mpsc::Sender<Outgoing>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether our FIN can no longer overtake the peer's processing: it
    /// closed its side, or it answered the PING sent after our GOAWAY (a
    /// peer answers a PING only after handling every frame before it).
    pub(super) fn peer_finished(&self) -> bool {
        let conn = self.lock();
        conn.closed || conn.closing_ping_answered
    }

    pub(super) fn control(&self, frame: Frame) {
        // The writer is gone only when the session is over; nothing to tell.
        let _ = self.control_tx.send(Outgoing::Frame(frame));
    }

    /// Drops a stream from the table once neither side will send on it.
    pub(super) fn maybe_forget(conn: &mut ConnState, cell: &StreamCell, st: &StreamState) {
        if st.reset.is_some() || (st.remote_fin && st.local_fin) {
            conn.streams.remove(&cell.id);
        }
    }
}

/// Credits consumed bytes to the session window, in batches.
pub(super) fn credit_session(shared: &Shared, n: usize) {
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
