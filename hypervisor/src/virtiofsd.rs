//! virtiofsd: the vhost-user-fs daemon that serves a pod's shared directory.
//!
//! It runs in `chroot` sandbox mode, in the host's mount namespace, so mounts
//! made under the shared directory after it started (container root
//! filesystems, volumes, and host-to-container propagation) are visible to
//! the guest at once.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::process::{NotReady, Process};

/// How long virtiofsd gets to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// virtiofsd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// The binary is missing
    #[error("virtiofsd {0} not found (install qemu-system-common or set --virtiofsd)")]
    Missing(PathBuf),
    /// Spawning failed
    #[error("cannot start virtiofsd: {0}")]
    Spawn(std::io::Error),
    /// It exited before serving
    #[error("virtiofsd exited before serving {0}: {1}")]
    Exited(PathBuf, String),
    /// Its socket did not appear
    #[error("virtiofsd did not create {0} in time")]
    Timeout(PathBuf),
}

/// Starts virtiofsd sharing `source` on `socket`, logging to `log`; returns its pid.
pub async fn spawn(
    binary: &Path,
    socket: &Path,
    source: &Path,
    log: &Path,
) -> Result<i32, VirtiofsdError> {
    if !binary.exists() {
        return Err(VirtiofsdError::Missing(binary.to_path_buf()));
    }
    let _ = std::fs::remove_file(socket);
    let log_file = std::fs::File::create(log).map_err(VirtiofsdError::Spawn)?;
    let child = std::process::Command::new(binary)
        .arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", source.display())])
        .args(["-o", "sandbox=chroot", "-o", "cache=auto", "-o", "xattr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(VirtiofsdError::Spawn)?;
    let pid = child.id() as i32;
    // The child is watched and reaped through its pidfd, not the handle.
    drop(child);
    let process = Process::open(pid).map_err(VirtiofsdError::Spawn)?;
    match crate::process::wait_ready(&process, &[socket], SOCKET_WAIT, log).await {
        Ok(()) => {}
        Err(NotReady::Exited(last)) => {
            let last = last.unwrap_or_else(|| "no output".to_owned());
            return Err(VirtiofsdError::Exited(source.to_path_buf(), last));
        }
        Err(NotReady::Timeout) => return Err(VirtiofsdError::Timeout(socket.to_path_buf())),
    }
    Ok(pid)
}
