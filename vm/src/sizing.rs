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
    if r.cpu_quota <= 0 || r.cpu_period <= 0 {
        return None;
    }
    let q = u64::try_from(r.cpu_quota).ok()?;
    let p = u64::try_from(r.cpu_period).ok()?;
    u32::try_from(q.div_ceil(p)).ok()
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
