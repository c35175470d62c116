//! The `RuntimeService` value: what every CRI call of the runtime service
//! reaches (the pod service, the image store, the streaming server).

use std::sync::Arc;

use images::ImageStore;
use pods::PodService;
use streaming::StreamingServer;
use tonic::Status;

/// CRI `RuntimeService` over a [`PodService`], resolving container images
/// in an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct RuntimeService {
    pub(crate) pods: Arc<PodService>,
    pub(crate) images: ImageStore,
    pub(crate) config_info: serde_json::Value,
    pub(crate) pod_cidr: Arc<std::sync::Mutex<String>>,
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

    pub(crate) fn streaming(&self) -> Result<&StreamingServer, Status> {
        self.streaming
            .as_deref()
            .ok_or_else(|| Status::unimplemented("this daemon runs no streaming server"))
    }
}

/// Refuses an empty id.
pub(crate) fn require_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}
