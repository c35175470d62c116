//! Container state-machine tests of the pod service against a fake runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pods::container::NamespaceMode;
use pods::{
    ContainerConfig, ContainerRuntimeStatus, ContainerState, RuntimeErrorKind, RuntimeEvent, Store,
};

mod common;

use common::*;

#[tokio::test]
async fn container_lifecycle_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(pod_with_logs("p")).await.unwrap();
    let id = svc
        .create_container(&pod, container("web", 0, &[]))
        .await
        .unwrap();
    assert_eq!(id.len(), 64);
    let (rec, info) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(rec.status.state, ContainerState::Created);
    assert_eq!(rec.sandbox_id, pod);
    assert_eq!(rec.log_path, "/var/log/pods/default_p/web/0.log");
    assert!(rec.created_at_ns > 0);
    assert!(info.is_none());
    assert!(dir.path().join(format!("containers/{id}.json")).is_file());

    svc.start_container(&id).await.unwrap();
    let (rec, info) = svc.container_status(&id[..12], true).await.unwrap();
    assert_eq!(rec.status.state, ContainerState::Running);
    assert_eq!(info, Some(serde_json::json!({"container": id})));
    let err = svc.start_container(&id).await.unwrap_err();
    assert!(
        matches!(
            err,
            pods::StartContainerError::NotCreated {
                state: ContainerState::Running,
                ..
            }
        ),
        "{err}"
    );

    svc.stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    svc.stop_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let (rec, _) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(
        (rec.status.state, rec.status.exit_code),
        (ContainerState::Exited, 137)
    );

    svc.remove_container(&id).await.unwrap();
    svc.remove_container(&id).await.unwrap();
    assert!(matches!(
        svc.container_status(&id, false).await,
        Err(pods::ContainerStatusError::NotFound(_))
    ));
    assert!(!dir.path().join(format!("containers/{id}.json")).exists());
    svc.stop_container("unknown", Duration::ZERO).await.unwrap();
    svc.remove_container("unknown").await.unwrap();
    assert!(matches!(
        svc.start_container("unknown").await,
        Err(pods::StartContainerError::NotFound(_))
    ));

    let s = short(&id);
    let calls: Vec<String> = rt.calls().into_iter().filter(|c| c.ends_with(s)).collect();
    assert_eq!(
        calls,
        vec![
            format!("create_c {s}"),
            format!("start_c {s}"),
            format!("stop_c/30s {s}"),
            format!("remove_c {s}"),
        ]
    );
}

#[tokio::test]
async fn removing_a_running_container_stops_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&id).await.unwrap();
    svc.remove_container(&id).await.unwrap();
    let s = short(&id);
    assert!(
        rt.calls()
            .ends_with(&[format!("stop_c/0s {s}"), format!("remove_c {s}")])
    );
    assert!(svc.list_containers(&Default::default()).is_empty());
}

