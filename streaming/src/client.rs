//! The client side of the streaming protocols, as kubectl and crictl speak
//! them: remotecommand over SPDY or WebSocket, and port forwarding over SPDY.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::debug;

use crate::protocol::{
    HEADER_PROTOCOL_VERSION, PORT, PORTFORWARD_V1, REQUEST_ID, SPDY_31, STREAM_TYPE, Status,
    channel, remotecommand_version,
};
use crate::runtime::{BoxRead, BoxWrite, TerminalSize};
use crate::spdy::{
    ConnConfig, Connection, Headers, Role, Stream, StreamError, StreamReader, StreamWriter,
};
use crate::wsstream::Framing;

/// A client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not of the form `http://host:port/path`
    #[error("unsupported URL {0:?}")]
    Url(String),
    /// The connection failed
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the upgrade
    #[error("upgrade refused with HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The server answered something unexpected
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A SPDY stream failed
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The WebSocket failed
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// The local ends of a remote command.
#[derive(Default)]
pub struct CommandIo {
    /// Sent to the process; its EOF half-closes the remote stdin.
    pub stdin: Option<BoxRead>,
    /// Receives the process's stdout.
    pub stdout: Option<BoxWrite>,
    /// Receives its stderr (ignored with a terminal).
    pub stderr: Option<BoxWrite>,
    /// Terminal sizes to send.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// The command runs on a terminal.
    pub tty: bool,
}

impl std::fmt::Debug for CommandIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .finish()
    }
}

fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_owned(), path.to_owned()))
}

/// Opens a SPDY/3.1 session to `url`, offering `protocols`; returns it with
/// the protocol the server chose ("" if it named none).
pub async fn connect_spdy(
    url: &str,
    protocols: &[&str],
) -> Result<(Connection, String), ClientError> {
    let (host, path) = split_url(url)?;
    let mut tcp = TcpStream::connect(&host).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {SPDY_31}\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("{HEADER_PROTOCOL_VERSION}: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Read the response head byte by byte so no SPDY frame is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Err(ClientError::Protocol("bad upgrade response".into()));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol("bad status line".into()))?;
    let mut negotiated = String::new();
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case(HEADER_PROTOCOL_VERSION) {
                negotiated = value.to_owned();
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            }
        }
    }
    if status != 101 {
        let mut body = vec![0u8; content_length.min(64 * 1024)];
        let _ = tcp.read_exact(&mut body).await;
        return Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok((
        Connection::new(tcp, Role::Client, ConnConfig::default()),
        negotiated,
    ))
}

fn decode_status(version: u8, bytes: &[u8]) -> Result<Status, ClientError> {
    if version >= 4 {
        serde_json::from_slice(bytes)
            .map_err(|e| ClientError::Protocol(format!("bad status on the error stream: {e}")))
    } else if bytes.is_empty() {
        Ok(Status::success())
    } else {
        Ok(Status {
            status: "Failure".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
            ..Default::default()
        })
    }
}

async fn copy_out(mut rd: StreamReader, mut out: BoxWrite) {
    if let Err(e) = tokio::io::copy(&mut rd, &mut out).await {
        debug!("output copy ended: {e}");
    }
    let _ = out.shutdown().await;
}

/// Runs a remote command over SPDY; returns the status the server reported.
pub async fn exec_spdy(
    url: &str,
    protocols: &[&str],
    io: CommandIo,
) -> Result<Status, ClientError> {
    let (conn, negotiated) = connect_spdy(url, protocols).await?;
    let version = remotecommand_version(&negotiated);
    let open = |ty: &str, fin: bool| conn.open_stream(Headers::new().with(STREAM_TYPE, ty), fin);
    // Nothing is ever written on the error stream by the client.
    let error = open("error", true)?;
    let stdin = io
        .stdin
        .is_some()
        .then(|| open("stdin", false))
        .transpose()?;
    let stdout = io
        .stdout
        .is_some()
        .then(|| open("stdout", true))
        .transpose()?;
    let stderr = (io.stderr.is_some() && !io.tty)
        .then(|| open("stderr", true))
        .transpose()?;
    let resize = (io.tty && version >= 3)
        .then(|| open("resize", false))
        .transpose()?;
    for s in [
        Some(&error),
        stdin.as_ref(),
        stdout.as_ref(),
        stderr.as_ref(),
        resize.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        s.wait_reply().await?;
    }
    let mut tasks = Vec::new();
    if let (Some(s), Some(out)) = (&stdout, io.stdout) {
        tasks.push(tokio::spawn(copy_out(s.reader(), out)));
    }
    if let (Some(s), Some(out)) = (&stderr, io.stderr) {
        tasks.push(tokio::spawn(copy_out(s.reader(), out)));
    }
    let stdin_task = match (&stdin, io.stdin) {
        (Some(s), Some(mut src)) => {
            let w = s.writer();
            Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match src.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if w.write(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = w.finish().await;
            }))
        }
        _ => None,
    };
    let resize_task = match (&resize, io.resize) {
        (Some(s), Some(mut sizes)) => {
            let w = s.writer();
            Some(tokio::spawn(async move {
                while let Some(size) = sizes.recv().await {
                    let Ok(json) = serde_json::to_vec(&size) else {
                        continue;
                    };
                    if w.write(&json).await.is_err() {
                        return;
                    }
                }
            }))
        }
        _ => None,
    };
    for t in tasks {
        let _ = t.await;
    }
    let mut status = Vec::new();
    error.reader().read_to_end(&mut status).await?;
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    conn.close().await;
    decode_status(version, &status)
}

