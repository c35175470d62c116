//! The running pod VMs, read at each scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What one pod VM costs on the host right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmCost {
    /// The pod sandbox's id.
    pub sandbox_id: String,
    /// CPU time of the VMM and its helpers (virtiofsd), seconds, cumulative.
    pub cpu_seconds: f64,
    /// Their resident memory, bytes.
    pub rss_bytes: u64,
}

/// A warm pool of VMs booted ahead for one runtime handler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    /// The runtime handler.
    pub handler: String,
    /// VMs booted and waiting for a pod.
    pub ready: usize,
    /// The configured size (`vm_pool`).
    pub target: usize,
}

/// Whoever runs pod VMs.
pub trait VmSource: std::fmt::Debug + Send + Sync + 'static {
    /// Every running VM, with what it costs. Reads `/proc`: it blocks.
    fn vm_costs(&self) -> Vec<VmCost>;

    /// Its warm pool, if it keeps one.
    fn pool(&self) -> Option<PoolState> {
        None
    }
}

#[derive(Debug)]
pub(crate) struct VmCollector(pub(crate) Vec<Arc<dyn VmSource>>);

impl Collector for VmCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let vms: Vec<VmCost> = self.0.iter().flat_map(|s| s.vm_costs()).collect();
        let count = ConstGauge::new(vms.len() as i64);
        count.encode(encoder.encode_descriptor(
            "vms",
            "Pod VMs running",
            None,
            count.metric_type(),
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "pod_vm_host_cpu",
                "CPU time a pod's VM (VMM and virtiofsd) has used on the host",
                Some(&Unit::Seconds),
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for vm in &vms {
                let labels = [("sandbox_id", vm.sandbox_id.as_str())];
                ConstCounter::new(vm.cpu_seconds).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "pod_vm_host_memory_rss",
                "Resident memory of a pod's VM (VMM and virtiofsd) on the host",
                Some(&Unit::Bytes),
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for vm in &vms {
                let labels = [("sandbox_id", vm.sandbox_id.as_str())];
                ConstGauge::new(vm.rss_bytes as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let pools: Vec<PoolState> = self.0.iter().filter_map(|s| s.pool()).collect();
        for (name, help, figure) in [
            (
                "vm_pool_ready",
                "VMs booted ahead and waiting for a pod, by runtime handler",
                (|p: &PoolState| p.ready) as fn(&PoolState) -> usize,
            ),
            (
                "vm_pool_target",
                "VMs a runtime handler keeps booted ahead (vm_pool)",
                |p: &PoolState| p.target,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for pool in &pools {
                let labels = [("handler", pool.handler.as_str())];
                ConstGauge::new(figure(pool) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
