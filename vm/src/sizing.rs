//! VM size from a pod's resources.

use runtime_api::{PodResources, SandboxConfig};

/// The least memory the guest kernel and agent need to run containers.
pub const MIN_MEMORY_MIB: u64 = 128;

/// vCPUs and memory (MiB) for a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
}

impl From<VmSize> for hypervisor::Resources {
    fn from(size: VmSize) -> Self {
        Self {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
        }
    }
}

impl From<hypervisor::Resources> for VmSize {
    fn from(r: hypervisor::Resources) -> Self {
        Self {
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
        }
    }
}

/// Sizes a pod's VM: vCPUs are the ceiling of the pod's CPU limit, memory is
/// its memory limit plus the sandbox overhead; unset limits take the defaults.
/// vCPUs are capped at `max_vcpus`; memory never drops below [`MIN_MEMORY_MIB`].
pub fn size_for(
    config: &SandboxConfig,
    default_vcpus: u32,
    default_memory_mib: u64,
    max_vcpus: u32,
) -> VmSize {
    let limits = config.resources.unwrap_or_default();
    let overhead = config.overhead.unwrap_or_default();
    let vcpus = cpu_limit_ceil(&limits)
        .unwrap_or(default_vcpus)
        .clamp(1, max_vcpus.max(1));
    let memory_mib = if limits.memory_limit_bytes > 0 {
        let bytes = limits
            .memory_limit_bytes
            .saturating_add(overhead.memory_limit_bytes.max(0));
        u64::try_from(bytes).unwrap_or(u64::MAX).div_ceil(1 << 20)
    } else {
        default_memory_mib
    };
    VmSize {
        vcpus,
        memory_mib: memory_mib.max(MIN_MEMORY_MIB),
    }
}

fn cpu_limit_ceil(r: &PodResources) -> Option<u32> {
    u32::try_from(r.cpu_millis()?.div_ceil(1000)).ok()
}

/// Hot-plugged memory is asked for in steps of this many MiB.
pub const MEMORY_STEP_MIB: u64 = 2;

/// The pod's need is more than the VM may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pod's resources need {asked} {what}, more than the {most} a VM may have ({key})")]
pub struct TooLarge {
    /// The figure.
    pub what: &'static str,
    /// How much the pod needs.
    pub asked: u64,
    /// The most a VM may have.
    pub most: u64,
    /// The config key that sets the most.
    pub key: &'static str,
}

/// The size a VM booted at `boot` must have for `need` (the pod's
/// resources): vCPUs are the ceiling of its CPU, memory its memory plus the
/// sandbox overhead (or [`MIN_MEMORY_MIB`] for the guest without one);
/// never below `boot`, and an error above `max`.
pub fn fit(
    boot: VmSize,
    need: &PodResources,
    overhead: Option<&PodResources>,
    max: VmSize,
) -> Result<VmSize, TooLarge> {
    let vcpus = cpu_limit_ceil(need).unwrap_or(0).max(boot.vcpus);
    let memory_mib = if need.memory_limit_bytes > 0 {
        let reserve = overhead
            .map(|o| o.memory_limit_bytes)
            .filter(|m| *m > 0)
            .map_or(MIN_MEMORY_MIB, |m| (m as u64).div_ceil(1 << 20));
        let mib = (need.memory_limit_bytes as u64).div_ceil(1 << 20) + reserve;
        mib.div_ceil(MEMORY_STEP_MIB) * MEMORY_STEP_MIB
    } else {
        0
    }
    .max(boot.memory_mib);
    if vcpus > max.vcpus {
        return Err(TooLarge {
            what: "vCPUs",
            asked: u64::from(vcpus),
            most: u64::from(max.vcpus),
            key: "max_cpu",
        });
    }
    if memory_mib > max.memory_mib {
        return Err(TooLarge {
            what: "MiB of memory",
            asked: memory_mib,
            most: max.memory_mib,
            key: "max_memory",
        });
    }
    Ok(VmSize { vcpus, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(limits: Option<PodResources>, overhead: Option<PodResources>) -> SandboxConfig {
        SandboxConfig {
            resources: limits,
            overhead,
            ..Default::default()
        }
    }

    fn res(quota: i64, period: i64, mem: i64) -> PodResources {
        PodResources {
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_bytes: mem,
            cpu_shares: 0,
        }
    }

    #[test]
    fn defaults_without_limits() {
        assert_eq!(
            size_for(&cfg(None, None), 1, 512, 8),
            VmSize {
                vcpus: 1,
                memory_mib: 512
            }
        );
        assert_eq!(
            size_for(&cfg(None, None), 3, 64, 8),
            VmSize {
                vcpus: 3,
                memory_mib: 128
            }
        );
    }

    #[test]
    fn limits_plus_overhead() {
        // 1.5 CPUs -> 2 vCPUs; 256 MiB + 64 MiB overhead.
        let c = cfg(
            Some(res(150_000, 100_000, 256 << 20)),
            Some(res(0, 0, 64 << 20)),
        );
        assert_eq!(
            size_for(&c, 1, 512, 8),
            VmSize {
                vcpus: 2,
                memory_mib: 320
            }
        );
        // Exactly 2 CPUs stays 2; an odd byte count rounds up to the next MiB.
        let c = cfg(Some(res(200_000, 100_000, (100 << 20) + 1)), None);
        assert_eq!(
            size_for(&c, 1, 512, 8),
            VmSize {
                vcpus: 2,
                memory_mib: 128
            }
        );
        let c = cfg(Some(res(200_000, 100_000, (300 << 20) + 1)), None);
        assert_eq!(size_for(&c, 1, 512, 8).memory_mib, 301);
    }

    #[test]
    fn a_vm_grows_to_fit_its_pod_and_never_shrinks_below_its_boot_size() {
        let boot = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        let max = VmSize {
            vcpus: 2,
            memory_mib: 1024,
        };
        // 1.25 CPUs and 384 MiB: 2 vCPUs, 384 + 128 MiB for the guest.
        let need = res(125_000, 100_000, 384 << 20);
        assert_eq!(
            fit(boot, &need, None, max).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 512
            }
        );
        // A sandbox overhead replaces the guest's reserve; odd MiB round up.
        let overhead = res(0, 0, 63 << 20);
        assert_eq!(
            fit(boot, &need, Some(&overhead), max).unwrap().memory_mib,
            448
        );
        // Less than the boot size, or nothing: the boot size.
        assert_eq!(
            fit(boot, &res(10_000, 100_000, 1 << 20), None, max).unwrap(),
            boot
        );
        assert_eq!(
            fit(boot, &PodResources::default(), None, max).unwrap(),
            boot
        );
        let err = fit(boot, &res(300_000, 100_000, 0), None, max).unwrap_err();
        assert_eq!(
            (err.what, err.asked, err.most, err.key),
            ("vCPUs", 3, 2, "max_cpu")
        );
        let err = fit(boot, &res(0, 0, 1 << 30), None, max).unwrap_err();
        assert!(err.to_string().contains("max_memory"), "{err}");
    }

    #[test]
    fn caps_and_floors() {
        let c = cfg(Some(res(1_600_000, 100_000, 1 << 20)), None);
        assert_eq!(
            size_for(&c, 1, 512, 4),
            VmSize {
                vcpus: 4,
                memory_mib: MIN_MEMORY_MIB
            }
        );
        // Only a memory limit: CPUs from the default.
        let c = cfg(Some(res(0, 100_000, 1 << 30)), None);
        assert_eq!(
            size_for(&c, 2, 512, 4),
            VmSize {
                vcpus: 2,
                memory_mib: 1024
            }
        );
    }
}
