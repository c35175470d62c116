//! Interactive streams: exec (pipes or a terminal), attach and port-forward,
//! multiplexed over the host channel with per-stream credit.
//!
//! Streams belong to the session that opened them: a new session or a
//! disconnect drops them all, which kills their execs and closes their
//! connections.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent_api::messages::{AgentErrorKind, ExecStart};
use agent_api::streams::{
    Channel, MAX_CHUNK, StreamEnd, close_frame, data_frame, eof_frame, window_frame,
};
use agent_api::{AgentError, Frame, Response};
use container::runner::Stdio;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};

use crate::channel::Output;
use crate::containers::Containers;
use crate::fdio::{ConsoleSocket, FdIo};

/// Where console sockets for terminal execs are made.
const CONSOLE_DIR: &str = "/run/frakti/console";
/// How long an exec's output may go on after its process exited before the
/// rest of its process group is killed.
const EXIT_DRAIN: Duration = Duration::from_secs(2);
/// How many output chunks an attached client may fall behind before it misses some.
const ATTACH_BACKLOG: usize = 1024;
/// How long libcontainer gets to hand over a terminal.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

fn err(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    err(AgentErrorKind::Internal, format!("{what}: {e}"))
}

enum Input {
    Data(Vec<u8>),
    Eof,
}

struct Slot {
    input: mpsc::UnboundedSender<Input>,
    credit: Arc<Semaphore>,
    cancel: Arc<Notify>,
    terminal: Arc<OnceLock<Arc<FdIo>>>,
    attach_terminal: Arc<OnceLock<Arc<File>>>,
}

/// Every open stream of the current session.
#[derive(Default)]
pub struct StreamTable {
    slots: Mutex<HashMap<u64, Slot>>,
    session: Mutex<u64>,
    output: OnceLock<std::sync::mpsc::Sender<Output>>,
}

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends one stream's frames to the host within its credit.
#[derive(Clone)]
struct Outlet {
    stream: u64,
    out: std::sync::mpsc::Sender<Output>,
    credit: Arc<Semaphore>,
}

impl Outlet {
    fn frame(&self, frame: &Frame) -> bool {
        self.out.send(Output::Bytes(frame.encode())).is_ok()
    }

    /// Sends `data`, waiting for credit; false once the stream is gone.
    async fn data(&self, channel: Channel, data: &[u8]) -> bool {
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

    fn eof(&self, channel: Channel) {
        self.frame(&eof_frame(self.stream, channel));
    }

    fn close(&self, end: &StreamEnd) {
        self.frame(&close_frame(self.stream, end));
    }

    fn grant(&self, n: usize) {
        self.frame(&window_frame(self.stream, n as u32));
    }
}

/// What a stream task gets: its input, its outlet, and the cancel signal.
struct Wiring {
    input: mpsc::UnboundedReceiver<Input>,
    outlet: Outlet,
    cancel: Arc<Notify>,
    terminal: Arc<OnceLock<Arc<FdIo>>>,
    attach_terminal: Arc<OnceLock<Arc<File>>>,
}

impl StreamTable {
    /// Sets the queue to the host (once).
    pub fn set_output(&self, out: std::sync::mpsc::Sender<Output>) {
        let _ = self.output.set(out);
    }

    /// A handshake for `session` arrived: a new session drops every stream.
    pub fn session(&self, session: u64) {
        let mut current = lock(&self.session);
        if *current != session {
            *current = session;
            drop(current);
            self.drop_all();
        }
    }

    /// The host went away: every stream is lost.
    pub fn disconnected(&self) {
        *lock(&self.session) = 0;
        self.drop_all();
    }

    fn drop_all(&self) {
        let slots: Vec<Slot> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        if !slots.is_empty() {
            tracing::info!(
                streams = slots.len(),
                "dropping the streams of an old session"
            );
        }
        for slot in slots {
            slot.credit.close();
            slot.cancel.notify_one();
        }
    }

