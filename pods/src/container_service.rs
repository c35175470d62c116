//! The container half of the pod service: records, name reservations,
//! per-container serialisation, and routing to the runtime.
//!
//! The runtime is the source of truth for process state; records keep the
//! last status it reported, and are refreshed on `container_status`.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::container::{
    ContainerConfig, ContainerFilter, ContainerRecord, ContainerRuntimeStatus, ContainerState,
    ExecOutput, NamespaceMode, Seccomp,
};
use crate::model::{SandboxRecord, SandboxState};
use crate::runtime::RuntimeError;
use crate::service::{Lookup, PodService, lock, lookup_in, new_id, now_ns};
use crate::store::StoreError;

/// Exit code recorded for a container whose start failed.
const START_ERROR_EXIT_CODE: i32 = 128;

/// CreateContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateContainerError {
    /// The request is invalid
    #[error("invalid container config: {0}")]
    Invalid(String),
    /// The pod sandbox does not exist
    #[error("pod sandbox {0:?} not found")]
    SandboxNotFound(String),
    /// The sandbox id prefix matches several sandboxes
    #[error("sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The pod sandbox is not ready
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    /// The container's name is already taken in its pod
    #[error("container name {name:?} is reserved by container {id}")]
    NameReserved {
        /// `<name>_<attempt>`.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// The runtime failed to create the container
    #[error("cannot create container: {0}")]
    Runtime(#[from] RuntimeError),
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// StartContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum StartContainerError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a created container can be started
    #[error("container {id} is {state:?}, not Created")]
    NotCreated {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The container's pod sandbox is not ready
    #[error("pod sandbox {0} of the container is not ready")]
    SandboxNotReady(String),
    /// The runtime failed to start the container
    #[error("cannot start container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// StopContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum StopContainerError {
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime failed to stop the container
    #[error("cannot stop container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RemoveContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveContainerError {
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime failed to stop or remove the container
    #[error("cannot remove container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be deleted
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// ContainerStatus failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerStatusError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

/// ExecSync failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecSyncError {
    /// The request is invalid
    #[error("invalid exec request: {0}")]
    Invalid(String),
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Commands run only in a running container
    #[error("container {id} is not running ({state:?})")]
    NotRunning {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The runtime failed to run the command
    #[error("cannot exec in container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
}

/// ReopenContainerLog failed.
#[derive(Debug, thiserror::Error)]
pub enum ReopenLogError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a running container's log can be reopened
    #[error("container {id} is not running ({state:?}); its log is not reopened")]
    NotRunning {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The runtime failed to reopen the log
    #[error("cannot reopen the log of container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
}

/// One known container: its operation lock and its record.
#[derive(Debug)]
pub(crate) struct ContainerSlot {
    /// The container's sandbox (never changes).
    pub(crate) sandbox_id: String,
    /// Serialises operations on this container.
    op: tokio::sync::Mutex<()>,
    /// The record; `None` once removed. Held only briefly, so readers never
    /// wait for an operation in progress.
    record: Mutex<Option<ContainerRecord>>,
}

impl ContainerSlot {
    fn new(record: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            sandbox_id: record.sandbox_id.clone(),
            op: tokio::sync::Mutex::new(()),
            record: Mutex::new(Some(record)),
        })
    }

    fn get(&self) -> Option<ContainerRecord> {
        lock(&self.record).clone()
    }
}

/// Releases a name reservation unless the creation succeeded.
struct NameGuard<'a> {
    names: &'a Mutex<HashMap<(String, String), String>>,
    key: Option<(String, String)>,
}

impl NameGuard<'_> {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(self.names).remove(&key);
        }
    }
}

fn name_key(record_sandbox: &str, config: &ContainerConfig) -> (String, String) {
    (
        record_sandbox.to_owned(),
        format!("{}_{}", config.metadata.name, config.metadata.attempt),
    )
}

