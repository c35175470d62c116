//! `RuntimeService` implementation.

use std::collections::HashMap;
use std::sync::Arc;

use pods::PodService;
use tonic::{Request, Response, Status};

use crate::errors::ToStatus;
use crate::{CRI_API_VERSION, convert, proto};

/// CRI `RuntimeService` over a [`PodService`].
#[derive(Debug, Clone)]
pub struct RuntimeService {
    pods: Arc<PodService>,
    config_info: serde_json::Value,
    pod_cidr: Arc<std::sync::Mutex<String>>,
}

impl RuntimeService {
    /// Serves `pods`; `config_info` is shown by verbose `Status`.
    pub fn new(pods: Arc<PodService>, config_info: serde_json::Value) -> Self {
        Self {
            pods,
            config_info,
            pod_cidr: Arc::default(),
        }
    }
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
}
