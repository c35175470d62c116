//! Routing: each pod goes to the runtime of its handler, decided once and
//! kept in its record; streaming sessions follow the records.

use std::sync::Arc;

use pods::container::NamespaceMode;
use pods::{
    HostPolicy, OS_CONTAINER_ANNOTATION, PodService, Registry, RouteError, RunPodError,
    SandboxState, Store,
};
use runtime_api::streams::{ExecRequest, StreamIo};
use runtime_api::{SessionError, StreamingRuntime};
use tokio::io::AsyncReadExt;

mod common;

use common::*;

fn host_policy(handler: &str) -> HostPolicy {
    HostPolicy {
        handler: handler.into(),
        enabled: true,
        privileged_on_host: true,
    }
}

#[test]
fn each_host_rule_routes_to_the_host_handler() {
    let rt = Arc::new(FakeRuntime::default());
    let registry = Registry::new("frakti", rt.clone())
        .with("host", rt.clone())
        .with_host(host_policy("host"));
    let base = config("a", &[]);
    assert_eq!(registry.route(&base).unwrap(), "frakti");
    let mut named = base.clone();
    named.runtime_handler = "frakti".into();
    assert_eq!(registry.route(&named).unwrap(), "frakti", "frakti stays VM");
    named.runtime_handler = "host".into();
    assert_eq!(registry.route(&named).unwrap(), "host");
    for mode in [
        |c: &mut runtime_api::SandboxConfig| c.namespaces.network = NamespaceMode::Node,
        |c: &mut runtime_api::SandboxConfig| c.namespaces.pid = NamespaceMode::Node,
        |c: &mut runtime_api::SandboxConfig| c.namespaces.ipc = NamespaceMode::Node,
        |c: &mut runtime_api::SandboxConfig| c.privileged = true,
        |c: &mut runtime_api::SandboxConfig| {
            c.annotations
                .insert(OS_CONTAINER_ANNOTATION.into(), "true".into());
        },
    ] {
        let mut c = base.clone();
        mode(&mut c);
        assert_eq!(registry.route(&c).unwrap(), "host", "{c:?}");
        // The rule holds whatever VM handler the pod names.
        c.runtime_handler = "frakti".into();
        assert_eq!(registry.route(&c).unwrap(), "host", "{c:?}");
    }
    let mut not_true = base.clone();
    not_true
        .annotations
        .insert(OS_CONTAINER_ANNOTATION.into(), "false".into());
    assert_eq!(registry.route(&not_true).unwrap(), "frakti");

    // privileged_pods = "vm": privileged pods stay in their VM.
    let vm_privileged = registry.clone().with_host(HostPolicy {
        privileged_on_host: false,
        ..host_policy("host")
    });
    let mut privileged = base.clone();
    privileged.privileged = true;
    assert_eq!(vm_privileged.route(&privileged).unwrap(), "frakti");

    // host_pods = false: privileged pods run in VMs, the rest is refused
    // with the field that asked for the host.
    let disabled = registry.clone().with_host(HostPolicy {
        enabled: false,
        ..host_policy("host")
    });
    assert_eq!(disabled.route(&privileged).unwrap(), "frakti");
    let err = disabled.route(&named).unwrap_err();
    assert!(matches!(err, RouteError::HostDisabled { .. }), "{err}");
    assert!(
        err.to_string().contains("runtime_handler \"host\""),
        "{err}"
    );
    assert!(err.to_string().contains("host_pods = false"), "{err}");
    let mut host_pid = base.clone();
    host_pid.namespaces.pid = NamespaceMode::Node;
    let err = disabled.route(&host_pid).unwrap_err();
    assert!(
        err.to_string().contains("namespace_options.pid is NODE"),
        "{err}"
    );
}

fn two_runtimes(dir: &std::path::Path) -> (Arc<PodService>, Arc<FakeRuntime>, Arc<FakeRuntime>) {
    let (a, b) = (
        Arc::new(FakeRuntime::default()),
        Arc::new(FakeRuntime::default()),
    );
    let registry = Registry::new("frakti", a.clone()).with("other", b.clone());
    (PodService::new(Store::open(dir).unwrap(), registry), a, b)
}

