//! The CRI `RuntimeService` gRPC trait: each call is handed to the module of
//! its verb family (`status`, `sandbox`, `container`, `stream`).

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::service::RuntimeService;
use crate::{container, events, metrics, proto, sandbox, stats, status, stream};

#[tonic::async_trait]
impl proto::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        status::version(self, request).await
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        status::status(self, request).await
    }

    async fn update_runtime_config(
        &self,
        request: Request<proto::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<proto::UpdateRuntimeConfigResponse>, Status> {
        status::update_runtime_config(self, request).await
    }

    async fn runtime_config(
        &self,
        request: Request<proto::RuntimeConfigRequest>,
    ) -> Result<Response<proto::RuntimeConfigResponse>, Status> {
        status::runtime_config(self, request).await
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<proto::RunPodSandboxRequest>,
    ) -> Result<Response<proto::RunPodSandboxResponse>, Status> {
        sandbox::run_pod_sandbox(self, request).await
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<proto::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<proto::UpdatePodSandboxResourcesResponse>, Status> {
        sandbox::update_pod_sandbox_resources(self, request).await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<proto::StopPodSandboxRequest>,
    ) -> Result<Response<proto::StopPodSandboxResponse>, Status> {
        sandbox::stop_pod_sandbox(self, request).await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<proto::RemovePodSandboxRequest>,
    ) -> Result<Response<proto::RemovePodSandboxResponse>, Status> {
        sandbox::remove_pod_sandbox(self, request).await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<proto::PodSandboxStatusRequest>,
    ) -> Result<Response<proto::PodSandboxStatusResponse>, Status> {
        sandbox::pod_sandbox_status(self, request).await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<proto::ListPodSandboxRequest>,
    ) -> Result<Response<proto::ListPodSandboxResponse>, Status> {
        sandbox::list_pod_sandbox(self, request).await
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<proto::StreamPodSandboxesRequest>,
    ) -> Result<Response<BoxStream<proto::StreamPodSandboxesResponse>>, Status> {
        sandbox::stream_pod_sandboxes(self, request).await
    }

    async fn create_container(
        &self,
        request: Request<proto::CreateContainerRequest>,
    ) -> Result<Response<proto::CreateContainerResponse>, Status> {
        container::create_container(self, request).await
    }

    async fn start_container(
        &self,
        request: Request<proto::StartContainerRequest>,
    ) -> Result<Response<proto::StartContainerResponse>, Status> {
        container::start_container(self, request).await
    }

    async fn stop_container(
        &self,
        request: Request<proto::StopContainerRequest>,
    ) -> Result<Response<proto::StopContainerResponse>, Status> {
        container::stop_container(self, request).await
    }

    async fn remove_container(
        &self,
        request: Request<proto::RemoveContainerRequest>,
    ) -> Result<Response<proto::RemoveContainerResponse>, Status> {
        container::remove_container(self, request).await
    }

    async fn list_containers(
        &self,
        request: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        container::list_containers(self, request).await
    }

    async fn stream_containers(
        &self,
        request: Request<proto::StreamContainersRequest>,
    ) -> Result<Response<BoxStream<proto::StreamContainersResponse>>, Status> {
        container::stream_containers(self, request).await
    }

    async fn container_status(
        &self,
        request: Request<proto::ContainerStatusRequest>,
    ) -> Result<Response<proto::ContainerStatusResponse>, Status> {
        container::container_status(self, request).await
    }

    async fn update_container_resources(
        &self,
        request: Request<proto::UpdateContainerResourcesRequest>,
    ) -> Result<Response<proto::UpdateContainerResourcesResponse>, Status> {
        container::update_container_resources(self, request).await
    }

    async fn reopen_container_log(
        &self,
        request: Request<proto::ReopenContainerLogRequest>,
    ) -> Result<Response<proto::ReopenContainerLogResponse>, Status> {
        container::reopen_container_log(self, request).await
    }

    async fn exec_sync(
        &self,
        request: Request<proto::ExecSyncRequest>,
    ) -> Result<Response<proto::ExecSyncResponse>, Status> {
        container::exec_sync(self, request).await
    }

    async fn container_stats(
        &self,
        request: Request<proto::ContainerStatsRequest>,
    ) -> Result<Response<proto::ContainerStatsResponse>, Status> {
        stats::container_stats(self, request).await
    }

    async fn list_container_stats(
        &self,
        request: Request<proto::ListContainerStatsRequest>,
    ) -> Result<Response<proto::ListContainerStatsResponse>, Status> {
        stats::list_container_stats(self, request).await
    }

    async fn stream_container_stats(
        &self,
        request: Request<proto::StreamContainerStatsRequest>,
    ) -> Result<Response<BoxStream<proto::StreamContainerStatsResponse>>, Status> {
        stats::stream_container_stats(self, request).await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<proto::PodSandboxStatsRequest>,
    ) -> Result<Response<proto::PodSandboxStatsResponse>, Status> {
        stats::pod_sandbox_stats(self, request).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<proto::ListPodSandboxStatsRequest>,
    ) -> Result<Response<proto::ListPodSandboxStatsResponse>, Status> {
        stats::list_pod_sandbox_stats(self, request).await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<proto::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<BoxStream<proto::StreamPodSandboxStatsResponse>>, Status> {
        stats::stream_pod_sandbox_stats(self, request).await
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<proto::ListMetricDescriptorsRequest>,
    ) -> Result<Response<proto::ListMetricDescriptorsResponse>, Status> {
        metrics::list_metric_descriptors(self, request).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<proto::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<proto::ListPodSandboxMetricsResponse>, Status> {
        metrics::list_pod_sandbox_metrics(self, request).await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        request: Request<proto::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<BoxStream<proto::StreamPodSandboxMetricsResponse>>, Status> {
        metrics::stream_pod_sandbox_metrics(self, request).await
    }

    async fn get_container_events(
        &self,
        request: Request<proto::GetEventsRequest>,
    ) -> Result<Response<BoxStream<proto::ContainerEventResponse>>, Status> {
        events::get_container_events(self, request).await
    }

    async fn exec(
        &self,
        request: Request<proto::ExecRequest>,
    ) -> Result<Response<proto::ExecResponse>, Status> {
        stream::exec(self, request).await
    }

    async fn attach(
        &self,
        request: Request<proto::AttachRequest>,
    ) -> Result<Response<proto::AttachResponse>, Status> {
        stream::attach(self, request).await
    }

    async fn port_forward(
        &self,
        request: Request<proto::PortForwardRequest>,
    ) -> Result<Response<proto::PortForwardResponse>, Status> {
        stream::port_forward(self, request).await
    }
}