#[tokio::test]
async fn container_names_are_reserved_per_pod_and_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let pod = svc.run(config("p", &[])).await.unwrap();
    let other = svc.run(config("q", &[])).await.unwrap();
    let first = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    let err = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, pods::CreateContainerError::NameReserved { name, id } if name == "c_0" && *id == first),
        "{err}"
    );
    svc.create_container(&pod, container("c", 1, &[]))
        .await
        .unwrap();
    svc.create_container(&other, container("c", 0, &[]))
        .await
        .unwrap();
    svc.remove_container(&first).await.unwrap();
    svc.create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_container_requests_get_the_right_errors() {
    use pods::CreateContainerError as E;
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let stopped = svc.run(config("s", &[])).await.unwrap();
    svc.stop(&stopped).await.unwrap();
    let before = rt.calls().len();

    let err = svc
        .create_container("nope", container("c", 0, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, E::SandboxNotFound(_)), "{err}");
    let err = svc
        .create_container(&stopped, container("c", 0, &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, E::SandboxNotReady(_)), "{err}");

    let invalid = |mutate: fn(&mut ContainerConfig), want: &'static str| {
        let svc = svc.clone();
        let pod = pod.clone();
        async move {
            let mut c = container("c", 0, &[]);
            mutate(&mut c);
            let err = svc.create_container(&pod, c).await.unwrap_err();
            assert!(
                matches!(err, E::Invalid(_)) && err.to_string().contains(want),
                "want {want:?}, got {err}"
            );
        }
    };
    invalid(
        |c| c.metadata.name.clear(),
        "metadata.name must not be empty",
    )
    .await;
    invalid(|c| c.metadata.name = "../etc".into(), "metadata.name").await;
    invalid(|c| c.metadata.name = "a/b".into(), "'/'").await;
    invalid(|c| c.log_path = "../escape.log".into(), "log_path").await;
    invalid(|c| c.log_path = "/var/log/abs.log".into(), "log_path").await;
    invalid(|c| c.image.id.clear(), "not resolved").await;
    invalid(|c| c.security.run_as_group = Some(5), "run_as_group").await;
    invalid(|c| c.security.privileged = true, "privileged").await;
    invalid(
        |c| {
            c.security.namespaces.pid = NamespaceMode::Target;
            c.security.namespaces.target_id = "missing".into();
        },
        "namespace target \"missing\"",
    )
    .await;
    invalid(
        |c| c.envs.push(("A=B".into(), "x".into())),
        "environment variable",
    )
    .await;
    // Nothing reached the runtime, and no name stays reserved.
    assert_eq!(rt.calls().len(), before);
    svc.create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();

    // A privileged pod accepts privileged containers.
    let mut privileged = config("priv", &[]);
    privileged.privileged = true;
    let priv_pod = svc.run(privileged).await.unwrap();
    let mut c = container("c", 0, &[]);
    c.security.privileged = true;
    svc.create_container(&priv_pod, c).await.unwrap();
}

#[tokio::test]
async fn target_namespace_must_be_a_container_of_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let pod = svc.run(config("p", &[])).await.unwrap();
    let other = svc.run(config("q", &[])).await.unwrap();
    let target = svc
        .create_container(&pod, container("app", 0, &[]))
        .await
        .unwrap();
    let mut debug = container("debug", 0, &[]);
    debug.security.namespaces.pid = NamespaceMode::Target;
    debug.security.namespaces.target_id = target.clone();
    let err = svc
        .create_container(&other, debug.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, pods::CreateContainerError::Invalid(_)),
        "{err}"
    );
    svc.create_container(&pod, debug).await.unwrap();
}

#[tokio::test]
async fn list_containers_filters() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRuntime::default()));
    let p1 = svc.run(config("p1", &[])).await.unwrap();
    let p2 = svc.run(config("p2", &[])).await.unwrap();
    let a = svc
        .create_container(&p1, container("a", 0, &[("app", "web")]))
        .await
        .unwrap();
    let b = svc
        .create_container(&p1, container("b", 0, &[("app", "db")]))
        .await
        .unwrap();
    let c = svc
        .create_container(&p2, container("c", 0, &[("app", "web")]))
        .await
        .unwrap();
    svc.start_container(&a).await.unwrap();
    let ids = |filter: pods::ContainerFilter| {
        let mut ids: Vec<String> = svc
            .list_containers(&filter)
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(Default::default()),
        sorted(vec![a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(
        ids(pods::ContainerFilter {
            sandbox_id: Some(p1.clone()),
            ..Default::default()
        }),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        ids(pods::ContainerFilter {
            state: Some(ContainerState::Running),
            ..Default::default()
        }),
        vec![a.clone()]
    );
    assert_eq!(
        ids(pods::ContainerFilter {
            label_selector: BTreeMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }),
        sorted(vec![a.clone(), c.clone()])
    );
    assert_eq!(
        ids(pods::ContainerFilter {
            id: Some(b[..10].into()),
            ..Default::default()
        }),
        vec![b.clone()]
    );
    assert!(
        ids(pods::ContainerFilter {
            sandbox_id: Some(p2.clone()),
            label_selector: BTreeMap::from([("app".into(), "db".into())]),
            ..Default::default()
        })
        .is_empty()
    );
}

#[tokio::test]
async fn status_is_refreshed_from_the_runtime_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&id).await.unwrap();
    let exited = ContainerRuntimeStatus {
        state: ContainerState::Exited,
        started_at_ns: 10,
        finished_at_ns: 30,
        exit_code: 3,
        reason: "Error".into(),
        message: String::new(),
        user: None,
    };
    rt.containers
        .lock()
        .unwrap()
        .insert(id.clone(), exited.clone());
    // The list shows the last recorded state; status asks the runtime.
    assert_eq!(
        svc.list_containers(&Default::default())[0].status.state,
        ContainerState::Running
    );
    assert_eq!(
        svc.container_status(&id, false).await.unwrap().0.status,
        exited
    );
    let stored = Store::open(dir.path()).unwrap().load_containers().unwrap();
    assert_eq!(stored[0].status, exited);
    // An exited record is final: the runtime is not asked to revive it.
    rt.containers.lock().unwrap().remove(&id);
    assert_eq!(
        svc.container_status(&id, false).await.unwrap().0.status,
        exited
    );
}

