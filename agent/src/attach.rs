//! Where clients attach to a container's main process: its output fanned out
//! to every attached client, its stdin and its terminal. The container side
//! publishes output into it and tells it when the process exited; the stream
//! side subscribes ([`AttachPoint::subscribe`]) and writes stdin through it.
//!
//! The point is the only owner of the container's stdin: clients write
//! through it and never hold the descriptor, so closing stdin
//! ([`AttachPoint::close_stdin`], for `stdin_once`) really closes it and the
//! process reads EOF.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use agent_api::streams::Channel;
use tokio::sync::{broadcast, watch};

/// How many output chunks an attached client may fall behind before it misses some.
const ATTACH_BACKLOG: usize = 1024;
/// What a terminal reads as end of input (^D), in place of closing it.
const TERMINAL_EOF: u8 = 4;

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
    output: broadcast::Sender<Chunk>,
    open_outputs: AtomicUsize,
    /// Set once the main process exited (its output drained) or every
    /// output ended: attached clients then finish.
    ended: watch::Sender<bool>,
    /// The container's stdin (the terminal's master with a terminal); `None`
    /// once closed for good, or when it has none.
    stdin: Mutex<Option<Arc<File>>>,
    terminal: Option<Arc<File>>,
    stdin_once: bool,
}

/// One client's view of an attach point: the output from the moment it
/// attached, and the point's end.
#[derive(Debug)]
pub struct Subscription {
    /// Output chunks published since the subscription.
    pub output: broadcast::Receiver<Chunk>,
    /// Becomes true when the point ended.
    pub ended: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            ended: watch::channel(outputs == 0).0,
            stdin: Mutex::new(stdin.map(Arc::new)),
            terminal: terminal.map(Arc::new),
            stdin_once,
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
            self.ended.send_replace(true);
        }
    }

    /// The main process exited and its output was drained (as far as it
    /// could be): attached clients get what was published and finish, even
    /// if something it started still holds an output open. Its stdin has no
    /// reader any more and is closed.
    pub fn process_exited(&self) {
        lock(&self.stdin).take();
        self.ended.send_replace(true);
    }

    /// Subscribes a client; `None` once the point ended (the process has
    /// exited). Output published from now on reaches the subscription.
    pub fn subscribe(&self) -> Option<Subscription> {
        let output = self.output.subscribe();
        let ended = self.ended.subscribe();
        if *ended.borrow() {
            return None;
        }
        Some(Subscription { output, ended })
    }

    /// Whether the container's stdin is (still) open to clients.
    pub fn has_stdin(&self) -> bool {
        lock(&self.stdin).is_some()
    }

    /// Whether the container runs on a terminal.
    pub fn is_tty(&self) -> bool {
        self.terminal.is_some()
    }

    /// Whether stdin closes after the first client that wrote to it.
    pub fn stdin_once(&self) -> bool {
        self.stdin_once
    }

    /// The terminal's master, for resizing.
    pub fn terminal(&self) -> Option<Arc<File>> {
        self.terminal.clone()
    }

    /// Writes `data` to the container's stdin; false once it is closed or
    /// the process stopped reading it. The descriptor is borrowed only for
    /// the write, so [`Self::close_stdin`] closes it once that returns.
    pub async fn write_stdin(&self, data: Vec<u8>) -> bool {
        let Some(file) = lock(&self.stdin).clone() else {
            return false;
        };
        tokio::task::spawn_blocking(move || (&*file).write_all(&data).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Closes the container's stdin for good: the process reads EOF (a
    /// terminal gets ^D, its master staying open for the output) and later
    /// clients get no stdin.
    pub fn close_stdin(&self) {
        let Some(file) = lock(&self.stdin).take() else {
            return;
        };
        if self.terminal.is_some() {
            let _ = (&*file).write_all(&[TERMINAL_EOF]);
        }
        tracing::debug!("closing the container's stdin");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = crate::capture::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    #[tokio::test]
    async fn closing_stdin_gives_the_reader_eof_even_mid_session() {
        let (mut r, w) = pipe();
        let point = AttachPoint::new(1, Some(w), None, true);
        assert!(point.write_stdin(b"abc".to_vec()).await);
        point.close_stdin();
        assert!(!point.has_stdin());
        assert!(!point.write_stdin(b"late".to_vec()).await);
        let mut got = Vec::new();
        tokio::task::spawn_blocking(move || r.read_to_end(&mut got).map(|_| got))
            .await
            .unwrap()
            .map(|got| assert_eq!(got, b"abc"))
            .unwrap();
    }

    #[tokio::test]
    async fn subscribers_see_output_from_their_subscription_and_the_end() {
        let point = AttachPoint::new(2, None, None, false);
        point.publish(Channel::Stdout, b"before");
        let mut a = point.subscribe().unwrap();
        let mut b = point.subscribe().unwrap();
        point.publish(Channel::Stderr, b"after");
        for s in [&mut a, &mut b] {
            let Chunk::Data(c, d) = s.output.try_recv().unwrap();
            assert_eq!((c, &d[..]), (Channel::Stderr, &b"after"[..]));
        }
        point.output_ended();
        assert!(!*a.ended.borrow());
        point.output_ended();
        assert!(*a.ended.borrow() && *b.ended.borrow());
        assert!(point.subscribe().is_none(), "no subscribing after the end");
    }

    #[tokio::test]
    async fn the_process_exit_ends_the_point_and_closes_stdin() {
        let (mut r, w) = pipe();
        let point = AttachPoint::new(1, Some(w), None, false);
        let s = point.subscribe().unwrap();
        point.process_exited();
        assert!(*s.ended.borrow());
        assert!(!point.has_stdin());
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::task::spawn_blocking(move || r.read(&mut buf)),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(n, 0);
    }
}