    /// Routes a stream frame from the host.
    pub fn frame(&self, frame: &Frame) {
        use agent_api::FrameKind as K;
        let slots = lock(&self.slots);
        let Some(slot) = slots.get(&frame.id) else {
            tracing::debug!(stream = frame.id, kind = ?frame.kind, "frame for an unknown stream");
            return;
        };
        match frame.kind {
            K::StreamData => {
                if let Some((Channel::Stdin, data)) =
                    agent_api::streams::split_payload(&frame.payload)
                {
                    let _ = slot.input.send(Input::Data(data.to_vec()));
                }
            }
            K::StreamEof => {
                let _ = slot.input.send(Input::Eof);
            }
            K::StreamWindow => {
                if let Some(n) = agent_api::streams::window_credit(&frame.payload) {
                    slot.credit.add_permits(n as usize);
                }
            }
            K::StreamClose => {
                drop(slots);
                if let Some(slot) = lock(&self.slots).remove(&frame.id) {
                    tracing::debug!(stream = frame.id, "host cancelled the stream");
                    slot.credit.close();
                    slot.cancel.notify_one();
                }
            }
            _ => {}
        }
    }

    fn register(&self, stream: u64) -> Result<Wiring, AgentError> {
        let out = self
            .output
            .get()
            .cloned()
            .ok_or_else(|| err(AgentErrorKind::Internal, "no channel to the host"))?;
        let mut slots = lock(&self.slots);
        if slots.contains_key(&stream) {
            return Err(err(
                AgentErrorKind::InvalidArgument,
                format!("stream {stream} is already open"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(agent_api::streams::WINDOW as usize));
        let cancel = Arc::new(Notify::new());
        let terminal = Arc::new(OnceLock::new());
        let attach_terminal = Arc::new(OnceLock::new());
        slots.insert(
            stream,
            Slot {
                input: tx,
                credit: credit.clone(),
                cancel: cancel.clone(),
                terminal: terminal.clone(),
                attach_terminal: attach_terminal.clone(),
            },
        );
        Ok(Wiring {
            input: rx,
            outlet: Outlet {
                stream,
                out,
                credit,
            },
            cancel,
            terminal,
            attach_terminal,
        })
    }

    fn unregister(&self, stream: u64) {
        lock(&self.slots).remove(&stream);
    }

    /// Starts a command on a new stream.
    pub async fn exec(
        self: &Arc<Self>,
        containers: &Arc<Containers>,
        req: ExecStart,
    ) -> Result<Response, AgentError> {
        if req.args.is_empty() {
            return Err(err(AgentErrorKind::InvalidArgument, "empty command"));
        }
        containers.require_running(&req.id)?;
        let wiring = self.register(req.stream)?;
        match self.spawn_exec(containers, &req, wiring).await {
            Ok(()) => Ok(Response::Done),
            Err(e) => {
                self.unregister(req.stream);
                Err(e)
            }
        }
    }

    async fn spawn_exec(
        self: &Arc<Self>,
        containers: &Arc<Containers>,
        req: &ExecStart,
        wiring: Wiring,
    ) -> Result<(), AgentError> {
        let pipe =
            || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e));
        let stream = req.stream;
        if req.tty {
            let console = ConsoleSocket::bind(
                std::path::Path::new(CONSOLE_DIR).join(format!("{stream:x}.sock")),
            )
            .map_err(|e| internal("console socket", e))?;
            let (id, args) = (req.id.clone(), req.args.clone());
            let runner = containers.runner();
            let (pid, master) = tokio::task::spawn_blocking(move || {
                let pid = runner
                    .exec_terminal(&id, args, console.path())
                    .map_err(crate::containers::run_err)?;
                match console.receive(CONSOLE_WAIT) {
                    Ok(master) => Ok((pid, master)),
                    Err(e) => {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        Err(internal("receive the terminal", e))
                    }
                }
            })
            .await
            .map_err(|e| internal("exec", e))??;
            let master = Arc::new(FdIo::new(master).map_err(|e| internal("terminal", e))?);
            let _ = wiring.terminal.set(master.clone());
            let exited = crate::reaper::wait_for(pid);
            tracing::debug!(stream, pid, "terminal exec started");
            let table = self.clone();
            tokio::spawn(async move {
                let out = read_to(
                    ReadSide::Fd(master.clone()),
                    wiring.outlet.clone(),
                    Channel::Stdout,
                    true,
                );
                let input = write_from(wiring.input, wiring.outlet.clone(), Sink::Terminal(master));
                run_exec(pid, exited, vec![out], input, wiring.outlet, wiring.cancel).await;
                table.unregister(stream);
            });
            return Ok(());
        }
        let (stdin_r, stdin_w) = if req.stdin {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (out_r, out_w) = if req.stdout {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (err_r, err_w) = if req.stderr {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let stdio = Stdio {
            stdin: stdin_r,
            stdout: out_w,
            stderr: err_w,
        };
        let pid = containers
            .exec_process(&req.id, req.args.clone(), stdio)
            .await?;
        let exited = crate::reaper::wait_for(pid);
        tracing::debug!(stream, pid, "exec started");
        let fd = |fd: Option<OwnedFd>| -> Result<Option<Arc<FdIo>>, AgentError> {
            fd.map(|f| FdIo::new(f).map(Arc::new))
                .transpose()
                .map_err(|e| internal("exec pipe", e))
        };
        let (stdin_w, out_r, err_r) = (fd(stdin_w)?, fd(out_r)?, fd(err_r)?);
        let table = self.clone();
        tokio::spawn(async move {
            let mut readers = Vec::new();
            if let Some(r) = out_r {
                readers.push(read_to(
                    ReadSide::Fd(r),
                    wiring.outlet.clone(),
                    Channel::Stdout,
                    true,
                ));
            }
            if let Some(r) = err_r {
                readers.push(read_to(
                    ReadSide::Fd(r),
                    wiring.outlet.clone(),
                    Channel::Stderr,
                    true,
                ));
            }
            let input = write_from(
                wiring.input,
                wiring.outlet.clone(),
                stdin_w.map_or(Sink::Discard, Sink::Pipe),
            );
            run_exec(pid, exited, readers, input, wiring.outlet, wiring.cancel).await;
            table.unregister(stream);
        });
        Ok(())
    }

    /// Connects a new stream to `127.0.0.1:<port>` in the guest.
    pub async fn port_forward(
        self: &Arc<Self>,
        stream: u64,
        port: u16,
    ) -> Result<Response, AgentError> {
        if port == 0 {
            return Err(err(AgentErrorKind::InvalidArgument, "port 0"));
        }
        let tcp = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| {
                err(
                    AgentErrorKind::FailedPrecondition,
                    format!("cannot connect to 127.0.0.1:{port} in the pod: {e}"),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let wiring = self.register(stream)?;
        let table = self.clone();
        tokio::spawn(async move {
            let (rd, wr) = tcp.into_split();
            let outlet = wiring.outlet.clone();
            let mut down = read_to(ReadSide::Tcp(rd), outlet.clone(), Channel::Stdout, true);
            let mut up = write_from(wiring.input, outlet.clone(), Sink::Tcp(wr));
            let (abort_down, abort_up) = (down.abort_handle(), up.abort_handle());
            let both = async {
                let _ = (&mut down).await;
                let _ = (&mut up).await;
            };
            tokio::select! {
                () = both => outlet.close(&StreamEnd::default()),
                () = wiring.cancel.notified() => {
                    abort_down.abort();
                    abort_up.abort();
                }
            }
            table.unregister(stream);
        });
        Ok(Response::Done)
    }

    /// Attaches a new stream to a running container's main process.
    pub async fn attach(
        self: &Arc<Self>,
        containers: &Arc<Containers>,
        stream: u64,
        id: &str,
        channels: (bool, bool, bool),
    ) -> Result<Response, AgentError> {
        let point = containers.attach_point(id)?;
        let (stdin, stdout, stderr) = channels;
        let wiring = self.register(stream)?;
        if let Some(t) = point.terminal() {
            let _ = wiring.attach_terminal.set(t);
        }
        let mut rx = point.output.subscribe();
        let mut done = point.done.subscribe();
        let table = self.clone();
        tokio::spawn(async move {
            let outlet = wiring.outlet.clone();
            let sink = match (stdin, point.stdin()) {
                (true, Some(file)) => Sink::File(file),
                _ => Sink::Discard,
            };
            let input = write_from(wiring.input, outlet.clone(), sink);
            let forward = async {
                let wanted = |c: Channel| match c {
                    Channel::Stdout => stdout,
                    Channel::Stderr => stderr,
                    Channel::Stdin => false,
                };
                let send = async |chunk: Chunk| -> bool {
                    match chunk {
                        Chunk::Data(c, data) if wanted(c) => outlet.data(c, &data).await,
                        _ => true,
                    }
                };
                loop {
                    if *done.borrow_and_update() {
                        // Everything published before the end is buffered.
                        while let Ok(chunk) = rx.try_recv() {
                            if !send(chunk).await {
                                return;
                            }
                        }
                        return;
                    }
                    tokio::select! {
                        got = rx.recv() => match got {
                            Ok(chunk) => if !send(chunk).await { return },
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(stream, missed = n, "attached client fell behind");
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        changed = done.changed() => if changed.is_err() { return },
                    }
                }
            };
            let cancelled = tokio::select! {
                () = forward => false,
                () = wiring.cancel.notified() => true,
            };
            if !cancelled {
                for (c, on) in [(Channel::Stdout, stdout), (Channel::Stderr, stderr)] {
                    if on {
                        outlet.eof(c);
                    }
                }
                outlet.close(&StreamEnd::default());
            }
            input.abort();
            if stdin {
                point.detached_stdin();
            }
            table.unregister(stream);
        });
        Ok(Response::Done)
    }

    /// Resizes the terminal of an exec or attach stream.
    pub fn resize(&self, stream: u64, width: u16, height: u16) -> Result<Response, AgentError> {
        let slots = lock(&self.slots);
        let slot = slots.get(&stream).ok_or_else(|| {
            err(
                AgentErrorKind::NotFound,
                format!("stream {stream} not found"),
            )
        })?;
        let result = if let Some(t) = slot.terminal.get() {
            t.resize(width, height)
        } else if let Some(t) = slot.attach_terminal.get() {
            crate::fdio::set_size(std::os::fd::AsFd::as_fd(&**t), width, height)
        } else {
            return Err(err(
                AgentErrorKind::FailedPrecondition,
                format!("stream {stream} has no terminal"),
            ));
        };
        result.map_err(|e| internal("resize the terminal", e))?;
        Ok(Response::Done)
    }
}

enum ReadSide {
    Fd(Arc<FdIo>),
    Tcp(tokio::net::tcp::OwnedReadHalf),
}

/// Copies one output to the host until EOF; `eof` sends the channel's EOF.
fn read_to(
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

enum Sink {
    Pipe(Arc<FdIo>),
    Terminal(Arc<FdIo>),
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    File(Arc<File>),
    Discard,
}

/// Feeds the host's input to `sink`, returning credit as bytes are taken.
fn write_from(
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
                        Sink::File(f) => {
                            let f = f.clone();
                            tokio::task::spawn_blocking(move || (&*f).write_all(&data).is_ok())
                                .await
                                .unwrap_or(false)
                        }
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
                        Sink::Pipe(_) | Sink::File(_) | Sink::Discard => {}
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
async fn run_exec(
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
    done: watch::Sender<bool>,
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

    fn stdin(&self) -> Option<Arc<File>> {
        lock(&self.stdin).clone()
    }

    fn terminal(&self) -> Option<Arc<File>> {
        self.terminal.clone()
    }

    /// A client that wrote to stdin detached: with `stdin_once` the
    /// container's stdin closes now (a terminal gets ^D).
    fn detached_stdin(&self) {
        if !self.stdin_once || self.stdin_closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let taken = lock(&self.stdin).take();
        if let (Some(_), Some(t)) = (&taken, &self.terminal) {
            let _ = (&**t).write_all(&[4]);
        }
        tracing::debug!("stdin_once: closing the container's stdin");
    }
}
