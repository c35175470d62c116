//! Interactive streams: exec (pipes or a terminal), attach and port-forward,
//! multiplexed over the host channel with per-stream credit.
//!
//! Streams belong to the session that opened them: a new session or a
//! disconnect drops them all, which kills their execs and closes their
//! connections.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agent_api::messages::{AgentErrorKind, ExecStart};
use agent_api::streams::{Channel, StreamEnd};
use agent_api::{AgentError, Frame, Response};
use container::console::ConsoleSocket;
use container::runner::Stdio;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::attach_session::{self, Wanted};
use crate::containers::Containers;
use crate::fdio::FdIo;
use crate::output::Output;
use crate::relay::{Input, Outlet, ReadSide, Sink, read_to, run_exec, write_from};

/// Where console sockets for terminal execs are made.
const CONSOLE_DIR: &str = "/run/frakti/console";
/// How long libcontainer gets to hand over a terminal.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

fn err(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> AgentError {
    err(AgentErrorKind::Internal, format!("{what}: {e}"))
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
            outlet: Outlet::new(stream, out, credit),
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

    /// Attaches a new stream to a running container's main process; the
    /// session's rules are in [`crate::attach_session`].
    pub async fn attach(
        self: &Arc<Self>,
        containers: &Arc<Containers>,
        stream: u64,
        id: &str,
        channels: (bool, bool, bool),
    ) -> Result<Response, AgentError> {
        let point = containers.attach_point(id)?;
        // Subscribed before answering, so no output after `Done` is missed.
        let sub = point.subscribe().ok_or_else(|| {
            err(
                AgentErrorKind::FailedPrecondition,
                format!("cannot attach to container {id}: its main process has exited"),
            )
        })?;
        let (stdin, stdout, stderr) = channels;
        let wiring = self.register(stream)?;
        if let Some(t) = point.terminal() {
            let _ = wiring.attach_terminal.set(t);
        }
        let table = self.clone();
        tokio::spawn(async move {
            let wanted = Wanted {
                stdin,
                stdout,
                stderr,
            };
            attach_session::run(
                point,
                sub,
                wanted,
                wiring.input,
                wiring.outlet,
                wiring.cancel,
            )
            .await;
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
            container::console::set_size(std::os::fd::AsFd::as_fd(&**t), width, height)
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
