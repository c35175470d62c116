//! Server side of the Kubernetes remotecommand protocol (exec and attach)
//! over SPDY streams and over WebSocket channels.
//!
//! SPDY: the client opens one stream per role, named by its `streamType`
//! header: `error` always, `stdin`/`stdout`/`stderr` as requested, and
//! `resize` for terminals from v3 on. The server replies to each, waits
//! (bounded by the creation timeout) until all expected streams exist, runs
//! the command, half-closes stdout/stderr once drained, writes the status on
//! the error stream and ends the session.
//!
//! WebSocket: channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5
//! adds message `[255, n]` by which the client closes channel `n`. The server
//! first sends an empty message on the lowest channel it writes to.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, warn};

use crate::protocol::{STREAM_TYPE, Status, channel, remotecommand_version};
use crate::runtime::{
    AttachRequest, BoxRead, BoxWrite, ExecRequest, SessionError, StreamIo, StreamingRuntime,
    TerminalSize,
};
use crate::spdy::frame::rst;
use crate::spdy::{Connection, Stream, StreamError};
use crate::wsstream::Framing;

/// Bytes buffered between the runtime and a client stream.
const PIPE_BUFFER: usize = 64 * 1024;
/// How long to wait for the WebSocket client's close reply.
const WS_LINGER: Duration = Duration::from_secs(5);

/// What a session runs.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

#[derive(Debug, Clone, Copy)]
struct Wanted {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Command {
    fn wanted(&self) -> Wanted {
        let (tty, stdin, stdout, stderr) = match self {
            Command::Exec(r) => (r.tty, r.stdin, r.stdout, r.stderr),
            Command::Attach(r) => (r.tty, r.stdin, r.stdout, r.stderr),
        };
        Wanted {
            stdin,
            stdout,
            // A terminal merges stderr into stdout.
            stderr: stderr && !tty,
            tty,
        }
    }

    async fn run(
        self,
        runtime: &dyn StreamingRuntime,
        io: StreamIo,
    ) -> Result<Option<i32>, SessionError> {
        match self {
            Command::Exec(r) => runtime.exec(&r, io).await.map(Some),
            Command::Attach(r) => runtime.attach(&r, io).await.map(|()| None),
        }
    }

    fn status(result: Result<Option<i32>, SessionError>, exec: bool) -> Status {
        match result {
            Ok(Some(0) | None) => Status::success(),
            Ok(Some(code)) => Status::exit_code(code),
            Err(e) if exec => {
                Status::internal_error(&format!("error executing command in container: {e}"))
            }
            Err(e) => Status::internal_error(&format!("error attaching to container: {e}")),
        }
    }
}

#[derive(Default)]
struct SpdyStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn collect_streams(
    conn: &Connection,
    wanted: Wanted,
    version: u8,
) -> Result<SpdyStreams, &'static str> {
    let mut s = SpdyStreams::default();
    let resize = wanted.tty && version >= 3;
    let complete = |s: &SpdyStreams| {
        s.error.is_some()
            && s.stdin.is_some() == wanted.stdin
            && s.stdout.is_some() == wanted.stdout
            && s.stderr.is_some() == wanted.stderr
            && s.resize.is_some() == resize
    };
    while !complete(&s) {
        let stream = conn
            .accept()
            .await
            .ok_or("connection closed before all streams were created")?;
        let ty = stream.headers().get(STREAM_TYPE).unwrap_or("").to_owned();
        let slot = match ty.as_str() {
            "error" => &mut s.error,
            "stdin" if wanted.stdin => &mut s.stdin,
            "stdout" if wanted.stdout => &mut s.stdout,
            "stderr" if wanted.stderr => &mut s.stderr,
            "resize" if resize => &mut s.resize,
            _ => {
                debug!(stream_type = ty, "refusing unexpected stream");
                stream.reset(rst::REFUSED_STREAM);
                continue;
            }
        };
        if slot.is_some() {
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        }
        stream.reply();
        *slot = Some(stream);
    }
    Ok(s)
}

/// Decodes the stream of JSON terminal sizes a client sends.
pub(crate) fn spawn_resize_decoder<R>(mut src: R) -> mpsc::Receiver<TerminalSize>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = match src.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut sizes = Vec::new();
            let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
            loop {
                match values.next() {
                    Some(Ok(size)) => sizes.push(size),
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        warn!("bad terminal size message: {e}");
                        return;
                    }
                    None => break,
                }
            }
            let used = values.byte_offset();
            buf.drain(..used);
            for size in sizes {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Serves one exec or attach on an upgraded SPDY session.
pub(crate) async fn serve_spdy(
    conn: Connection,
    protocol: &'static str,
    cmd: Command,
    runtime: Arc<dyn StreamingRuntime>,
    creation_timeout: Duration,
) {
    let version = remotecommand_version(protocol);
    let wanted = cmd.wanted();
    let streams =
        match tokio::time::timeout(creation_timeout, collect_streams(&conn, wanted, version)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!("remotecommand session ended early: {e}");
                return;
            }
            Err(_) => {
                warn!("timed out waiting for client to create streams");
                conn.close().await;
                return;
            }
        };
    let Some(error) = streams.error else { return };
    let mut pumps: Vec<JoinHandle<Result<u64, StreamError>>> = Vec::new();
    let mut writer = |s: Option<Stream>| {
        s.map(|s| {
            let (w, task) = s.writer().into_async_write(PIPE_BUFFER);
            pumps.push(task);
            Box::new(w) as BoxWrite
        })
    };
    let stdout = writer(streams.stdout);
    let stderr = writer(streams.stderr);
    let io = StreamIo {
        stdin: streams.stdin.map(|s| Box::new(s.reader()) as BoxRead),
        stdout,
        stderr,
        resize: streams.resize.map(|s| spawn_resize_decoder(s.reader())),
        tty: wanted.tty,
    };
    let exec = matches!(cmd, Command::Exec(_));
    // A client that goes away cancels the command (the runtime's future is
    // dropped, which is where it stops the process).
    let result = tokio::select! {
        r = cmd.run(runtime.as_ref(), io) => r,
        _ = conn.closed() => {
            debug!("client closed the session; cancelling the command");
            return;
        }
    };
    for p in pumps {
        if let Ok(Err(e)) = p.await {
            debug!("output stream ended early: {e}");
        }
    }
    let status = Command::status(result, exec);
    if let Err(e) = error
        .writer()
        .write_and_finish(&status.encode_for(version))
        .await
    {
        debug!("cannot report the exit status: {e}");
    }
    conn.close().await;
}

