//! `exec`: runs one process in a running container and reports its exit.

use std::os::fd::{AsFd, OwnedFd};

use container::runner::{RunError, Runner, Stdio};
use monitor::args::ExecArgs;
use monitor::exitfile::{self, ExecReport};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::Pid;

use crate::sys;

/// The exit code reported for a process killed because the helper was told
/// to stop (128 + SIGKILL).
const KILLED: i32 = 137;

/// Starts the process (on our own stdio, or on a terminal whose master goes
/// to the console socket), waits for it, writes the report; 0 once the report
/// is written, 1 when even that failed.
pub fn exec(args: ExecArgs) -> i32 {
    let report = run(&args);
    match exitfile::write_report(&args.report, &report) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("frakti-monitor exec: {e}");
            1
        }
    }
}

fn dup(fd: impl AsFd) -> Option<OwnedFd> {
    fd.as_fd().try_clone_to_owned().ok()
}

fn run(args: &ExecArgs) -> ExecReport {
    let failed = |error: String| ExecReport::Failed {
        error,
        not_found: false,
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return failed(format!("become a child subreaper: {e}"));
    }
    // A termination request that comes while the process is being started is
    // noted and acted on once its pid is known.
    for s in [Signal::SIGTERM, Signal::SIGINT] {
        if let Err(e) = sys::set_handler(s, SigHandler::Handler(sys::note_signal)) {
            return failed(format!("install a handler for {s}: {e}"));
        }
    }
    // Each build in a forked child: an exec into a container with a user
    // namespace joins it there first. The process it starts is reparented
    // to this subreaper.
    let runner = Runner::new(&args.root, &args.bundles).forking();
    let started = match &args.console_socket {
        Some(socket) => runner.exec_terminal(&args.id, args.args.clone(), socket),
        None => {
            let stdio = Stdio {
                stdin: dup(std::io::stdin()),
                stdout: dup(std::io::stdout()),
                stderr: dup(std::io::stderr()),
            };
            runner.exec(&args.id, args.args.clone(), stdio, None)
        }
    };
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            return ExecReport::Failed {
                not_found: matches!(e, RunError::NotFound(_)),
                error: e.to_string(),
            };
        }
    };
    match wait_for(pid) {
        Ok(exit_code) => ExecReport::Exited { exit_code },
        Err(error) => failed(error),
    }
}

/// Reaps children until `pid` has exited; on SIGTERM or SIGINT kills it.
fn wait_for(pid: i32) -> Result<i32, String> {
    let signals = sys::signal_fd(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT]);
    let mut killed = false;
    loop {
        if !killed && sys::signal_noted() {
            // `pid` is our child (or orphan) and not yet reaped: it cannot
            // have been recycled.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed = true;
        }
        while let Some((reaped, code)) = sys::reap_one() {
            if reaped == pid {
                return Ok(if killed { KILLED } else { code });
            }
        }
        if nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            return Err(format!("process {pid} vanished without being reaped"));
        }
        match &signals {
            Ok(fd) => {
                let mut fds = [sys::pollfd(fd.as_fd(), libc::POLLIN)];
                let _ = sys::poll(&mut fds, 1000);
                for s in sys::drain_signals(fd) {
                    if s == libc::SIGTERM || s == libc::SIGINT {
                        sys::note_signal(s);
                    }
                }
            }
            // Without a signal descriptor, poll for the exit.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}
