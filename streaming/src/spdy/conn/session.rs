//! The session's two tasks: the writer, which owns the header compressor and
//! the write half and batches queued frames (control first) into writes, and
//! the reader, which decodes frames and hands them to the dispatcher.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::Role;
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
        let mut go_away = None;
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
                Outgoing::GoAway(until) => {
                    let last = shared.lock().last_peer_stream_id;
                    let f = Frame::GoAway {
                        last_good_stream_id: last,
                        status: 0,
                    };
                    // Its answer tells that the peer has processed all we sent.
                    let id = if shared.role == Role::Server { 2 } else { 1 };
                    shared.lock().closing_ping = Some(id);
                    let ping = Frame::Ping { id };
                    if let Err(e) = f
                        .encode(&mut z, &mut buf)
                        .and(ping.encode(&mut z, &mut buf))
                    {
                        warn!("SPDY writer: {e}");
                    }
                    go_away = Some(until);
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
        if let Some(until) = go_away {
            // Our FIN must not overtake the peer's processing of what it has
            // received: leave the connection open until it answered the
            // PING or closed. Meanwhile control frames (ping replies, resets)
            // still go out; data queued after GOAWAY is dropped.
            if let Err(e) = linger(&mut wr, &mut z, &shared, &mut control_rx, until).await {
                result = Err(e);
                break;
            }
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

/// After our GOAWAY: writes control frames until the peer answered the
/// closing PING or closed its side, or until `until`.
async fn linger<W: AsyncWrite>(
    wr: &mut Pin<&mut W>,
    z: &mut HeaderCompressor,
    shared: &Shared,
    control_rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    until: Instant,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        let done = shared.peer_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if shared.peer_finished() {
            return Ok(());
        }
        let frame = tokio::select! {
            biased;
            _ = &mut done => return Ok(()),
            _ = tokio::time::sleep_until(until) => {
                debug!("SPDY peer did not close the session in time");
                return Ok(());
            }
            Some(o) = control_rx.recv() => o,
        };
        if let Outgoing::Frame(f) = frame {
            trace!(?f, "send");
            if let Err(e) = f.encode(z, &mut buf) {
                warn!("SPDY writer: {e}");
                return Ok(());
            }
            wr.write_all(&buf).await?;
            wr.flush().await?;
            buf.clear();
        }
    }
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
    shared.peer_done.notify_waiters();
    drop(incoming);
    done.notify_waiters();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    use super::super::{ConnConfig, Connection, Role, pair};
    use crate::spdy::frame::{FLAG_FIN, Frame, HeaderCompressor, HeaderDecompressor, Headers};

    /// A server session whose peer is a raw byte pipe the test drives.
    fn raw_server(linger: Duration) -> (Connection, DuplexStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = ConnConfig {
            linger,
            ..Default::default()
        };
        (Connection::new(a, Role::Server, config), b)
    }

    async fn send(peer: &mut DuplexStream, z: &mut HeaderCompressor, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(z, &mut out).unwrap();
        peer.write_all(&out).await.unwrap();
    }

    /// Reads the server's frames up to its GOAWAY and the PING after it;
    /// returns them all and the PING's id.
    async fn read_until_closing_ping(peer: &mut DuplexStream) -> (Vec<Frame>, u32) {
        let mut z = HeaderDecompressor::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        loop {
            while let Some(f) = Frame::decode(&mut buf, &mut z).unwrap() {
                let after_goaway = matches!(frames.last(), Some(Frame::GoAway { .. }));
                if let (true, Frame::Ping { id }) = (after_goaway, &f) {
                    let id = *id;
                    frames.push(f);
                    return (frames, id);
                }
                frames.push(f);
            }
            let n = peer.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "EOF before GOAWAY and PING, after {frames:?}");
        }
    }

    /// The peer opens stream 1 (half-closed); the server answers on it,
    /// finishes it and starts closing the session.
    async fn last_words(
        server: Connection,
        peer: &mut DuplexStream,
    ) -> tokio::task::JoinHandle<()> {
        let mut z = HeaderCompressor::new().unwrap();
        let syn = Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: FLAG_FIN,
            headers: Headers::new().with("streamtype", "error"),
        };
        send(peer, &mut z, syn).await;
        let s = server.accept().await.unwrap();
        s.reply();
        s.writer().write_and_finish(b"status").await.unwrap();
        tokio::spawn(async move { server.close().await })
    }

    #[tokio::test]
    async fn close_does_not_end_the_connection_under_a_busy_peer() {
        let (server, mut peer) = raw_server(Duration::from_secs(30));
        let closing = last_words(server, &mut peer).await;
        let (frames, _) = read_until_closing_ping(&mut peer).await;
        assert!(
            matches!(frames[0], Frame::SynReply { stream_id: 1, .. }),
            "{frames:?}"
        );
        assert!(frames.iter().any(|f| matches!(f,
            Frame::Data { stream_id: 1, flags: FLAG_FIN, data } if &data[..] == b"status")));
        // The peer has not answered the PING: it may still be working through
        // these frames (spdy-transport inflates header blocks asynchronously
        // and drops every stream when its socket ends). No FIN yet.
        let mut byte = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(300), peer.read(&mut byte)).await;
        assert!(r.is_err(), "the server ended the connection first: {r:?}");
        // Once the peer closes, the server's close returns at once.
        drop(peer);
        tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .expect("close returns once the peer closed")
            .unwrap();
    }

    #[tokio::test]
    async fn the_answer_to_the_closing_ping_lets_the_connection_end() {
        let (server, mut peer) = raw_server(Duration::from_secs(30));
        let closing = last_words(server, &mut peer).await;
        let (_, id) = read_until_closing_ping(&mut peer).await;
        assert_eq!(id % 2, 0, "server pings are even");
        let mut z = HeaderCompressor::new().unwrap();
        send(&mut peer, &mut z, Frame::Ping { id: id + 2 }).await;
        send(&mut peer, &mut z, Frame::Ping { id: 7 }).await;
        // Neither a ping of the peer's nor another id counts; the answer does.
        let mut rest = BytesMut::new();
        let early = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                if peer.read_buf(&mut rest).await.unwrap() == 0 {
                    return;
                }
            }
        })
        .await;
        assert!(early.is_err(), "FIN before the PING was answered");
        let mut unz = HeaderDecompressor::new();
        assert_eq!(
            Frame::decode(&mut rest, &mut unz).unwrap(),
            Some(Frame::Ping { id: 7 }),
            "the peer's own ping is still answered while lingering"
        );
        send(&mut peer, &mut z, Frame::Ping { id }).await;
        let mut tail = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), peer.read_to_end(&mut tail))
            .await
            .expect("the server shuts its side down once the PING is answered")
            .unwrap();
        peer.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .expect("close returns")
            .unwrap();
    }

    #[tokio::test]
    async fn a_silent_peer_is_given_the_linger_time_once() {
        let linger = Duration::from_millis(300);
        let (server, mut peer) = raw_server(linger);
        let closing = last_words(server, &mut peer).await;
        let start = Instant::now();
        read_until_closing_ping(&mut peer).await;
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(start.elapsed() >= linger - Duration::from_millis(50));
        closing.await.unwrap();
        let took = start.elapsed();
        assert!(took < linger * 2, "close took {took:?}");
    }

    #[tokio::test]
    async fn either_side_closing_first_ends_the_session_promptly() {
        let config = ConnConfig {
            linger: Duration::from_secs(30),
            ..Default::default()
        };
        for both in [false, true] {
            let (client, server) = pair(config.clone());
            let s = client.open_stream(Headers::new(), true).unwrap();
            let accepted = server.accept().await.unwrap();
            accepted.reply();
            accepted.writer().finish().await.unwrap();
            s.wait_reply().await.unwrap();
            let closing = async {
                if both {
                    tokio::join!(server.close(), client.close());
                } else {
                    // Like the port-forward server: it ends the session
                    // (drops it) once the client closed its side.
                    let server_done = async move {
                        server.closed().await;
                        drop(server);
                    };
                    tokio::join!(client.close(), server_done);
                }
            };
            tokio::time::timeout(Duration::from_secs(2), closing)
                .await
                .expect("close completes without lingering");
        }
    }
}
