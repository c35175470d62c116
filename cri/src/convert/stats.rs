//! Stats out: a pod's and its containers' usage as CRI `PodSandboxStats`
//! and `ContainerStats`; stats filters in. PSI and IO figures are not
//! measured and stay unset.

use pods::{ContainerFilter, ContainerStats, PodStats, SandboxFilter, SandboxState};
use usage::{CpuUsage, MemoryUsage};

use super::container::container_metadata;
use super::map;
use super::sandbox::metadata;
use crate::proto;

fn value(value: u64) -> Option<proto::UInt64Value> {
    Some(proto::UInt64Value { value })
}

fn cpu(timestamp: i64, usage: &CpuUsage, nano_cores: Option<u64>) -> proto::CpuUsage {
    proto::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(usage.usage_core_ns),
        usage_nano_cores: nano_cores.and_then(value),
        psi: None,
    }
}

fn memory(timestamp: i64, m: &MemoryUsage) -> proto::MemoryUsage {
    proto::MemoryUsage {
        timestamp,
        working_set_bytes: value(m.working_set_bytes),
        available_bytes: m.available_bytes.and_then(value),
        usage_bytes: value(m.usage_bytes),
        rss_bytes: value(m.rss_bytes),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
        psi: None,
    }
}

/// What a directory tree (`mountpoint`) uses, as a CRI filesystem usage.
pub fn filesystem_usage(
    timestamp: i64,
    mountpoint: String,
    usage: &usage::FsUsage,
) -> proto::FilesystemUsage {
    proto::FilesystemUsage {
        timestamp,
        fs_id: Some(proto::FilesystemIdentifier { mountpoint }),
        used_bytes: value(usage.used_bytes),
        inodes_used: value(usage.inodes_used),
    }
}

/// A container's stats.
pub fn container_stats(s: &ContainerStats) -> proto::ContainerStats {
    let t = s.timestamp_ns;
    let record = &s.record;
    proto::ContainerStats {
        attributes: Some(proto::ContainerAttributes {
            id: record.id.clone(),
            metadata: container_metadata(record),
            labels: map(&record.config.labels),
            annotations: map(&record.config.annotations),
        }),
        cpu: s.usage.cpu.map(|c| cpu(t, &c, s.nano_cores)),
        memory: s.usage.memory.map(|m| memory(t, &m)),
        writable_layer: s
            .usage
            .writable_layer
            .as_ref()
            .map(|l| filesystem_usage(t, l.mountpoint.clone(), &l.usage)),
        swap: s
            .usage
            .memory
            .and_then(|m| m.swap_bytes.map(|used| (used, m.swap_available_bytes)))
            .map(|(used, available)| proto::SwapUsage {
                timestamp: t,
                swap_available_bytes: available.and_then(value),
                swap_usage_bytes: value(used),
            }),
        io: None,
    }
}

fn interface(i: &usage::InterfaceUsage) -> proto::NetworkInterfaceUsage {
    proto::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

/// A pod's stats with its containers'.
pub fn pod_stats(s: &PodStats) -> proto::PodSandboxStats {
    let t = s.usage.timestamp_ns;
    let default = s.usage.default_interface.as_deref();
    let network = (!s.usage.interfaces.is_empty()).then(|| proto::NetworkUsage {
        timestamp: t,
        default_interface: s
            .usage
            .interfaces
            .iter()
            .find(|i| Some(i.name.as_str()) == default)
            .map(interface),
        interfaces: s
            .usage
            .interfaces
            .iter()
            .filter(|i| Some(i.name.as_str()) != default)
            .map(interface)
            .collect(),
    });
    proto::PodSandboxStats {
        attributes: Some(proto::PodSandboxAttributes {
            id: s.sandbox.id.clone(),
            metadata: metadata(&s.sandbox),
            labels: map(&s.sandbox.config.labels),
            annotations: map(&s.sandbox.config.annotations),
        }),
        linux: Some(proto::LinuxPodSandboxStats {
            cpu: s.usage.cpu.map(|c| cpu(t, &c, s.nano_cores)),
            memory: s.usage.memory.map(|m| memory(t, &m)),
            network,
            process: s.usage.processes.map(|n| proto::ProcessUsage {
                timestamp: t,
                process_count: value(n),
            }),
            containers: s.containers.iter().map(container_stats).collect(),
            io: None,
        }),
        windows: None,
    }
}

/// `ListContainerStats`' filter.
pub fn container_stats_filter(f: Option<proto::ContainerStatsFilter>) -> ContainerFilter {
    let f = f.unwrap_or_default();
    ContainerFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        sandbox_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        state: None,
        label_selector: f.label_selector.into_iter().collect(),
    }
}

/// `ListPodSandboxStats`' filter (ready sandboxes only).
pub fn pod_stats_filter(f: Option<proto::PodSandboxStatsFilter>) -> SandboxFilter {
    let f = f.unwrap_or_default();
    SandboxFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: Some(SandboxState::Ready),
        label_selector: f.label_selector.into_iter().collect(),
    }
}
