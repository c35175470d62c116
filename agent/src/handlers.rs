//! Request handlers.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use agent_api::messages::AgentErrorKind;
use agent_api::{AgentError, GuestInfo, Request, Response};

use crate::output::Output;

/// What the handlers know about the guest.
#[derive(Debug)]
pub struct State {
    modules: crate::init::LoadedModules,
    containers: std::sync::Arc<crate::containers::Containers>,
    is_init: bool,
    output: Option<std::sync::mpsc::Sender<Output>>,
    streams: std::sync::Arc<crate::streams::StreamTable>,
}

impl State {
    /// State for an agent that loaded `modules`; `is_init` when running as PID 1.
    pub fn new(modules: crate::init::LoadedModules, is_init: bool) -> Self {
        Self {
            modules,
            containers: std::sync::Arc::new(crate::containers::Containers::new()),
            is_init,
            output: None,
            streams: std::sync::Arc::default(),
        }
    }

    /// The open interactive streams.
    pub fn streams(&self) -> &crate::streams::StreamTable {
        &self.streams
    }

    /// Attaches the output queue, so shutdown can wait for the last answer to leave.
    pub fn with_output(mut self, output: std::sync::mpsc::Sender<Output>) -> Self {
        self.streams.set_output(output.clone());
        self.output = Some(output);
        self
    }

