//! `GetContainerEvents`: the pod service's container events as a server
//! stream. A subscriber that falls too far behind gets `ResourceExhausted`
//! and its stream ends; the others go on.

use pods::{ContainerEvent, ContainerEventKind};
use tokio::sync::broadcast::error::RecvError;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::service::RuntimeService;
use crate::{convert, proto};

pub(crate) async fn get_container_events(
    svc: &RuntimeService,
    _request: Request<proto::GetEventsRequest>,
) -> Result<Response<BoxStream<proto::ContainerEventResponse>>, Status> {
    let mut events = svc.pods.subscribe_events();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let item = match events.recv().await {
                Ok(event) => Ok(event_to_proto(&event)),
                Err(RecvError::Lagged(missed)) => Err(Status::resource_exhausted(format!(
                    "this subscriber fell {missed} container events behind and was dropped; \
                     subscribe again and relist"
                ))),
                Err(RecvError::Closed) => return,
            };
            let last = item.is_err();
            // The client went away, or the stream ends after an error.
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

fn event_to_proto(event: &ContainerEvent) -> proto::ContainerEventResponse {
    let kind = match event.kind {
        ContainerEventKind::Created => proto::ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => proto::ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => proto::ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => proto::ContainerEventType::ContainerDeletedEvent,
    };
    let pod_sandbox_status = match &event.sandbox {
        Some(sandbox) => convert::pod_sandbox_status(sandbox),
        // The sandbox went first: all that is known is that it is not ready.
        None => proto::PodSandboxStatus {
            state: proto::PodSandboxState::SandboxNotready as i32,
            ..Default::default()
        },
    };
    proto::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: kind as i32,
        created_at: event.at_ns,
        pod_sandbox_status: Some(pod_sandbox_status),
        containers_statuses: event
            .containers
            .iter()
            .map(convert::container_status)
            .collect(),
    }
}
