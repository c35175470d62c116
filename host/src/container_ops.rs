//! The container side of the host runtime: each container is made by its
//! own `frakti-monitor`, which stays its parent, writes its log and records
//! its exit; the daemon talks to the monitor over its socket.

use std::path::PathBuf;
use std::time::Duration;

use monitor::protocol::Request;
use runtime_api::container::{
    ContainerConfig, ContainerRecord, ContainerResources, ContainerRuntimeStatus, ContainerState,
    ExecOutput, NamespaceMode,
};
use runtime_api::{ContainerRuntime, RuntimeError, RuntimeErrorKind, SandboxRecord};

use crate::config::{self, HostContainer, HostSandbox};
use crate::runtime::{HostRuntime, exited_status};
use crate::{exec, files, supervise};
use cgroups::{CgroupError, Hierarchy};

/// How long after SIGKILL a container may take to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(10);

fn state(container: &ContainerRecord) -> Result<HostContainer, RuntimeError> {
    config::parse("container", &container.runtime_state)
}

/// What the container's init process runs as; `None` once it is gone.
fn process_ids(pid: i32) -> Option<usage::process::ProcessIds> {
    let pid = u32::try_from(pid).ok()?;
    usage::process::read_ids(std::path::Path::new("/proc"), pid).ok()
}

fn gone(id: &str) -> RuntimeError {
    RuntimeError::new(
        RuntimeErrorKind::FailedPrecondition,
        format!("container {id} is not running"),
    )
}

/// The limits after an update: what the update sets, the rest as before
/// (CRI updates carry the whole set, but a zero field means "unset").
impl HostRuntime {
    /// The PID namespace of running container `target` (for mode TARGET).
    async fn target_pid_namespace(&self, target: &str) -> Result<PathBuf, RuntimeError> {
        let socket = self
            .config
            .container_dir(target)
            .join(config::MONITOR_SOCKET);
        let not_running = || {
            RuntimeError::new(
                RuntimeErrorKind::FailedPrecondition,
                format!("target container {target} of the PID namespace is not running"),
            )
        };
        let reply = supervise::call(&socket, Request::Status, supervise::CALL_TIMEOUT)
            .await?
            .ok_or_else(not_running)?;
        let status = supervise::accepted(reply, RuntimeErrorKind::FailedPrecondition, "target")?
            .status
            .filter(|s| s.state == monitor::protocol::ContainerState::Running)
            .ok_or_else(not_running)?;
        Ok(PathBuf::from(format!("/proc/{}/ns/pid", status.pid)))
    }

