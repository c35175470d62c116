//! `RuntimeService` implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use images::ImageStore;
use pods::container::ContainerImage;
use pods::{ContainerFilter, ContainerState, PodService, SandboxFilter, SandboxState};
use streaming::{RequestError, StreamingServer};
use tonic::{Request, Response, Status};

use crate::errors::ToStatus;
use crate::{CRI_API_VERSION, convert, proto};

/// ExecSync output beyond this many bytes per stream is discarded (as the
/// CRI asks, see CVE-2022-1708).
const EXEC_OUTPUT_CAP: usize = 16 << 20;

/// CRI `RuntimeService` over a [`PodService`], resolving container images
/// in an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct RuntimeService {
    pods: Arc<PodService>,
    images: ImageStore,
    config_info: serde_json::Value,
    pod_cidr: Arc<std::sync::Mutex<String>>,
    streaming: Option<Arc<StreamingServer>>,
}

impl RuntimeService {
    /// Serves `pods` with container images from `images`; `config_info` is
    /// shown by verbose `Status`.
    pub fn new(pods: Arc<PodService>, images: ImageStore, config_info: serde_json::Value) -> Self {
        Self {
            pods,
            images,
            config_info,
            pod_cidr: Arc::default(),
            streaming: None,
        }
    }

    /// Serves `Exec`, `Attach` and `PortForward` with URLs of `server`.
    pub fn with_streaming(mut self, server: Arc<StreamingServer>) -> Self {
        self.streaming = Some(server);
        self
    }

    fn streaming(&self) -> Result<&StreamingServer, Status> {
        self.streaming
            .as_deref()
            .ok_or_else(|| Status::unimplemented("this daemon runs no streaming server"))
    }

    /// The full id of running container `id` (an id or unique prefix).
    fn running_container(&self, id: &str) -> Result<String, Status> {
        require_id(id, "container_id")?;
        let found = self.pods.list_containers(&ContainerFilter {
            id: Some(id.to_owned()),
            ..Default::default()
        });
        let record = match found.as_slice() {
            [] => return Err(Status::not_found(format!("container {id:?} not found"))),
            [one] => one,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "container id prefix {id:?} is ambiguous"
                )));
            }
        };
        if record.status.state != ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running ({:?})",
                record.id, record.status.state
            )));
        }
        Ok(record.id.clone())
    }

    /// Finds the image of `spec` in the store, with its root filesystem and
    /// process defaults.
    async fn resolve_image(
        &self,
        spec: Option<proto::ImageSpec>,
    ) -> Result<ContainerImage, Status> {
        let spec = spec.unwrap_or_default();
        if spec.image.is_empty() {
            return Err(Status::invalid_argument(
                "config.image.image must not be empty",
            ));
        }
        let store = self.images.clone();
        let reference = spec.image.clone();
        let found = tokio::task::spawn_blocking(move || {
            store.find(&reference).map(|image| {
                let rootfs = store.rootfs(&image);
                let config = store.config(&image);
                (image, rootfs, config)
            })
        })
        .await
        .map_err(|e| Status::internal(format!("image lookup failed: {e}")))?;
        let Some((image, rootfs, config)) = found else {
            return Err(Status::not_found(format!(
                "image {:?} not found; pull it first",
                spec.image
            )));
        };
        let rootfs = rootfs.ok_or_else(|| {
            Status::failed_precondition(format!(
                "image {:?} ({}) has no root filesystem",
                spec.image, image.id
            ))
        })?;
        let config = config.ok_or_else(|| {
            Status::failed_precondition(format!(
                "the config of image {:?} ({}) cannot be read",
                spec.image, image.id
            ))
        })?;
        let user_ref = if spec.user_specified_image.is_empty() {
            spec.image
        } else {
            spec.user_specified_image
        };
        Ok(ContainerImage {
            user_ref,
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            process: convert::image_process(&config),
            id: image.id,
            rootfs,
        })
    }
}

fn request_status(e: RequestError) -> Status {
    match e {
        RequestError::Invalid(msg) => Status::invalid_argument(msg),
        RequestError::Busy(e) => Status::resource_exhausted(e.to_string()),
    }
}

