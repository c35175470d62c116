//! The pod service: validates, serialises operations per pod, persists, and
//! routes each pod to its runtime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::container_service::ContainerSlot;
use crate::model::{SandboxConfig, SandboxFilter, SandboxRecord, SandboxState};
use crate::runtime::{PodRuntime, RuntimeError, RuntimeEvent};
use crate::store::{Store, StoreError};

/// RunPodSandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum RunPodError {
    /// The request is invalid
    #[error("invalid pod sandbox config: {0}")]
    Invalid(String),
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
    Container(#[from] crate::container_service::RemoveContainerError),
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

pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<SandboxRecord>>>;

/// Pod sandboxes and their containers, of one daemon.
///
/// Lock order: a sandbox slot's lock may be held while taking a container's
/// operation lock, never the other way round.
#[derive(Debug)]
pub struct PodService {
    pub(crate) store: Store,
    pub(crate) runtime: Arc<dyn PodRuntime>,
    handlers: Vec<String>,
    /// One slot per known sandbox; the slot's lock serialises operations on it.
    pub(crate) pods: Mutex<HashMap<String, Slot>>,
    /// Reservation keys of sandboxes being created.
    creating: Mutex<HashSet<String>>,
    /// One slot per known container.
    pub(crate) containers: Mutex<HashMap<String, Arc<ContainerSlot>>>,
    /// `(sandbox id, "<name>_<attempt>")` -> the container holding the name.
    pub(crate) container_names: Mutex<HashMap<(String, String), String>>,
}

pub(crate) enum Lookup<T> {
    Found(String, T),
    Missing,
    Ambiguous,
}

/// Looks `id` up in `map` as an exact id or a unique prefix.
pub(crate) fn lookup_in<T: Clone>(map: &Mutex<HashMap<String, T>>, id: &str) -> Lookup<T> {
    let map = lock(map);
    if let Some(slot) = map.get(id) {
        return Lookup::Found(id.to_owned(), slot.clone());
    }
    if id.is_empty() {
        return Lookup::Missing;
    }
    let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((k, slot)), None) => Lookup::Found(k.clone(), slot.clone()),
        (None, _) => Lookup::Missing,
        (Some(_), Some(_)) => Lookup::Ambiguous,
    }
}