/// The status of a container whose pod sandbox stopped under it.
fn pod_stopped_status(current: &ContainerRuntimeStatus, why: &str) -> ContainerRuntimeStatus {
    ContainerRuntimeStatus {
        state: ContainerState::Exited,
        started_at_ns: current.started_at_ns,
        finished_at_ns: now_ns(),
        exit_code: if current.state == ContainerState::Created {
            0
        } else {
            // As if killed by SIGKILL.
            137
        },
        reason: "Error".into(),
        message: why.to_owned(),
    }
}

/// The sandbox, when it is ready and `record` is running: what exec and log
/// reopening need.
fn ready_and_running(
    sandbox: Option<SandboxRecord>,
    record: &ContainerRecord,
) -> Option<SandboxRecord> {
    sandbox.filter(|s| {
        s.state == SandboxState::Ready && record.status.state == ContainerState::Running
    })
}

fn is_live(state: ContainerState) -> bool {
    state != ContainerState::Exited
}

impl PodService {
    /// Validates `config` and creates the container (not started) in the
    /// ready sandbox `sandbox_id`; returns the container's id.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> Result<String, CreateContainerError> {
        validate_container(&config).map_err(CreateContainerError::Invalid)?;
        let (sandbox_id, pod_slot) = match self.lookup(sandbox_id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => {
                return Err(CreateContainerError::SandboxNotFound(sandbox_id.into()));
            }
            Lookup::Ambiguous => return Err(CreateContainerError::Ambiguous(sandbox_id.into())),
        };
        let sandbox = pod_slot
            .lock()
            .await
            .clone()
            .ok_or_else(|| CreateContainerError::SandboxNotFound(sandbox_id.clone()))?;
        if sandbox.state != SandboxState::Ready {
            return Err(CreateContainerError::SandboxNotReady(sandbox_id));
        }
        if config.security.privileged && !sandbox.config.privileged {
            return Err(CreateContainerError::Invalid(
                "a privileged container needs a pod sandbox created as privileged".into(),
            ));
        }
        self.check_target(&sandbox_id, &config)
            .map_err(CreateContainerError::Invalid)?;

        let id = new_id();
        let key = name_key(&sandbox_id, &config);
        {
            let mut names = lock(&self.container_names);
            if let Some(holder) = names.get(&key) {
                return Err(CreateContainerError::NameReserved {
                    name: key.1,
                    id: holder.clone(),
                });
            }
            names.insert(key.clone(), id.clone());
        }
        let reservation = NameGuard {
            names: &self.container_names,
            key: Some(key),
        };

