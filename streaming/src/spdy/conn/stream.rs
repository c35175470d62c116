//! One stream of a session: its handle, the reading half (which credits
//! consumed data back to the peer) and the writing half (which waits for
//! send window, or gives up on it for peers that never send WINDOW_UPDATE).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream, ReadBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::warn;

use super::StreamError;
use super::state::{Outgoing, Shared, StreamCell, credit_session};
use crate::spdy::frame::{DEFAULT_WINDOW, FLAG_FIN, Frame, Headers};

/// Largest DATA payload this side sends.
const MAX_CHUNK: usize = 16 * 1024;

/// A stream of a session: headers plus a byte pipe each way.
pub struct Stream {
    pub(super) cell: Arc<StreamCell>,
    pub(super) shared: Arc<Shared>,
    pub(super) headers: Headers,
    pub(super) reply: Mutex<Option<oneshot::Receiver<Result<Headers, u32>>>>,
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
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;

    use super::super::{ConnConfig, Connection, Role, pair};
    use super::*;
    use crate::spdy::frame::HeaderCompressor;

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
    async fn silent_peer_switches_to_tcp_backpressure() {
        // The peer never credits the window: a raw socket that only reads.
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let server = Connection::new(
            a,
            Role::Server,
            ConnConfig {
                legacy_flow_control_after: Some(Duration::from_millis(50)),
                // The peer never closes: close gives up on it after this.
                linger: Duration::from_millis(100),
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
