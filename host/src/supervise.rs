//! Talking to `frakti-monitor`: starting a container's monitor, the
//! one-shot helpers (delete, the pod's PID namespace holder), and requests
//! on a monitor's socket. libcontainer runs only in those processes, never
//! in the multi-threaded daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor::protocol::{Exit, Reply, Request};
use runtime_api::{RuntimeError, RuntimeErrorKind};

use crate::config::{HostContainer, HostRuntimeConfig, PidHolder};

/// How long a monitor may take to answer a plain request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long creating a container (or a namespace holder) may take.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the monitor binary with `args` to completion; its stdout on success.
async fn run_helper(
    cfg: &HostRuntimeConfig,
    what: &str,
    args: Vec<OsString>,
) -> Result<Vec<u8>, RuntimeError> {
    let mut cmd = tokio::process::Command::new(&cfg.monitor);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SPAWN_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            RuntimeError::new(
                RuntimeErrorKind::DeadlineExceeded,
                format!("{what}: frakti-monitor did not finish in {SPAWN_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| RuntimeError::internal(format!("{what}: run {}", cfg.monitor.display()), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(RuntimeError::new(
            RuntimeErrorKind::Internal,
            format!("{what}: {}", stderr.trim()),
        ));
    }
    Ok(out.stdout)
}

#[derive(serde::Deserialize)]
struct Pid {
    pid: i32,
}

fn parse_pid(what: &str, out: &[u8]) -> Result<i32, RuntimeError> {
    let line = String::from_utf8_lossy(out);
    serde_json::from_str::<Pid>(line.trim())
        .map(|p| p.pid)
        .map_err(|e| RuntimeError::internal(format!("{what}: unreadable answer {line:?}"), e))
}

/// Starts the monitor of container `c`, which creates it; returns the
/// container's init pid.
pub async fn start_monitor(
    cfg: &HostRuntimeConfig,
    c: &HostContainer,
    log: Option<PathBuf>,
    stdin: bool,
    stdin_once: bool,
) -> Result<i32, RuntimeError> {
    let args = monitor::args::RunArgs {
        id: c.name.clone(),
        root: cfg.libcontainer_root(),
        bundles: cfg.bundles(),
        socket: c.socket(),
        exit_file: c.exit_file(),
        log,
        tty: c.tty,
        stdin,
        stdin_once,
    };
    let out = run_helper(cfg, "create the container", args.to_args()).await?;
    parse_pid("create the container", &out)
}

/// Deletes container `name`'s libcontainer state and cgroup (killing what
/// is left of it).
pub async fn delete(cfg: &HostRuntimeConfig, name: &str) -> Result<(), RuntimeError> {
    let args = monitor::args::DeleteArgs {
        id: name.to_owned(),
        root: cfg.libcontainer_root(),
        bundles: cfg.bundles(),
    };
    run_helper(cfg, "delete the container", args.to_args())
        .await
        .map(|_| ())
}

/// Starts the holder of a new PID namespace, bound at `file`.
pub async fn hold_pid_namespace(
    cfg: &HostRuntimeConfig,
    file: &Path,
) -> Result<PidHolder, RuntimeError> {
    let args = monitor::args::PidnsArgs {
        file: file.to_path_buf(),
        userns: None,
    };
    let out = run_helper(cfg, "create the pod's PID namespace", args.to_args()).await?;
    Ok(PidHolder {
        pid: parse_pid("create the pod's PID namespace", &out)?,
        file: file.to_path_buf(),
    })
}

/// Starts the holder of a pod's user namespace (mappings `userns`) and of
/// the network, UTS, IPC and PID namespaces it owns: their files are
/// `<dir>/{user,uts,ipc,pid}` and `net`; the UTS namespace gets `hostname`.
pub async fn hold_user_namespace(
    cfg: &HostRuntimeConfig,
    dir: &Path,
    net: &Path,
    userns: &runtime_api::container::UserNamespace,
    hostname: &str,
) -> Result<PidHolder, RuntimeError> {
    let map = |list: &[runtime_api::container::IdMapping]| {
        list.iter()
            .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.length))
            .collect::<Vec<_>>()
            .join(",")
    };
    let file = dir.join("pid");
    let args = monitor::args::PidnsArgs {
        file: file.clone(),
        userns: Some(monitor::args::UsernsArgs {
            dir: dir.to_path_buf(),
            net: net.to_path_buf(),
            uid_map: map(&userns.uids),
            gid_map: map(&userns.gids),
            hostname: Some(hostname.to_owned()),
        }),
    };
    let what = "create the pod's user namespace";
    let out = run_helper(cfg, what, args.to_args()).await?;
    Ok(PidHolder {
        pid: parse_pid(what, &out)?,
        file,
    })
}

/// Stops a PID namespace holder (only if the pid still holds that
/// namespace) and releases its file.
pub fn release_pid_namespace(holder: &PidHolder) -> Result<(), RuntimeError> {
    if monitor::holds_namespace(holder.pid, &holder.file) {
        let pid = nix::unistd::Pid::from_raw(holder.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    crate::namespaces::release(&holder.file)
        .map_err(|e| RuntimeError::internal("release the pod's PID namespace", e))
}

/// Sends `request` to the monitor at `socket`. `Ok(None)`: no monitor
/// listens there (it has exited); a refusal is a reply with `ok: false`.
pub async fn call(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<Option<Reply>, RuntimeError> {
    use monitor::client::ClientError;
    let socket = socket.to_path_buf();
    let what = format!("{request:?}");
    let result =
        tokio::task::spawn_blocking(move || monitor::client::call(&socket, &request, timeout))
            .await
            .map_err(|e| RuntimeError::internal("monitor call", e))?;
    match result {
        Ok(reply) => Ok(Some(reply)),
        Err(ClientError::Refused(message)) => Ok(Some(Reply::error(message))),
        Err(ClientError::Connect(..) | ClientError::Closed) => Ok(None),
        // The monitor exited while answering: it is gone.
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        Err(e @ ClientError::TimedOut(_)) => Err(RuntimeError::caused(
            RuntimeErrorKind::DeadlineExceeded,
            format!("monitor request {what}"),
            e,
        )),
        Err(e) => Err(RuntimeError::internal(format!("monitor request {what}"), e)),
    }
}

/// Most of a monitor's log quoted in an error.
const LOG_TAIL: usize = 2048;

/// `error`, with the end of `c`'s monitor log (libcontainer's detail of a
/// failed create) appended.
pub fn with_monitor_log(error: RuntimeError, c: &HostContainer) -> RuntimeError {
    let log = monitor::args::RunArgs::monitor_log(&c.socket());
    let Ok(text) = std::fs::read_to_string(&log) else {
        return error;
    };
    let text = text.trim();
    if text.is_empty() {
        return error;
    }
    let start = text.len().saturating_sub(LOG_TAIL);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    RuntimeError {
        message: format!("{} (monitor log: {})", error.message, &text[start..]),
        ..error
    }
}

/// `reply`, or its refusal as an error of `kind`.
pub fn accepted(reply: Reply, kind: RuntimeErrorKind, what: &str) -> Result<Reply, RuntimeError> {
    if reply.ok {
        Ok(reply)
    } else {
        Err(RuntimeError::new(
            kind,
            format!("{what}: {}", reply.error.unwrap_or_default()),
        ))
    }
}

/// The exit the monitor of `c` recorded, if the container has exited.
pub fn recorded_exit(c: &HostContainer) -> Result<Option<Exit>, RuntimeError> {
    monitor::exitfile::read(&c.exit_file())
        .map_err(|e| RuntimeError::internal("read the container's exit file", e))
}