#[tokio::test]
async fn failed_start_records_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    *rt.fail_container_start.lock().unwrap() = Some("no such binary".into());
    let err = svc.start_container(&id).await.unwrap_err();
    assert!(err.to_string().contains("no such binary"), "{err}");
    let (rec, _) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(
        (
            rec.status.state,
            rec.status.exit_code,
            rec.status.reason.as_str()
        ),
        (ContainerState::Exited, 128, "StartError")
    );
    assert!(rec.status.message.contains("no such binary"));
}

#[tokio::test]
async fn exit_events_update_and_persist_records() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&id).await.unwrap();
    let status = ContainerRuntimeStatus {
        state: ContainerState::Exited,
        started_at_ns: 10,
        finished_at_ns: 40,
        exit_code: 0,
        reason: "Completed".into(),
        message: String::new(),
        user: None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(svc.clone().watch_events(rx));
    // Unknown containers and mismatched sandboxes are ignored.
    tx.send(RuntimeEvent::ContainerExited {
        sandbox_id: pod.clone(),
        id: "unknown".into(),
        status: status.clone(),
    })
    .unwrap();
    tx.send(RuntimeEvent::ContainerExited {
        sandbox_id: "other".into(),
        id: id.clone(),
        status: ContainerRuntimeStatus {
            exit_code: 99,
            ..status.clone()
        },
    })
    .unwrap();
    tx.send(RuntimeEvent::ContainerExited {
        sandbox_id: pod.clone(),
        id: id.clone(),
        status: status.clone(),
    })
    .unwrap();
    drop(tx);
    watcher.await.unwrap();
    // The runtime still claims it runs (a stale answer): the exit stands.
    let (rec, _) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(rec.status, status);
    let stored = Store::open(dir.path()).unwrap().load_containers().unwrap();
    assert_eq!(stored[0].status, status);
    // Stopping an exited container does not reach the runtime.
    svc.stop_container(&id, Duration::ZERO).await.unwrap();
    assert!(!rt.calls().iter().any(|c| c.starts_with("stop_c")));
}