        let log_path = absolute_log_path(&sandbox.config.log_directory, &config.log_path);
        let runtime_state = self
            .runtime
            .create_container(&sandbox, &id, &config, &log_path)
            .await?;
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.clone(),
            config,
            created_at_ns: now_ns(),
            status: ContainerRuntimeStatus::created(),
            log_path,
            runtime_state,
        };

        // Publish under the sandbox's lock, so a concurrent StopPodSandbox
        // either sees this container or makes this creation fail.
        let guard = pod_slot.lock().await;
        let still_ready = guard
            .as_ref()
            .is_some_and(|s| s.state == SandboxState::Ready);
        let failure = if !still_ready {
            Some(CreateContainerError::SandboxNotReady(sandbox_id.clone()))
        } else {
            self.store
                .save_container(&record)
                .err()
                .map(CreateContainerError::from)
        };
        if let Some(e) = failure {
            drop(guard);
            if let Err(undo) = self.runtime.remove_container(&sandbox, &record).await {
                tracing::warn!(%id, "cannot undo container creation: {undo}");
            }
            return Err(e);
        }
        lock(&self.containers).insert(id.clone(), ContainerSlot::new(record));
        drop(guard);
        reservation.keep();
        tracing::info!(%id, sandbox = %sandbox_id, "container created");
        Ok(id)
    }

    /// A target namespace must name a container created earlier in the same pod.
    fn check_target(&self, sandbox_id: &str, config: &ContainerConfig) -> Result<(), String> {
        let ns = &config.security.namespaces;
        if ![ns.network, ns.pid, ns.ipc].contains(&NamespaceMode::Target) {
            return Ok(());
        }
        let containers = lock(&self.containers);
        match containers.get(&ns.target_id) {
            Some(slot) if slot.sandbox_id == sandbox_id => Ok(()),
            _ => Err(format!(
                "namespace target {:?} is not a container of pod sandbox {sandbox_id}",
                ns.target_id
            )),
        }
    }

    /// Starts a created container.
    pub async fn start_container(&self, id: &str) -> Result<(), StartContainerError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(StartContainerError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(StartContainerError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let _op = slot.op.lock().await;
        let record = slot
            .get()
            .ok_or_else(|| StartContainerError::NotFound(id.clone()))?;
        if record.status.state != ContainerState::Created {
            return Err(StartContainerError::NotCreated {
                id,
                state: record.status.state,
            });
        }
        let Some(sandbox) = sandbox.filter(|s| s.state == SandboxState::Ready) else {
            return Err(StartContainerError::SandboxNotReady(
                slot.sandbox_id.clone(),
            ));
        };
        match self.runtime.start_container(&sandbox, &record).await {
            Ok(status) => {
                self.apply_status(&slot, status)?;
                tracing::info!(%id, "container started");
                Ok(())
            }
            Err(source) => {
                // The kubelet creates a new attempt; this one is over.
                let failed = ContainerRuntimeStatus {
                    state: ContainerState::Exited,
                    started_at_ns: 0,
                    finished_at_ns: now_ns(),
                    exit_code: START_ERROR_EXIT_CODE,
                    reason: "StartError".into(),
                    message: source.to_string(),
                };
                if let Err(e) = self.apply_status(&slot, failed) {
                    tracing::error!(%id, "cannot persist the failed start: {e}");
                }
                Err(StartContainerError::Runtime { id, source })
            }
        }
    }

    /// Stops a running container, killing it after `timeout`; unknown ids and
    /// containers that are not running succeed.
    pub async fn stop_container(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<(), StopContainerError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Ok(()),
            Lookup::Ambiguous => return Err(StopContainerError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let _op = slot.op.lock().await;
        self.stop_locked(&id, &slot, sandbox.as_ref(), timeout)
            .await
    }

    /// Stops the container; the caller holds its operation lock.
    async fn stop_locked(
        &self,
        id: &str,
        slot: &ContainerSlot,
        sandbox: Option<&SandboxRecord>,
        timeout: Duration,
    ) -> Result<(), StopContainerError> {
        let Some(record) = slot.get() else {
            return Ok(());
        };
        match record.status.state {
            // Nothing runs: a created container stays created until removed.
            ContainerState::Exited | ContainerState::Created => return Ok(()),
            ContainerState::Running | ContainerState::Unknown => {}
        }
        let Some(sandbox) = sandbox.filter(|s| s.state == SandboxState::Ready) else {
            self.apply_status(
                slot,
                pod_stopped_status(&record.status, "the pod VM is not running"),
            )?;
            return Ok(());
        };
        let status = self
            .runtime
            .stop_container(sandbox, &record, timeout)
            .await
            .map_err(|source| StopContainerError::Runtime {
                id: id.to_owned(),
                source,
            })?;
        self.apply_status(slot, status)?;
        tracing::info!(%id, "container stopped");
        Ok(())
    }

    /// Removes a container, stopping it first if it runs; unknown ids succeed.
    pub async fn remove_container(&self, id: &str) -> Result<(), RemoveContainerError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Ok(()),
            Lookup::Ambiguous => return Err(RemoveContainerError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let _op = slot.op.lock().await;
        self.remove_locked(&id, &slot, sandbox.as_ref()).await
    }

    /// Removes the container; the caller holds its operation lock.
    async fn remove_locked(
        &self,
        id: &str,
        slot: &ContainerSlot,
        sandbox: Option<&SandboxRecord>,
    ) -> Result<(), RemoveContainerError> {
        if slot.get().is_none() {
            return Ok(());
        }
        self.stop_locked(id, slot, sandbox, Duration::ZERO)
            .await
            .map_err(|e| match e {
                StopContainerError::Runtime { id, source } => {
                    RemoveContainerError::Runtime { id, source }
                }
                StopContainerError::Store(e) => RemoveContainerError::Store(e),
                StopContainerError::Ambiguous(id) => RemoveContainerError::Ambiguous(id),
            })?;
        let Some(record) = slot.get() else {
            return Ok(());
        };
        match sandbox {
            Some(sandbox) => self
                .runtime
                .remove_container(sandbox, &record)
                .await
                .map_err(|source| RemoveContainerError::Runtime {
                    id: id.to_owned(),
                    source,
                })?,
            // Its sandbox is gone, and with it everything the runtime kept.
            None => tracing::warn!(%id, "removing a container whose pod sandbox is gone"),
        }
        self.store.delete_container(id)?;
        *lock(&slot.record) = None;
        lock(&self.containers).remove(id);
        let key = name_key(&record.sandbox_id, &record.config);
        let mut names = lock(&self.container_names);
        if names.get(&key).is_some_and(|holder| holder == id) {
            names.remove(&key);
        }
        tracing::info!(%id, "container removed");
        Ok(())
    }

    /// The container's record, refreshed from the runtime while it is
    /// created or running, and runtime facts when `verbose`.
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(ContainerRecord, Option<serde_json::Value>), ContainerStatusError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(ContainerStatusError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(ContainerStatusError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        // An operation in progress updates the record itself: do not wait for it.
        if let Ok(_op) = slot.op.try_lock() {
            self.refresh(&id, &slot, sandbox.as_ref()).await;
        }
        let record = slot
            .get()
            .ok_or_else(|| ContainerStatusError::NotFound(id.clone()))?;
        let info = match (verbose, &sandbox) {
            (false, _) => None,
            (true, Some(sandbox)) => Some(self.runtime.container_info(sandbox, &record).await),
            (true, None) => Some(serde_json::Value::Null),
        };
        Ok((record, info))
    }

    /// Brings a live record up to date with the runtime (or with its dead
    /// sandbox); errors are logged, the record is kept.
    async fn refresh(&self, id: &str, slot: &ContainerSlot, sandbox: Option<&SandboxRecord>) {
        let Some(record) = slot.get() else {
            return;
        };
        if !is_live(record.status.state) {
            return;
        }
        let status = match sandbox {
            Some(sandbox) if sandbox.state == SandboxState::Ready => {
                if record.status.state == ContainerState::Unknown {
                    return;
                }
                match self.runtime.container_status(sandbox, &record).await {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(%id, "cannot refresh container status: {e}");
                        return;
                    }
                }
            }
            _ => pod_stopped_status(&record.status, "the pod VM is not running"),
        };
        if let Err(e) = self.apply_status(slot, status) {
            tracing::error!(%id, "cannot persist container status: {e}");
        }
    }

    /// Containers that pass `filter`, oldest first (as last recorded).
    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let slots: Vec<Arc<ContainerSlot>> = lock(&self.containers).values().cloned().collect();
        let mut out: Vec<ContainerRecord> = slots
            .iter()
            .filter_map(|s| s.get())
            .filter(|r| filter.matches(r))
            .collect();
        out.sort_by(|a, b| a.created_at_ns.cmp(&b.created_at_ns).then(a.id.cmp(&b.id)));
        out
    }

    /// Runs `cmd` in a running container and returns its output; does not
    /// wait for other operations on the container.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ExecSyncError> {
        if cmd.is_empty() {
            return Err(ExecSyncError::Invalid("cmd must not be empty".into()));
        }
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(ExecSyncError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(ExecSyncError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let record = slot
            .get()
            .ok_or_else(|| ExecSyncError::NotFound(id.clone()))?;
        let Some(sandbox) = ready_and_running(sandbox, &record) else {
            return Err(ExecSyncError::NotRunning {
                id,
                state: record.status.state,
            });
        };
        self.runtime
            .exec_sync(&sandbox, &record, cmd, timeout)
            .await
            .map_err(|source| ExecSyncError::Runtime { id, source })
    }

    /// Reopens a running container's log file; a container that is not
    /// running is refused and nothing is reopened.
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), ReopenLogError> {
        let (id, slot) = match lookup_in(&self.containers, id) {
            Lookup::Found(id, slot) => (id, slot),
            Lookup::Missing => return Err(ReopenLogError::NotFound(id.into())),
            Lookup::Ambiguous => return Err(ReopenLogError::Ambiguous(id.into())),
        };
        let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
        let _op = slot.op.lock().await;
        let record = slot
            .get()
            .ok_or_else(|| ReopenLogError::NotFound(id.clone()))?;
        let Some(sandbox) = ready_and_running(sandbox, &record) else {
            return Err(ReopenLogError::NotRunning {
                id,
                state: record.status.state,
            });
        };
        self.runtime
            .reopen_container_log(&sandbox, &record)
            .await
            .map_err(|source| ReopenLogError::Runtime { id, source })
    }

    /// Records a container's exit reported by the runtime.
    pub(crate) fn container_exited(
        &self,
        sandbox_id: &str,
        id: &str,
        status: ContainerRuntimeStatus,
    ) {
        let Some(slot) = lock(&self.containers).get(id).cloned() else {
            tracing::debug!(%id, "exit of an unknown container");
            return;
        };
        if slot.sandbox_id != sandbox_id {
            tracing::warn!(%id, %sandbox_id, "exit event names the wrong sandbox; ignored");
            return;
        }
        tracing::info!(%id, exit_code = status.exit_code, reason = %status.reason, "container exited");
        if let Err(e) = self.apply_status(&slot, status) {
            tracing::error!(%id, "cannot persist container exit: {e}");
        }
    }

    /// Marks every live container of `sandbox_id` exited because the pod stopped.
    pub(crate) fn containers_pod_stopped(&self, sandbox_id: &str, why: &str) {
        for (id, slot) in self.containers_of(sandbox_id) {
            let Some(record) = slot.get() else { continue };
            if is_live(record.status.state)
                && let Err(e) = self.apply_status(&slot, pod_stopped_status(&record.status, why))
            {
                tracing::error!(%id, "cannot persist container status: {e}");
            }
        }
    }

    /// Stops every running container of the sandbox at once (the caller
    /// holds the sandbox's lock); failures are logged, as the sandbox's own
    /// stop ends them anyway.
    pub(crate) async fn stop_pod_containers(&self, sandbox: &SandboxRecord) {
        let ready = sandbox.state == SandboxState::Ready;
        for (id, slot) in self.containers_of(&sandbox.id) {
            let _op = slot.op.lock().await;
            let sandbox = ready.then_some(sandbox);
            if let Err(e) = self.stop_locked(&id, &slot, sandbox, Duration::ZERO).await {
                tracing::warn!(%id, "cannot stop container with its pod: {e}");
            }
        }
    }

    /// Removes every container of the sandbox and its record (the caller
    /// holds the sandbox's lock and has stopped the sandbox).
    pub(crate) async fn remove_pod_containers(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<(), RemoveContainerError> {
        for (id, slot) in self.containers_of(&sandbox.id) {
            let _op = slot.op.lock().await;
            self.remove_locked(&id, &slot, Some(sandbox)).await?;
        }
        Ok(())
    }

    /// Loads stored containers and reconciles the live ones with the runtime;
    /// call after the sandboxes are recovered. Returns how many were loaded.
    pub(crate) async fn recover_containers(&self) -> Result<usize, StoreError> {
        let records = self.store.load_containers()?;
        let count = records.len();
        let mut slots = Vec::new();
        for record in records {
            let id = record.id.clone();
            let key = name_key(&record.sandbox_id, &record.config);
            lock(&self.container_names).insert(key, id.clone());
            let slot = ContainerSlot::new(record);
            lock(&self.containers).insert(id.clone(), slot.clone());
            slots.push((id, slot));
        }
        for (id, slot) in slots {
            let sandbox = self.sandbox_snapshot(&slot.sandbox_id).await;
            let _op = slot.op.lock().await;
            self.refresh(&id, &slot, sandbox.as_ref()).await;
        }
        Ok(count)
    }

    fn containers_of(&self, sandbox_id: &str) -> Vec<(String, Arc<ContainerSlot>)> {
        lock(&self.containers)
            .iter()
            .filter(|(_, s)| s.sandbox_id == sandbox_id)
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    async fn sandbox_snapshot(&self, sandbox_id: &str) -> Option<SandboxRecord> {
        let slot = lock(&self.pods).get(sandbox_id).cloned()?;
        slot.lock().await.clone()
    }

    /// Stores `status` in the container's record, unless it would bring an
    /// exited container back to life (a late answer racing an exit event).
    fn apply_status(
        &self,
        slot: &ContainerSlot,
        status: ContainerRuntimeStatus,
    ) -> Result<(), StoreError> {
        let mut guard = lock(&slot.record);
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        // The first exit recorded wins; nothing brings an exited container back.
        if record.status == status || record.status.state == ContainerState::Exited {
            return Ok(());
        }
        let before = std::mem::replace(&mut record.status, status);
        if let Err(e) = self.store.save_container(record) {
            record.status = before;
            return Err(e);
        }
        Ok(())
    }
}

/// The host path of a container's log: the pod's log directory joined with
/// the container's relative log path; empty if either is empty.
pub fn absolute_log_path(log_directory: &str, log_path: &str) -> String {
    if log_directory.is_empty() || log_path.is_empty() {
        return String::new();
    }
    Path::new(log_directory)
        .join(log_path)
        .to_string_lossy()
        .into_owned()
}

/// Container names become file and directory names: letters, digits,
/// `_`, `.` and `-`, starting with a letter or digit.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("metadata.name must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "metadata.name {name:?} is longer than 253 characters"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "metadata.name {name:?} must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!("metadata.name {name:?} contains {c:?}"));
    }
    Ok(())
}