impl PodService {
    /// A service over `store` running pods on `runtime`; `handlers` are the
    /// runtime handler names accepted besides the empty default.
    pub fn new(store: Store, runtime: Arc<dyn PodRuntime>, handlers: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime,
            handlers,
            pods: Mutex::default(),
            creating: Mutex::default(),
            containers: Mutex::default(),
            container_names: Mutex::default(),
        })
    }

    /// Runtime handler names this service accepts.
    pub fn handlers(&self) -> &[String] {
        &self.handlers
    }

    /// Whether the runtime can start pods.
    pub async fn runtime_ready(&self) -> Result<(), String> {
        self.runtime.ready().await
    }

    /// Whether pods can get a network.
    pub async fn network_ready(&self) -> Result<(), String> {
        self.runtime.network_ready().await
    }

    /// Loads stored sandboxes and re-adopts those still running.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let records = self.store.load_all()?;
        let count = records.len();
        for mut record in records {
            if record.state == SandboxState::Ready {
                match self
                    .runtime
                    .adopt_sandbox(&record.id, &record.runtime_state)
                    .await
                {
                    Ok(true) => tracing::info!(id = %record.id, "re-adopted running sandbox"),
                    Ok(false) => {
                        tracing::warn!(id = %record.id, "sandbox died while the daemon was down");
                        record.state = SandboxState::NotReady;
                        record.reason = "sandbox exited while frakti was not running".into();
                        self.store.save(&record)?;
                    }
                    Err(e) => {
                        tracing::error!(id = %record.id, "cannot re-adopt sandbox: {e}");
                        record.state = SandboxState::NotReady;
                        record.reason = format!("cannot re-adopt: {e}");
                        self.store.save(&record)?;
                    }
                }
            }
            let id = record.id.clone();
            lock(&self.pods).insert(id, Arc::new(tokio::sync::Mutex::new(Some(record))));
        }
        let containers = self.recover_containers().await?;
        tracing::info!(sandboxes = count, containers, "records recovered");
        Ok(count)
    }

    /// Applies runtime events (e.g. a VM that died) until the channel closes.
    pub async fn watch_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<RuntimeEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                RuntimeEvent::SandboxExited { id, reason } => {
                    let Some(slot) = lock(&self.pods).get(&id).cloned() else {
                        continue;
                    };
                    let mut guard = slot.lock().await;
                    let Some(record) = guard.as_mut() else {
                        continue;
                    };
                    if record.state == SandboxState::Ready {
                        tracing::warn!(%id, "sandbox exited: {reason}");
                        record.state = SandboxState::NotReady;
                        self.containers_pod_stopped(&id, &format!("the pod VM stopped: {reason}"));
                        record.reason = reason;
                        if let Err(e) = self.store.save(record) {
                            tracing::error!(%id, "cannot persist sandbox state: {e}");
                        }
                    }
                }
                RuntimeEvent::ContainerExited {
                    sandbox_id,
                    id,
                    status,
                } => self.container_exited(&sandbox_id, &id, status),
            }
        }
    }

    /// Validates `config`, starts the sandbox and returns its id.
    pub async fn run(&self, config: SandboxConfig) -> Result<String, RunPodError> {
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
        if !config.runtime_handler.is_empty() && !self.handlers.contains(&config.runtime_handler) {
            return Err(RunPodError::Invalid(format!(
                "unknown runtime handler {:?} (known: {:?})",
                config.runtime_handler, self.handlers
            )));
        }
        validate_hostname(&config.hostname).map_err(RunPodError::Invalid)?;
        validate_metadata(metadata).map_err(RunPodError::Invalid)?;
        validate_ports(&config.port_mappings).map_err(RunPodError::Invalid)?;
        self.runtime.ready().await.map_err(RunPodError::NotReady)?;

        let key = metadata.reservation_key();
        let _reservation = self.reserve(&key).await?;
        let id = new_id();
        let started = self.runtime.start_sandbox(&id, &config).await?;
        let record = SandboxRecord {
            id: id.clone(),
            config,
            state: SandboxState::Ready,
            reason: String::new(),
            created_at_ns: now_ns(),
            runtime: self.runtime.name().to_owned(),
            runtime_state: started.state,
            ips: started.ips,
        };
        if let Err(e) = self.store.save(&record) {
            // Without a record nobody could ever stop it: undo.
            let _ = self.runtime.stop_sandbox(&id, &record.runtime_state).await;
            let _ = self
                .runtime
                .remove_sandbox(&id, &record.runtime_state)
                .await;
            return Err(e.into());
        }
        lock(&self.pods).insert(id.clone(), Arc::new(tokio::sync::Mutex::new(Some(record))));
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
        self.runtime
            .stop_sandbox(&id, &record.runtime_state)
            .await
            .map_err(|source| StopPodError::Runtime {
                id: id.clone(),
                source,
            })?;
        self.containers_pod_stopped(&id, "the pod sandbox was stopped");
        if record.state != SandboxState::NotReady || record.reason.is_empty() {
            record.state = SandboxState::NotReady;
            if record.reason.is_empty() {
                record.reason = "stopped".into();
            }
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
        self.runtime
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
        let info = if verbose {
            Some(
                self.runtime
                    .sandbox_info(&record.id, &record.runtime_state)
                    .await,
            )
        } else {
            None
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

    pub(crate) fn lookup(&self, id: &str) -> Lookup<Slot> {
        lookup_in(&self.pods, id)
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
fn validate_metadata(m: &crate::model::PodMetadata) -> Result<(), String> {
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

fn validate_ports(ports: &[crate::model::PortMapping]) -> Result<(), String> {
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

/// A new random sandbox id: 64 lowercase hex characters.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