#[tokio::test]
async fn pod_stop_and_remove_cascade_to_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let keep = svc.run(config("keep", &[])).await.unwrap();
    let running = svc
        .create_container(&pod, container("run", 0, &[]))
        .await
        .unwrap();
    let created = svc
        .create_container(&pod, container("new", 0, &[]))
        .await
        .unwrap();
    let other = svc
        .create_container(&keep, container("run", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&running).await.unwrap();
    svc.start_container(&other).await.unwrap();

    svc.stop(&pod).await.unwrap();
    let calls = rt.calls();
    let stop_c = calls
        .iter()
        .position(|c| *c == format!("stop_c/0s {}", short(&running)))
        .expect("running container stopped");
    let stop_pod = calls
        .iter()
        .position(|c| *c == format!("stop {}", short(&pod)))
        .expect("pod stopped");
    assert!(stop_c < stop_pod, "{calls:?}");
    let (rec, _) = svc.container_status(&running, false).await.unwrap();
    assert_eq!(
        (rec.status.state, rec.status.exit_code),
        (ContainerState::Exited, 137)
    );
    let (rec, _) = svc.container_status(&created, false).await.unwrap();
    assert_eq!(rec.status.state, ContainerState::Exited);
    assert_eq!(rec.status.reason, "Error");
    assert!(rec.status.message.contains("pod sandbox was stopped"));
    assert!(rec.status.finished_at_ns > 0);
    assert_eq!(
        svc.container_status(&other, false)
            .await
            .unwrap()
            .0
            .status
            .state,
        ContainerState::Running
    );
    // Starting a container of a stopped pod is refused.
    let err = svc.start_container(&created).await.unwrap_err();
    assert!(
        matches!(err, pods::StartContainerError::NotCreated { .. }),
        "{err}"
    );

    svc.remove(&pod).await.unwrap();
    let left: Vec<String> = svc
        .list_containers(&Default::default())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![other.clone()]);
    let stored = Store::open(dir.path()).unwrap().load_containers().unwrap();
    assert_eq!(stored.len(), 1);
    let calls = rt.calls();
    for id in [&running, &created] {
        assert!(
            calls.contains(&format!("remove_c {}", short(id))),
            "{calls:?}"
        );
    }
    let remove_pod = calls
        .iter()
        .position(|c| *c == format!("remove {}", short(&pod)))
        .unwrap();
    assert!(
        calls
            .iter()
            .position(|c| *c == format!("remove_c {}", short(&created)))
            .unwrap()
            < remove_pod
    );
}

#[tokio::test]
async fn remove_pod_removes_running_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&id).await.unwrap();
    svc.remove(&pod).await.unwrap();
    assert!(svc.list_containers(&Default::default()).is_empty());
    assert!(rt.containers.lock().unwrap().is_empty());
    // The name is free again in a new pod with the same metadata.
    let pod = svc.run(config("p", &[])).await.unwrap();
    svc.create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
}

#[tokio::test]
async fn vm_death_ends_the_pods_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let running = svc
        .create_container(&pod, container("run", 0, &[]))
        .await
        .unwrap();
    let created = svc
        .create_container(&pod, container("new", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&running).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(svc.clone().watch_events(rx));
    tx.send(RuntimeEvent::SandboxExited {
        id: pod.clone(),
        reason: "qemu killed".into(),
    })
    .unwrap();
    drop(tx);
    watcher.await.unwrap();
    for id in [&running, &created] {
        let (rec, _) = svc.container_status(id, false).await.unwrap();
        assert_eq!(rec.status.state, ContainerState::Exited);
        assert_eq!(rec.status.reason, "Error");
        assert!(
            rec.status.message.contains("pod VM stopped: qemu killed"),
            "{}",
            rec.status.message
        );
    }
    assert_eq!(
        svc.container_status(&running, false)
            .await
            .unwrap()
            .0
            .status
            .exit_code,
        137
    );
    // Exec and log reopening are refused without reaching the runtime.
    let err = svc
        .exec_sync(&running, &["true".into()], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pods::ExecSyncError::NotRunning { .. }),
        "{err}"
    );
    assert!(!rt.calls().iter().any(|c| c.starts_with("exec")));
}