#[test]
fn route_follows_the_handler_and_the_namespaces() {
    let rt = Arc::new(FakeRuntime::default());
    let registry = Registry::new("frakti", rt.clone()).with("other", rt.clone());
    let mut c = config("a", &[]);
    assert_eq!(registry.route(&c).unwrap(), "frakti");
    c.runtime_handler = "other".into();
    assert_eq!(registry.route(&c).unwrap(), "other");
    c.runtime_handler = "gvisor".into();
    let err = registry.route(&c).unwrap_err();
    assert!(matches!(&err, RouteError::UnknownHandler { handler, .. } if handler == "gvisor"));
    assert!(err.to_string().contains("\"gvisor\""), "{err}");

    // A host namespace needs a host runtime, whatever the handler says.
    c.runtime_handler = String::new();
    c.namespaces.ipc = NamespaceMode::Node;
    let err = registry.route(&c).unwrap_err();
    assert!(
        matches!(&err, RouteError::NeedsHost { why } if why.contains("namespace_options.ipc is NODE")),
        "{err}"
    );
    let with_host = registry.clone().with_host(host_policy("other"));
    assert_eq!(with_host.route(&c).unwrap(), "other");
    // One runtime serving two handlers is listed once.
    assert_eq!(registry.runtimes().len(), 1);
    assert_eq!(registry.handlers(), vec!["frakti", "other"]);
}

#[tokio::test]
async fn every_call_goes_to_the_runtime_of_the_pods_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, a, b) = two_runtimes(dir.path());
    let mut on_b = config("b", &[]);
    on_b.runtime_handler = "other".into();
    let pod_b = svc.run(on_b).await.unwrap();
    let pod_a = svc.run(config("a", &[])).await.unwrap();
    let (record, _) = svc.status(&pod_b, false).await.unwrap();
    assert_eq!(record.handler, "other");
    let (record, _) = svc.status(&pod_a, false).await.unwrap();
    assert_eq!(
        record.handler, "frakti",
        "the empty handler is the default one"
    );

    let c = svc
        .create_container(&pod_b, container("c", 0, &[]))
        .await
        .unwrap();
    svc.start_container(&c).await.unwrap();
    svc.stop(&pod_b).await.unwrap();
    svc.remove(&pod_b).await.unwrap();
    let short = |id: &str| id[..8].to_owned();
    let b_calls = b.calls();
    for call in ["start", "create", "stop", "remove"] {
        assert!(
            b_calls.iter().any(|l| l.starts_with(call)),
            "{call} missing from {b_calls:?}"
        );
    }
    assert!(
        a.calls()
            .iter()
            .all(|l| !l.contains(&short(&pod_b)) && !l.contains(&short(&c))),
        "runtime a saw pod b: {:?}",
        a.calls()
    );
    assert!(
        a.calls()
            .iter()
            .any(|l| l == &format!("start {}", short(&pod_a)))
    );
}

#[tokio::test]
async fn recovery_adopts_by_handler_and_keeps_records_of_unknown_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, _a, b) = two_runtimes(dir.path());
    let mut on_b = config("b", &[]);
    on_b.runtime_handler = "other".into();
    let pod_b = svc.run(on_b).await.unwrap();
    b.running.lock().unwrap().insert(pod_b.clone(), true);
    drop(svc);

    // The same handlers: the pod is adopted by its own runtime.
    let (svc, a, b) = two_runtimes(dir.path());
    b.running.lock().unwrap().insert(pod_b.clone(), true);
    assert_eq!(svc.recover().await.unwrap(), 1);
    assert!(
        b.calls().contains(&format!("adopt {}", &pod_b[..8])),
        "{:?}",
        b.calls()
    );
    assert!(!a.calls().iter().any(|l| l.starts_with("adopt")));
    // Each runtime sweeps once, knowing the recovered pod.
    assert_eq!(a.calls().iter().filter(|l| *l == "sweep 1").count(), 1);
    assert_eq!(b.calls().iter().filter(|l| *l == "sweep 1").count(), 1);
    let (record, _) = svc.status(&pod_b, false).await.unwrap();
    assert_eq!(record.state, SandboxState::Ready);
    drop(svc);

    // A daemon without that handler keeps the record, not ready, and says why.
    let only_a = Arc::new(FakeRuntime::default());
    let svc = PodService::new(
        Store::open(dir.path()).unwrap(),
        Registry::new("frakti", only_a.clone()),
    );
    svc.recover().await.unwrap();
    let (record, _) = svc.status(&pod_b, false).await.unwrap();
    assert_eq!(record.state, SandboxState::NotReady);
    assert!(record.reason.contains("\"other\""), "{}", record.reason);
    let err = svc.stop(&pod_b).await.unwrap_err();
    assert!(err.to_string().contains("\"other\""), "{err}");
    assert!(only_a.calls().iter().all(|l| !l.contains(&pod_b[..8])));
}

