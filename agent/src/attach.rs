//! Where clients attach to a container's main process: its output fanned out
//! to every attached client, its stdin (closed after the first client with
//! `stdin_once`) and its terminal. The container side publishes into it; the
//! stream side subscribes.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_api::streams::Channel;
use tokio::sync::{broadcast, watch};

/// How many output chunks an attached client may fall behind before it misses some.
const ATTACH_BACKLOG: usize = 1024;

/// A piece of a container's output, as attached clients receive it.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes on stdout or stderr.
    Data(Channel, Arc<[u8]>),
}

/// Where clients attach to a container's main process: its output fanned
/// out, its stdin and terminal.
#[derive(Debug)]
pub struct AttachPoint {
    /// The container's output, for attached clients to subscribe to.
    pub(crate) output: broadcast::Sender<Chunk>,
    open_outputs: AtomicUsize,
    /// Set once every output has ended.
    pub(crate) done: watch::Sender<bool>,
    stdin: Mutex<Option<Arc<File>>>,
    terminal: Option<Arc<File>>,
    stdin_once: bool,
    stdin_closed: AtomicBool,
}

impl AttachPoint {
    /// A point for a container with `outputs` output readers; `stdin` is
    /// its input (the terminal's master with a terminal), `terminal` set when
    /// it has one.
    pub fn new(
        outputs: usize,
        stdin: Option<File>,
        terminal: Option<File>,
        stdin_once: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            output: broadcast::channel(ATTACH_BACKLOG).0,
            open_outputs: AtomicUsize::new(outputs),
            done: watch::channel(outputs == 0).0,
            stdin: Mutex::new(stdin.map(Arc::new)),
            terminal: terminal.map(Arc::new),
            stdin_once,
            stdin_closed: AtomicBool::new(false),
        })
    }

    /// Passes output to attached clients (none attached: dropped).
    pub fn publish(&self, channel: Channel, data: &[u8]) {
        if self.output.receiver_count() > 0 {
            let _ = self.output.send(Chunk::Data(channel, Arc::from(data)));
        }
    }

    /// One output reached its end; after the last, attached clients finish.
    pub fn output_ended(&self) {
        if self.open_outputs.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.done.send_replace(true);
        }
    }

    pub(crate) fn stdin(&self) -> Option<Arc<File>> {
        self.stdin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn terminal(&self) -> Option<Arc<File>> {
        self.terminal.clone()
    }

    /// A client that wrote to stdin detached: with `stdin_once` the
    /// container's stdin closes now (a terminal gets ^D).
    pub(crate) fn detached_stdin(&self) {
        if !self.stdin_once || self.stdin_closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let taken = self
            .stdin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(_), Some(t)) = (&taken, &self.terminal) {
            let _ = (&**t).write_all(&[4]);
        }
        tracing::debug!("stdin_once: closing the container's stdin");
    }
}