#[tokio::test]
async fn recover_reloads_and_reconciles_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let alive = svc.run(config("alive", &[])).await.unwrap();
    let dead = svc.run(config("dead", &[])).await.unwrap();
    let keeps = svc
        .create_container(&alive, container("keeps", 0, &[]))
        .await
        .unwrap();
    let ended = svc
        .create_container(&alive, container("ended", 0, &[]))
        .await
        .unwrap();
    let orphan = svc
        .create_container(&dead, container("orphan", 0, &[]))
        .await
        .unwrap();
    for id in [&keeps, &ended, &orphan] {
        svc.start_container(id).await.unwrap();
    }
    // While the daemon is down: one container exits, one pod VM dies.
    rt.containers.lock().unwrap().insert(
        ended.clone(),
        ContainerRuntimeStatus {
            state: ContainerState::Exited,
            started_at_ns: 10,
            finished_at_ns: 50,
            exit_code: 2,
            reason: "Error".into(),
            message: String::new(),
            user: None,
        },
    );
    rt.running.lock().unwrap().insert(dead.clone(), false);
    drop(svc);

    let svc2 = service(dir.path(), rt.clone());
    assert_eq!(svc2.recover().await.unwrap(), 2);
    let all = svc2.list_containers(&Default::default());
    assert_eq!(all.len(), 3);
    let state = |id: &str| {
        all.iter()
            .find(|r| r.id == id)
            .map(|r| (r.status.state, r.status.exit_code))
            .unwrap()
    };
    assert_eq!(state(&keeps), (ContainerState::Running, 0));
    assert_eq!(state(&ended), (ContainerState::Exited, 2));
    assert_eq!(state(&orphan).0, ContainerState::Exited);
    // Names survive the restart.
    let err = svc2
        .create_container(&alive, container("keeps", 0, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, pods::CreateContainerError::NameReserved { ref id, .. } if *id == keeps),
        "{err}"
    );
    svc2.remove(&alive).await.unwrap();
    assert_eq!(svc2.list_containers(&Default::default()).len(), 1);
}

#[tokio::test]
async fn exec_and_log_reopen_need_a_running_container() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    let err = svc.reopen_container_log(&id).await.unwrap_err();
    assert!(
        matches!(
            err,
            pods::ReopenLogError::NotRunning {
                state: ContainerState::Created,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        svc.exec_sync(&id, &["ls".into()], None).await,
        Err(pods::ExecSyncError::NotRunning { .. })
    ));
    assert!(
        !rt.calls()
            .iter()
            .any(|c| c.starts_with("reopen") || c.starts_with("exec"))
    );
    svc.start_container(&id).await.unwrap();
    svc.reopen_container_log(&id).await.unwrap();
    let out = svc
        .exec_sync(&id, &["echo".into(), "hi".into()], None)
        .await
        .unwrap();
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"echo hi"[..], 3));
    let err = svc
        .exec_sync(&id, &["sleep".into()], Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, pods::ExecSyncError::Runtime { source, .. } if source.kind == RuntimeErrorKind::DeadlineExceeded),
        "{err}"
    );
    assert!(matches!(
        svc.exec_sync(&id, &[], None).await,
        Err(pods::ExecSyncError::Invalid(_))
    ));
    assert!(matches!(
        svc.reopen_container_log("missing").await,
        Err(pods::ReopenLogError::NotFound(_))
    ));
    svc.stop_container(&id, Duration::ZERO).await.unwrap();
    assert!(matches!(
        svc.reopen_container_log(&id).await,
        Err(pods::ReopenLogError::NotRunning {
            state: ContainerState::Exited,
            ..
        })
    ));
}