/// Runs a remote command over WebSocket; returns the reported status.
pub async fn exec_websocket(
    url: &str,
    protocols: &[&str],
    io: CommandIo,
) -> Result<Status, ClientError> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let mut req = ws_url.into_client_request()?;
    if !protocols.is_empty() {
        let offer = HeaderValue::from_str(&protocols.join(", "))
            .map_err(|_| ClientError::Url(url.to_owned()))?;
        req.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, offer);
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
    let negotiated = resp
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let version = remotecommand_version(&negotiated);
    let framing = Framing::for_protocol(&negotiated);
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let stdin_task = io.stdin.map(|mut src| {
        let out = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out
                            .send(framing.encode(channel::STDIN, &buf[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            if version >= 5 {
                let _ = out
                    .send(Message::Binary(vec![channel::CLOSE, channel::STDIN].into()))
                    .await;
            }
        })
    });
    let resize_task = io.resize.filter(|_| io.tty).map(|mut sizes| {
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let Ok(json) = serde_json::to_vec(&size) else {
                    continue;
                };
                if out
                    .send(framing.encode(channel::RESIZE, &json))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    });
    let mut stdout = io.stdout;
    let mut stderr = io.stderr;
    let mut status = Vec::new();
    while let Some(msg) = source.next().await {
        let msg = match msg {
            Ok(Message::Close(_)) => break,
            Ok(m) => m,
            Err(e) => return Err(e.into()),
        };
        let Some((ch, data)) = framing.decode(&msg) else {
            continue;
        };
        let out = match ch {
            channel::STDOUT => stdout.as_mut(),
            channel::STDERR => stderr.as_mut(),
            channel::ERROR => {
                status.extend_from_slice(&data);
                continue;
            }
            _ => continue,
        };
        if let Some(out) = out {
            out.write_all(&data).await?;
        }
    }
    for out in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = out.shutdown().await;
    }
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    decode_status(version, &status)
}

/// A port-forward session over SPDY; each [`PortForwarder::open`] is one
/// forwarded connection.
#[derive(Debug)]
pub struct PortForwarder {
    conn: Connection,
    next_request: AtomicU64,
}

/// One forwarded connection: a data stream and its error stream.
#[derive(Debug)]
pub struct ForwardedConn {
    data: Stream,
    error: Stream,
}

impl ForwardedConn {
    /// Bytes from the remote port; EOF when it closed.
    pub fn reader(&self) -> StreamReader {
        self.data.reader()
    }

    /// Bytes to the remote port; `finish` half-closes.
    pub fn writer(&self) -> StreamWriter {
        self.data.writer()
    }

    /// The server's error message for this connection, empty if none;
    /// returns once the server closed the error stream.
    pub async fn error_message(&self) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        self.error.reader().read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Abandons the connection (RST_STREAM on both streams).
    pub fn reset(&self) {
        self.data.reset(crate::spdy::frame::rst::CANCEL);
        self.error.reset(crate::spdy::frame::rst::CANCEL);
    }
}

impl PortForwarder {
    /// Upgrades `url` (from `get_port_forward`) to a port-forward session.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let (conn, negotiated) = connect_spdy(url, &[PORTFORWARD_V1]).await?;
        if negotiated != PORTFORWARD_V1 {
            return Err(ClientError::Protocol(format!(
                "server chose protocol {negotiated:?}"
            )));
        }
        Ok(Self {
            conn,
            next_request: AtomicU64::new(0),
        })
    }

    /// Opens a new connection to `port` in the pod.
    pub async fn open(&self, port: u16) -> Result<ForwardedConn, ClientError> {
        let id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let headers = |ty: &str| {
            Headers::new()
                .with(STREAM_TYPE, ty)
                .with(PORT, &port.to_string())
                .with(REQUEST_ID, &id)
        };
        let error = self.conn.open_stream(headers("error"), true)?;
        let data = self.conn.open_stream(headers("data"), false)?;
        error.wait_reply().await?;
        data.wait_reply().await?;
        Ok(ForwardedConn { data, error })
    }

    /// Ends the session.
    pub async fn close(&self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:5/exec/ab").unwrap(),
            ("127.0.0.1:5".to_owned(), "/exec/ab".to_owned())
        );
        assert!(split_url("https://x/y").is_err());
    }

    #[test]
    fn old_protocols_report_failures_as_text() {
        assert_eq!(decode_status(2, b"").unwrap().exit_code_of(), Some(0));
        let s = decode_status(1, b"boom").unwrap();
        assert_eq!(s.status, "Failure");
        assert_eq!(s.message, "boom");
        assert!(decode_status(4, b"not json").is_err());
    }
}
