//! Stats calls: `ContainerStats`, `ListContainerStats`, `PodSandboxStats`,
//! `ListPodSandboxStats`, and the streaming forms of the lists.

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::batch::in_batches;
use crate::errors::ToStatus;
use crate::service::{RuntimeService, require_id};
use crate::{convert, proto};

pub(crate) async fn container_stats(
    svc: &RuntimeService,
    request: Request<proto::ContainerStatsRequest>,
) -> Result<Response<proto::ContainerStatsResponse>, Status> {
    let id = request.into_inner().container_id;
    require_id(&id, "container_id")?;
    let stats = svc
        .pods
        .container_stats(&id)
        .await
        .map_err(|e| e.status())?;
    Ok(Response::new(proto::ContainerStatsResponse {
        stats: Some(convert::container_stats(&stats)),
    }))
}

/// The stats of the containers that pass `filter`, for both list forms.
async fn containers(
    svc: &RuntimeService,
    filter: Option<proto::ContainerStatsFilter>,
) -> Vec<proto::ContainerStats> {
    let filter = convert::container_stats_filter(filter);
    svc.pods
        .list_container_stats(&filter)
        .await
        .iter()
        .map(convert::container_stats)
        .collect()
}

pub(crate) async fn list_container_stats(
    svc: &RuntimeService,
    request: Request<proto::ListContainerStatsRequest>,
) -> Result<Response<proto::ListContainerStatsResponse>, Status> {
    let stats = containers(svc, request.into_inner().filter).await;
    Ok(Response::new(proto::ListContainerStatsResponse { stats }))
}

pub(crate) async fn stream_container_stats(
    svc: &RuntimeService,
    request: Request<proto::StreamContainerStatsRequest>,
) -> Result<Response<BoxStream<proto::StreamContainerStatsResponse>>, Status> {
    let stats = containers(svc, request.into_inner().filter).await;
    Ok(in_batches(stats, |container_stats| {
        proto::StreamContainerStatsResponse { container_stats }
    }))
}

pub(crate) async fn pod_sandbox_stats(
    svc: &RuntimeService,
    request: Request<proto::PodSandboxStatsRequest>,
) -> Result<Response<proto::PodSandboxStatsResponse>, Status> {
    let id = request.into_inner().pod_sandbox_id;
    require_id(&id, "pod_sandbox_id")?;
    let stats = svc.pods.pod_stats(&id).await.map_err(|e| e.status())?;
    Ok(Response::new(proto::PodSandboxStatsResponse {
        stats: Some(convert::pod_stats(&stats)),
    }))
}

/// The stats of the ready sandboxes that pass `filter`, for both list forms.
async fn pods(
    svc: &RuntimeService,
    filter: Option<proto::PodSandboxStatsFilter>,
) -> Vec<proto::PodSandboxStats> {
    let filter = convert::pod_stats_filter(filter);
    svc.pods
        .list_pod_stats(&filter)
        .await
        .iter()
        .map(convert::pod_stats)
        .collect()
}

pub(crate) async fn list_pod_sandbox_stats(
    svc: &RuntimeService,
    request: Request<proto::ListPodSandboxStatsRequest>,
) -> Result<Response<proto::ListPodSandboxStatsResponse>, Status> {
    let stats = pods(svc, request.into_inner().filter).await;
    Ok(Response::new(proto::ListPodSandboxStatsResponse { stats }))
}

pub(crate) async fn stream_pod_sandbox_stats(
    svc: &RuntimeService,
    request: Request<proto::StreamPodSandboxStatsRequest>,
) -> Result<Response<BoxStream<proto::StreamPodSandboxStatsResponse>>, Status> {
    let stats = pods(svc, request.into_inner().filter).await;
    Ok(in_batches(stats, |pod_sandbox_stats| {
        proto::StreamPodSandboxStatsResponse { pod_sandbox_stats }
    }))
}
