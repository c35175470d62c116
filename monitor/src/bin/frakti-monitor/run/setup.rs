//! Creating the container: its spec, stdio, the monitor's socket.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use container::console::ConsoleSocket;
use container::logs::{LineSplitter, LogFile, Stream};
use container::runner::{RunError, Runner, Stdio};
use monitor::args::RunArgs;
use monitor::protocol::FrameKind;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, Signal};

use super::{Monitor, Output, Stdin, oom};
use crate::sys;

/// How long libcontainer gets to hand over the terminal.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// The container could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The spec cannot be used
    #[error("the spec {0}: {1}")]
    Spec(PathBuf, String),
    /// The log file cannot be opened
    #[error("cannot open the log {0}: {1}")]
    Log(PathBuf, std::io::Error),
    /// The monitor's socket cannot be made
    #[error("cannot listen on {0}: {1}")]
    Socket(PathBuf, std::io::Error),
    /// A pipe or the signal descriptor cannot be made
    #[error("cannot set up {0}: {1}")]
    Io(&'static str, std::io::Error),
    /// libcontainer did not create it
    #[error(transparent)]
    Create(#[from] RunError),
    /// The terminal did not arrive
    #[error("did not receive the container's terminal: {0}")]
    Terminal(std::io::Error),
    /// The container's init failed, and said why
    #[error("{0}; the container's init said: {1}")]
    Init(Box<SetupError>, String),
}

/// The console socket libcontainer sends the terminal to: beside the
/// monitor's socket.
pub fn console_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".tty");
    PathBuf::from(name)
}

/// Removes the monitor's socket when dropped, unless disarmed.
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SetupError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SetupError::Io("a pipe", e.into()))
}

/// Reads the bundle's spec: its JSON (for the monitor's own checks) and the
/// bytes (for libcontainer).
fn read_spec(args: &RunArgs) -> Result<(serde_json::Value, Vec<u8>), SetupError> {
    let path = args.bundles.join(&args.id).join("config.json");
    let bad = |e: String| SetupError::Spec(path.clone(), e);
    let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let terminal = value
        .pointer("/process/terminal")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    if terminal != args.tty {
        return Err(bad(format!(
            "says terminal: {terminal}, the monitor was given tty: {}",
            args.tty
        )));
    }
    Ok((value, bytes))
}

/// Binds the monitor's socket (replacing a stale one), readable by root only.
fn listen(path: &Path) -> Result<UnixListener, SetupError> {
    let err = |e| SetupError::Socket(path.to_owned(), e);
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// Most of an init's last words kept in an error.
const LAST_WORDS: usize = 4096;

/// What can be read from `fd` at once (it is set non-blocking), as text.
fn drain(fd: &OwnedFd) -> String {
    if sys::set_nonblocking(fd.as_fd()).is_err() {
        return String::new();
    }
    let mut out = vec![0u8; LAST_WORDS];
    let n = nix::unistd::read(fd, &mut out).unwrap_or(0);
    out.truncate(n);
    String::from_utf8_lossy(&out).trim().to_owned()
}

/// Creates the container and everything the monitor holds for it. On error
/// nothing is left: no socket, no container.
pub fn create(args: &RunArgs) -> Result<Monitor, SetupError> {
    let (spec_json, spec_bytes) = read_spec(args)?;
    let log = match &args.log {
        Some(p) => Some(LogFile::open(p.clone()).map_err(|e| SetupError::Log(p.clone(), e))?),
        None => None,
    };
    let listener = listen(&args.socket)?;
    let mut socket_file = SocketFile(Some(args.socket.clone()));
    let console = if args.tty {
        Some(
            ConsoleSocket::bind(console_path(&args.socket))
                .map_err(|e| SetupError::Socket(console_path(&args.socket), e))?,
        )
    } else {
        None
    };
    let mut ours = Vec::new();
    let mut stdio = Stdio::default();
    let mut stdin_fd = None;
    if !args.tty {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        stdio.stdout = Some(out_w);
        stdio.stderr = Some(err_w);
        ours.push((Stream::Stdout, FrameKind::Stdout, out_r));
        ours.push((Stream::Stderr, FrameKind::Stderr, err_r));
        if args.stdin {
            let (in_r, in_w) = pipe()?;
            stdio.stdin = Some(in_r);
            stdin_fd = Some(in_w);
        }
    }
    let runner = Runner::new(&args.root, &args.bundles);
    // The spec's type is libcontainer's (`oci_spec`), known here through
    // `Runner::create`'s signature.
    let spec = serde_json::from_slice(&spec_bytes)
        .map_err(|e| SetupError::Spec(args.bundles.join(&args.id), e.to_string()))?;
    // The container's process starts with default dispositions (the runner
    // resets them), whatever this process ignores.
    let console_socket = console.as_ref().map(ConsoleSocket::path);
    let created = runner.create(&args.id, &spec, stdio, console_socket);
    let _ = sys::set_handler(Signal::SIGHUP, SigHandler::SigIgn);
    let undo = |e: SetupError| {
        let _ = runner.delete(&args.id);
        e
    };
    let pid = match created {
        Ok(pid) => pid,
        Err(e) => {
            // What the container's init said on its way out (libcontainer
            // reports the cause of a failed set-up there).
            let said = ours
                .iter()
                .find(|(stream, _, _)| matches!(stream, Stream::Stderr))
                .map(|(_, _, fd)| drain(fd))
                .unwrap_or_default();
            let mut e: SetupError = e.into();
            if !said.is_empty() {
                e = SetupError::Init(Box::new(e), said);
            }
            return Err(undo(e));
        }
    };
    let mut terminal = None;
    if let Some(console) = &console {
        let master = console
            .receive(CONSOLE_WAIT)
            .map_err(|e| undo(SetupError::Terminal(e)))?;
        let input = master
            .try_clone()
            .map_err(|e| undo(SetupError::Io("the terminal", e)))?;
        let output = master
            .try_clone()
            .map_err(|e| undo(SetupError::Io("the terminal", e)))?;
        ours.push((Stream::Stdout, FrameKind::Stdout, output));
        if args.stdin {
            stdin_fd = Some(input);
        }
        terminal = Some(master);
    }
    drop(console);
    for fd in ours.iter().map(|(_, _, fd)| fd).chain(stdin_fd.as_ref()) {
        sys::set_nonblocking(fd.as_fd()).map_err(|e| undo(SetupError::Io("a pipe", e)))?;
    }
    let signals = sys::signal_fd(&[Signal::SIGCHLD])
        .map_err(|e| undo(SetupError::Io("the signal descriptor", e)))?;
    let cgroup = oom::Cgroup::find(&spec_json, pid);
    socket_file.0 = None;
    Ok(Monitor {
        id: args.id.clone(),
        runner,
        pid,
        tty: args.tty,
        stdin_once: args.stdin_once,
        exit_file: args.exit_file.clone(),
        socket: args.socket.clone(),
        listener,
        signals,
        outputs: ours
            .into_iter()
            .map(|(stream, kind, fd)| Output {
                fd: Some(fd),
                kind,
                splitter: LineSplitter::new(stream),
            })
            .collect(),
        stdin: args.stdin.then(|| Stdin {
            fd: stdin_fd,
            pending: Vec::new(),
            closing: false,
        }),
        terminal,
        log,
        cgroup,
        clients: BTreeMap::new(),
        next_client: 0,
        stdin_owner: None,
        started: false,
        exit: None,
        drain_until: None,
        closing_until: None,
    })
}
