//! A pod VM follows its pod's resources: vCPUs and memory are hot-plugged
//! when the pod needs more than the VM has, and given back when it needs
//! less (never below the boot size), the guest's agent onlining and
//! offlining them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_api::messages::GuestInfo;
use agent_api::{AgentClient, calls};
use hypervisor::{ResizeError, Resources, VmEndpoints};
use runtime_api::{PodResources, RuntimeError, RuntimeErrorKind, SandboxRecord};

use crate::config::VmState;
use crate::errors::{agent_failure, internal};
use crate::runtime::{AGENT_CALL, VmRuntime};
use crate::sizing::{self, VmSize};

/// How long the guest may take to online or release what changed.
const SETTLE: Duration = Duration::from_secs(20);

/// How often the guest's memory is looked at while it settles.
const POLL: Duration = Duration::from_millis(50);

impl VmRuntime {
    /// Makes the VM of `sandbox` fit `need` (see `SandboxRuntime::resize_sandbox`).
    pub(crate) async fn fit(
        &self,
        sandbox: &SandboxRecord,
        need: &PodResources,
        shrink: bool,
    ) -> Result<(), RuntimeError> {
        let state = VmState::parse(&sandbox.runtime_state)?;
        let vm = self.vm(&sandbox.id).ok_or_else(|| {
            RuntimeError::new(
                RuntimeErrorKind::FailedPrecondition,
                format!("the VM of pod {} is not running", sandbox.id),
            )
        })?;
        let _one_at_a_time = vm.resizing.lock().await;
        let boot = VmSize {
            vcpus: state.vcpus,
            memory_mib: state.memory_mib,
        };
        let max = VmSize {
            vcpus: state.max_vcpus.max(boot.vcpus),
            memory_mib: state.max_memory_mib.max(boot.memory_mib),
        };
        let target = sizing::fit(boot, need, sandbox.config.overhead.as_ref(), max)
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::ResourceExhausted, e.to_string()))?;
        let caps = self.hypervisor.capabilities();
        if !caps.cpu_hotplug && !caps.memory_hotplug {
            // A machine without hot-plug keeps its boot size, which fits.
            return Ok(());
        }
        let plugged = self
            .hypervisor
            .resources(&vm.endpoints)
            .await
            .map_err(|e| resize_failure("read the VM's size", e))?;
        let before = vm
            .agent
            .request(calls::GuestInfo, AGENT_CALL)
            .await
            .map_err(|e| agent_failure("read the guest's size", e))?;
        // The vCPUs the pod has are those online in the guest: a VM may
        // hold spare ones, offline (see `hypervisor`'s TCG note).
        let current = Resources {
            vcpus: before.cpus.min(plugged.vcpus),
            memory_mib: plugged.memory_mib,
        };
        let target = if shrink {
            Resources::from(target)
        } else {
            Resources {
                vcpus: target.vcpus.max(current.vcpus),
                memory_mib: target.memory_mib.max(current.memory_mib),
            }
        };
        if target == current {
            return Ok(());
        }
        let grow_memory = target.memory_mib > current.memory_mib;
        if grow_memory {
            host_has_memory(target.memory_mib - current.memory_mib)?;
        }
        // The host cgroup holds the larger of the two sizes while it changes.
        let during = Resources {
            vcpus: target.vcpus.max(current.vcpus),
            memory_mib: target.memory_mib.max(current.memory_mib),
        };
        if let Some(cgroup) = &state.cgroup {
            self.pod_allows(cgroup, &during)?;
            self.limit_vm(cgroup, &during)?;
        }
        let started = Instant::now();
        let after = self
            .apply_size(
                &vm.endpoints,
                &vm.agent,
                &current,
                before.mem_total_kib,
                &target,
            )
            .await?;
        if let Some(cgroup) = &state.cgroup
            && during != target
            && let Err(e) = self.limit_vm(cgroup, &target)
        {
            // Memory the guest did not give back may still be charged.
            tracing::warn!(sandbox = %sandbox.id, "the VM's cgroup keeps its larger limits: {}", runtime_api::report(&e));
        }
        tracing::info!(
            sandbox = %sandbox.id,
            vcpus = format!("{} -> {}", current.vcpus, after.cpus),
            memory_mib = format!("{} -> {}", current.memory_mib, target.memory_mib),
            guest_mem_total_kib = format!("{} -> {}", before.mem_total_kib, after.mem_total_kib),
            took = ?started.elapsed(),
            "pod VM resized"
        );
        Ok(())
    }

    /// Resizes the VM from `current` to `target` and waits until its guest
    /// has onlined (or given back) the difference; `before_kib` is the
    /// guest's memory before. Returns what the guest has after.
    pub(crate) async fn apply_size(
        &self,
        endpoints: &VmEndpoints,
        agent: &Arc<AgentClient>,
        current: &Resources,
        before_kib: u64,
        target: &Resources,
    ) -> Result<GuestInfo, RuntimeError> {
        let grow_memory = target.memory_mib > current.memory_mib;
        let online = |cpus: u32| {
            let agent = agent.clone();
            async move {
                let request = calls::OnlineResources {
                    cpus,
                    timeout_ms: SETTLE.as_millis() as u64,
                };
                agent
                    .request(request, SETTLE + AGENT_CALL)
                    .await
                    .map_err(|e| agent_failure("online the guest's vCPUs and memory", e))
            }
        };
        // vCPUs leave the guest before they leave the VM.
        if target.vcpus < current.vcpus {
            online(target.vcpus).await?;
        }
        self.hypervisor
            .resize(endpoints, target)
            .await
            .map_err(|e| resize_failure("resize the VM", e))?;
        let delta_kib = (target.memory_mib as i64 - current.memory_mib as i64) * 1024;
        let expected = before_kib as i64 + delta_kib;
        // The guest rounds to its blocks and keeps some for itself.
        let slack = 4096 + delta_kib.abs() / 50;
        let deadline = Instant::now() + SETTLE;
        let after = loop {
            let info = online(target.vcpus).await?;
            let settled = if grow_memory {
                info.mem_total_kib as i64 >= expected - slack
            } else {
                info.mem_total_kib as i64 <= expected + slack
            };
            if settled || Instant::now() >= deadline {
                break info;
            }
            tokio::time::sleep(POLL).await;
        };
        if grow_memory && (after.mem_total_kib as i64) < expected - slack {
            return Err(RuntimeError::new(
                RuntimeErrorKind::Internal,
                format!(
                    "the guest onlined {} KiB of the {} MiB plugged within {SETTLE:?}",
                    after.mem_total_kib as i64 - before_kib as i64,
                    target.memory_mib - current.memory_mib
                ),
            ));
        }
        Ok(after)
    }
}

fn resize_failure(what: &str, e: ResizeError) -> RuntimeError {
    match e {
        ResizeError::TooLarge { .. } => {
            RuntimeError::new(RuntimeErrorKind::ResourceExhausted, format!("{what}: {e}"))
        }
        ResizeError::Unsupported(_) => {
            RuntimeError::new(RuntimeErrorKind::Unsupported, format!("{what}: {e}"))
        }
        other => internal(what.to_owned(), other),
    }
}

/// The host must have `mib` more MiB available for the VM to grow.
fn host_has_memory(mib: u64) -> Result<(), RuntimeError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024);
    match available_mib {
        Some(available) if available < mib => Err(RuntimeError::new(
            RuntimeErrorKind::ResourceExhausted,
            format!("the VM would grow by {mib} MiB, but the host has {available} MiB available"),
        )),
        _ => Ok(()),
    }
}
