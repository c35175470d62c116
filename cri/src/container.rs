//! Container calls: create (with the image resolved in the image store),
//! start, stop, remove, list, status, log reopening, ExecSync.

use std::collections::HashMap;
use std::time::Duration;

use pods::container::ContainerImage;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::batch::in_batches;
use crate::errors::ToStatus;
use crate::service::{RuntimeService, require_id};
use crate::{convert, proto};

/// ExecSync output beyond this many bytes per stream is discarded (as the
/// CRI asks, see CVE-2022-1708).
const EXEC_OUTPUT_CAP: usize = 16 << 20;

pub(crate) async fn create_container(
    svc: &RuntimeService,
    request: Request<proto::CreateContainerRequest>,
) -> Result<Response<proto::CreateContainerResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let mut config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config is required"))?;
    let image_spec = config.image.take();
    let mut config = convert::container_config(config).map_err(Status::invalid_argument)?;
    config.image = resolve_image(svc, image_spec).await?;
    let name = config.metadata.name.clone();
    let sandbox = req.pod_sandbox_id;
    let id = svc
        .to_completion("CreateContainer", move |pods| async move {
            pods.create_container(&sandbox, config).await.map_err(|e| {
                tracing::warn!(container = %name, %sandbox, "CreateContainer failed: {e}");
                e.status()
            })
        })
        .await?;
    Ok(Response::new(proto::CreateContainerResponse {
        container_id: id,
    }))
}

pub(crate) async fn start_container(
    svc: &RuntimeService,
    request: Request<proto::StartContainerRequest>,
) -> Result<Response<proto::StartContainerResponse>, Status> {
    let id = request.into_inner().container_id;
    require_id(&id, "container_id")?;
    svc.to_completion("StartContainer", move |pods| async move {
        pods.start_container(&id).await.map_err(|e| {
            tracing::warn!(%id, "StartContainer failed: {e}");
            e.status()
        })
    })
    .await?;
    Ok(Response::new(proto::StartContainerResponse {}))
}

pub(crate) async fn stop_container(
    svc: &RuntimeService,
    request: Request<proto::StopContainerRequest>,
) -> Result<Response<proto::StopContainerResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.container_id, "container_id")?;
    // A negative timeout is read as 0: terminate at once.
    let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
    svc.to_completion("StopContainer", move |pods| async move {
        pods.stop_container(&req.container_id, timeout)
            .await
            .map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::StopContainerResponse {}))
}

pub(crate) async fn remove_container(
    svc: &RuntimeService,
    request: Request<proto::RemoveContainerRequest>,
) -> Result<Response<proto::RemoveContainerResponse>, Status> {
    let id = request.into_inner().container_id;
    require_id(&id, "container_id")?;
    svc.to_completion("RemoveContainer", move |pods| async move {
        pods.remove_container(&id).await.map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::RemoveContainerResponse {}))
}

pub(crate) async fn list_containers(
    svc: &RuntimeService,
    request: Request<proto::ListContainersRequest>,
) -> Result<Response<proto::ListContainersResponse>, Status> {
    let containers = containers(svc, request.into_inner().filter)?;
    Ok(Response::new(proto::ListContainersResponse { containers }))
}

pub(crate) async fn stream_containers(
    svc: &RuntimeService,
    request: Request<proto::StreamContainersRequest>,
) -> Result<Response<BoxStream<proto::StreamContainersResponse>>, Status> {
    let containers = containers(svc, request.into_inner().filter)?;
    Ok(in_batches(containers, |containers| {
        proto::StreamContainersResponse { containers }
    }))
}

/// The containers that pass `filter`, for both list forms.
fn containers(
    svc: &RuntimeService,
    filter: Option<proto::ContainerFilter>,
) -> Result<Vec<proto::Container>, Status> {
    let filter = convert::container_filter(filter).map_err(Status::invalid_argument)?;
    Ok(svc
        .pods
        .list_containers(&filter)
        .iter()
        .map(convert::container)
        .collect())
}

pub(crate) async fn container_status(
    svc: &RuntimeService,
    request: Request<proto::ContainerStatusRequest>,
) -> Result<Response<proto::ContainerStatusResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.container_id, "container_id")?;
    let (record, info) = svc
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

pub(crate) async fn update_container_resources(
    svc: &RuntimeService,
    request: Request<proto::UpdateContainerResourcesRequest>,
) -> Result<Response<proto::UpdateContainerResourcesResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.container_id, "container_id")?;
    let linux = req
        .linux
        .ok_or_else(|| Status::invalid_argument("linux resources are required"))?;
    svc.to_completion("UpdateContainerResources", move |pods| async move {
        pods.update_container_resources(&req.container_id, convert::container_resources(linux))
            .await
            .map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::UpdateContainerResourcesResponse {}))
}

pub(crate) async fn reopen_container_log(
    svc: &RuntimeService,
    request: Request<proto::ReopenContainerLogRequest>,
) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
    let id = request.into_inner().container_id;
    require_id(&id, "container_id")?;
    svc.pods
        .reopen_container_log(&id)
        .await
        .map_err(|e| e.status())?;
    Ok(Response::new(proto::ReopenContainerLogResponse {}))
}

pub(crate) async fn exec_sync(
    svc: &RuntimeService,
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
    let out = svc
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

/// Finds the image of `spec` in the store, with its root filesystem and
/// process defaults.
async fn resolve_image(
    svc: &RuntimeService,
    spec: Option<proto::ImageSpec>,
) -> Result<ContainerImage, Status> {
    let spec = spec.unwrap_or_default();
    if spec.image.is_empty() {
        return Err(Status::invalid_argument(
            "config.image.image must not be empty",
        ));
    }
    let store = svc.images.clone();
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

fn truncated(mut v: Vec<u8>) -> Vec<u8> {
    v.truncate(EXEC_OUTPUT_CAP);
    v
}
