//! `run`: create a container and be its monitor.
//!
//! The process forks at once. The child becomes the monitor (its own session,
//! a child subreaper, stdio on `/dev/null`), creates the container and sends
//! its verdict on a pipe; the parent prints it (`{"pid": N}` on stdout, exit
//! 0; or the error on stderr, exit 1) so the daemon learns the outcome from
//! the command's result while the monitor lives on.

mod clients;
mod event_loop;
mod oom;
mod requests;
mod setup;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use container::logs::{LineSplitter, LogFile};
use container::runner::Runner;
use monitor::args::RunArgs;
use monitor::protocol::{Exit, FrameKind};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::sys;
use clients::Client;

/// How long the parent waits for the monitor's verdict at most.
const VERDICT_WAIT: Duration = Duration::from_secs(120);

/// What the monitor tells the parent once the container exists (or not).
#[derive(Debug, Serialize, Deserialize)]
struct Verdict {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs the `run` subcommand; returns the parent's exit code.
pub fn run(args: RunArgs) -> i32 {
    // A container that exists is someone else's: never touch it, not even
    // to clean up after a failure.
    if args.root.join(&args.id).exists() {
        eprintln!("frakti-monitor run: container {} already exists", args.id);
        return 1;
    }
    let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("frakti-monitor run: pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Ok(ForkResult::Child) => {
            drop(read);
            std::process::exit(monitor_main(args, write));
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            parent(&args, child, read)
        }
        Err(e) => {
            eprintln!("frakti-monitor run: fork: {e}");
            1
        }
    }
}

/// Waits for the verdict; if the monitor dies without one, removes what it
/// may have left.
fn parent(args: &RunArgs, child: Pid, read: OwnedFd) -> i32 {
    let verdict = read_verdict(child, &read);
    match verdict {
        Some(Verdict { pid: Some(pid), .. }) => {
            println!("{}", serde_json::json!({ "pid": pid }));
            0
        }
        Some(Verdict { error, .. }) => {
            eprintln!(
                "frakti-monitor run: {}",
                error.unwrap_or_else(|| "the monitor failed".into())
            );
            1
        }
        None => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            let _ = Runner::new(&args.root, &args.bundles).delete(&args.id);
            let _ = std::fs::remove_file(&args.socket);
            let _ = std::fs::remove_file(setup::console_path(&args.socket));
            eprintln!("frakti-monitor run: the monitor ended without creating the container");
            1
        }
    }
}

/// Reads the verdict line; `None` when the monitor exited (or hung) first.
fn read_verdict(child: Pid, read: &OwnedFd) -> Option<Verdict> {
    let _ = sys::set_nonblocking(read.as_fd());
    let deadline = Instant::now() + VERDICT_WAIT;
    let mut got = Vec::new();
    let mut exited = false;
    loop {
        let mut fds = [sys::pollfd(read.as_fd(), libc::POLLIN)];
        let _ = sys::poll(&mut fds, 200);
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match nix::unistd::read(read, &mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            if got.len() > 64 * 1024 {
                return None;
            }
        }
        if let Some(nl) = got.iter().position(|b| *b == b'\n') {
            return serde_json::from_slice(&got[..nl]).ok();
        }
        if eof || exited || Instant::now() >= deadline {
            return None;
        }
        // One more read after the monitor is seen dead: it may have written
        // the verdict right before exiting.
        exited = matches!(
            nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..))
                | Err(_)
        );
    }
}

/// The monitor process: returns its exit code.
fn monitor_main(args: RunArgs, verdict: OwnedFd) -> i32 {
    let send = |v: &Verdict| {
        let mut line = serde_json::to_vec(v).unwrap_or_default();
        line.push(b'\n');
        let _ = sys::write_all(&verdict, &line);
    };
    let prepared = (|| {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("become a child subreaper: {e}"))?;
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
        sys::stdio_to_null().map_err(|e| format!("stdio to /dev/null: {e}"))?;
        let log = RunArgs::monitor_log(&args.socket);
        sys::stderr_to(&log).map_err(|e| format!("open {}: {e}", log.display()))?;
        setup::create(&args).map_err(|e| e.to_string())
    })();
    let monitor = match prepared {
        Ok(m) => m,
        Err(error) => {
            send(&Verdict {
                pid: None,
                error: Some(error),
            });
            return 1;
        }
    };
    send(&Verdict {
        pid: Some(monitor.pid),
        error: None,
    });
    drop(verdict);
    monitor.serve();
    0
}

/// One output of the container (a pipe, or the terminal) being copied.
#[derive(Debug)]
struct Output {
    fd: Option<OwnedFd>,
    kind: FrameKind,
    splitter: LineSplitter,
}

/// The container's stdin, when it has one: what clients sent and the
/// container has not read yet.
#[derive(Debug)]
struct Stdin {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    /// Close once `pending` is written.
    closing: bool,
}

/// The monitor of one created container.
#[derive(Debug)]
struct Monitor {
    id: String,
    runner: Runner,
    /// The container's init pid.
    pid: i32,
    tty: bool,
    stdin_once: bool,
    exit_file: PathBuf,
    socket: PathBuf,
    listener: UnixListener,
    signals: SignalFd,
    outputs: Vec<Output>,
    stdin: Option<Stdin>,
    /// The terminal's master, for resizing.
    terminal: Option<OwnedFd>,
    log: Option<LogFile>,
    cgroup: oom::Cgroup,
    clients: BTreeMap<u64, Client>,
    next_client: u64,
    /// The first client that attached with stdin (for `--stdin-once`).
    stdin_owner: Option<u64>,
    started: bool,
    /// The init's exit, once reaped.
    exit: Option<Exit>,
    /// Until when outputs are read after the init exited.
    drain_until: Option<Instant>,
    /// Set once the exit file is written and clients are told: until when
    /// the monitor lingers to deliver that.
    closing_until: Option<Instant>,
}
