//! Small wrappers over process-level system calls.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Forks. Only call it while the process has a single thread.
pub fn fork() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: every caller forks before it starts any thread (the binary is
    // single-threaded until then), so the child has no locks held by threads
    // that do not exist in it.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Points stdin, stdout and stderr at `/dev/null`.
pub fn stdio_to_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Sends standard error to the end of `log` (created), so that what
/// libcontainer and the monitor report there outlives the daemon's call.
pub fn stderr_to(log: &std::path::Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    nix::unistd::dup2_stderr(&file)?;
    Ok(())
}

/// Makes `fd` non-blocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sets `signal`'s disposition to `handler` (no flags: slow calls get EINTR).
pub fn set_handler(signal: Signal, handler: SigHandler) -> io::Result<()> {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: the handlers installed here are SIG_DFL, SIG_IGN or
    // `note_signal`, which only stores to an atomic (async-signal-safe).
    unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    Ok(())
}

/// Set by [`note_signal`].
static NOTED: AtomicBool = AtomicBool::new(false);

/// A signal handler that only records that a signal came.
pub extern "C" fn note_signal(_: libc::c_int) {
    NOTED.store(true, Ordering::SeqCst);
}

/// Whether [`note_signal`] ran.
pub fn signal_noted() -> bool {
    NOTED.load(Ordering::SeqCst)
}

/// Blocks `signals` and returns a non-blocking descriptor that reports them.
pub fn signal_fd(signals: &[Signal]) -> io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for s in signals {
        mask.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    Ok(SignalFd::with_flags(
        &mask,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

/// Reads every pending signal from `fd`; returns their numbers.
pub fn drain_signals(fd: &SignalFd) -> Vec<i32> {
    let mut got = Vec::new();
    while let Ok(Some(info)) = fd.read_signal() {
        got.push(info.ssi_signo as i32);
    }
    got
}

/// Reaps one exited child without waiting: its pid and exit code (128 + the
/// signal's number for a signal death); `None` when none is left to reap.
pub fn reap_one() -> Option<(i32, i32)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int through the valid pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if libc::WIFEXITED(status) {
                return Some((pid, libc::WEXITSTATUS(status)));
            }
            if libc::WIFSIGNALED(status) {
                return Some((pid, 128 + libc::WTERMSIG(status)));
            }
            // Stopped or continued: not an exit (not asked for, but harmless).
            continue;
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes all of `data` to `fd` (blocking).
pub fn write_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd.as_fd(), data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Calls `poll(2)` on `fds` for at most `timeout_ms` (-1: no limit); EINTR
/// counts as no event.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<()> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()`
    // pollfd structs for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for fd in fds.iter_mut() {
            fd.revents = 0;
        }
    }
    Ok(())
}

/// A pollfd for `fd` asking for `events`.
pub fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    use std::os::fd::AsRawFd;
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}
