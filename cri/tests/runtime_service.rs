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

/// The code of a call's answer: `Ok` for success.
async fn code_of<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> Code {
    match call.await {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(!status.message().is_empty(), "an error says what was wrong");
            status.code()
        }
    }
}

/// Fails with every row whose code is not the expected one.
fn assert_codes(table: &[(&str, Code, Code)]) {
    let wrong: Vec<String> = table
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(call, got, want)| format!("{call}: {got:?}, expected {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Every RuntimeService call with input the api.proto comments rule on:
/// unknown ids, missing fields, a container in the wrong state.
#[tokio::test]
async fn runtime_service_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let pod = run_pod(&svc).await;
    let unknown = || "0123456789abcdef".to_owned();
    let no_pod_config = proto::RunPodSandboxRequest::default();
    let bad_handler = proto::RunPodSandboxRequest {
        config: Some(proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: "q".into(),
                uid: "q".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            ..Default::default()
        }),
        runtime_handler: "no-such-handler".into(),
    };
    let container = |pod_sandbox_id: String| proto::CreateContainerRequest {
        pod_sandbox_id,
        config: Some(proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(proto::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: None,
    };
    let table: Vec<(&str, Code, Code)> = vec![
        (
            "RunPodSandbox without config",
            code_of(svc.run_pod_sandbox(Request::new(no_pod_config))).await,
            Code::InvalidArgument,
        ),
        (
            "RunPodSandbox with an unknown handler",
            code_of(svc.run_pod_sandbox(Request::new(bad_handler))).await,
            Code::InvalidArgument,
        ),
        (
            "StopPodSandbox of an unknown pod",
            code_of(
                svc.stop_pod_sandbox(Request::new(proto::StopPodSandboxRequest {
                    pod_sandbox_id: unknown(),
                })),
            )
            .await,
            Code::Ok,
        ),
        (
            "RemovePodSandbox of an unknown pod",
            code_of(
                svc.remove_pod_sandbox(Request::new(proto::RemovePodSandboxRequest {
                    pod_sandbox_id: unknown(),
                })),
            )
            .await,
            Code::Ok,
        ),
        (
            "PodSandboxStatus of an unknown pod",
            code_of(
                svc.pod_sandbox_status(Request::new(proto::PodSandboxStatusRequest {
                    pod_sandbox_id: unknown(),
                    verbose: false,
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "PodSandboxStatus without id",
            code_of(
                svc.pod_sandbox_status(Request::new(proto::PodSandboxStatusRequest::default())),
            )
            .await,
            Code::InvalidArgument,
        ),
        (
            "PodSandboxStats of an unknown pod",
            code_of(
                svc.pod_sandbox_stats(Request::new(proto::PodSandboxStatsRequest {
                    pod_sandbox_id: unknown(),
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "UpdatePodSandboxResources of an unknown pod",
            code_of(svc.update_pod_sandbox_resources(Request::new(
                proto::UpdatePodSandboxResourcesRequest {
                    pod_sandbox_id: unknown(),
                    ..Default::default()
                },
            )))
            .await,
            Code::NotFound,
        ),
        (
            "CreateContainer in an unknown pod",
            code_of(svc.create_container(Request::new(container(unknown())))).await,
            Code::NotFound,
        ),
        (
            "CreateContainer of an image not pulled",
            code_of(svc.create_container(Request::new(container(pod.clone())))).await,
            Code::NotFound,
        ),
        (
            "StartContainer of an unknown container",
            code_of(
                svc.start_container(Request::new(proto::StartContainerRequest {
                    container_id: unknown(),
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "StopContainer of an unknown container",
            code_of(
                svc.stop_container(Request::new(proto::StopContainerRequest {
                    container_id: unknown(),
                    timeout: i64::MAX,
                })),
            )
            .await,
            Code::Ok,
        ),
        (
            "RemoveContainer of an unknown container",
            code_of(
                svc.remove_container(Request::new(proto::RemoveContainerRequest {
                    container_id: unknown(),
                })),
            )
            .await,
            Code::Ok,
        ),
        (
            "ContainerStatus of an unknown container",
            code_of(
                svc.container_status(Request::new(proto::ContainerStatusRequest {
                    container_id: unknown(),
                    verbose: false,
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "ContainerStats of an unknown container",
            code_of(
                svc.container_stats(Request::new(proto::ContainerStatsRequest {
                    container_id: unknown(),
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "UpdateContainerResources of an unknown container",
            code_of(svc.update_container_resources(Request::new(
                proto::UpdateContainerResourcesRequest {
                    container_id: unknown(),
                    linux: Some(proto::LinuxContainerResources {
                        memory_limit_in_bytes: 64 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )))
            .await,
            Code::NotFound,
        ),
        (
            "ReopenContainerLog of an unknown container",
            code_of(
                svc.reopen_container_log(Request::new(proto::ReopenContainerLogRequest {
                    container_id: unknown(),
                })),
            )
            .await,
            Code::NotFound,
        ),
        (
            "ExecSync in an unknown container",
            code_of(svc.exec_sync(Request::new(proto::ExecSyncRequest {
                container_id: unknown(),
                cmd: vec!["true".into()],
                timeout: i64::MAX,
            })))
            .await,
            Code::NotFound,
        ),
        (
            "ExecSync without a command",
            code_of(svc.exec_sync(Request::new(proto::ExecSyncRequest {
                container_id: unknown(),
                cmd: vec![],
                timeout: 0,
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "Exec in an unknown container",
            code_of(svc.exec(Request::new(proto::ExecRequest {
                container_id: unknown(),
                cmd: vec!["sh".into()],
                stdout: true,
                ..Default::default()
            })))
            .await,
            Code::NotFound,
        ),
        (
            "Attach to an unknown container",
            code_of(svc.attach(Request::new(proto::AttachRequest {
                container_id: unknown(),
                stdout: true,
                ..Default::default()
            })))
            .await,
            Code::NotFound,
        ),
        (
            "PortForward into an unknown pod",
            code_of(svc.port_forward(Request::new(proto::PortForwardRequest {
                pod_sandbox_id: unknown(),
                port: vec![80],
            })))
            .await,
            Code::NotFound,
        ),
        (
            "PortForward to port 0",
            code_of(svc.port_forward(Request::new(proto::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![0],
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "ListContainerStats of an unknown container",
            code_of(
                svc.list_container_stats(Request::new(proto::ListContainerStatsRequest {
                    filter: Some(proto::ContainerStatsFilter {
                        id: unknown(),
                        ..Default::default()
                    }),
                })),
            )
            .await,
            Code::Ok,
        ),
        (
            "CheckpointContainer",
            code_of(
                svc.checkpoint_container(Request::new(proto::CheckpointContainerRequest {
                    container_id: unknown(),
                    ..Default::default()
                })),
            )
            .await,
            Code::Unimplemented,
        ),
    ];
    assert_codes(&table);
}

/// Every ImageService call with input the api.proto comments rule on.
#[tokio::test]
async fn image_service_error_codes() {
    use cri::proto::image_service_server::ImageService as _;
    let dir = tempfile::tempdir().unwrap();
    let store = images::ImageStore::open(&dir.path().join("images"), None).unwrap();
    let svc = cri::ImageService::new(store);
    let spec = |image: &str| {
        Some(proto::ImageSpec {
            image: image.into(),
            ..Default::default()
        })
    };
    let pull = |image: &str, auth: Option<proto::AuthConfig>| proto::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    };
    let bad_auth = proto::AuthConfig {
        auth: "%%%".into(),
        ..Default::default()
    };
    let table: Vec<(&str, Code, Code)> = vec![
        (
            "ImageStatus without image",
            code_of(svc.image_status(Request::new(proto::ImageStatusRequest {
                image: None,
                verbose: false,
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "ImageStatus of an absent image",
            code_of(svc.image_status(Request::new(proto::ImageStatusRequest {
                image: spec("absent/image:1"),
                verbose: false,
            })))
            .await,
            Code::Ok,
        ),
        (
            "ImageStatus of a malformed reference",
            code_of(svc.image_status(Request::new(proto::ImageStatusRequest {
                image: spec("Not::A/Ref"),
                verbose: false,
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "PullImage without image",
            code_of(svc.pull_image(Request::new(pull("", None)))).await,
            Code::InvalidArgument,
        ),
        (
            "PullImage of a malformed reference",
            code_of(svc.pull_image(Request::new(pull("Not::A/Ref", None)))).await,
            Code::InvalidArgument,
        ),
        (
            "PullImage with auth that is not base64",
            code_of(svc.pull_image(Request::new(pull("busybox", Some(bad_auth))))).await,
            Code::InvalidArgument,
        ),
        (
            "PullImage from a registry nobody serves",
            code_of(svc.pull_image(Request::new(pull("127.0.0.1:1/x:1", None)))).await,
            Code::Unavailable,
        ),
        (
            "RemoveImage without image",
            code_of(svc.remove_image(Request::new(proto::RemoveImageRequest { image: None })))
                .await,
            Code::InvalidArgument,
        ),
        (
            "RemoveImage of an absent image",
            code_of(svc.remove_image(Request::new(proto::RemoveImageRequest {
                image: spec("absent/image:1"),
            })))
            .await,
            Code::Ok,
        ),
        (
            "RemoveImage of an absent id",
            code_of(svc.remove_image(Request::new(proto::RemoveImageRequest {
                image: spec(&format!("sha256:{}", "0".repeat(64))),
            })))
            .await,
            Code::Ok,
        ),
        (
            "RemoveImage of a malformed reference",
            code_of(svc.remove_image(Request::new(proto::RemoveImageRequest {
                image: spec("Not::A/Ref"),
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "RemoveImage of a malformed id",
            code_of(svc.remove_image(Request::new(proto::RemoveImageRequest {
                image: spec("sha256:nothex"),
            })))
            .await,
            Code::InvalidArgument,
        ),
        (
            "ListImages filtered by a malformed reference",
            code_of(svc.list_images(Request::new(proto::ListImagesRequest {
                filter: Some(proto::ImageFilter {
                    image: spec("Not::A/Ref"),
                }),
            })))
            .await,
            Code::Ok,
        ),
        (
            "ImageFsInfo",
            code_of(svc.image_fs_info(Request::new(proto::ImageFsInfoRequest {}))).await,
            Code::Ok,
        ),
    ];
    assert_codes(&table);
}
