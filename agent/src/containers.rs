//! The pod's containers inside the guest: created with `libcontainer`, their
//! output written to CRI log files, their exits reaped and reported.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_api::messages::{
    AgentErrorKind, ContainerInfo, ContainerState, CreateContainer, ExecResult, GuestStats,
};
use agent_api::{AgentError, Response};
use base64::Engine;
use container::runner::{RunError, Runner, Stdio};
use nix::sys::signal::Signal;
use tokio::sync::Notify;

use crate::attach::AttachPoint;
use crate::capture::{pipe, spawn_collector, spawn_log_reader};
use container::logs::{LogFile, Stream};

/// Where libcontainer keeps its state in the guest.
const STATE_ROOT: &str = "/run/frakti/runtime";
/// Where bundles (`config.json`) are written.
const BUNDLES: &str = "/run/frakti/bundles";
/// The cgroup v2 hierarchy.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Most bytes kept of each stream of an exec.
const EXEC_OUTPUT_LIMIT: usize = 4 << 20;
/// How long an exit waits for its output readers to drain.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

fn err(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

fn not_found(id: &str) -> AgentError {
    err(
        AgentErrorKind::NotFound,
        format!("container {id} not found"),
    )
}

pub(crate) fn run_err(e: RunError) -> AgentError {
    match e {
        RunError::NotFound(_) => err(AgentErrorKind::NotFound, e.to_string()),
        other => err(AgentErrorKind::Internal, other.to_string()),
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

struct Entry {
    info: ContainerInfo,
    cgroup: PathBuf,
    log: Option<LogFile>,
    /// Output readers; awaited before an exit is reported.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Attached clients' view of its output, stdin (owned there) and terminal.
    attach: Arc<AttachPoint>,
}

/// All containers of the pod.
pub struct Containers {
    runner: Runner,
    entries: Mutex<HashMap<String, Entry>>,
    events: Mutex<(u64, HashMap<String, u64>)>,
    changed: Notify,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers").finish_non_exhaustive()
    }
}

fn oom_killed(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("memory.events"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
        })
        .is_some_and(|n| n > 0)
}

impl Containers {
    /// An empty set; prepares the runtime directories and cgroup controllers.
    pub fn new() -> Self {
        for dir in [STATE_ROOT, BUNDLES] {
            let _ = std::fs::create_dir_all(dir);
        }
        Self {
            runner: Runner::new(STATE_ROOT, BUNDLES).forking(),
            entries: Mutex::new(HashMap::new()),
            events: Mutex::new((0, HashMap::new())),
            changed: Notify::new(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn info(&self, id: &str) -> Result<ContainerInfo, AgentError> {
        self.entries()
            .get(id)
            .map(|e| e.info.clone())
            .ok_or_else(|| not_found(id))
    }

    fn record_event(&self, id: &str) {
        let mut ev = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ev.0 += 1;
        let seq = ev.0;
        ev.1.insert(id.to_owned(), seq);
        drop(ev);
        self.changed.notify_waiters();
    }

    /// Creates a container; its init waits for [`Self::start`].
    pub async fn create(self: &Arc<Self>, req: CreateContainer) -> Result<Response, AgentError> {
        let id = req.id.clone();
        if self.entries().contains_key(&id) {
            return Ok(Response::Container(self.info(&id)?));
        }
        let mut spec = req.spec;
        if !req.disks.is_empty() {
            let disks = req.disks;
            spec = tokio::task::spawn_blocking(move || {
                crate::disks::prepare(&disks, &mut spec).map(|()| spec)
            })
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))??;
        }
        let spec: oci_spec::runtime::Spec = serde_json::from_value(spec).map_err(|e| {
            err(
                AgentErrorKind::InvalidArgument,
                format!("bad OCI spec: {e}"),
            )
        })?;
        let cgroup = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| Path::new(CGROUP_ROOT).join(p.strip_prefix("/").unwrap_or(&p)))
            .unwrap_or_else(|| Path::new(CGROUP_ROOT).join(&id));
        let log = if req.log_path.is_empty() {
            None
        } else {
            Some(LogFile::open(PathBuf::from(&req.log_path)).map_err(|e| {
                err(
                    AgentErrorKind::Internal,
                    format!("cannot open log {}: {e}", req.log_path),
                )
            })?)
        };
        if req.tty {
            return self
                .create_with_terminal(id, (req.stdin, req.stdin_once), spec, cgroup, log)
                .await;
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin_keep, stdin_fd) = if req.stdin {
            let (r, w) = pipe()?;
            (Some(w), Some(r))
        } else {
            (None, None)
        };
        let stdio = Stdio {
            stdin: stdin_fd,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let runner = self.runner.clone();
        let cid = id.clone();
        let pid = tokio::task::spawn_blocking(move || runner.create(&cid, &spec, stdio, None))
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?
            .map_err(|e| {
                let _ = self.runner.delete(&id);
                run_err(e)
            })?;
        // The stdin pipe's write end lives only in the attach point, which
        // closes it for `stdin_once` and when the process exits.
        let attach_stdin = stdin_keep.map(File::from);
        let attach = AttachPoint::new(2, attach_stdin, None, req.stdin_once);
        let readers = vec![
            spawn_log_reader(out_r, Stream::Stdout, log.clone(), attach.clone()),
            spawn_log_reader(err_r, Stream::Stderr, log.clone(), attach.clone()),
        ];
        Ok(self.register(id, pid, cgroup, log, readers, attach))
    }

    /// Creates a container whose process runs on a terminal: its output is
    /// the master's, its stdin (if any) is written to the master.
    async fn create_with_terminal(
        self: &Arc<Self>,
        id: String,
        (stdin, stdin_once): (bool, bool),
        spec: oci_spec::runtime::Spec,
        cgroup: PathBuf,
        log: Option<LogFile>,
    ) -> Result<Response, AgentError> {
        let console = container::console::ConsoleSocket::bind(
            Path::new(STATE_ROOT).join(format!("console-{}.sock", &id[..id.len().min(32)])),
        )
        .map_err(|e| err(AgentErrorKind::Internal, format!("console socket: {e}")))?;
        let runner = self.runner.clone();
        let cid = id.clone();
        let created = tokio::task::spawn_blocking(move || {
            let pid = runner.create(&cid, &spec, Stdio::default(), Some(console.path()))?;
            let master = console
                .receive(Duration::from_secs(10))
                .map_err(|e| RunError::Runtime(cid.clone(), format!("receive the terminal: {e}")));
            Ok::<_, RunError>((pid, master))
        })
        .await
        .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?;
        let (pid, master) = match created {
            Ok((pid, Ok(master))) => (pid, master),
            Ok((pid, Err(e))) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                let _ = self.runner.delete(&id);
                return Err(run_err(e));
            }
            Err(e) => {
                let _ = self.runner.delete(&id);
                return Err(run_err(e));
            }
        };
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map(File::from)
                .map_err(|e| err(AgentErrorKind::Internal, format!("dup terminal: {e}")))
        };
        let stdin = if stdin { Some(dup(&master)?) } else { None };
        let attach = AttachPoint::new(1, stdin, Some(dup(&master)?), stdin_once);
        let readers = vec![spawn_log_reader(
            master,
            Stream::Stdout,
            log.clone(),
            attach.clone(),
        )];
        Ok(self.register(id, pid, cgroup, log, readers, attach))
    }

    /// Records a created container and watches for its exit.
    fn register(
        self: &Arc<Self>,
        id: String,
        pid: i32,
        cgroup: PathBuf,
        log: Option<LogFile>,
        readers: Vec<tokio::task::JoinHandle<()>>,
        attach: Arc<AttachPoint>,
    ) -> Response {
        let info = ContainerInfo {
            id: id.clone(),
            state: ContainerState::Created,
            pid,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            oom_killed: false,
            message: String::new(),
            user: None,
        };
        self.entries().insert(
            id.clone(),
            Entry {
                info: info.clone(),
                cgroup,
                log,
                readers,
                attach,
            },
        );
        let exited = crate::reaper::wait_for(pid);
        let this = self.clone();
        tokio::spawn(async move {
            let code = exited.await.unwrap_or(255);
            this.on_exit(&id, code).await;
        });
        tracing::info!(container = %info.id, pid, "created");
        self.record_event(&info.id);
        Response::Container(info)
    }

    /// Fails unless container `id` is running.
    pub(crate) fn require_running(&self, id: &str) -> Result<(), AgentError> {
        if self.info(id)?.state != ContainerState::Running {
            return Err(err(
                AgentErrorKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        Ok(())
    }

    /// The container runner.
    pub(crate) fn runner(&self) -> Runner {
        self.runner.clone()
    }

    /// Starts `args` in running container `id` with `stdio`; returns its pid.
    pub(crate) async fn exec_process(
        &self,
        id: &str,
        args: Vec<String>,
        stdio: Stdio,
    ) -> Result<i32, AgentError> {
        let runner = self.runner.clone();
        let cid = id.to_owned();
        tokio::task::spawn_blocking(move || runner.exec(&cid, args, stdio, None))
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?
            .map_err(run_err)
    }

    /// Where clients attach to running container `id`.
    pub(crate) fn attach_point(&self, id: &str) -> Result<Arc<AttachPoint>, AgentError> {
        let entries = self.entries();
        let entry = entries.get(id).ok_or_else(|| not_found(id))?;
        let why = match entry.info.state {
            ContainerState::Running => return Ok(entry.attach.clone()),
            ContainerState::Created => "it has not been started",
            ContainerState::Exited => "its main process has exited",
        };
        Err(err(
            AgentErrorKind::FailedPrecondition,
            format!("cannot attach to container {id}: {why}"),
        ))
    }

    async fn on_exit(&self, id: &str, code: i32) {
        let readers = match self.entries().get_mut(id) {
            Some(e) => std::mem::take(&mut e.readers),
            None => return,
        };
        // The output gets a while to drain, all readers together: something
        // the process started may hold it open for ever.
        let drained = tokio::time::Instant::now() + DRAIN_WAIT;
        for r in readers {
            let _ = tokio::time::timeout_at(drained, r).await;
        }
        if let Some(e) = self.entries().get_mut(id) {
            e.info.state = ContainerState::Exited;
            e.info.exit_code = code;
            e.info.finished_at_ns = now_ns();
            e.info.pid = 0;
            e.info.oom_killed = oom_killed(&e.cgroup);
            // Under the same lock as the state: an attach either sees the
            // container running and is ended by this, or is refused.
            e.attach.process_exited();
            tracing::info!(container = %id, code, oom = e.info.oom_killed, "exited");
        }
        self.record_event(id);
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<Response, AgentError> {
        let info = self.info(id)?;
        match info.state {
            ContainerState::Created => {}
            ContainerState::Running => return Ok(Response::Container(info)),
            ContainerState::Exited => {
                return Err(err(
                    AgentErrorKind::FailedPrecondition,
                    format!("container {id} has exited"),
                ));
            }
        }
        let runner = self.runner.clone();
        let cid = id.to_owned();
        tokio::task::spawn_blocking(move || runner.start(&cid))
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?
            .map_err(run_err)?;
        if let Some(e) = self.entries().get_mut(id)
            && e.info.state == ContainerState::Created
        {
            e.info.state = ContainerState::Running;
            e.info.started_at_ns = now_ns();
            // What the process runs as; it may already be gone.
            e.info.user = u32::try_from(e.info.pid)
                .ok()
                .and_then(|pid| usage::process::read_ids(Path::new("/proc"), pid).ok());
        }
        self.record_event(id);
        Ok(Response::Container(self.info(id)?))
    }

    async fn wait_exit(&self, id: &str, limit: Duration) -> bool {
        let deadline = agent_api::client::deadline_after(limit);
        loop {
            let notified = self.changed.notified();
            match self.info(id) {
                Ok(i) if i.state != ContainerState::Exited => {}
                _ => return true,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    fn signal(&self, id: &str, signal: Signal) -> Result<(), AgentError> {
        let info = self.info(id)?;
        if info.pid > 0 {
            // Kill by pid: libcontainer's kill refuses a created container.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(info.pid), signal);
        }
        Ok(())
    }

    /// Sends `signal`, waits up to `timeout`, then SIGKILLs; answers with the final status.
    pub async fn stop(
        &self,
        id: &str,
        signal: i32,
        timeout: Duration,
    ) -> Result<Response, AgentError> {
        let info = self.info(id)?;
        if info.state == ContainerState::Exited {
            return Ok(Response::Container(info));
        }
        let sig = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
        if !timeout.is_zero() {
            self.signal(id, sig)?;
            if self.wait_exit(id, timeout).await {
                return Ok(Response::Container(self.info(id)?));
            }
        }
        let runner = self.runner.clone();
        let cid = id.to_owned();
        // Every process of the container, not only its init.
        let _ = tokio::task::spawn_blocking(move || runner.kill(&cid, Signal::SIGKILL, true)).await;
        self.signal(id, Signal::SIGKILL)?;
        if !self.wait_exit(id, Duration::from_secs(10)).await {
            return Err(err(
                AgentErrorKind::DeadlineExceeded,
                format!("container {id} did not die after SIGKILL"),
            ));
        }
        Ok(Response::Container(self.info(id)?))
    }

    /// Removes a container, killing it first; unknown ids succeed.
    pub async fn remove(&self, id: &str) -> Result<Response, AgentError> {
        if self.info(id).is_err() {
            let runner = self.runner.clone();
            let cid = id.to_owned();
            let _ = tokio::task::spawn_blocking(move || runner.delete(&cid)).await;
            return Ok(Response::Done);
        }
        self.stop(id, libc::SIGKILL, Duration::ZERO).await?;
        let runner = self.runner.clone();
        let cid = id.to_owned();
        tokio::task::spawn_blocking(move || runner.delete(&cid))
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?
            .map_err(run_err)?;
        self.entries().remove(id);
        // Drop cached inodes of the shared directory, so the host can unmount
        // the container's root filesystem.
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
        self.record_event(id);
        Ok(Response::Done)
    }

    /// Status of one container.
    pub fn status(&self, id: &str) -> Result<Response, AgentError> {
        Ok(Response::Container(self.info(id)?))
    }

    /// Status of all containers.
    pub fn list(&self) -> Response {
        Response::Containers(self.entries().values().map(|e| e.info.clone()).collect())
    }

    /// What the containers `ids` use, from their cgroups (one entry per
    /// id, `None` for one that is unknown or does not run). The cgroups are
    /// read after the table's lock is released.
    pub fn stats(&self, ids: &[String]) -> Response {
        let cgroups: Vec<Option<PathBuf>> = {
            let entries = self.entries();
            ids.iter()
                .map(|id| {
                    entries
                        .get(id)
                        .filter(|e| e.info.state == ContainerState::Running)
                        .map(|e| e.cgroup.clone())
                })
                .collect()
        };
        let containers: Vec<Option<usage::CgroupUsage>> = cgroups
            .iter()
            .map(|cgroup| {
                cgroup.as_ref().and_then(|dir| {
                    usage::cgroup::read_v2(dir)
                        .inspect_err(|e| tracing::debug!("container stats: {e}"))
                        .ok()
                })
            })
            .collect();
        let processes = containers
            .iter()
            .flatten()
            .filter_map(|u| u.processes)
            .reduce(|a, b| a + b);
        Response::Stats(GuestStats {
            containers,
            processes,
        })
    }

    /// Reopens the log of a container.
    pub fn reopen_log(&self, id: &str) -> Result<Response, AgentError> {
        let entries = self.entries();
        let entry = entries.get(id).ok_or_else(|| not_found(id))?;
        if entry.info.state != ContainerState::Running {
            return Err(err(
                AgentErrorKind::FailedPrecondition,
                format!("container {id} is not running"),
            ));
        }
        if let Some(log) = &entry.log {
            log.reopen()
                .map_err(|e| err(AgentErrorKind::Internal, format!("reopen log: {e}")))?;
        }
        Ok(Response::Done)
    }

    /// Runs `args` in a running container and collects its output.
    pub async fn exec_sync(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<Response, AgentError> {
        self.require_running(id)?;
        if args.is_empty() {
            return Err(err(AgentErrorKind::InvalidArgument, "empty command"));
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let stdio = Stdio {
            stdin: None,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        let runner = self.runner.clone();
        let cid = id.to_owned();
        let pid = tokio::task::spawn_blocking(move || runner.exec(&cid, args, stdio, None))
            .await
            .map_err(|e| err(AgentErrorKind::Internal, e.to_string()))?
            .map_err(run_err)?;
        let exited = crate::reaper::wait_for(pid);
        let stdout = spawn_collector(out_r, EXEC_OUTPUT_LIMIT);
        let stderr = spawn_collector(err_r, EXEC_OUTPUT_LIMIT);
        let code = match timeout {
            Some(limit) => match tokio::time::timeout(limit, exited).await {
                Ok(code) => code.unwrap_or(255),
                Err(_) => {
                    // The exec runs in a session of its own: kill its whole group.
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), Signal::SIGKILL);
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(err(
                        AgentErrorKind::DeadlineExceeded,
                        format!("command timed out after {limit:?} and was killed"),
                    ));
                }
            },
            None => exited.await.unwrap_or(255),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let stdout = tokio::time::timeout(DRAIN_WAIT, stdout)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stderr = tokio::time::timeout(DRAIN_WAIT, stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        Ok(Response::Exec(ExecResult {
            stdout: b64.encode(stdout),
            stderr: b64.encode(stderr),
            exit_code: code,
        }))
    }

    /// Answers once some container changed after event `after`, or after `timeout`.
    pub async fn wait_events(&self, after: u64, timeout: Duration) -> Response {
        let deadline = agent_api::client::deadline_after(timeout);
        loop {
            let notified = self.changed.notified();
            let (last, changed) = {
                let ev = self
                    .events
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let changed: Vec<String> =
                    ev.1.iter()
                        .filter(|(_, seq)| **seq > after)
                        .map(|(id, _)| id.clone())
                        .collect();
                (ev.0, changed)
            };
            // A new agent (rebooted guest) restarts numbering: report everything.
            let restarted = after > last;
            if !changed.is_empty() || restarted {
                let entries = self.entries();
                let containers = entries
                    .values()
                    .filter(|e| restarted || changed.contains(&e.info.id))
                    .map(|e| e.info.clone())
                    .collect();
                return Response::Events { last, containers };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Response::Events {
                    last,
                    containers: Vec::new(),
                };
            }
        }
    }
}

mod limits;
#[cfg(test)]
mod testing;
