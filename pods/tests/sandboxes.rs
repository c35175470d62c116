//! Sandbox state-machine tests of the pod service against a fake runtime.

use std::collections::BTreeMap;
use std::sync::Arc;

use pods::{
    RunPodError, RuntimeEvent, SandboxConfig, SandboxFilter, SandboxRecord, SandboxState,
    StatusPodError,
};

mod common;

use common::*;

#[tokio::test]
async fn lifecycle_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let id = svc.run(config("a", &[])).await.unwrap();
    assert_eq!(id.len(), 64);
    assert_eq!(
        svc.status(&id, false).await.unwrap().0.state,
        SandboxState::Ready
    );

    svc.stop(&id).await.unwrap();
    svc.stop(&id).await.unwrap();
    let (rec, _) = svc.status(&id, false).await.unwrap();
    assert_eq!(rec.state, SandboxState::NotReady);

    svc.remove(&id).await.unwrap();
    svc.remove(&id).await.unwrap();
    assert!(matches!(
        svc.status(&id, false).await,
        Err(StatusPodError::NotFound(_))
    ));
    svc.stop("unknown").await.unwrap();
    svc.remove("unknown").await.unwrap();
    let short = &id[..8];
    assert_eq!(
        rt.calls(),
        vec![
            format!("start {short}"),
            format!("stop {short}"),
            format!("stop {short}"),
            format!("stop {short}"),
            format!("remove {short}"),
        ]
    );
}

#[tokio::test]
async fn bad_input_is_rejected_and_names_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let err = svc.run(SandboxConfig::default()).await.unwrap_err();
    assert!(err.to_string().contains("metadata is required"), "{err}");
    let mut c = config("", &[]);
    let err = svc.run(c.clone()).await.unwrap_err();
    assert!(err.to_string().contains("metadata.name"), "{err}");
    c = config("x", &[]);
    c.runtime_handler = "nope".into();
    let err = svc.run(c).await.unwrap_err();
    assert!(
        err.to_string().contains("unknown runtime handler \"nope\""),
        "{err}"
    );
    let mut c = config("x", &[]);
    c.hostname = "bad host".into();
    assert!(matches!(svc.run(c).await, Err(RunPodError::Invalid(_))));

    let mut c = config("x", &[]);
    c.metadata.as_mut().unwrap().name = "a;K8S_POD_UID=forged".into();
    let err = svc.run(c).await.unwrap_err();
    assert!(
        err.to_string().contains("metadata.name") && err.to_string().contains("';'"),
        "{err}"
    );
    let mut c = config("x", &[]);
    c.port_mappings.push(pods::PortMapping {
        protocol: "tcp".into(),
        container_port: 80,
        host_port: 70_000,
        host_ip: String::new(),
    });
    let err = svc.run(c).await.unwrap_err();
    assert!(
        err.to_string().contains("70000:80 is out of range"),
        "{err}"
    );
    let mut c = config("x", &[]);
    c.port_mappings.push(pods::PortMapping {
        protocol: "icmp".into(),
        container_port: 80,
        host_port: 8080,
        host_ip: String::new(),
    });
    assert!(svc.run(c).await.unwrap_err().to_string().contains("icmp"));

    let id = svc.run(config("dup", &[])).await.unwrap();
    let err = svc.run(config("dup", &[])).await.unwrap_err();
    assert!(
        matches!(err, RunPodError::NameReserved { id: ref held, .. } if *held == id),
        "{err}"
    );
    svc.remove(&id).await.unwrap();
    svc.run(config("dup", &[])).await.unwrap();
}

#[tokio::test]
async fn start_failure_leaves_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    *rt.fail_start.lock().unwrap() = Some("qemu exploded".into());
    let svc = service(dir.path(), rt.clone());
    let err = svc.run(config("a", &[])).await.unwrap_err();
    assert!(err.to_string().contains("qemu exploded"));
    assert!(svc.list(&SandboxFilter::default()).await.is_empty());
    *rt.fail_start.lock().unwrap() = None;
    svc.run(config("a", &[])).await.unwrap();
}

#[tokio::test]
async fn list_filters() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let a = svc
        .run(config("a", &[("app", "web"), ("tier", "1")]))
        .await
        .unwrap();
    let b = svc.run(config("b", &[("app", "web")])).await.unwrap();
    let c = svc.run(config("c", &[("app", "db")])).await.unwrap();
    svc.stop(&c).await.unwrap();
    let ids = |v: Vec<SandboxRecord>| {
        let mut ids: Vec<String> = v.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    let web = SandboxFilter {
        label_selector: BTreeMap::from([("app".into(), "web".into())]),
        ..Default::default()
    };
    assert_eq!(ids(svc.list(&web).await), want);
    let ready = SandboxFilter {
        state: Some(SandboxState::Ready),
        ..Default::default()
    };
    assert_eq!(ids(svc.list(&ready).await), want);
    let by_id = SandboxFilter {
        id: Some(c[..10].into()),
        ..Default::default()
    };
    assert_eq!(ids(svc.list(&by_id).await), vec![c.clone()]);
    let none = SandboxFilter {
        label_selector: BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "2".into())]),
        ..Default::default()
    };
    assert!(svc.list(&none).await.is_empty());
}

#[tokio::test]
async fn exit_event_marks_not_ready_and_recover_readopts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let alive = svc.run(config("alive", &[])).await.unwrap();
    let dead = svc.run(config("dead", &[])).await.unwrap();
    let died = svc.run(config("died", &[])).await.unwrap();

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(svc.clone().watch_events(rx));
    tx.send(RuntimeEvent::SandboxExited {
        id: died.clone(),
        reason: "qemu killed".into(),
    })
    .unwrap();
    drop(tx);
    watcher.await.unwrap();
    let (rec, _) = svc.status(&died, false).await.unwrap();
    assert_eq!(
        (rec.state, rec.reason.as_str()),
        (SandboxState::NotReady, "qemu killed")
    );

    // A new service over the same store, as after a daemon restart.
    rt.running.lock().unwrap().insert(dead.clone(), false);
    let svc2 = service(dir.path(), rt.clone());
    assert_eq!(svc2.recover().await.unwrap(), 3);
    assert_eq!(
        svc2.status(&alive, false).await.unwrap().0.state,
        SandboxState::Ready
    );
    assert_eq!(
        svc2.status(&dead, false).await.unwrap().0.state,
        SandboxState::NotReady
    );
    assert_eq!(
        svc2.status(&died, false).await.unwrap().0.state,
        SandboxState::NotReady
    );
    assert!(
        !rt.calls()
            .iter()
            .any(|c| c == &format!("adopt {}", &died[..8]))
    );
    svc2.remove(&alive).await.unwrap();
    assert!(!rt.running.lock().unwrap().contains_key(&alive));
}

// ---- containers ----
