//! Exec, Attach and PortForward: the target is checked in the pod service,
//! and the answer is a URL of the streaming server.

use streaming::RequestError;
use tonic::{Request, Response, Status};

use crate::errors::ToStatus;
use crate::proto;
use crate::service::{RuntimeService, require_id};

pub(crate) async fn exec(
    svc: &RuntimeService,
    request: Request<proto::ExecRequest>,
) -> Result<Response<proto::ExecResponse>, Status> {
    let req = request.into_inner();
    let container_id = running_container(svc, &req.container_id)?;
    let server = svc.streaming()?;
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

pub(crate) async fn attach(
    svc: &RuntimeService,
    request: Request<proto::AttachRequest>,
) -> Result<Response<proto::AttachResponse>, Status> {
    let req = request.into_inner();
    let container_id = running_container(svc, &req.container_id)?;
    let server = svc.streaming()?;
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

pub(crate) async fn port_forward(
    svc: &RuntimeService,
    request: Request<proto::PortForwardRequest>,
) -> Result<Response<proto::PortForwardResponse>, Status> {
    let req = request.into_inner();
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
    let sandbox = svc
        .pods
        .ready_sandbox(&req.pod_sandbox_id)
        .await
        .map_err(|e| e.status())?;
    let url = svc
        .streaming()?
        .get_port_forward(streaming::PortForwardRequest {
            pod_sandbox_id: sandbox.id.clone(),
            ports,
        })
        .map_err(request_status)?;
    Ok(Response::new(proto::PortForwardResponse { url }))
}

/// The full id of running container `id` (an id or unique prefix).
fn running_container(svc: &RuntimeService, id: &str) -> Result<String, Status> {
    require_id(id, "container_id")?;
    let record = svc.pods.running_container(id).map_err(|e| e.status())?;
    Ok(record.id)
}

fn request_status(e: RequestError) -> Status {
    match e {
        RequestError::Invalid(msg) => Status::invalid_argument(msg),
        RequestError::Busy(e) => Status::resource_exhausted(e.to_string()),
    }
}