fn truncated(mut v: Vec<u8>) -> Vec<u8> {
    v.truncate(EXEC_OUTPUT_CAP);
    v
}

fn require_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}

fn condition(kind: &str, state: Result<(), (String, String)>) -> proto::RuntimeCondition {
    let (status, reason, message) = match state {
        Ok(()) => (true, String::new(), String::new()),
        Err((reason, message)) => (false, reason, message),
    };
    proto::RuntimeCondition {
        r#type: kind.to_owned(),
        status,
        reason,
        message,
    }
}

#[tonic::async_trait]
impl proto::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(
        &self,
        _request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        Ok(Response::new(proto::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "frakti".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let runtime_ready = self
            .pods
            .runtime_ready()
            .await
            .map_err(|m| ("GuestAssetsMissing".to_owned(), m));
        let network_ready = self
            .pods
            .network_ready()
            .await
            .map_err(|m| ("NetworkPluginNotReady".to_owned(), m));
        let conditions = vec![
            condition("RuntimeReady", runtime_ready),
            condition("NetworkReady", network_ready),
        ];
        let mut handlers = vec![proto::RuntimeHandler {
            name: String::new(),
            features: Some(proto::RuntimeHandlerFeatures::default()),
        }];
        handlers.extend(
            self.pods
                .handlers()
                .iter()
                .map(|name| proto::RuntimeHandler {
                    name: name.clone(),
                    features: Some(proto::RuntimeHandlerFeatures::default()),
                }),
        );
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            info.insert("config".to_owned(), self.config_info.to_string());
            let cidr = self.pod_cidr.lock().map(|c| c.clone()).unwrap_or_default();
            info.insert("podCIDR".to_owned(), cidr);
        }
        Ok(Response::new(proto::StatusResponse {
            status: Some(proto::RuntimeStatus { conditions }),
            info,
            runtime_handlers: handlers,
            features: Some(proto::RuntimeFeatures::default()),
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        // Pod addresses come from the CNI configuration; the node's pod CIDR
        // is recorded for operators (verbose Status) and logged.
        tracing::info!(pod_cidr = %cidr, "kubelet set the node's pod CIDR");
        if let Ok(mut stored) = self.pod_cidr.lock() {
            *stored = cidr;
        }
        Ok(Response::new(proto::UpdateRuntimeConfigResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        // frakti creates no systemd units: cgroup paths are plain cgroupfs paths.
        Ok(Response::new(proto::RuntimeConfigResponse {
            linux: Some(proto::LinuxRuntimeConfiguration {
                cgroup_driver: proto::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required (metadata is required)"))?;
        let config = convert::sandbox_config(config, req.runtime_handler)
            .map_err(Status::invalid_argument)?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self.pods.run(config).await.map_err(|e| {
            tracing::warn!(pod = %name, "RunPodSandbox failed: {e}");
            e.status()
        })?;
        tracing::info!(pod = %name, %id, "pod sandbox ready");
        Ok(Response::new(proto::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        require_id(&id, "pod_sandbox_id")?;
        self.pods.stop(&id).await.map_err(|e| e.status())?;
        Ok(Response::new(proto::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        require_id(&id, "pod_sandbox_id")?;
        self.pods.remove(&id).await.map_err(|e| e.status())?;
        Ok(Response::new(proto::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let (record, info) = self
            .pods
            .status(&req.pod_sandbox_id, req.verbose)
            .await
            .map_err(|e| e.status())?;
        let mut info_map = HashMap::new();
        if let Some(mut info) = info {
            info["state_reason"] = record.reason.clone().into();
            info_map.insert("info".to_owned(), info.to_string());
        }
        Ok(Response::new(proto::PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&record)),
            info: info_map,
            containers_statuses: Vec::new(),
            timestamp: 0,
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        let filter = convert::sandbox_filter(request.into_inner().filter)
            .map_err(Status::invalid_argument)?;
        let items = self
            .pods
            .list(&filter)
            .await
            .iter()
            .map(convert::pod_sandbox)
            .collect();
        Ok(Response::new(proto::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let mut config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let image_spec = config.image.take();
        let mut config = convert::container_config(config).map_err(Status::invalid_argument)?;
        config.image = self.resolve_image(image_spec).await?;
        let name = config.metadata.name.clone();
        let id = self
            .pods
            .create_container(&req.pod_sandbox_id, config)
            .await
            .map_err(|e| {
                tracing::warn!(container = %name, sandbox = %req.pod_sandbox_id, "CreateContainer failed: {e}");
                e.status()
            })?;
        Ok(Response::new(proto::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id, "container_id")?;
        self.pods.start_container(&id).await.map_err(|e| {
            tracing::warn!(%id, "StartContainer failed: {e}");
            e.status()
        })?;
        Ok(Response::new(proto::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id, "container_id")?;
        // A negative timeout is read as 0: terminate at once.
        let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
        self.pods
            .stop_container(&req.container_id, timeout)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(proto::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id, "container_id")?;
        self.pods
            .remove_container(&id)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(proto::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let filter = convert::container_filter(request.into_inner().filter)
            .map_err(Status::invalid_argument)?;
        let containers = self
            .pods
            .list_containers(&filter)
            .iter()
            .map(convert::container)
            .collect();
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id, "container_id")?;
        let (record, info) = self
            .pods
            .container_status(&req.container_id, req.verbose)
            .await
            .map_err(|e| e.status())?;
        let mut info_map = HashMap::new();
        if let Some(runtime) = info {
            let info = serde_json::json!({
                "sandboxID": record.sandbox_id,
                "config": record.config,
                "logPath": record.log_path,
                "runtime": runtime,
            });
            info_map.insert("info".to_owned(), info.to_string());
        }
        Ok(Response::new(proto::ContainerStatusResponse {
            status: Some(convert::container_status(&record)),
            info: info_map,
        }))
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id, "container_id")?;
        self.pods
            .reopen_container_log(&id)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(proto::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id, "container_id")?;
        let timeout = match req.timeout {
            0 => None,
            t if t < 0 => {
                return Err(Status::invalid_argument(format!(
                    "timeout {t} must not be negative"
                )));
            }
            t => Some(Duration::from_secs(t.unsigned_abs())),
        };
        let out = self
            .pods
            .exec_sync(&req.container_id, &req.cmd, timeout)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(proto::ExecSyncResponse {
            stdout: truncated(out.stdout),
            stderr: truncated(out.stderr),
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        request: Request<proto::ExecRequest>,
    ) -> Result<Response<proto::ExecResponse>, Status> {
        let req = request.into_inner();
        let server = self.streaming()?;
        let container_id = self.running_container(&req.container_id)?;
        let url = server
            .get_exec(streaming::ExecRequest {
                container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(request_status)?;
        Ok(Response::new(proto::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        let req = request.into_inner();
        let server = self.streaming()?;
        let container_id = self.running_container(&req.container_id)?;
        let url = server
            .get_attach(streaming::AttachRequest {
                container_id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .map_err(request_status)?;
        Ok(Response::new(proto::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<proto::PortForwardRequest>,
    ) -> Result<Response<proto::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let server = self.streaming()?;
        require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let ports = req
            .port
            .iter()
            .map(|p| {
                u16::try_from(*p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Status::invalid_argument(format!("invalid port {p}")))
            })
            .collect::<Result<Vec<u16>, Status>>()?;
        let found = self
            .pods
            .list(&SandboxFilter {
                id: Some(req.pod_sandbox_id.clone()),
                ..Default::default()
            })
            .await;
        let sandbox = match found.as_slice() {
            [] => {
                return Err(Status::not_found(format!(
                    "pod sandbox {:?} not found",
                    req.pod_sandbox_id
                )));
            }
            [one] => one,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "pod sandbox id prefix {:?} is ambiguous",
                    req.pod_sandbox_id
                )));
            }
        };
        if sandbox.state != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        let url = server
            .get_port_forward(streaming::PortForwardRequest {
                pod_sandbox_id: sandbox.id.clone(),
                ports,
            })
            .map_err(request_status)?;
        Ok(Response::new(proto::PortForwardResponse { url }))
    }
}
