//! The host runtime's value: its settings, the event channel to the pod
//! service, and the watchers that report container exits.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monitor::protocol::{Exit, Request};
use runtime_api::RuntimeEvent;
use runtime_api::container::{ContainerRuntimeStatus, ContainerState};
use tokio::sync::mpsc;

use crate::config::{HostContainer, HostRuntimeConfig};
use crate::supervise;

/// How long a `wait` request may stay open before it is asked again.
const WAIT_ROUND: Duration = Duration::from_secs(3600);

/// Pods as host namespaces and containers made by libcontainer on the host,
/// each watched by its own `frakti-monitor`.
#[derive(Debug)]
pub struct HostRuntime {
    pub(crate) config: HostRuntimeConfig,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    watched: Arc<Mutex<HashSet<String>>>,
    /// What the containers' writable layers use in all.
    pub(crate) layers: Arc<usage::dir::CachedDirUsage>,
    /// Whether ID-mapped mounts work where containers' layers go.
    pub(crate) idmap: container::idmap::Probe,
    /// Whether the state directory takes ACLs (see [`crate::acl`]).
    pub(crate) acl: std::sync::OnceLock<bool>,
}

impl HostRuntime {
    /// A host runtime with `config`, reporting container exits on `events`.
    pub fn new(config: HostRuntimeConfig, events: mpsc::UnboundedSender<RuntimeEvent>) -> Self {
        let layers =
            usage::dir::CachedDirUsage::new(&config.layers_dir, runtime_api::stats::LAYERS_MAX_AGE);
        Self {
            config,
            events,
            watched: Arc::default(),
            layers: Arc::new(layers),
            idmap: container::idmap::Probe::default(),
            acl: std::sync::OnceLock::new(),
        }
    }

    /// Reports the exit of container `id` of `sandbox_id` when its monitor
    /// sees it, unless a watcher already does.
    pub(crate) fn watch(&self, sandbox_id: &str, id: &str, c: &HostContainer, started_at_ns: i64) {
        {
            let mut watched = self
                .watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !watched.insert(id.to_owned()) {
                return;
            }
        }
        let (events, watched) = (self.events.clone(), self.watched.clone());
        let (sandbox_id, id, c) = (sandbox_id.to_owned(), id.to_owned(), c.clone());
        tokio::spawn(async move {
            loop {
                match supervise::call(&c.socket(), Request::Wait, WAIT_ROUND).await {
                    // Asked again after a long quiet round.
                    Err(e) if e.kind == runtime_api::RuntimeErrorKind::DeadlineExceeded => continue,
                    Ok(Some(reply)) if !reply.ok => {
                        tracing::warn!(%id, "monitor refused wait: {:?}", reply.error);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok(Some(_)) | Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%id, "wait: {}", runtime_api::report(&e));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if !c.socket().exists() {
                            break;
                        }
                    }
                }
            }
            // The exit file is written before the monitor answers or leaves.
            let status = exited_status(&c, started_at_ns);
            watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            let _ = events.send(RuntimeEvent::ContainerExited {
                sandbox_id,
                id,
                status,
            });
        });
    }
}

/// The status of a container from its exit, as the CRI reports it.
pub(crate) fn status_of_exit(exit: &Exit, started_at_ns: i64) -> ContainerRuntimeStatus {
    let reason = if exit.oom_killed {
        "OOMKilled"
    } else if exit.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerRuntimeStatus {
        state: ContainerState::Exited,
        started_at_ns,
        finished_at_ns: exit.finished_at_ns,
        exit_code: exit.exit_code,
        reason: reason.to_owned(),
        message: String::new(),
        user: None,
    }
}

/// The status of a container whose monitor is gone: its recorded exit, or
/// an error exit when the monitor died without recording one.
pub(crate) fn exited_status(c: &HostContainer, started_at_ns: i64) -> ContainerRuntimeStatus {
    match supervise::recorded_exit(c) {
        Ok(Some(exit)) => status_of_exit(&exit, started_at_ns),
        Ok(None) | Err(_) => ContainerRuntimeStatus {
            state: ContainerState::Exited,
            started_at_ns,
            finished_at_ns: crate::now_ns(),
            exit_code: 255,
            reason: "Error".to_owned(),
            message: "the container's monitor ended without recording its exit".to_owned(),
            user: None,
        },
    }
}
