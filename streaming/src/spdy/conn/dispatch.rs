//! Applying received frames to the session: new streams from the peer,
//! replies, data (held back when a stream's buffer is full), resets, window
//! updates and settings, pings and GOAWAY.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;

use super::Role;
use super::state::{Shared, StreamCell, StreamState, credit_session};
use super::stream::Stream;
use crate::spdy::frame::{
    DEFAULT_WINDOW, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, SETTINGS_INITIAL_WINDOW_SIZE, rst,
};

pub(super) async fn handle_frame(
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<Stream>,
    frame: Frame,
) {
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
                return;
            }
            let mut conn = shared.lock();
            if conn.closing_ping == Some(id) {
                conn.closing_ping_answered = true;
                drop(conn);
                shared.peer_done.notify_waiters();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{ConnConfig, pair};
    use super::*;
    use crate::spdy::frame::Headers;

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
}
