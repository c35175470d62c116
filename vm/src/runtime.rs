//! The VM runtime's state: its configuration, the accelerator verdict, and
//! the running VMs it watches (their process, and the container events
//! their agents report).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_api::{AgentClient, CallError, calls};
use hypervisor::{Hypervisor, Process, VmEndpoints};
use runtime_api::{RuntimeError, RuntimeErrorKind, RuntimeEvent, SandboxRecord};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;

use crate::config::VmRuntimeConfig;
use crate::containers;
use crate::errors::internal;
use crate::profile::{AccelVerdict, choose_accel};

/// The runtime's name, in logs and metrics.
pub(crate) const NAME: &str = "vm";

/// Deadline for small agent requests.
pub(crate) const AGENT_CALL: Duration = Duration::from_secs(10);

/// A running pod VM.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) endpoints: VmEndpoints,
    pub(crate) agent: Arc<AgentClient>,
    pub(crate) stopping: Arc<AtomicBool>,
    /// The virtiofsd serving the pod's shared directory.
    pub(crate) virtiofsd_pid: Option<i32>,
    /// Held while the VM is resized: one resize at a time.
    pub(crate) resizing: tokio::sync::Mutex<()>,
    /// Held while the pod's disks change: one attach or detach at a time.
    pub(crate) disks: tokio::sync::Mutex<()>,
    watcher: JoinHandle<()>,
    relay: JoinHandle<()>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.watcher.abort();
        self.relay.abort();
    }
}

/// Longest wait of one `WaitEvents` request.
const EVENTS_WAIT: Duration = Duration::from_secs(30);

/// Passes container exits the agent reports on as runtime events.
async fn relay_container_events(
    sandbox_id: String,
    agent: Arc<AgentClient>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
) {
    let mut after = 0;
    loop {
        let request = calls::WaitEvents {
            after,
            timeout_ms: EVENTS_WAIT.as_millis() as u64,
        };
        match agent.request(request, EVENTS_WAIT + AGENT_CALL).await {
            Ok(calls::Events { last, containers }) => {
                after = last;
                for info in containers {
                    if info.state == agent_api::messages::ContainerState::Exited {
                        let _ = events.send(RuntimeEvent::ContainerExited {
                            sandbox_id: sandbox_id.clone(),
                            id: info.id.clone(),
                            status: containers::runtime_status(&info),
                        });
                    }
                }
            }
            Err(e) => {
                if matches!(e, CallError::Unexpected { .. }) {
                    tracing::warn!(sandbox = %sandbox_id, "{e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs pod sandboxes as VMs.
#[derive(Debug)]
pub struct VmRuntime {
    pub(crate) config: VmRuntimeConfig,
    pub(crate) hypervisor: Arc<dyn Hypervisor>,
    /// Shared by the runtimes of every VM handler: one probe per daemon.
    accel: Arc<OnceCell<AccelVerdict>>,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    /// What the containers' writable layers use in all.
    pub(crate) layers: Arc<usage::dir::CachedDirUsage>,
    /// VMs booted ahead for the next pods.
    pub(crate) pool: crate::pool::Pool,
    /// Whether ID-mapped mounts work where containers' layers go (probed once).
    pub(crate) idmap: container::idmap::Probe,
}

impl VmRuntime {
    /// A runtime on `hypervisor`; exits of VMs are reported on `events`.
    pub fn new(
        config: VmRuntimeConfig,
        hypervisor: Arc<dyn Hypervisor>,
        events: mpsc::UnboundedSender<RuntimeEvent>,
    ) -> Self {
        let layers = usage::dir::CachedDirUsage::new(
            &config.containers_dir,
            runtime_api::stats::LAYERS_MAX_AGE,
        );
        Self {
            config,
            hypervisor,
            accel: Arc::new(OnceCell::new()),
            vms: Mutex::default(),
            events,
            layers: Arc::new(layers),
            pool: crate::pool::Pool::default(),
            idmap: container::idmap::Probe::default(),
        }
    }

    /// This runtime with `other`'s accelerator verdict (probed once for both).
    pub fn sharing_accel(mut self, other: &VmRuntime) -> Self {
        self.accel = other.accel.clone();
        self
    }

    /// The accelerator for all VMs, probed once (a real KVM boot in `auto` mode).
    pub async fn accel(&self) -> &AccelVerdict {
        self.accel
            .get_or_init(|| async {
                let verdict = choose_accel(&self.config, self.hypervisor.as_ref()).await;
                tracing::info!(accel = %verdict.accel, "accelerator chosen: {}", verdict.reason);
                verdict
            })
            .await
    }

    /// Stops watching the VM of sandbox `id`.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.vms).remove(id);
    }

    /// Every running VM, by sandbox id.
    pub(crate) fn running(&self) -> Vec<(String, Arc<Vm>)> {
        lock(&self.vms)
            .iter()
            .map(|(id, vm)| (id.clone(), vm.clone()))
            .collect()
    }

    /// The running VM of sandbox `id`.
    pub(crate) fn vm(&self, id: &str) -> Option<Arc<Vm>> {
        lock(&self.vms).get(id).cloned()
    }

    /// Records a running VM and watches its process.
    pub(crate) fn track(
        &self,
        id: &str,
        endpoints: VmEndpoints,
        agent: Arc<AgentClient>,
        virtiofsd_pid: Option<i32>,
    ) -> Result<(), RuntimeError> {
        let process = Process::open(endpoints.pid).map_err(|e| internal("watch VM process", e))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let events = self.events.clone();
        let (id_owned, flag) = (id.to_owned(), stopping.clone());
        let logs = (endpoints.vmm_log.clone(), endpoints.console_log.clone());
        let watcher = tokio::spawn(async move {
            process.exited().await;
            if !flag.load(Ordering::SeqCst) {
                let reason = format!(
                    "VM process {} exited unexpectedly (see {} and {})",
                    process.pid(),
                    logs.0.display(),
                    logs.1.display()
                );
                let _ = events.send(RuntimeEvent::SandboxExited {
                    id: id_owned,
                    reason,
                });
            }
        });
        let relay = tokio::spawn(relay_container_events(
            id.to_owned(),
            agent.clone(),
            self.events.clone(),
        ));
        let vm = Arc::new(Vm {
            endpoints,
            agent,
            stopping,
            virtiofsd_pid,
            resizing: tokio::sync::Mutex::new(()),
            disks: tokio::sync::Mutex::new(()),
            watcher,
            relay,
        });
        lock(&self.vms).insert(id.to_owned(), vm);
        Ok(())
    }

    /// The agent of a running pod VM.
    pub(crate) fn agent_of(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<Arc<AgentClient>, RuntimeError> {
        self.vm_of(sandbox).map(|vm| vm.agent.clone())
    }

    /// A running pod VM.
    pub(crate) fn vm_of(&self, sandbox: &SandboxRecord) -> Result<Arc<Vm>, RuntimeError> {
        self.vm(&sandbox.id).ok_or_else(|| {
            RuntimeError::new(
                RuntimeErrorKind::FailedPrecondition,
                format!("the VM of pod {} is not running", sandbox.id),
            )
        })
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