    /// Waits until the container's monitor has gone (the container exited),
    /// at most `limit`; whether it has.
    async fn wait_exit(&self, c: &HostContainer, limit: Duration) -> Result<bool, RuntimeError> {
        if limit.is_zero() {
            return Ok(!c.socket().exists());
        }
        match supervise::call(&c.socket(), Request::Wait, limit).await {
            Ok(Some(_)) | Ok(None) => Ok(true),
            Err(e) if e.kind == RuntimeErrorKind::DeadlineExceeded => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn kill(&self, c: &HostContainer, signal: i32, all: bool) -> Result<bool, RuntimeError> {
        match supervise::call(
            &c.socket(),
            Request::Kill { signal, all },
            supervise::CALL_TIMEOUT,
        )
        .await?
        {
            None => Ok(false),
            Some(reply) => {
                supervise::accepted(reply, RuntimeErrorKind::Internal, "signal the container")?;
                Ok(true)
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for HostRuntime {
    async fn create_container(
        &self,
        sandbox: &SandboxRecord,
        id: &str,
        config: &ContainerConfig,
        log_path: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        let pod: HostSandbox = config::parse("sandbox", &sandbox.runtime_state)?;
        let target_pid = match config.security.namespaces.pid {
            NamespaceMode::Target => Some(
                self.target_pid_namespace(&config.security.namespaces.target_id)
                    .await?,
            ),
            _ => None,
        };
        let prepared = files::prepare(
            &self.config,
            &sandbox.config,
            &pod,
            id,
            config,
            log_path,
            target_pid,
        )?;
        let mut c = prepared.container;
        let made = async {
            let bundle = self.config.bundles().join(&c.name);
            std::fs::create_dir_all(&bundle)
                .map_err(|e| RuntimeError::internal(format!("create {}", bundle.display()), e))?;
            let json = serde_json::to_vec(&prepared.spec)
                .map_err(|e| RuntimeError::internal("encode the OCI spec", e))?;
            std::fs::write(bundle.join("config.json"), json)
                .map_err(|e| RuntimeError::internal("write the OCI spec", e))?;
            let log = (!log_path.is_empty()).then(|| PathBuf::from(log_path));
            supervise::start_monitor(&self.config, &c, log, config.stdin, config.stdin_once).await
        }
        .await;
        match made {
            Ok(pid) => {
                c.pid = pid;
                config::to_value("container", &c)
            }
            Err(e) => {
                let e = supervise::with_monitor_log(e, &c);
                let _ = supervise::delete(&self.config, &c.name).await;
                let _ = std::fs::remove_dir_all(self.config.bundles().join(&c.name));
                if let Err(cleanup) = files::remove(&c) {
                    tracing::warn!(container = id, "cleanup after a failed create: {cleanup}");
                }
                Err(e)
            }
        }
    }

    async fn start_container(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let c = state(container)?;
        let reply = supervise::call(&c.socket(), Request::Start, supervise::CALL_TIMEOUT)
            .await?
            .ok_or_else(|| gone(&container.id))?;
        supervise::accepted(
            reply,
            RuntimeErrorKind::FailedPrecondition,
            "start the container",
        )?;
        let started_at_ns = crate::now_ns();
        self.watch(&sandbox.id, &container.id, &c, started_at_ns);
        Ok(ContainerRuntimeStatus {
            state: ContainerState::Running,
            started_at_ns,
            user: process_ids(c.pid),
            ..ContainerRuntimeStatus::created()
        })
    }

    async fn stop_container(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let c = state(container)?;
        let started = container.status.started_at_ns;
        if container.status.state == ContainerState::Created {
            // Never started: nothing to signal; its monitor ends with it.
            self.kill(&c, libc::SIGKILL, true).await?;
            self.wait_exit(&c, KILL_GRACE).await?;
            return Ok(exited_status(&c, started));
        }
        let signal = container::signals::stop_signal(container.config.effective_stop_signal())
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::InvalidArgument, e.to_string()))?;
        if !timeout.is_zero() && self.kill(&c, signal, false).await? {
            self.wait_exit(&c, timeout).await?;
        }
        if c.socket().exists() && self.kill(&c, libc::SIGKILL, true).await? {
            self.wait_exit(&c, KILL_GRACE).await?;
        }
        Ok(exited_status(&c, started))
    }

    async fn remove_container(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        let c = state(container)?;
        if c.socket().exists() && self.kill(&c, libc::SIGKILL, true).await? {
            self.wait_exit(&c, KILL_GRACE).await?;
        }
        supervise::delete(&self.config, &c.name).await?;
        files::remove_dir(&self.config.bundles().join(&c.name))?;
        files::remove(&c)
    }

    async fn container_status(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        let c = state(container)?;
        let started = container.status.started_at_ns;
        if let Some(exit) = supervise::recorded_exit(&c)? {
            return Ok(crate::runtime::status_of_exit(&exit, started));
        }
        match supervise::call(&c.socket(), Request::Status, supervise::CALL_TIMEOUT).await? {
            None => Ok(exited_status(&c, started)),
            Some(reply) => {
                let reply =
                    supervise::accepted(reply, RuntimeErrorKind::Internal, "container status")?;
                let running = reply
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state != monitor::protocol::ContainerState::Created);
                if running {
                    // After a daemon restart nobody watches it yet.
                    self.watch(&sandbox.id, &container.id, &c, started);
                    Ok(ContainerRuntimeStatus {
                        state: ContainerState::Running,
                        started_at_ns: started,
                        user: process_ids(c.pid),
                        ..ContainerRuntimeStatus::created()
                    })
                } else {
                    Ok(ContainerRuntimeStatus::created())
                }
            }
        }
    }

    async fn exec_sync(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let c = state(container)?;
        exec::run_to_completion(&self.config, &c, cmd, timeout).await
    }

    async fn update_container_resources(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
        resources: &ContainerResources,
    ) -> Result<(), RuntimeError> {
        let c = state(container)?;
        let hierarchy = Hierarchy::new(&self.config.cgroup_root);
        hierarchy
            .update(&c.cgroup, resources)
            .map_err(|e| match &e {
                // The kernel refuses a memory limit below the current usage.
                CgroupError::Write { file, source, .. }
                    if source.raw_os_error() == Some(libc::EBUSY)
                        && file.ends_with("memory.limit_in_bytes") =>
                {
                    RuntimeError::new(
                        RuntimeErrorKind::ResourceExhausted,
                        format!(
                            "memory_limit_in_bytes {} is below what the container uses now",
                            resources.memory_limit_bytes
                        ),
                    )
                }
                CgroupError::Invalid(_) => {
                    RuntimeError::new(RuntimeErrorKind::InvalidArgument, e.to_string())
                }
                CgroupError::Write { source, .. }
                    if source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    RuntimeError::new(RuntimeErrorKind::InvalidArgument, e.to_string())
                }
                _ => RuntimeError::internal("update the container's cgroup", e),
            })?;
        Ok(())
    }

    async fn reopen_container_log(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        let c = state(container)?;
        let reply = supervise::call(&c.socket(), Request::ReopenLog, supervise::CALL_TIMEOUT)
            .await?
            .ok_or_else(|| gone(&container.id))?;
        supervise::accepted(
            reply,
            RuntimeErrorKind::FailedPrecondition,
            "reopen the log",
        )?;
        Ok(())
    }

    async fn pod_stats(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<runtime_api::PodUsage, RuntimeError> {
        self.measure_pod(sandbox, containers).await
    }

    async fn writable_layers(&self) -> Result<runtime_api::LayerUsage, RuntimeError> {
        runtime_api::stats::measure_layers(self.layers.clone()).await
    }

    async fn container_info(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
    ) -> serde_json::Value {
        match state(container) {
            Ok(c) => serde_json::json!({
                "runtime": "host",
                "pid": c.pid,
                "dir": c.dir,
                "rootfs": c.rootfs,
                "cgroup": c.cgroup,
                "monitorSocket": c.socket(),
            }),
            Err(e) => serde_json::json!({"runtime": "host", "error": e.to_string()}),
        }
    }
}
