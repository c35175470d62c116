//! One client attached to a container's main process: the container's output
//! forwarded to the host, the client's input written to the container's
//! stdin, and how the session ends.
//!
//! The rules follow the CRI runtimes (containerd, and docker before it):
//!
//! - The client's stdin EOF with `stdin_once` on a container without a
//!   terminal closes the container's stdin for good; the session goes on
//!   with the output until the process exits.
//! - Otherwise (no `stdin_once`, or a terminal) the client's EOF detaches
//!   that client: its session ends, the container's stdin stays open for
//!   others. With `stdin_once` on a terminal, stdin then closes (^D).
//! - Whenever a session that had stdin ends, `stdin_once` closes stdin: "stdin
//!   is closed after the first attach session completes".
//! - A client that asked for stdin after it was closed gets none: its input
//!   is dropped (and credited) and its EOF changes nothing.
//! - When the main process exits, every session forwards what was published
//!   before, sends EOF on its outputs and ends with `StreamClose` (no exit
//!   code: attach reports none).

use std::sync::Arc;

use agent_api::streams::{Channel, StreamEnd};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::attach::{AttachPoint, Chunk, Subscription};
use crate::relay::{Input, Outlet};

/// The channels a client attached with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    /// Write its input to the container's stdin.
    pub(crate) stdin: bool,
    /// Forward stdout (with a terminal: all output).
    pub(crate) stdout: bool,
    /// Forward stderr.
    pub(crate) stderr: bool,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The process exited (or closed every output).
    Exited,
    /// The client's stdin ended, which detaches it.
    Detached,
    /// The host cancelled the stream or went away: nothing more is sent.
    Gone,
}

/// Runs one attach session to its end; see the module's rules.
pub(crate) async fn run(
    point: Arc<AttachPoint>,
    sub: Subscription,
    wanted: Wanted,
    input: mpsc::UnboundedReceiver<Input>,
    outlet: Outlet,
    cancel: Arc<Notify>,
) {
    // Decided at attach time: a client that attaches after stdin closed
    // never gets it.
    let writes_stdin = wanted.stdin && point.has_stdin();
    let end = tokio::select! {
        end = forward(sub, wanted, &outlet) => end,
        end = feed(&point, input, &outlet, writes_stdin) => end,
        () = cancel.notified() => End::Gone,
    };
    tracing::debug!(?end, "attach session ended");
    if end != End::Gone {
        for (channel, on) in [
            (Channel::Stdout, wanted.stdout),
            (Channel::Stderr, wanted.stderr),
        ] {
            if on {
                outlet.eof(channel);
            }
        }
        outlet.close(&StreamEnd::default());
    }
    if writes_stdin && point.stdin_once() {
        point.close_stdin();
    }
}

/// Forwards the wanted output until the point ends (then what was published
/// before is flushed) or the host is gone.
async fn forward(mut sub: Subscription, wanted: Wanted, outlet: &Outlet) -> End {
    let wants = |c: Channel| match c {
        Channel::Stdout => wanted.stdout,
        Channel::Stderr => wanted.stderr,
        Channel::Stdin => false,
    };
    let send = async |chunk: Chunk| -> bool {
        match chunk {
            Chunk::Data(c, data) if wants(c) => outlet.data(c, &data).await,
            Chunk::Data(..) => true,
        }
    };
    loop {
        if *sub.ended.borrow_and_update() {
            // Everything published before the end is buffered here.
            loop {
                match sub.output.try_recv() {
                    Ok(chunk) => {
                        if !send(chunk).await {
                            return End::Gone;
                        }
                    }
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "attached client fell behind");
                    }
                    Err(_) => return End::Exited,
                }
            }
        }
        tokio::select! {
            got = sub.output.recv() => match got {
                Ok(chunk) => if !send(chunk).await { return End::Gone },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "attached client fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return End::Exited,
            },
            changed = sub.ended.changed() => if changed.is_err() { return End::Exited },
        }
    }
}

/// Writes the client's input to the container's stdin (when it has it),
/// crediting every byte; returns only when the client's EOF detaches it.
async fn feed(
    point: &AttachPoint,
    mut input: mpsc::UnboundedReceiver<Input>,
    outlet: &Outlet,
    writes_stdin: bool,
) -> End {
    let mut writing = writes_stdin;
    while let Some(item) = input.recv().await {
        match item {
            Input::Data(data) => {
                let n = data.len();
                if writing && !point.write_stdin(data).await {
                    // Closed, or the process stopped reading it.
                    writing = false;
                }
                // Credit comes back even for dropped bytes, so the host
                // never stalls.
                outlet.grant(n);
            }
            // Without stdin the client's EOF means nothing.
            Input::Eof if !writes_stdin => {}
            Input::Eof if point.stdin_once() && !point.is_tty() => {
                point.close_stdin();
                writing = false;
            }
            Input::Eof => return End::Detached,
        }
    }
    // The stream was dropped; the cancel notice ends the session.
    std::future::pending().await
}