/// A stop that hangs in the runtime holds up neither other containers nor
/// status reads of the same container. (The outer timeout only turns a
/// deadlock into a failure; nothing here measures time.)
#[tokio::test]
async fn operations_are_serialised_per_container_only() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let slow = svc
        .create_container(&pod, container("slow", 0, &[]))
        .await
        .unwrap();
    let fast = svc
        .create_container(&pod, container("fast", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&slow).await.unwrap();
    svc.start_container(&fast).await.unwrap();
    rt.gated.lock().unwrap().insert(slow.clone());

    let guard = tokio::time::timeout(Duration::from_secs(60), async {
        let stopping = {
            let svc = svc.clone();
            let slow = slow.clone();
            tokio::spawn(async move { svc.stop_container(&slow, Duration::from_secs(30)).await })
        };
        // Wait until the slow stop is inside the runtime.
        while !rt.calls().contains(&format!("stop_c/30s {}", short(&slow))) {
            tokio::task::yield_now().await;
        }
        svc.stop_container(&fast, Duration::ZERO).await.unwrap();
        assert_eq!(
            svc.container_status(&fast, false)
                .await
                .unwrap()
                .0
                .status
                .state,
            ContainerState::Exited
        );
        // Status of the busy container answers from the record.
        assert_eq!(
            svc.container_status(&slow, false)
                .await
                .unwrap()
                .0
                .status
                .state,
            ContainerState::Running
        );
        assert_eq!(svc.list_containers(&Default::default()).len(), 2);
        rt.gate.notify_one();
        stopping.await.unwrap().unwrap();
    })
    .await;
    assert!(guard.is_ok(), "an operation waited for another container");
    assert_eq!(
        svc.container_status(&slow, false)
            .await
            .unwrap()
            .0
            .status
            .state,
        ContainerState::Exited
    );
}

/// An exit reported while a stop is in flight is the one kept: the stop's
/// own (later) answer does not overwrite it.
#[tokio::test]
async fn the_first_recorded_exit_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&id).await.unwrap();
    rt.gated.lock().unwrap().insert(id.clone());
    let stopping = {
        let svc = svc.clone();
        let id = id.clone();
        tokio::spawn(async move { svc.stop_container(&id, Duration::from_secs(5)).await })
    };
    while !rt.calls().contains(&format!("stop_c/5s {}", short(&id))) {
        tokio::task::yield_now().await;
    }
    let completed = ContainerRuntimeStatus {
        state: ContainerState::Exited,
        started_at_ns: 10,
        finished_at_ns: 15,
        exit_code: 0,
        reason: "Completed".into(),
        message: String::new(),
        user: None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(svc.clone().watch_events(rx));
    tx.send(RuntimeEvent::ContainerExited {
        sandbox_id: pod.clone(),
        id: id.clone(),
        status: completed.clone(),
    })
    .unwrap();
    drop(tx);
    watcher.await.unwrap();
    rt.gate.notify_one();
    stopping.await.unwrap().unwrap();
    assert_eq!(
        svc.container_status(&id, false).await.unwrap().0.status,
        completed
    );
}

#[tokio::test]
async fn resource_updates_are_stored_only_when_the_runtime_applied_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let id = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    let limits = pods::container::ContainerResources {
        cpu_shares: 512,
        memory_limit_bytes: 64 << 20,
        ..Default::default()
    };
    svc.update_container_resources(&id, limits.clone())
        .await
        .unwrap();
    let (rec, _) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(rec.config.resources, limits);
    let stored = Store::open(dir.path()).unwrap().load_containers().unwrap();
    assert_eq!(stored[0].config.resources, limits, "not persisted");

    // Refused by the runtime: the old limits stay, with the runtime's code.
    let refused = pods::container::ContainerResources {
        memory_limit_bytes: 1,
        ..Default::default()
    };
    let err = svc
        .update_container_resources(&id, refused)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, pods::UpdateResourcesError::Runtime { source, .. } if source.kind == RuntimeErrorKind::ResourceExhausted),
        "{err}"
    );
    assert_eq!(
        svc.container_status(&id, false)
            .await
            .unwrap()
            .0
            .config
            .resources,
        limits
    );

    // Invalid figures never reach the runtime; nor do unknown or exited containers.
    let calls = rt.calls().len();
    for bad in [
        pods::container::ContainerResources {
            cpu_period: 10,
            ..Default::default()
        },
        pods::container::ContainerResources {
            cpu_quota: -5,
            ..Default::default()
        },
        pods::container::ContainerResources {
            memory_limit_bytes: -1,
            ..Default::default()
        },
    ] {
        let err = svc.update_container_resources(&id, bad).await.unwrap_err();
        assert!(
            matches!(err, pods::UpdateResourcesError::Invalid(_)),
            "{err}"
        );
    }
    assert!(matches!(
        svc.update_container_resources("missing", limits.clone())
            .await,
        Err(pods::UpdateResourcesError::NotFound(_))
    ));
    svc.start_container(&id).await.unwrap();
    svc.stop_container(&id, Duration::ZERO).await.unwrap();
    let calls_before_exited = rt.calls().len();
    assert!(matches!(
        svc.update_container_resources(&id, limits).await,
        Err(pods::UpdateResourcesError::NotLive {
            state: ContainerState::Exited,
            ..
        })
    ));
    assert_eq!(rt.calls().len(), calls_before_exited);
    assert!(calls_before_exited > calls);
}

