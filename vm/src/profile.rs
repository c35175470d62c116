//! The VM a pod gets: the accelerator (probed once: a real KVM boot in
//! `auto` mode, else TCG) and the pod's size.

use std::sync::Arc;
use std::time::Duration;

use agent_api::{AgentClient, UnixTransport};
use hypervisor::{Accel, AccelMode, Hypervisor, VmSpec};
use runtime_api::report;
use tokio::time::Instant;

use crate::config::VmRuntimeConfig;
use crate::guest::wait_boot;

pub use crate::sizing::{VmSize, size_for};

/// How long a KVM probe boot may take before KVM is judged unusable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accelerator verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelVerdict {
    /// The accelerator chosen.
    pub accel: Accel,
    /// Why it was chosen.
    pub reason: String,
}

/// Chooses the accelerator for every VM of this daemon.
pub(crate) async fn choose_accel(
    config: &VmRuntimeConfig,
    hypervisor: &dyn Hypervisor,
) -> AccelVerdict {
    let verdict = |accel, reason: String| AccelVerdict { accel, reason };
    match config.accel {
        AccelMode::Kvm => return verdict(Accel::Kvm, "forced by configuration".into()),
        AccelMode::Tcg => return verdict(Accel::Tcg, "forced by configuration".into()),
        AccelMode::Auto => {}
    }
    if let Err(why) = hypervisor::accel::kvm_device_usable() {
        return verdict(Accel::Tcg, format!("KVM unavailable ({why})"));
    }
    let spec = VmSpec {
        id: "accel-probe".into(),
        dir: config.state_dir.join("accel-probe"),
        vcpus: 1,
        memory_mib: 256,
        max_vcpus: 1,
        max_memory_mib: 256,
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        extra_cmdline: Vec::new(),
        accel: Accel::Kvm,
        netns: None,
        nics: Vec::new(),
        shares: Vec::new(),
        disks: Vec::new(),
    };
    let started = Instant::now();
    let result = match hypervisor.launch(&spec).await {
        Ok(vm) => {
            let agent = AgentClient::new(Arc::new(UnixTransport::new(&vm.agent_socket)));
            let ready = wait_boot(&agent, &vm, started + PROBE_TIMEOUT).await;
            let _ = hypervisor.stop(&spec.id, &vm, Duration::ZERO).await;
            ready.map_err(|e| e.to_string())
        }
        Err(e) => Err(report(&e)),
    };
    let _ = std::fs::remove_dir_all(&spec.dir);
    match result {
        Ok(()) => verdict(
            Accel::Kvm,
            format!("a KVM probe guest booted in {:.2?}", started.elapsed()),
        ),
        Err(why) => verdict(
            Accel::Tcg,
            format!("a KVM probe guest did not come up: {why}"),
        ),
    }
}