#[tokio::test]
async fn host_namespace_pods_are_refused_without_a_host_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let mut host_net = config("h", &[]);
    host_net.namespaces.network = NamespaceMode::Node;
    let err = svc.run(host_net).await.unwrap_err();
    assert!(matches!(
        err,
        RunPodError::Route(RouteError::NeedsHost { .. })
    ));
    assert!(
        err.to_string()
            .contains("namespace_options.network is NODE"),
        "{err}"
    );
    assert!(rt.calls().is_empty(), "{:?}", rt.calls());
}

fn exec(container_id: &str) -> ExecRequest {
    ExecRequest {
        container_id: container_id.into(),
        cmd: vec!["echo".into(), "hi".into()],
        stdout: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn stream_sessions_reach_the_runtime_only_for_running_containers_of_ready_pods() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, a, b) = two_runtimes(dir.path());
    let mut on_b = config("b", &[]);
    on_b.runtime_handler = "other".into();
    let pod = svc.run(on_b).await.unwrap();
    let c = svc
        .create_container(&pod, container("c", 0, &[]))
        .await
        .unwrap();
    let router = svc.stream_router();
    let no_io = || StreamIo {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        tty: false,
    };

    // Created, not running: refused before the runtime.
    let err = router.exec(&exec(&c), no_io()).await.unwrap_err();
    assert!(
        matches!(&err, SessionError::NotFound(m) if m.contains("not running")),
        "{err}"
    );
    let err = router.exec(&exec("nope"), no_io()).await.unwrap_err();
    assert!(matches!(err, SessionError::NotFound(_)));

    svc.start_container(&c).await.unwrap();
    let (mut client, server) = tokio::io::duplex(64);
    let io = StreamIo {
        stdout: Some(Box::new(server)),
        ..no_io()
    };
    assert_eq!(router.exec(&exec(&c), io).await.unwrap(), 7);
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "echo hi");
    assert!(b.calls().contains(&format!("exec {}", &c[..8])));
    assert!(!a.calls().iter().any(|l| l.starts_with("exec")));

    router.port_forward(&pod, 80).await.unwrap();
    assert!(b.calls().contains(&format!("forward 80 {}", &pod[..8])));

    // Once the pod stops, nothing reaches the runtime any more.
    svc.stop(&pod).await.unwrap();
    let calls = b.calls().len();
    assert!(router.exec(&exec(&c), no_io()).await.is_err());
    let err = router.port_forward(&pod, 80).await.err().unwrap();
    assert!(
        matches!(&err, SessionError::NotFound(m) if m.contains("not ready")),
        "{err}"
    );
    assert_eq!(b.calls().len(), calls);
}

#[tokio::test]
async fn records_from_before_handlers_name_the_runtime_kind_and_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::default());
    let svc = service(dir.path(), rt.clone());
    let id = svc.run(config("old", &[])).await.unwrap();
    rt.running.lock().unwrap().insert(id.clone(), true);
    drop(svc);
    // Rewrite the record as an older frakti stored it: `runtime` = the kind.
    let path = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                std::fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path())
                    .collect()
            } else {
                vec![e.path()]
            }
        })
        .find(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains(&id) && t.contains("\"handler\""))
        })
        .expect("the sandbox record");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let object = record.as_object_mut().unwrap();
    object.remove("handler");
    object.insert("runtime".into(), "fake".into());
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();

    let again = Arc::new(FakeRuntime::default());
    again.running.lock().unwrap().insert(id.clone(), true);
    let svc = service(dir.path(), again.clone());
    svc.recover().await.unwrap();
    let (record, _) = svc.status(&id, false).await.unwrap();
    assert_eq!(record.state, SandboxState::Ready, "{}", record.reason);
    assert!(again.calls().contains(&format!("adopt {}", &id[..8])));
    svc.stop(&id).await.unwrap();
}