/// Sends everything read from `src` as messages on `channel`.
async fn pump_to_ws<R: AsyncRead + Unpin>(
    mut src: R,
    channel: u8,
    framing: Framing,
    out: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(framing.encode(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves one exec or attach on an upgraded WebSocket.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    protocol: &'static str,
    cmd: Command,
    runtime: Arc<dyn StreamingRuntime>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = remotecommand_version(protocol);
    let framing = Framing::for_protocol(protocol);
    let wanted = cmd.wanted();
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    // Tell the client the session is up.
    let first = if wanted.stdout {
        channel::STDOUT
    } else if wanted.stderr {
        channel::STDERR
    } else {
        channel::ERROR
    };
    let _ = out_tx.send(framing.encode(first, &[])).await;

    let mut pumps = Vec::new();
    let mut output = |want: bool, ch: u8| {
        want.then(|| {
            let (wr, rd) = tokio::io::duplex(PIPE_BUFFER);
            pumps.push(tokio::spawn(pump_to_ws(rd, ch, framing, out_tx.clone())));
            Box::new(wr) as BoxWrite
        })
    };
    let stdout = output(wanted.stdout, channel::STDOUT);
    let stderr = output(wanted.stderr, channel::STDERR);
    let (stdin_rd, mut stdin_wr) = if wanted.stdin {
        let (r, w) = tokio::io::duplex(PIPE_BUFFER);
        (Some(Box::new(r) as BoxRead), Some(w))
    } else {
        (None, None)
    };
    let (resize_tx, resize_rx) = mpsc::channel::<TerminalSize>(16);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let _gone = gone_tx;
        let mut resize_buf = Vec::new();
        while let Some(msg) = source.next().await {
            let msg = match msg {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(m) => m,
            };
            let Some((ch, data)) = framing.decode(&msg) else {
                continue;
            };
            match ch {
                channel::STDIN => {
                    if let Some(w) = stdin_wr.as_mut()
                        && w.write_all(&data).await.is_err()
                    {
                        // The process stopped reading stdin.
                        stdin_wr = None;
                    }
                }
                channel::RESIZE if wanted.tty => {
                    resize_buf.extend_from_slice(&data);
                    let mut values = serde_json::Deserializer::from_slice(&resize_buf)
                        .into_iter::<TerminalSize>();
                    let mut sizes = Vec::new();
                    while let Some(Ok(size)) = values.next() {
                        sizes.push(size);
                    }
                    let used = values.byte_offset();
                    resize_buf.drain(..used);
                    for size in sizes {
                        let _ = resize_tx.send(size).await;
                    }
                }
                channel::CLOSE if version >= 5 => {
                    if data.first() == Some(&channel::STDIN)
                        && let Some(mut w) = stdin_wr.take()
                    {
                        let _ = w.shutdown().await;
                    }
                }
                other => debug!(channel = other, "ignoring message on unexpected channel"),
            }
        }
        // The client is gone or closed: stdin ends.
        if let Some(mut w) = stdin_wr.take() {
            let _ = w.shutdown().await;
        }
    });
    let io = StreamIo {
        stdin: stdin_rd,
        stdout,
        stderr,
        resize: wanted.tty.then_some(resize_rx),
        tty: wanted.tty,
    };
    let exec = matches!(cmd, Command::Exec(_));
    let result = tokio::select! {
        r = cmd.run(runtime.as_ref(), io) => r,
        _ = gone_rx => {
            debug!("WebSocket client went away; cancelling the command");
            writer.abort();
            return;
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    let status = Command::status(result, exec);
    let bytes = status.encode_for(version);
    if !bytes.is_empty() {
        let _ = out_tx.send(framing.encode(channel::ERROR, &bytes)).await;
    }
    let _ = out_tx
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })))
        .await;
    drop(out_tx);
    let _ = writer.await;
    // Let the client read everything and answer the close.
    let mut reader = reader;
    if tokio::time::timeout(WS_LINGER, &mut reader).await.is_err() {
        debug!("WebSocket client did not close in time");
        reader.abort();
    }
}