#[tokio::test]
async fn an_update_keeps_unset_limits_and_the_sandbox_grows_first_and_shrinks_after() {
    use pods::container::ContainerResources;
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let pod = svc.run(config("p", &[])).await.unwrap();
    let mut half = container("c", 0, &[]);
    half.resources = ContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_bytes: 64 << 20,
        ..Default::default()
    };
    let id = svc.create_container(&pod, half).await.unwrap();
    // The sandbox is made to fit the new container before it is created.
    let created = rt.resizes.lock().unwrap().clone();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].0.cpu_millis(), Some(500));
    assert_eq!(created[0].0.memory_limit_bytes, 64 << 20);
    assert!(!created[0].1, "a create never shrinks the sandbox");

    // Only memory changes: the CPU limits stay in force and on record.
    let more = ContainerResources {
        memory_limit_bytes: 128 << 20,
        ..Default::default()
    };
    svc.update_container_resources(&id, more).await.unwrap();
    let (rec, _) = svc.container_status(&id, false).await.unwrap();
    assert_eq!(rec.config.resources.cpu_quota, 50_000, "{rec:?}");
    assert_eq!(rec.config.resources.memory_limit_bytes, 128 << 20);
    let grown = rt.resizes.lock().unwrap()[1];
    assert_eq!(
        (grown.0.memory_limit_bytes, grown.0.cpu_millis(), grown.1),
        (128 << 20, Some(500), false)
    );
    assert_eq!(rt.resizes.lock().unwrap().len(), 2, "nothing to shrink");

    // Less memory: the container first, then the sandbox shrinks.
    let less = ContainerResources {
        memory_limit_bytes: 32 << 20,
        ..Default::default()
    };
    svc.update_container_resources(&id, less).await.unwrap();
    let resizes = rt.resizes.lock().unwrap().clone();
    assert_eq!(resizes[2].0.memory_limit_bytes, 128 << 20);
    assert!(!resizes[2].1);
    assert_eq!(resizes[3].0.memory_limit_bytes, 32 << 20);
    assert!(resizes[3].1, "the sandbox may shrink after the update");
    let calls = rt.calls();
    let update = calls.iter().rposition(|c| c.starts_with("update")).unwrap();
    let shrink = calls.iter().rposition(|c| c.starts_with("resize")).unwrap();
    assert!(update < shrink, "{calls:?}");

    // The sandbox cannot grow: the container keeps its limits, untouched.
    *rt.fail_resize.lock().unwrap() = true;
    let updates = calls.iter().filter(|c| c.starts_with("update")).count();
    let err = svc
        .update_container_resources(
            &id,
            ContainerResources {
                cpu_quota: 400_000,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, pods::UpdateResourcesError::Runtime { source, .. } if source.kind == RuntimeErrorKind::ResourceExhausted),
        "{err}"
    );
    assert_eq!(
        svc.container_status(&id, false)
            .await
            .unwrap()
            .0
            .config
            .resources
            .cpu_quota,
        50_000
    );
    assert_eq!(
        rt.calls()
            .iter()
            .filter(|c| c.starts_with("update"))
            .count(),
        updates
    );
    // Nor can a container be created that would need more.
    let mut big = container("big", 0, &[]);
    big.resources.memory_limit_bytes = 1 << 40;
    assert!(svc.create_container(&pod, big).await.is_err());
}
