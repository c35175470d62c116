//! The VM on the host's books: QEMU, virtiofsd and its helpers run in one
//! cgroup under the pod's `cgroup_parent` (frakti's own parent without
//! one), limited to what holds the VM: its memory plus what the VMM itself
//! uses, and as many cores as it has vCPUs.

use cgroups::{Hierarchy, PodCgroup};
use hypervisor::Resources;
use runtime_api::container::ContainerResources;
use runtime_api::{RuntimeError, RuntimeErrorKind, SandboxConfig};
use serde::{Deserialize, Serialize};

use crate::runtime::VmRuntime;

/// What QEMU and virtiofsd may use beyond the guest's RAM: QEMU's own
/// heap, device emulation and (under TCG) its 64 MiB translation cache,
/// and virtiofsd's. A generous allowance, not yet a measured figure.
pub const VMM_OVERHEAD_MIB: u64 = 192;

/// The name of the VM's cgroup inside the pod's.
const VM_CGROUP: &str = "vm";

/// Where a pod's VM is on the host's cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmCgroup {
    /// The VM's cgroup, from the hierarchy's root.
    pub path: String,
    /// The pod's cgroup: `cgroup_parent`, or frakti's own.
    pub pod: String,
    /// frakti made the pod's cgroup and removes it with the VM.
    pub owned: bool,
}

/// The CPU weight of a VM waiting in the warm pool (cgroup v1 shares; the
/// least the kernel takes).
const POOL_CPU_SHARES: i64 = 2;

/// The cgroup of the warm pool's VM `name`, under frakti's own.
fn pool_cgroup(name: &str) -> PodCgroup {
    PodCgroup {
        path: format!("{}/{name}", cgroups::OWN_PARENT),
        systemd: false,
        owned: true,
    }
}

/// Most tasks QEMU and virtiofsd may have together: a vCPU thread each,
/// QEMU's I/O workers and virtiofsd's thread pool fit many times over; a
/// VMM the guest took over cannot fork the host out of pids.
const VMM_TASKS: i64 = 1024;

/// The CFS period of the VM's cgroup, µs.
const CPU_PERIOD: i64 = 100_000;

/// The least CFS quota the kernel takes, µs.
const MIN_CPU_QUOTA: i64 = 1_000;

/// The cgroup limits that hold a VM of `size`, its CPU capped at
/// `ceiling` cores: what the pod's cgroup (the kubelet's pod limit) allows.
fn limits(size: &Resources, ceiling: Option<f64>) -> ContainerResources {
    let mut quota = i64::from(size.vcpus) * CPU_PERIOD;
    if let Some(cores) = ceiling {
        // Rounded down: under cgroup v1 the child may not exceed it.
        quota = quota.min(((cores * CPU_PERIOD as f64) as i64).max(MIN_CPU_QUOTA));
    }
    ContainerResources {
        cpu_period: CPU_PERIOD,
        cpu_quota: quota,
        memory_limit_bytes: i64::try_from((size.memory_mib + VMM_OVERHEAD_MIB) << 20)
            .unwrap_or(i64::MAX),
        pids_limit: VMM_TASKS,
        ..Default::default()
    }
}

fn cgroup_failure(what: &str, e: cgroups::CgroupError) -> RuntimeError {
    RuntimeError::caused(RuntimeErrorKind::Internal, what.to_owned(), e)
}

impl VmRuntime {
    fn hierarchy(&self) -> Option<Hierarchy> {
        self.config.cgroup_root.as_ref().map(Hierarchy::new)
    }

    /// Puts `pids` (QEMU, virtiofsd and its children) in the VM cgroup of
    /// pod `id`, limited for `size`. `None` when cgroups are not managed.
    pub(crate) fn place_vm(
        &self,
        id: &str,
        config: &SandboxConfig,
        pids: &[i32],
        size: &Resources,
    ) -> Result<Option<VmCgroup>, RuntimeError> {
        let pod = PodCgroup::for_pod(&config.cgroup_parent, id)
            .map_err(|e| RuntimeError::new(RuntimeErrorKind::InvalidArgument, e.to_string()))?;
        self.place(&pod, pids, size, None)
    }

    /// Puts the VM `name` of the warm pool in a cgroup of frakti's own,
    /// with the least CPU weight: a pool filling up yields to the pods.
    pub(crate) fn place_pool_vm(
        &self,
        name: &str,
        pids: &[i32],
        size: &Resources,
    ) -> Result<Option<VmCgroup>, RuntimeError> {
        self.place(&pool_cgroup(name), pids, size, Some(POOL_CPU_SHARES))
    }

