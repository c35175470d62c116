//! The daemon's own metrics, for a Prometheus scrape: CRI requests by
//! method, pod start latency by phase, image pulls, and what each pod VM
//! costs on the host.
//!
//! The crate is a leaf. Whoever does the work records it on [`global()`];
//! the daemon serves [`Telemetry::encode`] over HTTP. Figures that belong to
//! live objects (the running VMs) are not recorded but read at each scrape
//! from a [`VmSource`].

mod vms;

use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use vms::{PoolState, VmCost, VmSource};

/// The media type of [`Telemetry::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric name.
pub const PREFIX: &str = "frakti";

/// Bounds of the CRI request latency buckets, seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Bounds of the pod start buckets, seconds: KVM boots take a fraction of
/// a second, software emulation several.
const START_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 15.0, 30.0,
];

/// Bounds of the image pull buckets, seconds.
const PULL_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A step of starting a pod sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPhase {
    /// The pod's network: CNI ADD, and for a VM the NIC hot-plug. In a VM
    /// pod it runs while the guest boots.
    Network,
    /// From launching the VMM until the guest's agent answers.
    VmBoot,
    /// From the agent's first answer until the guest is set up for the pod.
    AgentReady,
    /// The whole `RunPodSandbox`, as the kubelet waits for it.
    Total,
}

impl StartPhase {
    /// The phase's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::VmBoot => "vm_boot",
            Self::AgentReady => "agent_ready",
            Self::Total => "total",
        }
    }
}

/// How an image pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullOutcome {
    /// The image is stored.
    Pulled,
    /// It failed.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    service: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    runtime: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The daemon's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Telemetry {
    registry: RwLock<Registry>,
    requests: Family<CodeLabels, Counter>,
    request_errors: Family<CodeLabels, Counter>,
    request_seconds: Histograms<MethodLabels>,
    pod_start_seconds: Histograms<PhaseLabels>,
    pull_bytes: Counter,
    pull_seconds: Histograms<PullLabels>,
}

static GLOBAL: LazyLock<Telemetry> = LazyLock::new(Telemetry::new);

/// The process's metrics.
pub fn global() -> &'static Telemetry {
    &GLOBAL
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// A set of metrics with nothing recorded.
    pub fn new() -> Self {
        let t = Self {
            registry: RwLock::new(Registry::with_prefix(PREFIX)),
            requests: Family::default(),
            request_errors: Family::default(),
            request_seconds: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            pod_start_seconds: Family::new_with_constructor(|| Histogram::new(START_BUCKETS)),
            pull_bytes: Counter::default(),
            pull_seconds: Family::new_with_constructor(|| Histogram::new(PULL_BUCKETS)),
        };
        {
            let mut r = t.registry.write().unwrap_or_else(|e| e.into_inner());
            r.register(
                "cri_requests",
                "CRI calls answered, by service, method and gRPC status code",
                t.requests.clone(),
            );
            r.register(
                "cri_request_errors",
                "CRI calls answered with a gRPC status other than OK",
                t.request_errors.clone(),
            );
            r.register_with_unit(
                "cri_request_duration",
                "Time until a CRI call's answer (for a stream, its first message)",
                Unit::Seconds,
                t.request_seconds.clone(),
            );
            r.register_with_unit(
                "pod_start_duration",
                "Time to start a pod sandbox, by runtime and phase (phase total is the whole RunPodSandbox)",
                Unit::Seconds,
                t.pod_start_seconds.clone(),
            );
            r.register_with_unit(
                "image_pull",
                "Bytes of image blobs downloaded from registries",
                Unit::Bytes,
                t.pull_bytes.clone(),
            );
            r.register_with_unit(
                "image_pull_duration",
                "Time to pull an image, by result",
                Unit::Seconds,
                t.pull_seconds.clone(),
            );
        }
        t
    }

    /// Counts one CRI call of `service`/`method` answered with `code` after
    /// `elapsed`; `code` is the gRPC code's name (`OK`, `NotFound`, …).
    pub fn record_request(&self, service: &str, method: &str, code: &str, elapsed: Duration) {
        let labels = CodeLabels {
            service: service.to_owned(),
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.requests.get_or_create(&labels).inc();
        if code != "OK" {
            self.request_errors.get_or_create(&labels).inc();
        }
        self.request_seconds
            .get_or_create(&MethodLabels {
                service: labels.service,
                method: labels.method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long `phase` of starting a pod on `runtime` took.
    pub fn record_pod_start(&self, runtime: &str, phase: StartPhase, elapsed: Duration) {
        self.pod_start_seconds
            .get_or_create(&PhaseLabels {
                runtime: runtime.to_owned(),
                phase: phase.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts `bytes` downloaded for an image.
    pub fn record_pull_bytes(&self, bytes: u64) {
        self.pull_bytes.inc_by(bytes);
    }

    /// Records a pull that ended with `outcome` after `elapsed`.
    pub fn record_pull(&self, outcome: PullOutcome, elapsed: Duration) {
        let result = match outcome {
            PullOutcome::Pulled => "pulled",
            PullOutcome::Failed => "failed",
        };
        self.pull_seconds
            .get_or_create(&PullLabels { result })
            .observe(elapsed.as_secs_f64());
    }

    /// Reads the running VMs from `sources` (one per VM runtime handler)
    /// at each scrape, as one set of metrics.
    pub fn register_vms(&self, sources: Vec<Arc<dyn VmSource>>) {
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(vms::VmCollector(sources)));
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]). Reads
    /// `/proc` for the VMs: call it off the async threads.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests;
