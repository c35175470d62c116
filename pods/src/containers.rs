//! The container half of the pod service: records, name reservations,
//! per-container serialisation, and routing to the pod's runtime.
//!
//! The runtime is the source of truth for process state; records keep the
//! last status it reported, and are refreshed on `container_status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime_api::container::NamespaceMode;
use runtime_api::report;
use runtime_api::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ContainerState, ExecOutput,
    SandboxRecord, SandboxState,
};

use crate::container_errors::{
    ContainerStatusError, CreateContainerError, ExecSyncError, RemoveContainerError,
    ReopenLogError, StartContainerError, StopContainerError,
};
use crate::events::ContainerEventKind;
use crate::filter::ContainerFilter;
use crate::service::PodService;
use crate::store::StoreError;
use crate::table::{ContainerSlot, Lookup, lock, lookup_in, new_id, now_ns};
use crate::validate::{absolute_log_path, validate_container};

/// Exit code recorded for a container whose start failed.
const START_ERROR_EXIT_CODE: i32 = 128;

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

pub(crate) fn name_key(record_sandbox: &str, config: &ContainerConfig) -> (String, String) {
    (
        record_sandbox.to_owned(),
        format!("{}_{}", config.metadata.name, config.metadata.attempt),
    )
}

/// The status of a container whose pod sandbox stopped under it.
pub(crate) fn pod_stopped_status(
    current: &ContainerRuntimeStatus,
    why: &str,
) -> ContainerRuntimeStatus {
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
        user: None,
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

pub(crate) fn is_live(state: ContainerState) -> bool {
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
        let runtime = self.runtime_of(&sandbox)?;
        // The sandbox grows first if the pod needs more with this container.
        let need = self.pod_need(&sandbox, Some((&id, &config.resources)));
        runtime.resize_sandbox(&sandbox, &need, false).await?;
        let runtime_state = runtime
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
            if let Err(undo) = runtime.remove_container(&sandbox, &record).await {
                tracing::warn!(%id, "cannot undo container creation: {}", report(&undo));
            }
            return Err(e);
        }
        let created = record.clone();
        lock(&self.containers).insert(id.clone(), ContainerSlot::new(record));
        self.container_transition(&created, ContainerEventKind::Created, guard.as_ref());
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
        let started = match self.runtime_of(&sandbox) {
            Ok(runtime) => runtime.start_container(&sandbox, &record).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(status) => {
                self.apply_status(&slot, status, Some(&sandbox))?;
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
                    message: report(&source),
                    user: None,
                };
                if let Err(e) = self.apply_status(&slot, failed, Some(&sandbox)) {
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
    pub(crate) async fn stop_locked(
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
        let Some(ready) = sandbox.filter(|s| s.state == SandboxState::Ready) else {
            self.apply_status(
                slot,
                pod_stopped_status(&record.status, "the pod VM is not running"),
                sandbox,
            )?;
            return Ok(());
        };
        let runtime_error = |source| StopContainerError::Runtime {
            id: id.to_owned(),
            source,
        };
        let status = self
            .runtime_of(ready)
            .map_err(runtime_error)?
            .stop_container(ready, &record, timeout)
            .await
            .map_err(runtime_error)?;
        self.apply_status(slot, status, Some(ready))?;
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
    pub(crate) async fn remove_locked(
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
            Some(sandbox) => {
                let runtime_error = |source| RemoveContainerError::Runtime {
                    id: id.to_owned(),
                    source,
                };
                self.runtime_of(sandbox)
                    .map_err(runtime_error)?
                    .remove_container(sandbox, &record)
                    .await
                    .map_err(runtime_error)?;
            }
            // Its sandbox is gone, and with it everything the runtime kept.
            None => tracing::warn!(%id, "removing a container whose pod sandbox is gone"),
        }
        self.store.delete_container(id)?;
        *lock(&slot.record) = None;
        lock(&self.containers).remove(id);
        self.container_transition(&record, ContainerEventKind::Deleted, sandbox);
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
            (true, Some(sandbox)) => match self.runtime_of(sandbox) {
                Ok(runtime) => Some(runtime.container_info(sandbox, &record).await),
                Err(e) => Some(serde_json::json!({ "error": e.to_string() })),
            },
            (true, None) => Some(serde_json::Value::Null),
        };
        Ok((record, info))
    }

    /// Brings a live record up to date with the runtime (or with its dead
    /// sandbox); errors are logged, the record is kept.
    pub(crate) async fn refresh(
        &self,
        id: &str,
        slot: &ContainerSlot,
        sandbox: Option<&SandboxRecord>,
    ) {
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
                let status = match self.runtime_of(sandbox) {
                    Ok(runtime) => runtime.container_status(sandbox, &record).await,
                    Err(e) => Err(e),
                };
                match status {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(%id, "cannot refresh container status: {}", report(&e));
                        return;
                    }
                }
            }
            _ => pod_stopped_status(&record.status, "the pod VM is not running"),
        };
        if let Err(e) = self.apply_status(slot, status, sandbox) {
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
        let runtime = match self.runtime_of(&sandbox) {
            Ok(runtime) => runtime,
            Err(source) => return Err(ExecSyncError::Runtime { id, source }),
        };
        runtime
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
        let runtime = match self.runtime_of(&sandbox) {
            Ok(runtime) => runtime,
            Err(source) => return Err(ReopenLogError::Runtime { id, source }),
        };
        runtime
            .reopen_container_log(&sandbox, &record)
            .await
            .map_err(|source| ReopenLogError::Runtime { id, source })
    }

    pub(crate) fn containers_of(&self, sandbox_id: &str) -> Vec<(String, Arc<ContainerSlot>)> {
        lock(&self.containers)
            .iter()
            .filter(|(_, s)| s.sandbox_id == sandbox_id)
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect()
    }

    pub(crate) async fn sandbox_snapshot(&self, sandbox_id: &str) -> Option<SandboxRecord> {
        let slot = lock(&self.pods).get(sandbox_id).cloned()?;
        slot.lock().await.clone()
    }

    /// Stores `status` in the container's record, unless it would bring an
    /// exited container back to life (a late answer racing an exit event),
    /// and publishes the transition; `sandbox` is the pod as the caller holds it.
    pub(crate) fn apply_status(
        &self,
        slot: &ContainerSlot,
        mut status: ContainerRuntimeStatus,
        sandbox: Option<&SandboxRecord>,
    ) -> Result<(), StoreError> {
        let mut guard = lock(&slot.record);
        let Some(record) = guard.as_mut() else {
            return Ok(());
        };
        // The identity the process started with outlives the process.
        if status.user.is_none() {
            status.user.clone_from(&record.status.user);
        }
        let before_state = record.status.state;
        // The first exit recorded wins; nothing brings an exited container back.
        if record.status == status || record.status.state == ContainerState::Exited {
            return Ok(());
        }
        let before = std::mem::replace(&mut record.status, status);
        if let Err(e) = self.store.save_container(record) {
            record.status = before;
            return Err(e);
        }
        let kind = match record.status.state {
            ContainerState::Running if before_state != ContainerState::Running => {
                Some(ContainerEventKind::Started)
            }
            ContainerState::Exited => Some(ContainerEventKind::Stopped),
            _ => None,
        };
        let record = record.clone();
        drop(guard);
        if let Some(kind) = kind {
            self.container_transition(&record, kind, sandbox);
        }
        Ok(())
    }
}
