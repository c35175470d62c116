//! Stats of the pod service against a fake runtime: one runtime call per
//! pod, CPU rates between two samples, filters, and pods that cannot be
//! measured.

use std::sync::Arc;

use pods::{ContainerFilter, SandboxFilter, StatsError};

mod common;

use common::*;

#[tokio::test]
async fn one_call_per_pod_and_rates_between_two_samples() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let other = svc.run(config("q", &[("team", "b")])).await.unwrap();
    let mut running = Vec::new();
    for name in ["a", "b", "c"] {
        let id = svc
            .create_container(&pod, container(name, 0, &[("app", name)]))
            .await
            .unwrap();
        svc.start_container(&id).await.unwrap();
        running.push(id);
    }
    let created = svc
        .create_container(&other, container("idle", 0, &[]))
        .await
        .unwrap();

    let first = svc.list_container_stats(&ContainerFilter::default()).await;
    assert_eq!(first.len(), 4);
    let stats_calls = rt.calls().iter().filter(|c| c.starts_with("stats")).count();
    assert_eq!(stats_calls, 2, "one runtime call per pod: {:?}", rt.calls());
    assert!(
        first.iter().all(|s| s.nano_cores.is_none()),
        "no rate from one sample"
    );
    let idle = first.iter().find(|s| s.record.id == created).unwrap();
    assert!(idle.usage.cpu.is_none(), "a created container uses no CPU");

    let second = svc.list_container_stats(&ContainerFilter::default()).await;
    for s in second.iter().filter(|s| running.contains(&s.record.id)) {
        // The fake's samples are half a core apart (or a whole one, when
        // the other pod's call came in between).
        let rate = s.nano_cores.expect("a rate from two samples");
        assert!((500_000_000..=1_000_000_000).contains(&rate), "{rate}");
    }

    // Filters: by id prefix, by pod, by label.
    let one = svc
        .list_container_stats(&ContainerFilter {
            id: Some(running[1][..10].to_owned()),
            ..Default::default()
        })
        .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].record.id, running[1]);
    let by_pod = svc
        .list_container_stats(&ContainerFilter {
            sandbox_id: Some(other.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(by_pod.len(), 1);
    let by_label = svc
        .list_container_stats(&ContainerFilter {
            label_selector: [("app".to_owned(), "c".to_owned())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].record.id, running[2]);

    let single = svc.container_stats(&running[0]).await.unwrap();
    assert_eq!(single.usage.id, running[0]);
    assert!(matches!(
        svc.container_stats("nope").await,
        Err(StatsError::ContainerNotFound(_))
    ));

    let pods = svc.list_pod_stats(&SandboxFilter::default()).await;
    assert_eq!(pods.len(), 2);
    let p = pods.iter().find(|p| p.sandbox.id == pod).unwrap();
    assert_eq!(p.containers.len(), 3);
    let labelled = svc
        .list_pod_stats(&SandboxFilter {
            label_selector: [("team".to_owned(), "b".to_owned())].into(),
            ..Default::default()
        })
        .await;
    assert_eq!(labelled.len(), 1);
    assert_eq!(labelled[0].sandbox.id, other);
    assert!(matches!(
        svc.pod_stats("nope").await,
        Err(StatsError::SandboxNotFound(_))
    ));
}

#[tokio::test]
async fn pods_that_cannot_be_measured() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let broken = svc.run(config("broken", &[])).await.unwrap();
    let stopped = svc.run(config("stopped", &[])).await.unwrap();
    let c = svc
        .create_container(&broken, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&c).await.unwrap();
    let d = svc
        .create_container(&stopped, container("d", 0, &[]))
        .await
        .unwrap();
    svc.stop(&stopped).await.unwrap();
    rt.fail_stats.lock().unwrap().insert(broken.clone());

    // The list keeps every container, without figures where none could be taken.
    let list = svc.list_container_stats(&ContainerFilter::default()).await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|s| s.usage.cpu.is_none()));
    assert!(list.iter().any(|s| s.record.id == d));
    // The stopped pod was not asked.
    let asked: Vec<String> = rt
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("stats"))
        .collect();
    assert_eq!(asked, vec![format!("stats {}", short(&broken))]);

    // A single call says why.
    let err = svc.container_stats(&c).await.unwrap_err();
    assert!(matches!(err, StatsError::Runtime { .. }), "{err}");
    assert!(matches!(
        svc.pod_stats(&stopped).await,
        Err(StatsError::SandboxNotReady(_))
    ));
    // Pod lists leave out what cannot be measured.
    assert!(
        svc.list_pod_stats(&SandboxFilter::default())
            .await
            .is_empty()
    );
}
