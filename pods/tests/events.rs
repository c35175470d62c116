//! Container events of the pod service against a fake runtime: every
//! transition in order to every subscriber, with the pod's status, and a
//! subscriber that falls behind dropped without holding up the others.

use std::sync::Arc;
use std::time::Duration;

use pods::{
    ContainerEvent, ContainerEventKind, ContainerRuntimeStatus, ContainerState, RuntimeEvent,
    SandboxState,
};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

mod common;

use common::*;

async fn next(rx: &mut Receiver<Arc<ContainerEvent>>) -> Arc<ContainerEvent> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the subscription is alive")
}

fn kinds(events: &[Arc<ContainerEvent>]) -> Vec<(ContainerEventKind, String)> {
    events
        .iter()
        .map(|e| (e.kind, short(&e.container_id).to_owned()))
        .collect()
}

#[tokio::test]
async fn every_subscriber_sees_every_transition_in_order_with_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let pod = svc.run(config("p", &[])).await.unwrap();
    let mut first = svc.subscribe_events();
    let mut second = svc.subscribe_events();

    let a = svc
        .create_container(&pod, container("a", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&a).await.unwrap();
    let b = svc
        .create_container(&pod, container("b", 0, &[]))
        .await
        .unwrap();
    svc.stop_container(&a, Duration::ZERO).await.unwrap();
    svc.remove_container(&a).await.unwrap();

    let want = vec![
        (ContainerEventKind::Created, short(&a).to_owned()),
        (ContainerEventKind::Started, short(&a).to_owned()),
        (ContainerEventKind::Created, short(&b).to_owned()),
        (ContainerEventKind::Stopped, short(&a).to_owned()),
        (ContainerEventKind::Deleted, short(&a).to_owned()),
    ];
    for rx in [&mut first, &mut second] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next(rx).await);
        }
        assert_eq!(kinds(&got), want);
        assert!(got.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        for event in &got {
            let sandbox = event.sandbox.as_ref().expect("the pod's record");
            assert_eq!(sandbox.id, pod);
            assert_eq!(sandbox.state, SandboxState::Ready);
        }
        // The stop event carries the container's exit among the pod's statuses.
        let stopped = &got[3];
        let a_status = stopped.containers.iter().find(|c| c.id == a).unwrap();
        assert_eq!(a_status.status.state, ContainerState::Exited);
        assert!(stopped.containers.iter().any(|c| c.id == b));
        // Once deleted, the container is no longer among the pod's containers.
        assert!(got[4].containers.iter().all(|c| c.id != a));
    }

    // Stopping the pod stops its created container: the event shows the pod not ready.
    svc.stop(&pod).await.unwrap();
    let event = next(&mut first).await;
    assert_eq!(
        (event.kind, event.container_id.as_str()),
        (ContainerEventKind::Stopped, b.as_str())
    );
    assert_eq!(
        event.sandbox.as_ref().unwrap().state,
        SandboxState::NotReady
    );
}

#[tokio::test]
async fn exits_the_runtime_reports_are_stopped_events() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let pod = svc.run(config("p", &[])).await.unwrap();
    let by_itself = svc
        .create_container(&pod, container("exits", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&by_itself).await.unwrap();
    let with_vm = svc
        .create_container(&pod, container("vm", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&with_vm).await.unwrap();
    let mut rx = svc.subscribe_events();

    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(svc.clone().watch_events(events));
    tx.send(RuntimeEvent::ContainerExited {
        sandbox_id: pod.clone(),
        id: by_itself.clone(),
        status: ContainerRuntimeStatus {
            state: ContainerState::Exited,
            started_at_ns: 1,
            finished_at_ns: 2,
            exit_code: 3,
            reason: "Error".into(),
            message: String::new(),
            user: None,
        },
    })
    .unwrap();
    tx.send(RuntimeEvent::SandboxExited {
        id: pod.clone(),
        reason: "qemu killed".into(),
    })
    .unwrap();
    drop(tx);
    watcher.await.unwrap();

    let exited = next(&mut rx).await;
    assert_eq!(
        (exited.kind, exited.container_id.as_str()),
        (ContainerEventKind::Stopped, by_itself.as_str())
    );
    let own = exited
        .containers
        .iter()
        .find(|c| c.id == by_itself)
        .unwrap();
    assert_eq!(own.status.exit_code, 3);
    let died = next(&mut rx).await;
    assert_eq!(
        (died.kind, died.container_id.as_str()),
        (ContainerEventKind::Stopped, with_vm.as_str())
    );
    let sandbox = died.sandbox.as_ref().unwrap();
    assert_eq!(sandbox.state, SandboxState::NotReady);
    assert_eq!(sandbox.reason, "qemu killed");
    assert!(rx.try_recv().is_err(), "one event per transition");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let pod = svc.run(config("p", &[])).await.unwrap();
    let mut stalled = svc.subscribe_events();
    let mut reader = svc.subscribe_events();
    let reading = tokio::spawn(async move {
        let mut seen = 0usize;
        while seen < pods::events::BUFFER + 10 {
            next(&mut reader).await;
            seen += 1;
        }
        seen
    });
    // Each create + remove is two events: well over the buffer in all.
    for i in 0..(pods::events::BUFFER / 2 + 5) {
        let id = svc
            .create_container(&pod, container(&format!("c{i}"), 0, &[]))
            .await
            .unwrap();
        svc.remove_container(&id).await.unwrap();
    }
    assert_eq!(reading.await.unwrap(), pods::events::BUFFER + 10);
    match stalled.recv().await {
        Err(RecvError::Lagged(missed)) => assert!(missed >= 10, "missed {missed}"),
        other => panic!("the stalled subscriber should have lagged, got {other:?}"),
    }
}