fn validate_container(config: &ContainerConfig) -> Result<(), String> {
    validate_name(&config.metadata.name)?;
    if config.image.id.is_empty() || config.image.rootfs.as_os_str().is_empty() {
        return Err(format!(
            "image {:?} is not resolved to an image with a root filesystem",
            config.image.user_ref
        ));
    }
    let log = Path::new(&config.log_path);
    if config.log_path.contains('\0')
        || log
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "log_path {:?} must be relative, without \"..\"",
            config.log_path
        ));
    }
    for (key, value) in &config.envs {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(format!("environment variable {key:?} is invalid"));
        }
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') || m.host_path.is_empty() {
            return Err(format!(
                "mount {:?} -> {:?} needs a host path and an absolute container path",
                m.host_path, m.container_path
            ));
        }
    }
    for d in &config.devices {
        if d.container_path.is_empty() || d.host_path.is_empty() {
            return Err(format!(
                "device {:?} -> {:?} needs both paths",
                d.host_path, d.container_path
            ));
        }
    }
    let sec = &config.security;
    if sec.run_as_user.is_some() && !sec.run_as_username.is_empty() {
        return Err("run_as_user and run_as_username are mutually exclusive".into());
    }
    if sec.run_as_group.is_some() && sec.run_as_user.is_none() && sec.run_as_username.is_empty() {
        return Err("run_as_group needs run_as_user or run_as_username".into());
    }
    if let Seccomp::Localhost(path) = &sec.seccomp
        && !path.starts_with('/')
    {
        return Err(format!(
            "localhost seccomp profile {path:?} must be an absolute path"
        ));
    }
    let ns = &sec.namespaces;
    if [ns.network, ns.pid, ns.ipc].contains(&NamespaceMode::Target) && ns.target_id.is_empty() {
        return Err("namespace mode TARGET needs a target_id".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths() {
        assert_eq!(
            absolute_log_path("/var/log/pods/ns_p_uid", "c/0.log"),
            "/var/log/pods/ns_p_uid/c/0.log"
        );
        assert_eq!(absolute_log_path("", "c/0.log"), "");
        assert_eq!(absolute_log_path("/var/log/pods/x", ""), "");
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", "a\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
