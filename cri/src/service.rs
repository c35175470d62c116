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

    /// Runs `call` on the pod service to its end even if the client goes
    /// away meanwhile (its deadline passed, its connection closed): a
    /// mutating call dropped half-way would leave a VM, a container or a
    /// half-updated record that nothing names. A result nobody waits for
    /// any more is logged; the kubelet finds what it made by listing.
    pub(crate) async fn to_completion<T, F, Fut>(
        &self,
        what: &'static str,
        call: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(Arc<PodService>) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let work = call(self.pods.clone());
        let work = tracing::Instrument::in_current_span(work);
        tokio::spawn(async move {
            let out = work.await;
            if let Err(out) = answer.send(out) {
                match out {
                    Ok(_) => tracing::info!("{what} finished after its client went away"),
                    Err(e) => {
                        tracing::warn!("{what} failed after its client went away: {}", e.message())
                    }
                }
            }
        });
        answered
            .await
            .map_err(|_| Status::internal(format!("{what} ended without an answer")))?
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
