use std::sync::Arc;
use std::time::Duration;

use super::*;

/// The value of the sample `name{labels}` in `text`, if there is one.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == series).then(|| value.parse().ok())?
    })
}

#[test]
fn requests_are_counted_by_method_and_code_and_errors_apart() {
    let t = Telemetry::new();
    let ms = Duration::from_millis(3);
    t.record_request("RuntimeService", "Version", "OK", ms);
    t.record_request("RuntimeService", "Version", "OK", ms);
    t.record_request("RuntimeService", "PodSandboxStatus", "NotFound", ms);
    let text = t.encode().unwrap();
    let ok = r#"frakti_cri_requests_total{service="RuntimeService",method="Version",code="OK"}"#;
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    let nf = r#"{service="RuntimeService",method="PodSandboxStatus",code="NotFound"}"#;
    assert_eq!(
        sample(&text, &format!("frakti_cri_requests_total{nf}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, &format!("frakti_cri_request_errors_total{nf}")),
        Some(1.0)
    );
    let ok_errors =
        r#"frakti_cri_request_errors_total{service="RuntimeService",method="Version",code="OK"}"#;
    assert_eq!(sample(&text, ok_errors), None, "OK is not an error");
    let count =
        r#"frakti_cri_request_duration_seconds_count{service="RuntimeService",method="Version"}"#;
    assert_eq!(sample(&text, count), Some(2.0));
    let bucket = r#"frakti_cri_request_duration_seconds_bucket{le="0.0025",service="RuntimeService",method="Version"}"#;
    let under = r#"frakti_cri_request_duration_seconds_bucket{le="0.005",service="RuntimeService",method="Version"}"#;
    assert_eq!(sample(&text, bucket), Some(0.0), "{text}");
    assert_eq!(sample(&text, under), Some(2.0), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn pod_start_phases_and_pulls_are_histograms() {
    let t = Telemetry::new();
    t.record_pod_start("vm", StartPhase::VmBoot, Duration::from_millis(1800));
    t.record_pod_start("vm", StartPhase::Total, Duration::from_millis(2500));
    t.record_pull_bytes(1000);
    t.record_pull_bytes(24);
    t.record_pull(PullOutcome::Pulled, Duration::from_millis(700));
    t.record_pull(PullOutcome::Failed, Duration::from_millis(20));
    let text = t.encode().unwrap();
    let boot = r#"frakti_pod_start_duration_seconds_sum{runtime="vm",phase="vm_boot"}"#;
    assert_eq!(sample(&text, boot), Some(1.8), "{text}");
    let total = r#"frakti_pod_start_duration_seconds_count{runtime="vm",phase="total"}"#;
    assert_eq!(sample(&text, total), Some(1.0));
    assert_eq!(sample(&text, "frakti_image_pull_bytes_total"), Some(1024.0));
    let failed = r#"frakti_image_pull_duration_seconds_count{result="failed"}"#;
    assert_eq!(sample(&text, failed), Some(1.0));
}

#[derive(Debug)]
struct TwoVms;

impl VmSource for TwoVms {
    fn vm_costs(&self) -> Vec<VmCost> {
        ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, id)| VmCost {
                sandbox_id: (*id).to_owned(),
                cpu_seconds: 1.5 + i as f64,
                rss_bytes: 200 << 20,
            })
            .collect()
    }

    fn pool(&self) -> Option<PoolState> {
        Some(PoolState {
            handler: "kata".into(),
            ready: 1,
            target: 2,
        })
    }
}

#[test]
fn vms_are_read_at_each_scrape() {
    let t = Telemetry::new();
    let before = t.encode().unwrap();
    assert_eq!(
        sample(&before, "frakti_vms"),
        None,
        "no source, no VM figures"
    );
    // Two runtime handlers' VMs are one family each, not two.
    t.register_vms(vec![Arc::new(TwoVms), Arc::new(TwoVms)]);
    let text = t.encode().unwrap();
    assert_eq!(sample(&text, "frakti_vms"), Some(4.0), "{text}");
    assert_eq!(text.matches("# TYPE frakti_vms ").count(), 1, "{text}");
    let cpu = r#"frakti_pod_vm_host_cpu_seconds_total{sandbox_id="b"}"#;
    assert_eq!(sample(&text, cpu), Some(2.5));
    let rss = r#"frakti_pod_vm_host_memory_rss_bytes{sandbox_id="a"}"#;
    assert_eq!(sample(&text, rss), Some((200u64 << 20) as f64));
    assert!(text.contains("# TYPE frakti_pod_vm_host_cpu_seconds counter"));
    let ready = r#"frakti_vm_pool_ready{handler="kata"}"#;
    assert_eq!(sample(&text, ready), Some(1.0), "{text}");
    let target = r#"frakti_vm_pool_target{handler="kata"}"#;
    assert_eq!(sample(&text, target), Some(2.0), "{text}");
    assert_eq!(text.matches("# TYPE frakti_vm_pool_ready ").count(), 1);
}
