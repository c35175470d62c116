//! `ListMetricDescriptors`, `ListPodSandboxMetrics` and its streaming form:
//! the pods' stats as cAdvisor-named metrics, from which the kubelet serves
//! `/metrics/cadvisor`. The kubelet appends the `namespace`, `pod` and
//! `container` labels itself (`container="POD"` for pod-level metrics), so
//! the descriptors declare only the labels it cannot know.
//!
//! Values are CRI `UInt64Value`s, which the kubelet reads as numbers:
//! CPU time is therefore whole seconds. Pod-level metrics are the network
//! counters only; the pod's own CPU and memory (for a VM pod, what the VM
//! costs) stay out of these cAdvisor names, whose sums by pod count
//! containers.

use pods::{ContainerStats, PodStats, SandboxFilter, SandboxState};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::batch::in_batches;
use crate::proto;
use crate::service::RuntimeService;

/// Labels of container metrics (after which the kubelet adds its own).
const CONTAINER_LABELS: &[&str] = &["id", "image", "name"];
/// Labels of network metrics.
const NETWORK_LABELS: &[&str] = &["id", "image", "name", "interface"];

/// One metric: name, help, labels, type.
struct Descriptor {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    kind: proto::MetricType,
}

const fn counter(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Descriptor {
    Descriptor {
        name,
        help,
        labels,
        kind: proto::MetricType::Counter,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        help,
        labels: CONTAINER_LABELS,
        kind: proto::MetricType::Gauge,
    }
}

const CPU: Descriptor = counter(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    CONTAINER_LABELS,
);
const MEMORY_USAGE: Descriptor = gauge(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
);
const WORKING_SET: Descriptor = gauge(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
);
const RSS: Descriptor = gauge("container_memory_rss", "Size of RSS in bytes.");
const SWAP: Descriptor = gauge("container_memory_swap", "Container swap usage in bytes.");
const PAGE_FAULTS: Descriptor = counter(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    &["id", "image", "name", "failure_type", "scope"],
);
const RX_BYTES: Descriptor = counter(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    NETWORK_LABELS,
);
const RX_ERRORS: Descriptor = counter(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    NETWORK_LABELS,
);
const TX_BYTES: Descriptor = counter(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    NETWORK_LABELS,
);
const TX_ERRORS: Descriptor = counter(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    NETWORK_LABELS,
);

const ALL: &[&Descriptor] = &[
    &CPU,
    &MEMORY_USAGE,
    &WORKING_SET,
    &RSS,
    &SWAP,
    &PAGE_FAULTS,
    &RX_BYTES,
    &RX_ERRORS,
    &TX_BYTES,
    &TX_ERRORS,
];

fn metric(d: &Descriptor, labels: Vec<String>, value: u64) -> proto::Metric {
    debug_assert_eq!(labels.len(), d.labels.len(), "{}", d.name);
    proto::Metric {
        name: d.name.to_owned(),
        // Gathered live, as the API asks for 0 then.
        timestamp: 0,
        metric_type: d.kind as i32,
        label_values: labels,
        value: Some(proto::UInt64Value { value }),
    }
}

fn container_metrics(s: &ContainerStats) -> proto::ContainerMetrics {
    let labels = || {
        vec![
            s.record.id.clone(),
            s.record.config.image.image_ref.clone(),
            s.record.id.clone(),
        ]
    };
    let mut metrics = Vec::new();
    if let Some(cpu) = s.usage.cpu {
        metrics.push(metric(&CPU, labels(), cpu.usage_core_ns / 1_000_000_000));
    }
    if let Some(m) = s.usage.memory {
        metrics.push(metric(&MEMORY_USAGE, labels(), m.usage_bytes));
        metrics.push(metric(&WORKING_SET, labels(), m.working_set_bytes));
        metrics.push(metric(&RSS, labels(), m.rss_bytes));
        if let Some(swap) = m.swap_bytes {
            metrics.push(metric(&SWAP, labels(), swap));
        }
        for (kind, value) in [
            ("pgfault", m.page_faults),
            ("pgmajfault", m.major_page_faults),
        ] {
            let mut l = labels();
            l.extend([kind.to_owned(), "container".to_owned()]);
            metrics.push(metric(&PAGE_FAULTS, l, value));
        }
    }
    proto::ContainerMetrics {
        container_id: s.record.id.clone(),
        metrics,
    }
}

fn pod_metrics(s: &PodStats) -> proto::PodSandboxMetrics {
    let mut metrics = Vec::new();
    for i in &s.usage.interfaces {
        let labels = || {
            vec![
                s.sandbox.id.clone(),
                String::new(),
                s.sandbox.id.clone(),
                i.name.clone(),
            ]
        };
        metrics.push(metric(&RX_BYTES, labels(), i.rx_bytes));
        metrics.push(metric(&RX_ERRORS, labels(), i.rx_errors));
        metrics.push(metric(&TX_BYTES, labels(), i.tx_bytes));
        metrics.push(metric(&TX_ERRORS, labels(), i.tx_errors));
    }
    proto::PodSandboxMetrics {
        pod_sandbox_id: s.sandbox.id.clone(),
        metrics,
        container_metrics: s.containers.iter().map(container_metrics).collect(),
    }
}

pub(crate) async fn list_metric_descriptors(
    _svc: &RuntimeService,
    _request: Request<proto::ListMetricDescriptorsRequest>,
) -> Result<Response<proto::ListMetricDescriptorsResponse>, Status> {
    let descriptors = ALL
        .iter()
        .map(|d| proto::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: d.labels.iter().map(|l| (*l).to_owned()).collect(),
        })
        .collect();
    Ok(Response::new(proto::ListMetricDescriptorsResponse {
        descriptors,
    }))
}

/// The metrics of every ready pod, for both list forms.
async fn all_pods(svc: &RuntimeService) -> Vec<proto::PodSandboxMetrics> {
    let filter = SandboxFilter {
        state: Some(SandboxState::Ready),
        ..Default::default()
    };
    svc.pods
        .list_pod_stats(&filter)
        .await
        .iter()
        .map(pod_metrics)
        .collect()
}

pub(crate) async fn list_pod_sandbox_metrics(
    svc: &RuntimeService,
    _request: Request<proto::ListPodSandboxMetricsRequest>,
) -> Result<Response<proto::ListPodSandboxMetricsResponse>, Status> {
    let pod_metrics = all_pods(svc).await;
    Ok(Response::new(proto::ListPodSandboxMetricsResponse {
        pod_metrics,
    }))
}

pub(crate) async fn stream_pod_sandbox_metrics(
    svc: &RuntimeService,
    _request: Request<proto::StreamPodSandboxMetricsRequest>,
) -> Result<Response<BoxStream<proto::StreamPodSandboxMetricsResponse>>, Status> {
    let metrics = all_pods(svc).await;
    Ok(in_batches(metrics, |pod_sandbox_metrics| {
        proto::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_descriptor_is_unique_and_leaves_the_kubelets_labels_to_it() {
        let mut names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for d in ALL {
            for own in ["namespace", "pod", "container"] {
                assert!(!d.labels.contains(&own), "{} declares {own}", d.name);
            }
            assert!(d.name.starts_with("container_"), "{}", d.name);
        }
    }
}
