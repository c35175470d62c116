//! Watching a process that may or may not be our child, through a pidfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// A handle on a process, valid even if its pid is later reused.
#[derive(Debug)]
pub struct Process {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
}

impl Process {
    /// Opens a handle on `pid`; fails if it no longer exists.
    pub fn open(pid: i32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(std::io::Error::other)?;
        // SAFETY: `raw` is a fresh pidfd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped,
        // so the descriptor stays open and unchanged for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::other)?;
        Ok(Self { pid, fd })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process still runs (a zombie counts as exited).
    pub fn is_running(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one valid descriptor without blocking.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 0
    }

    /// Waits until the process exits, then reaps it if it is our child.
    pub async fn exited(&self) {
        // Readable once the process has exited; an error means the fd is gone.
        if let Ok(mut guard) = self.fd.readable().await {
            guard.retain_ready();
        }
        reap(self.pid);
    }

    /// Sends `signal`; a process already gone is not an error.
    pub fn signal(&self, signal: Signal) {
        if self.is_running() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }
}

/// Why a process that was just started did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// It exited; the last line of its log, if there is one.
    Exited(Option<String>),
    /// It was not ready in time and was killed.
    Timeout,
}

/// Waits until every path in `ready` exists (e.g. the sockets a daemon
/// creates once it serves). If `process` exits first it is reaped and the
/// last line of `log` tells why; after `timeout` it is killed.
pub async fn wait_ready(
    process: &Process,
    ready: &[&Path],
    timeout: std::time::Duration,
    log: &Path,
) -> Result<(), NotReady> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !process.is_running() {
            reap(process.pid);
            return Err(NotReady::Exited(last_line(log)));
        }
        if ready.iter().all(|p| p.exists()) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            process.signal(Signal::SIGKILL);
            process.exited().await;
            return Err(NotReady::Timeout);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The last line of the log file `log`, if it has one.
pub fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.trim().lines().last().map(str::to_owned)
}

/// Reaps `pid` if it is an exited child of ours; does nothing otherwise.
pub fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// The command-line arguments of `pid`, if readable.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Resident set size of `pid` in KiB, if readable.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // `Process::exited` reaps the child: that is what the test checks.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn sees_a_child_exit_and_reaps_it() {
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let p = Process::open(pid).unwrap();
        assert!(p.is_running());
        p.exited().await;
        assert!(!p.is_running());
        // Reaped: the pid no longer names a zombie of ours.
        assert!(waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_err());
    }

    #[test]
    fn reads_own_cmdline() {
        let me = cmdline(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me[0].contains("hypervisor"), "{me:?}");
        assert!(rss_kib(i32::try_from(std::process::id()).unwrap()).unwrap() > 0);
    }

    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn kill_is_seen() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Process::open(i32::try_from(child.id()).unwrap()).unwrap();
        p.signal(Signal::SIGKILL);
        tokio::time::timeout(std::time::Duration::from_secs(5), p.exited())
            .await
            .unwrap();
        assert!(!p.is_running());
    }
}
