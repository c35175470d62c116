//! Commands in a running host container: `frakti-monitor exec` starts each
//! one with libcontainer and stays its parent until it ends, then writes
//! its exit code to a report file.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use monitor::exitfile::ExecReport;
use runtime_api::container::ExecOutput;
use runtime_api::{RuntimeError, RuntimeErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::config::{HostContainer, HostRuntimeConfig};

/// Most output an ExecSync keeps per stream (as in VM pods).
pub const OUTPUT_LIMIT: usize = 4 << 20;
/// How long the helper gets to kill the command and report after SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A started exec helper.
#[derive(Debug)]
pub struct Exec {
    /// The helper process (its stdio as asked).
    pub child: Child,
    report: PathBuf,
}

fn unique(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let n: u64 = rand::random();
    dir.join(format!("{prefix}{n:016x}{suffix}"))
}

/// Starts `cmd` in container `c`: on a terminal sent to `console_socket`,
/// or with the helper's stdio as `stdio` says (stdin, stdout, stderr piped
/// or not).
pub fn spawn(
    cfg: &HostRuntimeConfig,
    c: &HostContainer,
    cmd: &[String],
    console_socket: Option<&Path>,
    stdio: [bool; 3],
) -> Result<Exec, RuntimeError> {
    if cmd.is_empty() {
        return Err(RuntimeError::new(
            RuntimeErrorKind::InvalidArgument,
            "cmd must not be empty",
        ));
    }
    let report = unique(&c.dir, "exec-", ".json");
    let args = monitor::args::ExecArgs {
        id: c.name.clone(),
        root: cfg.libcontainer_root(),
        bundles: cfg.bundles(),
        report: report.clone(),
        console_socket: console_socket.map(Path::to_path_buf),
        args: cmd.to_vec(),
    };
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let child = Command::new(&cfg.monitor)
        .args(args.to_args())
        .stdin(pipe(stdio[0]))
        .stdout(pipe(stdio[1]))
        .stderr(pipe(stdio[2]))
        .spawn()
        .map_err(|e| RuntimeError::internal(format!("run {}", cfg.monitor.display()), e))?;
    Ok(Exec { child, report })
}

/// A socket path for a terminal exec in `c`'s directory.
pub fn console_socket_path(c: &HostContainer) -> PathBuf {
    unique(&c.dir, "exec-", ".sock")
}

impl Exec {
    /// Asks the helper to kill the command (it reports 137).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Waits for the helper and returns the command's exit code.
    pub async fn finish(mut self) -> Result<i32, RuntimeError> {
        let status = self.child.wait().await;
        let report = monitor::exitfile::read_report(&self.report);
        let _ = std::fs::remove_file(&self.report);
        let status = status.map_err(|e| RuntimeError::internal("wait for the exec helper", e))?;
        let report = report
            .map_err(|e| RuntimeError::internal("unreadable exec report", e))?
            .ok_or_else(|| {
                RuntimeError::new(
                    RuntimeErrorKind::Internal,
                    format!("the exec helper ended ({status}) without a report"),
                )
            })?;
        match report {
            ExecReport::Exited { exit_code } => Ok(exit_code),
            ExecReport::Failed { error, not_found } => Err(RuntimeError::new(
                if not_found {
                    RuntimeErrorKind::NotFound
                } else {
                    RuntimeErrorKind::Internal
                },
                format!("exec: {error}"),
            )),
        }
    }
}

async fn collect(src: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut src) = src else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

/// Runs `cmd` in `c` and collects its output; on `timeout` the command is
/// killed and the call fails with `DeadlineExceeded`.
pub async fn run_to_completion(
    cfg: &HostRuntimeConfig,
    c: &HostContainer,
    cmd: &[String],
    timeout: Option<Duration>,
) -> Result<ExecOutput, RuntimeError> {
    let mut exec = spawn(cfg, c, cmd, None, [false, true, true])?;
    let stdout = tokio::spawn(collect(exec.child.stdout.take()));
    let stderr = tokio::spawn(collect(exec.child.stderr.take()));
    let timed_out = match timeout {
        None => {
            let _ = exec.child.wait().await;
            false
        }
        Some(limit) => match tokio::time::timeout(limit, exec.child.wait()).await {
            Ok(_) => false,
            Err(_) => {
                exec.terminate();
                let _ = tokio::time::timeout(KILL_GRACE, exec.child.wait()).await;
                true
            }
        },
    };
    let exit_code = exec.finish().await;
    let (stdout, stderr) = (
        stdout.await.unwrap_or_default(),
        stderr.await.unwrap_or_default(),
    );
    if timed_out {
        return Err(RuntimeError::new(
            RuntimeErrorKind::DeadlineExceeded,
            format!(
                "command {cmd:?} timed out after {:?} and was killed",
                timeout.unwrap_or_default()
            ),
        ));
    }
    Ok(ExecOutput {
        stdout,
        stderr,
        exit_code: exit_code?,
    })
}

/// Receives the terminal master of a terminal exec on `socket`.
pub async fn receive_terminal(
    socket: container::console::ConsoleSocket,
    limit: Duration,
) -> Result<OwnedFd, RuntimeError> {
    tokio::task::spawn_blocking(move || socket.receive(limit))
        .await
        .map_err(|e| RuntimeError::internal("receive the exec's terminal", e))?
        .map_err(|e| RuntimeError::internal("receive the exec's terminal", e))
}
