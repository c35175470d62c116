//! The pod service: the tables of sandboxes and containers of one daemon,
//! the runtime registry they are routed through, and what happens without a
//! caller (recovery after a restart, runtime events).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use runtime_api::{NotReady, SandboxState, report};
use runtime_api::{PodRuntime, RuntimeError, RuntimeErrorKind, RuntimeEvent, SandboxRecord};
use tokio::sync::mpsc;

use crate::events::EventHub;
use crate::registry::Registry;
use crate::stats::CpuSamples;
use crate::store::{Store, StoreError};
use crate::table::{ContainerSlot, Lookup, Slot, lock, lookup_in};

/// Pod sandboxes and their containers, of one daemon.
///
/// Lock order: a sandbox slot's lock may be held while taking a container's
/// operation lock, never the other way round.
#[derive(Debug)]
pub struct PodService {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    /// One slot per known sandbox; the slot's lock serialises operations on it.
    pub(crate) pods: Mutex<HashMap<String, Slot>>,
    /// Reservation keys of sandboxes being created.
    pub(crate) creating: Mutex<HashSet<String>>,
    /// One slot per known container.
    pub(crate) containers: Mutex<HashMap<String, Arc<ContainerSlot>>>,
    /// `(sandbox id, "<name>_<attempt>")` -> the container holding the name.
    pub(crate) container_names: Mutex<HashMap<(String, String), String>>,
    /// Container events.
    pub(crate) events: EventHub,
    /// The last CPU sample of each pod and container, for rates.
    pub(crate) cpu_samples: CpuSamples,
}

impl PodService {
    /// A service over `store` running pods on the runtimes of `registry`.
    pub fn new(store: Store, registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry,
            pods: Mutex::default(),
            creating: Mutex::default(),
            containers: Mutex::default(),
            container_names: Mutex::default(),
            events: EventHub::default(),
            cpu_samples: CpuSamples::default(),
        })
    }

    /// Runtime handler names this service accepts besides the empty default.
    pub fn handlers(&self) -> Vec<String> {
        self.registry.handlers()
    }

    /// Whether pods of `handler` (the default one for `""`) may have a user
    /// namespace of their own.
    pub fn user_namespaces(&self, handler: &str) -> bool {
        let runtime = if handler.is_empty() {
            Some(self.registry.default_runtime())
        } else {
            self.registry.get(handler)
        };
        runtime.is_some_and(|r| r.user_namespaces())
    }

    /// Whether the default runtime can start pods.
    pub async fn runtime_ready(&self) -> Result<(), NotReady> {
        self.registry.default_runtime().ready().await
    }

    /// Whether pods of the default runtime can get a network.
    pub async fn network_ready(&self) -> Result<(), NotReady> {
        self.registry.default_runtime().network_ready().await
    }

    /// Lets every runtime prepare in the background what the first pod
    /// would otherwise wait for.
    pub fn warm_up(&self) {
        for runtime in self.registry.runtimes() {
            tokio::spawn(async move { runtime.warm_up().await });
        }
    }

    /// Lets every runtime stop what `warm_up` keeps going (the daemon stops).
    pub async fn cool_down(&self) {
        for runtime in self.registry.runtimes() {
            runtime.cool_down().await;
        }
    }

    /// The runtime of a stored sandbox, by the handler in its record.
    pub(crate) fn runtime_of(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<&Arc<dyn PodRuntime>, RuntimeError> {
        self.registry.for_record(&sandbox.handler).ok_or_else(|| {
            RuntimeError::new(
                RuntimeErrorKind::FailedPrecondition,
                format!(
                    "pod sandbox {} belongs to runtime handler {:?}, which this daemon \
                     is not configured with",
                    sandbox.id, sandbox.handler
                ),
            )
        })
    }

    /// Loads stored sandboxes and re-adopts those still running, then the
    /// containers; then lets each runtime sweep what sandboxes without a
    /// record left behind.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let records = self.store.load_all()?;
        let count = records.len();
        let mut known = HashSet::new();
        for mut record in records {
            known.insert(record.id.clone());
            if record.state == SandboxState::Ready {
                let adopted = match self.runtime_of(&record) {
                    Ok(runtime) => {
                        runtime
                            .adopt_sandbox(&record.id, &record.runtime_state)
                            .await
                    }
                    Err(e) => Err(e),
                };
                let lost = match adopted {
                    Ok(true) => {
                        tracing::info!(id = %record.id, "re-adopted running sandbox");
                        None
                    }
                    Ok(false) => {
                        tracing::warn!(id = %record.id, "sandbox died while the daemon was down");
                        Some("sandbox exited while frakti was not running".to_owned())
                    }
                    Err(e) => {
                        tracing::error!(id = %record.id, "cannot re-adopt sandbox: {}", report(&e));
                        Some(format!("cannot re-adopt: {}", report(&e)))
                    }
                };
                if let Some(reason) = lost {
                    record.state = SandboxState::NotReady;
                    record.reason = reason;
                    self.store.save(&record)?;
                }
            }
            let id = record.id.clone();
            lock(&self.pods).insert(id, Arc::new(tokio::sync::Mutex::new(Some(record))));
        }
        let containers = self.recover_containers().await?;
        tracing::info!(sandboxes = count, containers, "records recovered");
        for runtime in self.registry.runtimes() {
            let swept = runtime.sweep_orphans(&known);
            if swept > 0 {
                tracing::warn!(
                    runtime = runtime.name(),
                    swept,
                    "swept sandboxes without a record"
                );
            }
        }
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
                        record.reason = reason;
                        let why = format!("the pod VM stopped: {}", record.reason);
                        self.containers_pod_stopped(record, &why);
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

    pub(crate) fn lookup(&self, id: &str) -> Lookup<Slot> {
        lookup_in(&self.pods, id)
    }
}