    /// Carries out one request.
    pub async fn handle(&self, request: Request) -> Result<Response, AgentError> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::GuestInfo => Ok(Response::GuestInfo(self.guest_info())),
            Request::SetupSandbox {
                hostname,
                clock_ns,
                share_tag,
                sysctls,
                userns,
            } => {
                set_hostname(&hostname)?;
                crate::init::set_clock(clock_ns);
                crate::init::sandbox_mounts(&share_tag)?;
                crate::podns::pod_pid_namespace()?;
                match &userns {
                    None => set_sysctls(&sysctls)?,
                    Some(userns) => {
                        crate::podns::pod_user_namespace(userns)?;
                        // IPC sysctls belong to the pod's own IPC namespace.
                        let (ipc, rest): (BTreeMap<_, _>, BTreeMap<_, _>) =
                            sysctls.into_iter().partition(|(k, _)| {
                                container::spec::is_ipc_sysctl(&k.replace('/', "."))
                            });
                        set_sysctls(&rest)?;
                        let ipc: Vec<(String, String)> = ipc.into_iter().collect();
                        for (key, _) in &ipc {
                            check_sysctl_name(key)?;
                        }
                        container::namespaces::set_sysctls_in(
                            &std::path::Path::new(agent_api::messages::POD_USERNS_DIR).join("ipc"),
                            nix::sched::CloneFlags::CLONE_NEWIPC,
                            userns.root(),
                            &ipc,
                        )
                        .map_err(|e| AgentError::new(AgentErrorKind::InvalidArgument, e))?;
                    }
                }
                Ok(Response::Done)
            }
            Request::ConfigureNetwork { interfaces, routes } => {
                crate::net::configure(&interfaces, &routes).await?;
                crate::init::sandbox_ready();
                Ok(Response::Done)
            }
            Request::Shutdown => Ok(Response::Done),
            Request::CreateContainer(req) => self.containers.create(req).await,
            Request::StartContainer { id } => self.containers.start(&id).await,
            Request::StopContainer {
                id,
                signal,
                timeout_ms,
            } => {
                self.containers
                    .stop(&id, signal, Duration::from_millis(timeout_ms))
                    .await
            }
            Request::RemoveContainer { id } => self.containers.remove(&id).await,
            Request::ContainerStatus { id } => self.containers.status(&id),
            Request::ListContainers => Ok(self.containers.list()),
            Request::Stats { containers } => Ok(self.containers.stats(&containers)),
            Request::ExecSync {
                id,
                args,
                timeout_ms,
            } => {
                self.containers
                    .exec_sync(&id, args, timeout_ms.map(Duration::from_millis))
                    .await
            }
            Request::ReopenLog { id } => self.containers.reopen_log(&id),
            Request::WaitEvents { after, timeout_ms } => Ok(self
                .containers
                .wait_events(after, Duration::from_millis(timeout_ms))
                .await),
            Request::ExecStart(req) => self.streams.exec(&self.containers, req).await,
            Request::Attach {
                stream,
                id,
                stdin,
                stdout,
                stderr,
            } => {
                self.streams
                    .attach(&self.containers, stream, &id, (stdin, stdout, stderr))
                    .await
            }
            Request::PortForward { stream, port } => self.streams.port_forward(stream, port).await,
            Request::Resize {
                stream,
                width,
                height,
            } => self.streams.resize(stream, width, height),
            Request::OnlineResources { cpus, timeout_ms } => {
                let limit = Duration::from_millis(timeout_ms);
                tokio::task::spawn_blocking(move || {
                    crate::resources::online_resources(cpus, limit)
                })
                .await
                .map_err(|e| AgentError::new(AgentErrorKind::Internal, e.to_string()))??;
                Ok(Response::GuestInfo(self.guest_info()))
            }
            Request::UpdateContainer { id, resources } => self.containers.update(&id, &resources),
            Request::ReleaseDisk { serial } => {
                tokio::task::spawn_blocking(move || crate::disks::release(&serial))
                    .await
                    .map_err(|e| AgentError::new(AgentErrorKind::Internal, e.to_string()))??;
                Ok(Response::Done)
            }
        }
    }

    /// Powers the guest off once every queued answer has been written.
    pub async fn shutdown(&self) {
        if let Some(out) = &self.output {
            let (ack_tx, ack_rx) = std::sync::mpsc::channel();
            if out.send(Output::Flush(ack_tx)).is_ok() {
                let _ = tokio::task::spawn_blocking(move || {
                    ack_rx.recv_timeout(Duration::from_secs(2))
                })
                .await;
            }
        }
        // Give the bytes time to cross the port before the device goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tracing::info!("powering off");
        if self.is_init {
            crate::init::power_off();
        }
        std::process::exit(0);
    }

    fn guest_info(&self) -> GuestInfo {
        let uname = nix::sys::utsname::uname().ok();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        GuestInfo {
            kernel: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpus: crate::resources::online_cpus().len().max(1) as u32,
            mem_total_kib: mem("MemTotal:"),
            mem_available_kib: mem("MemAvailable:"),
            uptime_secs: fs::read_to_string("/proc/uptime")
                .ok()
                .and_then(|u| u.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0.0),
            modules_loaded: self
                .modules
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Writes each sysctl under `/proc/sys` (`a.b.c` or `a/b/c` names).
/// Refuses a sysctl name that is not a plain path under `/proc/sys`.
fn check_sysctl_name(key: &str) -> Result<(), AgentError> {
    let rel = key.replace('.', "/");
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "..") {
        return Err(AgentError::new(
            AgentErrorKind::InvalidArgument,
            format!("invalid sysctl name {key:?}"),
        ));
    }
    Ok(())
}

fn set_sysctls(sysctls: &BTreeMap<String, String>) -> Result<(), AgentError> {
    for (key, value) in sysctls {
        check_sysctl_name(key)?;
        let rel = key.replace('.', "/");
        let path = std::path::Path::new("/proc/sys").join(&rel);
        fs::write(&path, value).map_err(|e| {
            AgentError::new(
                AgentErrorKind::InvalidArgument,
                format!("cannot set sysctl {key}={value}: {e}"),
            )
        })?;
    }
    Ok(())
}

fn set_hostname(hostname: &str) -> Result<(), AgentError> {
    if hostname.is_empty() {
        return Ok(());
    }
    if hostname.len() > 64 || hostname.contains(['/', '\0', '\n']) {
        return Err(AgentError::new(
            AgentErrorKind::InvalidArgument,
            format!("invalid hostname {hostname:?}"),
        ));
    }
    nix::unistd::sethostname(hostname).map_err(|e| {
        AgentError::new(
            AgentErrorKind::Internal,
            format!("sethostname {hostname}: {e}"),
        )
    })?;
    let _ = fs::create_dir_all("/etc");
    fs::write("/etc/hostname", format!("{hostname}\n")).map_err(|e| {
        AgentError::new(
            AgentErrorKind::Internal,
            format!("write /etc/hostname: {e}"),
        )
    })
}
