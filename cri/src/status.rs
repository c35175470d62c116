//! Version, Status (runtime and network conditions, handlers) and the
//! runtime configuration calls.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use crate::service::RuntimeService;
use crate::{CRI_API_VERSION, proto};

pub(crate) async fn version(
    _svc: &RuntimeService,
    request: Request<proto::VersionRequest>,
) -> Result<Response<proto::VersionResponse>, Status> {
    // A `v1alpha2` client is told the version it speaks.
    let api = request
        .extensions()
        .get::<crate::ApiVersion>()
        .map_or(CRI_API_VERSION, |v| v.name());
    Ok(Response::new(proto::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "frakti".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: api.into(),
    }))
}

pub(crate) async fn status(
    svc: &RuntimeService,
    request: Request<proto::StatusRequest>,
) -> Result<Response<proto::StatusResponse>, Status> {
    let runtime_ready = svc
        .pods
        .runtime_ready()
        .await
        .map_err(|e| (e.reason.to_owned(), e.message));
    let network_ready = svc
        .pods
        .network_ready()
        .await
        .map_err(|e| (e.reason.to_owned(), e.message));
    let conditions = vec![
        condition("RuntimeReady", runtime_ready),
        condition("NetworkReady", network_ready),
    ];
    // Both runtimes make a recursive_read_only mount read-only all through,
    // on the host, where the kernel has mount_setattr.
    let features = |handler: &str| proto::RuntimeHandlerFeatures {
        recursive_read_only_mounts: container::mounts::recursive_readonly_supported(),
        user_namespaces: svc.pods.user_namespaces(handler),
    };
    let handlers = std::iter::once(String::new())
        .chain(svc.pods.handlers())
        .map(|name| proto::RuntimeHandler {
            features: Some(features(&name)),
            name,
        })
        .collect();
    let mut info = HashMap::new();
    if request.get_ref().verbose {
        info.insert("config".to_owned(), svc.config_info.to_string());
        let cidr = svc.pod_cidr.lock().map(|c| c.clone()).unwrap_or_default();
        info.insert("podCIDR".to_owned(), cidr);
    }
    Ok(Response::new(proto::StatusResponse {
        status: Some(proto::RuntimeStatus { conditions }),
        info,
        runtime_handlers: handlers,
        // Both runtimes honour supplemental_groups_policy Strict.
        features: Some(proto::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    }))
}

pub(crate) async fn update_runtime_config(
    svc: &RuntimeService,
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
    if let Ok(mut stored) = svc.pod_cidr.lock() {
        *stored = cidr;
    }
    Ok(Response::new(proto::UpdateRuntimeConfigResponse {}))
}

pub(crate) async fn runtime_config(
    _svc: &RuntimeService,
    _request: Request<proto::RuntimeConfigRequest>,
) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
    // frakti creates no systemd units: cgroup paths are plain cgroupfs paths.
    Ok(Response::new(proto::RuntimeConfigResponse {
        linux: Some(proto::LinuxRuntimeConfiguration {
            cgroup_driver: proto::CgroupDriver::Cgroupfs as i32,
        }),
    }))
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
