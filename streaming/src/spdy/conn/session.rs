//! The session's two tasks: the writer, which owns the header compressor and
//! the write half and batches queued frames (control first) into writes, and
//! the reader, which decodes frames and hands them to the dispatcher.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, trace, warn};

use super::dispatch::handle_frame;
use super::state::{Outgoing, Shared};
use super::stream::Stream;
use crate::spdy::frame::{Frame, HeaderCompressor, HeaderDecompressor, rst};

pub(super) async fn write_loop<W: AsyncWrite>(
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

pub(super) async fn read_loop<R: AsyncRead>(
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
