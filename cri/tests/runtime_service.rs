//! The container RPCs' error codes and idempotency, over a pod service whose
//! runtime runs sandboxes but refuses every container operation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cri::proto;
use cri::proto::runtime_service_server::RuntimeService as _;
use pods::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ExecOutput, PodService, Registry,
    RuntimeError, RuntimeErrorKind, SandboxConfig, SandboxRecord, StartedSandbox, Store,
};
use runtime_api::streams::{AttachRequest, Duplex, ExecRequest, StreamIo};
use runtime_api::{ContainerRuntime, ContainerStreams, SandboxRuntime, SessionError};
use tonic::{Code, Request};

#[derive(Debug)]
struct SandboxesOnly;

fn refused() -> RuntimeError {
    RuntimeError::new(RuntimeErrorKind::Internal, "not in this test")
}

#[async_trait::async_trait]
impl SandboxRuntime for SandboxesOnly {
    fn name(&self) -> &'static str {
        "stub"
    }
    async fn ready(&self) -> Result<(), runtime_api::NotReady> {
        Ok(())
    }
    async fn network_ready(&self) -> Result<(), runtime_api::NotReady> {
        Ok(())
    }
    async fn start_sandbox(
        &self,
        _id: &str,
        _c: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError> {
        Ok(StartedSandbox {
            state: serde_json::Value::Null,
            ips: Vec::new(),
        })
    }
    async fn stop_sandbox(&self, _id: &str, _s: &serde_json::Value) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn remove_sandbox(&self, _id: &str, _s: &serde_json::Value) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn resize_sandbox(
        &self,
        _sandbox: &SandboxRecord,
        _need: &runtime_api::PodResources,
        _shrink: bool,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn adopt_sandbox(&self, _id: &str, _s: &serde_json::Value) -> Result<bool, RuntimeError> {
        Ok(true)
    }
    async fn sandbox_info(&self, _id: &str, _s: &serde_json::Value) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn sweep_orphans(&self, _known: &HashSet<String>) -> usize {
        0
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for SandboxesOnly {
    async fn create_container(
        &self,
        _s: &SandboxRecord,
        _id: &str,
        _c: &ContainerConfig,
        _log: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        Err(refused())
    }
    async fn start_container(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        Err(refused())
    }
    async fn stop_container(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
        _t: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        Err(refused())
    }
    async fn remove_container(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn container_status(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        Err(refused())
    }
    async fn exec_sync(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
        _cmd: &[String],
        _t: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        Err(refused())
    }
    async fn update_container_resources(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
        _r: &pods::container::ContainerResources,
    ) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn pod_stats(
        &self,
        _s: &SandboxRecord,
        _c: &[ContainerRecord],
    ) -> Result<runtime_api::PodUsage, RuntimeError> {
        Err(refused())
    }
    async fn writable_layers(&self) -> Result<runtime_api::LayerUsage, RuntimeError> {
        Err(refused())
    }
    async fn reopen_container_log(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        Err(refused())
    }
    async fn container_info(&self, _s: &SandboxRecord, _c: &ContainerRecord) -> serde_json::Value {
        serde_json::Value::Null
    }
}

#[async_trait::async_trait]
impl ContainerStreams for SandboxesOnly {
    async fn exec(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
        _r: &ExecRequest,
        _io: StreamIo,
    ) -> Result<i32, SessionError> {
        Err(SessionError::Failed("not in this test".into()))
    }
    async fn attach(
        &self,
        _s: &SandboxRecord,
        _c: &ContainerRecord,
        _r: &AttachRequest,
        _io: StreamIo,
    ) -> Result<(), SessionError> {
        Err(SessionError::Failed("not in this test".into()))
    }
    async fn port_forward(
        &self,
        _s: &SandboxRecord,
        _port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        Err(SessionError::Failed("not in this test".into()))
    }
}

fn service(dir: &std::path::Path) -> cri::RuntimeService {
    let pods = PodService::new(
        Store::open(&dir.join("pods")).unwrap(),
        Registry::new("frakti", Arc::new(SandboxesOnly)),
    );
    let images = images::ImageStore::open(&dir.join("images"), None).unwrap();
    cri::RuntimeService::new(pods, images, serde_json::Value::Null)
}

async fn run_pod(svc: &cri::RuntimeService) -> String {
    let config = proto::PodSandboxConfig {
        metadata: Some(proto::PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    svc.run_pod_sandbox(Request::new(proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    }))
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

#[tokio::test]
async fn create_container_needs_a_pulled_image() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let pod = run_pod(&svc).await;
    let request = |image: &str| {
        Request::new(proto::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(proto::ContainerConfig {
                metadata: Some(proto::ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(proto::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: None,
        })
    };
    let err = svc
        .create_container(request("quay.io/nothing/here:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("quay.io/nothing/here:1"), "{err:?}");
    let err = svc.create_container(request("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let mut no_metadata = request("busybox");
    if let Some(c) = no_metadata.get_mut().config.as_mut() {
        c.metadata = None;
    }
    let err = svc.create_container(no_metadata).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn unknown_containers() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let id = || "0123456789abcdef".to_owned();
    // Stop and remove are idempotent.
    svc.stop_container(Request::new(proto::StopContainerRequest {
        container_id: id(),
        timeout: 10,
    }))
    .await
    .unwrap();
    svc.remove_container(Request::new(proto::RemoveContainerRequest {
        container_id: id(),
    }))
    .await
    .unwrap();
    let code = svc
        .container_status(Request::new(proto::ContainerStatusRequest {
            container_id: id(),
            verbose: true,
        }))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let code = svc
        .start_container(Request::new(proto::StartContainerRequest {
            container_id: id(),
        }))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let exec = |timeout| {
        Request::new(proto::ExecSyncRequest {
            container_id: id(),
            cmd: vec!["true".into()],
            timeout,
        })
    };
    let code = svc.exec_sync(exec(0)).await.unwrap_err().code();
    assert_eq!(code, Code::NotFound);
    let code = svc.exec_sync(exec(-1)).await.unwrap_err().code();
    assert_eq!(code, Code::InvalidArgument);
    let code = svc
        .reopen_container_log(Request::new(proto::ReopenContainerLogRequest {
            container_id: id(),
        }))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let code = svc
        .stop_container(Request::new(proto::StopContainerRequest::default()))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::InvalidArgument);
    let list = svc
        .list_containers(Request::new(proto::ListContainersRequest { filter: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty());
    let code = svc
        .list_containers(Request::new(proto::ListContainersRequest {
            filter: Some(proto::ContainerFilter {
                state: Some(proto::ContainerStateValue { state: 42 }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::InvalidArgument);
}
