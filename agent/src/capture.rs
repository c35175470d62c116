//! Reading a container's output off its pipes: into its CRI log and to
//! attached clients for the main process, or collected up to a limit for a
//! synchronous exec.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use agent_api::AgentError;
use agent_api::messages::AgentErrorKind;

use crate::attach::AttachPoint;
use container::logs::{LineSplitter, LogFile, Stream};

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::new(AgentErrorKind::Internal, format!("pipe: {e}")))
}

/// Copies a pipe (or a terminal's master) into the log and to attached
/// clients until EOF.
pub(crate) fn spawn_log_reader(
    read: OwnedFd,
    stream: Stream,
    log: Option<LogFile>,
    attach: Arc<AttachPoint>,
) -> tokio::task::JoinHandle<()> {
    let channel = match stream {
        Stream::Stdout => agent_api::streams::Channel::Stdout,
        Stream::Stderr => agent_api::streams::Channel::Stderr,
    };
    tokio::task::spawn_blocking(move || {
        let mut file = File::from(read);
        let mut splitter = LineSplitter::new(stream);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(log) = &log {
                        splitter.push(&buf[..n], log);
                    }
                    attach.publish(channel, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A terminal reports EIO once its last user is gone.
                Err(_) => break,
            }
        }
        if let Some(log) = &log {
            splitter.finish(log);
        }
        attach.output_ended();
    })
}

/// Reads a pipe to EOF, keeping at most `limit` bytes.
pub(crate) fn spawn_collector(read: OwnedFd, limit: usize) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut file = File::from(read);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = limit.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        out
    })
}
