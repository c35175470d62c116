//! Moving a stream's bytes: out to the host within the stream's credit
//! ([`Outlet`], [`read_to`]), in from the host to a pipe, terminal or socket
//! ([`write_from`]; attach writes through its attach point instead), and an
//! exec's end (exit code once its output drained, or its process group
//! killed on cancel).

use std::sync::Arc;
use std::time::Duration;

use agent_api::Frame;
use agent_api::streams::{
    Channel, MAX_CHUNK, StreamEnd, close_frame, data_frame, eof_frame, window_frame,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::fdio::FdIo;
use crate::output::Output;

/// How long an exec's output may go on after its process exited before the
/// rest of its process group is killed.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// What the host sent on a stream, in order.
pub(crate) enum Input {
    /// Bytes for the stream's input.
    Data(Vec<u8>),
    /// The host closed the stream's input.
    Eof,
}

/// Sends one stream's frames to the host within its credit.
#[derive(Clone)]
pub(crate) struct Outlet {
    stream: u64,
    out: std::sync::mpsc::Sender<Output>,
    credit: Arc<Semaphore>,
}

impl Outlet {
    /// The outlet of `stream`, sending to `out` within `credit`.
    pub(crate) fn new(
        stream: u64,
        out: std::sync::mpsc::Sender<Output>,
        credit: Arc<Semaphore>,
    ) -> Self {
        Self {
            stream,
            out,
            credit,
        }
    }

    fn frame(&self, frame: &Frame) -> bool {
        self.out.send(Output::Bytes(frame.encode())).is_ok()
    }

    /// Sends `data`, waiting for credit; false once the stream is gone.
    pub(crate) async fn data(&self, channel: Channel, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_CHUNK) {
            match self.credit.acquire_many(chunk.len() as u32).await {
                Ok(p) => p.forget(),
                Err(_) => return false,
            }
            if !self.frame(&data_frame(self.stream, channel, chunk)) {
                return false;
            }
        }
        true
    }

    pub(crate) fn eof(&self, channel: Channel) {
        self.frame(&eof_frame(self.stream, channel));
    }

    pub(crate) fn close(&self, end: &StreamEnd) {
        self.frame(&close_frame(self.stream, end));
    }

    /// Returns `n` bytes of input credit to the host.
    pub(crate) fn grant(&self, n: usize) {
        self.frame(&window_frame(self.stream, n as u32));
    }
}

pub(crate) enum ReadSide {
    Fd(Arc<FdIo>),
    Tcp(tokio::net::tcp::OwnedReadHalf),
}

/// Copies one output to the host until EOF; `eof` sends the channel's EOF.
pub(crate) fn read_to(
    side: ReadSide,
    outlet: Outlet,
    channel: Channel,
    eof: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_CHUNK];
        let mut side = side;
        loop {
            let n = match &mut side {
                ReadSide::Fd(fd) => fd.read(&mut buf).await,
                ReadSide::Tcp(t) => t.read(&mut buf).await,
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !outlet.data(channel, &buf[..n]).await {
                        return;
                    }
                }
            }
        }
        if eof {
            outlet.eof(channel);
        }
    })
}

pub(crate) enum Sink {
    Pipe(Arc<FdIo>),
    Terminal(Arc<FdIo>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Discard,
}

/// Feeds the host's input to `sink`, returning credit as bytes are taken.
pub(crate) fn write_from(
    mut input: mpsc::UnboundedReceiver<Input>,
    outlet: Outlet,
    mut sink: Sink,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(item) = input.recv().await {
            match item {
                Input::Data(data) => {
                    let n = data.len();
                    let ok = match &mut sink {
                        Sink::Pipe(fd) | Sink::Terminal(fd) => fd.write_all(&data).await.is_ok(),
                        Sink::Tcp(t) => t.write_all(&data).await.is_ok(),
                        Sink::Discard => true,
                    };
                    // Credit comes back even when the bytes were dropped, so
                    // the host never stalls on a closed input.
                    outlet.grant(n);
                    if !ok {
                        sink = Sink::Discard;
                    }
                }
                Input::Eof => {
                    match &mut sink {
                        // A terminal has no EOF of its own: send ^D, as a keyboard would.
                        Sink::Terminal(fd) => {
                            let _ = fd.write_all(&[4]).await;
                        }
                        Sink::Tcp(t) => {
                            let _ = t.shutdown().await;
                        }
                        // Dropping the pipe's end closes it.
                        Sink::Pipe(_) | Sink::Discard => {}
                    }
                    return;
                }
            }
        }
    })
}

fn kill_group(pid: i32) {
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Waits for an exec to exit and its output to drain, then reports its exit
/// code; a cancel kills its process group.
pub(crate) async fn run_exec(
    pid: i32,
    exited: tokio::sync::oneshot::Receiver<i32>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    input: tokio::task::JoinHandle<()>,
    outlet: Outlet,
    cancel: Arc<Notify>,
) {
    let finish = async {
        let code = exited.await.unwrap_or(255);
        let mut drained = futures_join(readers);
        tokio::select! {
            () = &mut drained => {}
            () = tokio::time::sleep(EXIT_DRAIN) => {
                // Something it started still holds the output open.
                kill_group(pid);
                drained.await;
            }
        }
        code
    };
    tokio::select! {
        code = finish => {
            tracing::debug!(pid, code, "exec finished");
            outlet.close(&StreamEnd { exit_code: Some(code), error: None });
        }
        () = cancel.notified() => {
            tracing::debug!(pid, "exec cancelled: killing its process group");
            kill_group(pid);
        }
    }
    input.abort();
}

/// Resolves when every handle has finished.
fn futures_join(
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        for h in handles {
            let _ = h.await;
        }
    })
}
