//! Server side of Kubernetes port forwarding, over SPDY and WebSocket.
//!
//! SPDY (`portforward.k8s.io`): for every forwarded connection the client
//! opens an `error` and a `data` stream carrying the same `port` and
//! `requestID` headers. Once both exist the server dials the port through the
//! runtime and copies bytes both ways over the data stream; a failure is
//! written as text on the error stream. Clients from before `requestID`
//! open the pair back to back, so the error stream's id names the pair and
//! the data stream's id is two more.
//!
//! WebSocket: the ports come from the `port` query parameters (or the CRI
//! request); port `i` uses channel `2i` for data and `2i+1` for errors, and
//! the first message on each channel is the port as 2 little-endian bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

use crate::protocol::{PORT, REQUEST_ID, STREAM_TYPE};
use crate::runtime::StreamingRuntime;
use crate::spdy::frame::rst;
use crate::spdy::{Connection, Stream};
use crate::wsstream::Framing;

/// After the target closes, how long the client still may send.
const DRAIN_AFTER_TARGET_CLOSE: Duration = Duration::from_secs(1);
const COPY_CHUNK: usize = 32 * 1024;

struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    port: u16,
    deadline: Instant,
}

fn pair_key(stream: &Stream) -> Option<String> {
    let headers = stream.headers();
    if let Some(id) = headers.get(REQUEST_ID).filter(|id| !id.is_empty()) {
        return Some(id.to_owned());
    }
    match headers.get(STREAM_TYPE)? {
        "error" => Some(stream.id().to_string()),
        "data" => Some(stream.id().checked_sub(2)?.to_string()),
        _ => None,
    }
}

/// Serves port forwarding for `pod` on an upgraded SPDY session, until the
/// client closes it.
pub(crate) async fn serve_spdy(
    conn: Connection,
    pod: String,
    runtime: Arc<dyn StreamingRuntime>,
    creation_timeout: Duration,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        let stream = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = async {
                match next_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                pairs.retain(|id, p| {
                    if p.deadline > now {
                        return true;
                    }
                    warn!(request_id = id, "timed out waiting for the other stream of a port-forward pair");
                    for s in [&p.data, &p.error].into_iter().flatten() {
                        s.reset(rst::CANCEL);
                    }
                    false
                });
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let headers = stream.headers();
        let port = match headers.get(PORT).map(str::parse::<u16>) {
            Some(Ok(p)) if p > 0 => p,
            _ => {
                debug!(headers = ?headers, "refusing port-forward stream without a valid port");
                stream.reset(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        let Some(key) = pair_key(&stream) else {
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        };
        let is_data = match headers.get(STREAM_TYPE) {
            Some("data") => true,
            Some("error") => false,
            _ => {
                stream.reset(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        let pair = pairs.entry(key.clone()).or_insert_with(|| Pair {
            data: None,
            error: None,
            port,
            deadline: Instant::now() + creation_timeout,
        });
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() || pair.port != port {
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        }
        stream.reply();
        *slot = Some(stream);
        if pair.data.is_some()
            && pair.error.is_some()
            && let Some(Pair {
                data: Some(data),
                error: Some(error),
                port,
                ..
            }) = pairs.remove(&key)
        {
            forwards.spawn(forward_pair(
                data,
                error,
                pod.clone(),
                port,
                runtime.clone(),
            ));
        }
    }
    forwards.shutdown().await;
}

/// Copies `src` into the data stream until EOF, then half-closes it.
async fn copy_to_stream<R: AsyncRead + Unpin>(mut src: R, stream: &Stream) -> bool {
    let writer = stream.writer();
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        match src.read(&mut buf).await {
            Ok(0) => return writer.finish().await.is_ok(),
            Ok(n) => {
                if writer.write(&buf[..n]).await.is_err() {
                    return false;
                }
            }
            Err(_) => {
                stream.reset(rst::CANCEL);
                return false;
            }
        }
    }
}

async fn forward_pair(
    data: Stream,
    error: Stream,
    pod: String,
    port: u16,
    runtime: Arc<dyn StreamingRuntime>,
) {
    let target = match runtime.port_forward(&pod, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            debug!("{msg}");
            let _ = error.writer().write_and_finish(msg.as_bytes()).await;
            let _ = data.writer().finish().await;
            return;
        }
    };
    let (target_rd, mut target_wr) = tokio::io::split(target);
    let mut client_rd = data.reader();
    let up = async {
        let r = tokio::io::copy(&mut client_rd, &mut target_wr).await;
        let _ = target_wr.shutdown().await;
        r
    };
    let down = copy_to_stream(target_rd, &data);
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {
            let _ = tokio::time::timeout(DRAIN_AFTER_TARGET_CLOSE, &mut up).await;
        }
        _ = &mut up => {
            down.await;
        }
    }
    let _ = error.writer().finish().await;
}

/// Serves port forwarding of `ports` for `pod` on an upgraded WebSocket,
/// until the client closes it or every forwarded connection has ended.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    protocol: &'static str,
    pod: String,
    ports: Vec<u16>,
    runtime: Arc<dyn StreamingRuntime>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = Framing::for_protocol(protocol);
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // Every forward is over: start the closing handshake.
        let _ = sink.close().await;
    });
    for (i, port) in ports.iter().enumerate() {
        for ch in [2 * i, 2 * i + 1] {
            let _ = out_tx
                .send(framing.encode(ch as u8, &port.to_le_bytes()))
                .await;
        }
    }
    let mut inputs = Vec::new();
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (rd, wr) = tokio::io::duplex(64 * 1024);
        inputs.push(Some(wr));
        let out = out_tx.clone();
        let runtime = runtime.clone();
        let pod = pod.clone();
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        forwards.spawn(async move {
            let target = match runtime.port_forward(&pod, port).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                    let _ = out.send(framing.encode(error_ch, msg.as_bytes())).await;
                    return;
                }
            };
            let (mut target_rd, mut target_wr) = tokio::io::split(target);
            let mut rd = rd;
            let up = async {
                let _ = tokio::io::copy(&mut rd, &mut target_wr).await;
                let _ = target_wr.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; COPY_CHUNK];
                loop {
                    match target_rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if out.send(framing.encode(data_ch, &buf[..n])).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::pin!(up, down);
            tokio::select! {
                _ = &mut down => {
                    let _ = tokio::time::timeout(DRAIN_AFTER_TARGET_CLOSE, &mut up).await;
                }
                _ = &mut up => down.await,
            }
        });
    }
    drop(out_tx);
    loop {
        tokio::select! {
            msg = source.next() => {
                let msg = match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(m)) => m,
                };
                let Some((ch, data)) = framing.decode(&msg) else { continue };
                let i = usize::from(ch / 2);
                if ch % 2 != 0 || i >= inputs.len() {
                    continue;
                }
                if let Some(w) = inputs[i].as_mut()
                    && w.write_all(&data).await.is_err()
                {
                    inputs[i] = None;
                }
            }
            r = forwards.join_next() => {
                if r.is_none() {
                    break;
                }
            }
        }
    }
    // Closing the inputs lets every forward see EOF from the client.
    inputs.clear();
    forwards.shutdown().await;
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}