    fn place(
        &self,
        pod: &PodCgroup,
        pids: &[i32],
        size: &Resources,
        cpu_shares: Option<i64>,
    ) -> Result<Option<VmCgroup>, RuntimeError> {
        let Some(hierarchy) = self.hierarchy() else {
            return Ok(None);
        };
        let cgroup = VmCgroup {
            path: pod.container(VM_CGROUP),
            pod: pod.path.clone(),
            owned: pod.owned,
        };
        hierarchy
            .create(&cgroup.path)
            .map_err(|e| cgroup_failure("create the VM's cgroup", e))?;
        let placed = self
            .limit_vm(&cgroup, size)
            .and_then(|()| match cpu_shares {
                // On the top cgroup: its siblings are the pods' cgroups.
                Some(shares) => hierarchy
                    .update(
                        &cgroup.pod,
                        &ContainerResources {
                            cpu_shares: shares,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| cgroup_failure("set the VM cgroup's CPU weight", e)),
                None => Ok(()),
            })
            .and_then(|()| {
                // QEMU started elsewhere (frakti's cgroup, the pool's): what
                // it holds is the pod's now.
                hierarchy
                    .charge_moved_processes(&cgroup.path)
                    .map_err(|e| cgroup_failure("move the VM's memory charges", e))
            })
            .and_then(|()| {
                pids.iter().try_for_each(|pid| {
                    hierarchy
                        .add_process(&cgroup.path, *pid)
                        .map_err(|e| cgroup_failure("move the VM into its cgroup", e))
                })
            });
        if let Err(e) = placed {
            self.remove_vm_cgroup(&cgroup);
            return Err(e);
        }
        Ok(Some(cgroup))
    }

    /// Removes the cgroup a pool VM `name` had (its processes gone).
    pub(crate) fn remove_pool_cgroup(&self, name: &str) {
        let pod = pool_cgroup(name);
        self.remove_vm_cgroup(&VmCgroup {
            path: pod.container(VM_CGROUP),
            pod: pod.path.clone(),
            owned: true,
        });
    }

    /// Sets the VM cgroup's limits for `size`.
    pub(crate) fn limit_vm(&self, cgroup: &VmCgroup, size: &Resources) -> Result<(), RuntimeError> {
        let Some(hierarchy) = self.hierarchy() else {
            return Ok(());
        };
        let ceiling = hierarchy.cpu_ceiling(&cgroup.pod);
        hierarchy
            .update(&cgroup.path, &limits(size, ceiling))
            .map_err(|e| cgroup_failure("set the VM cgroup's limits", e))
    }

    /// The pod's cgroup must have room for a VM of `size`: a VM never
    /// grows past its pod's memory limit.
    pub(crate) fn pod_allows(
        &self,
        cgroup: &VmCgroup,
        size: &Resources,
    ) -> Result<(), RuntimeError> {
        let Some(limit) = self.hierarchy().and_then(|h| h.memory_limit(&cgroup.pod)) else {
            return Ok(());
        };
        let needed = limits(size, None).memory_limit_bytes as u64;
        if needed > limit {
            return Err(RuntimeError::new(
                RuntimeErrorKind::ResourceExhausted,
                format!(
                    "the VM would need {} MiB of memory on the host, but the pod's cgroup {} \
                     allows {} MiB",
                    needed >> 20,
                    cgroup.pod,
                    limit >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Removes the VM's cgroup (its processes gone), and the pod's if
    /// frakti made it.
    pub(crate) fn remove_vm_cgroup(&self, cgroup: &VmCgroup) {
        let Some(hierarchy) = self.hierarchy() else {
            return;
        };
        let mut dirs = vec![cgroup.path.as_str()];
        if cgroup.owned {
            dirs.push(cgroup.pod.as_str());
        }
        for dir in dirs {
            if let Err(e) = hierarchy.remove(dir) {
                tracing::warn!(cgroup = dir, "cannot remove the VM's cgroup: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_limited_to_its_size_and_the_vmm_overhead() {
        let size = Resources {
            vcpus: 2,
            memory_mib: 512,
        };
        let r = limits(&size, None);
        assert_eq!((r.cpu_quota, r.cpu_period), (200_000, 100_000));
        assert_eq!(r.memory_limit_bytes, (512 + VMM_OVERHEAD_MIB as i64) << 20);
        assert_eq!(r.pids_limit, VMM_TASKS);
        // Under a pod cgroup limited to 0.95 cores (a kubelet's pod limit),
        // the VM gets that, not its two vCPUs; a looser pod limit changes nothing.
        assert_eq!(limits(&size, Some(0.95)).cpu_quota, 95_000);
        assert_eq!(limits(&size, Some(4.0)).cpu_quota, 200_000);
        assert_eq!(limits(&size, Some(0.0001)).cpu_quota, MIN_CPU_QUOTA);
    }
}
