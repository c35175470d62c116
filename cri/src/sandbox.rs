//! Pod sandbox calls: run, stop, remove, status, list.

use std::collections::HashMap;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::batch::in_batches;
use crate::errors::ToStatus;
use crate::service::{RuntimeService, require_id};
use crate::{convert, proto};

pub(crate) async fn run_pod_sandbox(
    svc: &RuntimeService,
    request: Request<proto::RunPodSandboxRequest>,
) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
    let req = request.into_inner();
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("config is required (metadata is required)"))?;
    let config =
        convert::sandbox_config(config, req.runtime_handler).map_err(Status::invalid_argument)?;
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let pod = name.clone();
    let id = svc
        .to_completion("RunPodSandbox", move |pods| async move {
            pods.run(config).await.map_err(|e| {
                tracing::warn!(pod = %pod, "RunPodSandbox failed: {e}");
                e.status()
            })
        })
        .await?;
    tracing::info!(pod = %name, %id, "pod sandbox ready");
    Ok(Response::new(proto::RunPodSandboxResponse {
        pod_sandbox_id: id,
    }))
}

pub(crate) async fn stop_pod_sandbox(
    svc: &RuntimeService,
    request: Request<proto::StopPodSandboxRequest>,
) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
    let id = request.into_inner().pod_sandbox_id;
    require_id(&id, "pod_sandbox_id")?;
    svc.to_completion("StopPodSandbox", move |pods| async move {
        pods.stop(&id).await.map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::StopPodSandboxResponse {}))
}

pub(crate) async fn remove_pod_sandbox(
    svc: &RuntimeService,
    request: Request<proto::RemovePodSandboxRequest>,
) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
    let id = request.into_inner().pod_sandbox_id;
    require_id(&id, "pod_sandbox_id")?;
    svc.to_completion("RemovePodSandbox", move |pods| async move {
        pods.remove(&id).await.map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::RemovePodSandboxResponse {}))
}

pub(crate) async fn pod_sandbox_status(
    svc: &RuntimeService,
    request: Request<proto::PodSandboxStatusRequest>,
) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let (record, info) = svc
        .pods
        .status(&req.pod_sandbox_id, req.verbose)
        .await
        .map_err(|e| e.status())?;
    let containers = svc.pods.list_containers(&pods::ContainerFilter {
        sandbox_id: Some(record.id.clone()),
        ..Default::default()
    });
    let timestamp = pods::now_ns();
    let mut info_map = HashMap::new();
    if let Some(mut info) = info {
        info["state_reason"] = record.reason.clone().into();
        info["runtime_handler"] = record.handler.clone().into();
        info_map.insert("info".to_owned(), info.to_string());
    }
    Ok(Response::new(proto::PodSandboxStatusResponse {
        status: Some(convert::pod_sandbox_status(&record)),
        info: info_map,
        containers_statuses: containers.iter().map(convert::container_status).collect(),
        timestamp,
    }))
}

pub(crate) async fn list_pod_sandbox(
    svc: &RuntimeService,
    request: Request<proto::ListPodSandboxRequest>,
) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
    let items = pod_sandboxes(svc, request.into_inner().filter).await?;
    Ok(Response::new(proto::ListPodSandboxResponse { items }))
}

pub(crate) async fn stream_pod_sandboxes(
    svc: &RuntimeService,
    request: Request<proto::StreamPodSandboxesRequest>,
) -> Result<Response<BoxStream<proto::StreamPodSandboxesResponse>>, Status> {
    let items = pod_sandboxes(svc, request.into_inner().filter).await?;
    Ok(in_batches(items, |pod_sandboxes| {
        proto::StreamPodSandboxesResponse { pod_sandboxes }
    }))
}

/// The sandboxes that pass `filter`, for both list forms.
async fn pod_sandboxes(
    svc: &RuntimeService,
    filter: Option<proto::PodSandboxFilter>,
) -> Result<Vec<proto::PodSandbox>, Status> {
    let filter = convert::sandbox_filter(filter).map_err(Status::invalid_argument)?;
    Ok(svc
        .pods
        .list(&filter)
        .await
        .iter()
        .map(convert::pod_sandbox)
        .collect())
}

pub(crate) async fn update_pod_sandbox_resources(
    svc: &RuntimeService,
    request: Request<proto::UpdatePodSandboxResourcesRequest>,
) -> Result<Response<proto::UpdatePodSandboxResourcesResponse>, Status> {
    let req = request.into_inner();
    require_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
    svc.to_completion("UpdatePodSandboxResources", move |pods| async move {
        pods.update_pod_resources(
            &req.pod_sandbox_id,
            req.resources.map(convert::pod_resources),
            req.overhead.map(convert::pod_resources),
        )
        .await
        .map_err(|e| e.status())
    })
    .await?;
    Ok(Response::new(proto::UpdatePodSandboxResourcesResponse {}))
}
