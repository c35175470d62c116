//! The agent's end of the virtio-serial channel.
//!
//! The port is opened once for the agent's life. While the host is not
//! connected, `read()` returns 0 at once on every call, so the reader backs off
//! instead of spinning; when the host connects again the same descriptor works.
//! Each new session starts with a `Hello`, and the decoder is reset whenever a
//! disconnect is seen, so nothing from an earlier connection leaks into a new one.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_api::{Decoder, Frame, FrameKind, Hello, PROTOCOL_VERSION, Request, Welcome};
use anyhow::{Context, bail};
use tokio::sync::mpsc;

use crate::handlers::State;
use crate::output::Output;

/// How long the agent waits for its port to appear after loading modules.
const PORT_WAIT: Duration = Duration::from_secs(30);
/// Pause between reads while the host is disconnected.
const DISCONNECTED_BACKOFF: Duration = Duration::from_millis(20);

enum Input {
    Data(Vec<u8>),
    Disconnected,
}

/// Finds the port, then serves sessions on it forever.
pub async fn serve(state: State) -> anyhow::Result<()> {
    let path = find_port(Path::new("/sys/class/virtio-ports"), agent_api::PORT_NAME)?;
    let port = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let writer_file = port.try_clone().context("duplicate the port descriptor")?;
    tracing::info!(port = %path.display(), "serving the host");

    let (in_tx, mut in_rx) = mpsc::channel::<Input>(64);
    std::thread::Builder::new()
        .name("port-reader".into())
        .spawn(move || read_port(port, in_tx))
        .context("start the reader thread")?;
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Output>();
    std::thread::Builder::new()
        .name("port-writer".into())
        .spawn(move || write_port(writer_file, out_rx))
        .context("start the writer thread")?;

    let state = Arc::new(state.with_output(out_tx.clone()));
    // The kernel's boot id; reading it never waits for entropy (getrandom could).
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut decoder = Decoder::new();
    while let Some(input) = in_rx.recv().await {
        match input {
            Input::Disconnected => {
                tracing::debug!("host disconnected");
                decoder.reset();
                state.streams().disconnected();
            }
            Input::Data(bytes) => {
                tracing::trace!(len = bytes.len(), "received");
                decoder.push(&bytes);
                while let Some(frame) = decoder.next_frame() {
                    dispatch(frame, &state, &out_tx, &boot_id);
                }
            }
        }
    }
    bail!("the port reader stopped")
}

fn dispatch(
    frame: Frame,
    state: &Arc<State>,
    out: &std::sync::mpsc::Sender<Output>,
    boot_id: &str,
) {
    match frame.kind {
        FrameKind::Hello => match frame.parse::<Hello>() {
            Ok(hello) => {
                tracing::debug!(session = hello.session, "new session");
                state.streams().session(hello.session);
                let welcome = Welcome {
                    session: hello.session,
                    protocol: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                    boot_id: boot_id.to_owned(),
                };
                let reply = Frame::json(FrameKind::Welcome, hello.session, &welcome);
                let _ = out.send(Output::Bytes(reply.encode()));
            }
            Err(e) => tracing::warn!("bad hello: {e}"),
        },
        FrameKind::Request => {
            let request = match frame.parse::<Request>() {
                Ok(r) => r,
                Err(e) => {
                    let err = agent_api::AgentError::new(
                        agent_api::messages::AgentErrorKind::InvalidArgument,
                        format!("cannot parse request: {e}"),
                    );
                    let answer: Result<agent_api::Response, _> = Err(err);
                    let reply = Frame::json(FrameKind::Response, frame.id, &answer);
                    let _ = out.send(Output::Bytes(reply.encode()));
                    return;
                }
            };
            let state = state.clone();
            let out = out.clone();
            tokio::spawn(async move {
                let answer = state.handle(request.clone()).await;
                let reply = Frame::json(FrameKind::Response, frame.id, &answer);
                let _ = out.send(Output::Bytes(reply.encode()));
                if request == Request::Shutdown {
                    state.shutdown().await;
                }
            });
        }
        FrameKind::StreamData
        | FrameKind::StreamEof
        | FrameKind::StreamWindow
        | FrameKind::StreamClose => state.streams().frame(&frame),
        other => tracing::debug!(?other, "ignoring frame from host"),
    }
}

fn read_port(mut port: File, tx: mpsc::Sender<Input>) {
    tracing::trace!("reader started");
    let mut buf = vec![0u8; 64 * 1024];
    let mut connected = false;
    loop {
        match port.read(&mut buf) {
            Ok(0) => {
                if connected {
                    connected = false;
                    if tx.blocking_send(Input::Disconnected).is_err() {
                        return;
                    }
                }
                std::thread::sleep(DISCONNECTED_BACKOFF);
            }
            Ok(n) => {
                tracing::trace!(n, "read from port");
                connected = true;
                if tx.blocking_send(Input::Data(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!("port read: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn write_port(mut port: File, rx: std::sync::mpsc::Receiver<Output>) {
    for out in rx {
        match out {
            Output::Bytes(bytes) => {
                if let Err(e) = port.write_all(&bytes) {
                    tracing::warn!("port write: {e}");
                }
            }
            Output::Flush(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Waits for the virtio-serial port named `name` and returns its device path.
fn find_port(class_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Ok(entries) = fs::read_dir(class_dir) {
            for entry in entries.flatten() {
                let port_name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if port_name.trim() == name {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no virtio-serial port named {name} after {PORT_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
