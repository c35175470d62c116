//! The sandbox half of the pod service: RunPodSandbox and its validation,
//! stop, remove, status and list, each routed to the pod's runtime.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use runtime_api::{
    PodMetadata, PortMapping, RuntimeError, SandboxConfig, SandboxRecord, SandboxState,
};

use crate::container_errors::RemoveContainerError;
use crate::filter::SandboxFilter;
use crate::registry::RouteError;
use crate::service::PodService;
use crate::store::StoreError;
use crate::table::{Lookup, Slot, lock, new_id, now_ns};

/// RunPodSandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum RunPodError {
    /// The request is invalid
    #[error("invalid pod sandbox config: {0}")]
    Invalid(String),
    /// No runtime of this daemon can take the pod
    #[error("invalid pod sandbox config: {0}")]
    Route(#[from] RouteError),
    /// The pod's name is already taken by another sandbox
    #[error("pod sandbox name {name:?} is reserved by sandbox {id}")]
    NameReserved {
        /// The reservation key.
        name: String,
        /// The sandbox holding it.
        id: String,
    },
    /// The runtime is not ready to run pods
    #[error("runtime not ready: {0}")]
    NotReady(String),
    /// The runtime failed to start the sandbox
    #[error("cannot start pod sandbox: {0}")]
    Runtime(#[from] RuntimeError),
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// StopPodSandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum StopPodError {
    /// The id prefix matches several sandboxes
    #[error("sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime failed to stop the sandbox
    #[error("cannot stop pod sandbox {id}: {source}")]
    Runtime {
        /// Sandbox id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RemovePodSandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum RemovePodError {
    /// The id prefix matches several sandboxes
    #[error("sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Stopping the sandbox before removal failed
    #[error(transparent)]
    Stop(#[from] StopPodError),
    /// Removing one of the sandbox's containers failed
    #[error(transparent)]
    Container(#[from] RemoveContainerError),
    /// The runtime failed to clean up
    #[error("cannot remove pod sandbox {id}: {source}")]
    Runtime {
        /// Sandbox id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be deleted
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// PodSandboxStatus failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusPodError {
    /// No such sandbox
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several sandboxes
    #[error("sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

impl PodService {
    /// Validates `config`, starts the sandbox and returns its id.
    pub async fn run(&self, config: SandboxConfig) -> Result<String, RunPodError> {
        let started_at = std::time::Instant::now();
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| RunPodError::Invalid("metadata is required".into()))?;
        for (field, value) in [("name", &metadata.name), ("namespace", &metadata.namespace)] {
            if value.is_empty() {
                return Err(RunPodError::Invalid(format!(
                    "metadata.{field} must not be empty"
                )));
            }
        }
        validate_hostname(&config.hostname).map_err(RunPodError::Invalid)?;
        validate_metadata(metadata).map_err(RunPodError::Invalid)?;
        validate_ports(&config.port_mappings).map_err(RunPodError::Invalid)?;
        validate_userns(&config).map_err(RunPodError::Invalid)?;
        let handler = self.registry.route(&config)?;
        let runtime =
            self.registry.get(&handler).cloned().ok_or_else(|| {
                RunPodError::NotReady(format!("no runtime for handler {handler:?}"))
            })?;
        if config.namespaces.userns.is_some() && !runtime.user_namespaces() {
            return Err(RunPodError::Invalid(format!(
                "user namespace mode POD: the pod runs on handler {handler:?} ({} runtime), which cannot give pods a user namespace",
                runtime.name()
            )));
        }
        runtime
            .ready()
            .await
            .map_err(|e| RunPodError::NotReady(e.message))?;

        let key = metadata.reservation_key();
        let _reservation = self.reserve(&key).await?;
        let id = new_id();
        let started = runtime.start_sandbox(&id, &config).await?;
        let record = SandboxRecord {
            id: id.clone(),
            config,
            state: SandboxState::Ready,
            reason: String::new(),
            created_at_ns: now_ns(),
            handler,
            runtime_state: started.state,
            ips: started.ips,
        };
        if let Err(e) = self.store.save(&record) {
            // Without a record nobody could ever stop it: undo.
            let _ = runtime.stop_sandbox(&id, &record.runtime_state).await;
            let _ = runtime.remove_sandbox(&id, &record.runtime_state).await;
            return Err(e.into());
        }
        lock(&self.pods).insert(id.clone(), Arc::new(tokio::sync::Mutex::new(Some(record))));
        telemetry::global().record_pod_start(
            runtime.name(),
            telemetry::StartPhase::Total,
            started_at.elapsed(),
        );
        Ok(id)
    }

    async fn reserve(&self, key: &str) -> Result<Reservation<'_>, RunPodError> {
        let slots: Vec<Slot> = lock(&self.pods).values().cloned().collect();
        for slot in slots {
            if let Some(r) = slot.lock().await.as_ref()
                && r.metadata().map(|m| m.reservation_key()).as_deref() == Some(key)
            {
                return Err(RunPodError::NameReserved {
                    name: key.into(),
                    id: r.id.clone(),
                });
            }
        }
        if !lock(&self.creating).insert(key.to_owned()) {
            return Err(RunPodError::NameReserved {
                name: key.into(),
                id: "(being created)".into(),
            });
        }
        Ok(Reservation {
            set: &self.creating,
            key: key.to_owned(),
        })
    }

    /// Stops the sandbox; unknown ids and stopped sandboxes succeed.
    pub async fn stop(&self, id: &str) -> Result<(), StopPodError> {
        let (id, slot) = match self.lookup(id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Ok(()),
            Lookup::Ambiguous => return Err(StopPodError::Ambiguous(id.into())),
        };
        let mut guard = slot.lock().await;
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        // Containers first, so their exits are recorded; the sandbox's stop
        // ends whatever is left.
        let snapshot = record.clone();
        self.stop_pod_containers(&snapshot).await;
        let runtime = self
            .runtime_of(record)
            .map_err(|source| StopPodError::Runtime {
                id: id.clone(),
                source,
            })?;
        runtime
            .stop_sandbox(&id, &record.runtime_state)
            .await
            .map_err(|source| StopPodError::Runtime {
                id: id.clone(),
                source,
            })?;
        let stopped = record.state != SandboxState::NotReady || record.reason.is_empty();
        if stopped {
            record.state = SandboxState::NotReady;
            if record.reason.is_empty() {
                record.reason = "stopped".into();
            }
        }
        self.containers_pod_stopped(record, "the pod sandbox was stopped");
        if stopped {
            self.store.save(record)?;
        }
        Ok(())
    }

    /// Stops and removes the sandbox; unknown ids succeed.
    pub async fn remove(&self, id: &str) -> Result<(), RemovePodError> {
        let (id, slot) = match self.lookup(id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Ok(()),
            Lookup::Ambiguous => return Err(RemovePodError::Ambiguous(id.into())),
        };
        self.stop(&id).await?;
        let mut guard = slot.lock().await;
        let Some(record) = guard.as_ref() else {
            return Ok(());
        };
        self.remove_pod_containers(record).await?;
        self.runtime_of(record)
            .map_err(|source| RemovePodError::Runtime {
                id: id.clone(),
                source,
            })?
            .remove_sandbox(&id, &record.runtime_state)
            .await
            .map_err(|source| RemovePodError::Runtime {
                id: id.clone(),
                source,
            })?;
        self.store.delete(&id)?;
        *guard = None;
        lock(&self.pods).remove(&id);
        Ok(())
    }

    /// The sandbox's record, and runtime facts when `verbose`.
    pub async fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(SandboxRecord, Option<serde_json::Value>), StatusPodError> {
        let slot = match self.lookup(id) {
            Lookup::Found(_, slot) => slot,
            Lookup::Missing => return Err(StatusPodError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(StatusPodError::Ambiguous(id.into())),
        };
        let record = slot
            .lock()
            .await
            .clone()
            .ok_or_else(|| StatusPodError::NotFound(id.into()))?;
        let info = match (verbose, self.runtime_of(&record)) {
            (false, _) => None,
            (true, Ok(runtime)) => Some(
                runtime
                    .sandbox_info(&record.id, &record.runtime_state)
                    .await,
            ),
            (true, Err(e)) => Some(serde_json::json!({ "error": e.to_string() })),
        };
        Ok((record, info))
    }

    /// Sandboxes that pass `filter`, oldest first.
    pub async fn list(&self, filter: &SandboxFilter) -> Vec<SandboxRecord> {
        let slots: Vec<Slot> = lock(&self.pods).values().cloned().collect();
        let mut out = Vec::new();
        for slot in slots {
            if let Some(r) = slot.lock().await.as_ref()
                && filter.matches(r)
            {
                out.push(r.clone());
            }
        }
        out.sort_by(|a, b| a.created_at_ns.cmp(&b.created_at_ns).then(a.id.cmp(&b.id)));
        out
    }
}

struct Reservation<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

/// A pod with a user namespace of its own shares none of the node's
/// namespaces and is not privileged (Kubernetes' rule for `hostUsers: false`).
fn validate_userns(config: &SandboxConfig) -> Result<(), String> {
    if config.namespaces.userns.is_none() {
        return Ok(());
    }
    let ns = &config.namespaces;
    let node = [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)]
        .into_iter()
        .find(|(_, mode)| *mode == runtime_api::container::NamespaceMode::Node);
    if let Some((what, _)) = node {
        return Err(format!(
            "user namespace mode POD cannot go with the node's {what} namespace"
        ));
    }
    if config.privileged {
        return Err("user namespace mode POD cannot go with a privileged pod".into());
    }
    Ok(())
}

fn validate_hostname(hostname: &str) -> Result<(), String> {
    if hostname.len() > 64 {
        return Err(format!(
            "hostname {hostname:?} is longer than 64 characters"
        ));
    }
    if let Some(c) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!("hostname {hostname:?} contains {c:?}"));
    }
    Ok(())
}

/// Metadata travels to CNI plugins as `KEY=value;…` (CNI_ARGS): separators
/// and control characters in it are refused.
fn validate_metadata(m: &PodMetadata) -> Result<(), String> {
    for (field, value) in [
        ("name", &m.name),
        ("namespace", &m.namespace),
        ("uid", &m.uid),
    ] {
        if let Some(c) = value
            .chars()
            .find(|c| matches!(c, ';' | '=') || c.is_control())
        {
            return Err(format!("metadata.{field} {value:?} contains {c:?}"));
        }
    }
    Ok(())
}

fn validate_ports(ports: &[PortMapping]) -> Result<(), String> {
    for p in ports {
        if !(0..=65535).contains(&p.host_port) || !(1..=65535).contains(&p.container_port) {
            return Err(format!(
                "port mapping {}:{} is out of range (host 0-65535, container 1-65535)",
                p.host_port, p.container_port
            ));
        }
        if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!(
                "port mapping protocol {:?} is not tcp, udp or sctp",
                p.protocol
            ));
        }
    }
    Ok(())
}
