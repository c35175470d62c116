//! CRI `ImageService` over an [`images::ImageStore`].

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use images::{Credentials, ImageStore, PullError};
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status};

use crate::batch::in_batches;
use crate::errors::ToStatus;
use crate::proto;

/// How much of the caller's deadline is kept back to answer in time.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// CRI `ImageService`.
#[derive(Debug, Clone)]
pub struct ImageService {
    store: ImageStore,
    /// Where containers' writable layers are, for `ImageFsInfo`.
    pods: Option<std::sync::Arc<pods::PodService>>,
}

impl ImageService {
    /// Serves `store`.
    pub fn new(store: ImageStore) -> Self {
        Self { store, pods: None }
    }

    /// Reports the writable layers of `pods`' runtimes in `ImageFsInfo`.
    pub fn with_pods(mut self, pods: std::sync::Arc<pods::PodService>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// `FailedPrecondition`, naming the container, while a container of
    /// any state still uses `image`: its record refers to it.
    fn refuse_in_use(&self, reference: &str, image: &images::Image) -> Result<(), Status> {
        let Some(pods) = &self.pods else {
            return Ok(());
        };
        let users: Vec<String> = pods
            .list_containers(&pods::ContainerFilter::default())
            .into_iter()
            .filter(|c| c.config.image.id == image.id)
            .map(|c| format!("{} ({})", c.config.metadata.name, c.id))
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "image {reference} ({}) is in use by container {}; remove the container first",
            image.id,
            users.join(", ")
        )))
    }

    /// The images that pass `filter` (an image reference, or none), for
    /// both list forms.
    fn images(&self, filter: Option<proto::ImageFilter>) -> Vec<proto::Image> {
        let filter = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(r) => self.store.find(&r).into_iter().collect(),
            None => self.store.list(),
        };
        images.iter().map(|i| to_proto(&self.store, i)).collect()
    }
}

impl ToStatus for PullError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidReference { .. } => Code::InvalidArgument,
            Self::Hosts(_) => Code::FailedPrecondition,
            Self::NotFound { .. } | Self::NoPlatform { .. } => Code::NotFound,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Unreachable { .. } => Code::Unavailable,
            Self::Registry { status, .. } => match status {
                Some(429) => Code::ResourceExhausted,
                Some(s) if (400..500).contains(s) => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
            Self::DigestMismatch { .. }
            | Self::Unpack {
                source: images::UnpackError::DiffIdMismatch { .. },
                ..
            } => Code::DataLoss,
            Self::NoSpace { .. }
            | Self::Unpack {
                source: images::UnpackError::TooLarge(_),
                ..
            } => Code::ResourceExhausted,
            Self::Unpack {
                source: images::UnpackError::DeviceNode { .. },
                ..
            } => Code::FailedPrecondition,
            Self::Invalid { .. } => Code::FailedPrecondition,
            Self::Unpack { .. } | Self::Storage { .. } => Code::Internal,
        }
    }
}

/// The `grpc-timeout` header (`<n><unit>`, units H M S m u n) as a duration.
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let v = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Credentials from a CRI `AuthConfig`: a registry token is sent as a bearer
/// token; username/password, the base64 `auth` field, or an identity token
/// (as the password of user `<token>`, Docker's convention) go through basic
/// auth or the registry's token challenge.
fn credentials(auth: Option<proto::AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials::Bearer(a.registry_token));
    }
    if !a.identity_token.is_empty() {
        let username = if a.username.is_empty() {
            "<token>".to_owned()
        } else {
            a.username
        };
        return Ok(Credentials::Basic {
            username,
            password: a.identity_token,
        });
    }
    if !a.username.is_empty() {
        return Ok(Credentials::Basic {
            username: a.username,
            password: a.password,
        });
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("auth.auth is not base64: {e}")))?;
        let text = String::from_utf8(decoded).map_err(|_| {
            Status::invalid_argument("auth.auth is not UTF-8 after base64 decoding")
        })?;
        let (username, password) = text.split_once(':').ok_or_else(|| {
            Status::invalid_argument("auth.auth must encode \"username:password\"")
        })?;
        return Ok(Credentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    Ok(Credentials::Anonymous)
}

fn image_ref(spec: Option<&proto::ImageSpec>, what: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(r) if !r.is_empty() => Ok(r.to_owned()),
        _ => Err(Status::invalid_argument(format!(
            "{what}.image must name an image"
        ))),
    }
}

fn to_proto(store: &ImageStore, img: &images::Image) -> proto::Image {
    let (uid, username) = img.user_id();
    proto::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: img.repo_digests.clone(),
        size: img.size,
        uid: uid.map(|value| proto::Int64Value { value }),
        username,
        spec: Some(proto::ImageSpec {
            image: img.id.clone(),
            ..Default::default()
        }),
        pinned: store.is_pinned(img),
    }
}

#[tonic::async_trait]
impl proto::image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let images = self.images(request.into_inner().filter);
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn stream_images(
        &self,
        request: Request<proto::StreamImagesRequest>,
    ) -> Result<Response<BoxStream<proto::StreamImagesResponse>>, Status> {
        let images = self.images(request.into_inner().filter);
        Ok(in_batches(images, |images| proto::StreamImagesResponse {
            images,
        }))
    }

    async fn image_status(
        &self,
        request: Request<proto::ImageStatusRequest>,
    ) -> Result<Response<proto::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let reference = image_ref(req.image.as_ref(), "image")?;
        // CRI: an unknown image is not an error, the response has no image;
        // a reference that could name none is.
        let Some(img) = self.store.find(&reference) else {
            images::check_reference(&reference)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            return Ok(Response::new(proto::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let detail = serde_json::json!({
                "imageSpec": self.store.config(&img),
                "chainID": img.chain_ids.last(),
                "manifest": img.manifest,
                "index": img.index,
                "rootfs": self.store.rootfs(&img),
            });
            info.insert("info".to_owned(), detail.to_string());
        }
        Ok(Response::new(proto::ImageStatusResponse {
            image: Some(to_proto(&self.store, &img)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::PullImageResponse>, Status> {
        let timeout = grpc_timeout(&request);
        let req = request.into_inner();
        let reference = image_ref(req.image.as_ref(), "image")?;
        let creds = credentials(req.auth)?;
        let pull = self.store.pull(&reference, &creds);
        let result = match timeout {
            Some(t) => tokio::time::timeout(t.saturating_sub(DEADLINE_MARGIN), pull)
                .await
                .map_err(|_| {
                    tracing::warn!(image = %reference, "pull abandoned: deadline of {t:?} exceeded");
                    Status::deadline_exceeded(format!(
                        "pulling {reference} did not finish within the request's deadline of {t:?}"
                    ))
                })?,
            None => pull.await,
        };
        let img = result.map_err(|e| {
            tracing::warn!(image = %reference, "PullImage failed: {e}");
            e.status()
        })?;
        Ok(Response::new(proto::PullImageResponse {
            image_ref: img.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let reference = image_ref(request.get_ref().image.as_ref(), "image")?;
        if let Some(image) = self.store.find(&reference) {
            self.refuse_in_use(&reference, &image)?;
        }
        self.store.remove(&reference).await.map_err(|e| {
            let code = match e {
                images::RemoveError::Pinned(_) => Code::FailedPrecondition,
                images::RemoveError::InvalidReference(_) => Code::InvalidArgument,
                images::RemoveError::Index(_) => Code::Internal,
            };
            Status::new(code, e.to_string())
        })?;
        Ok(Response::new(proto::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<proto::ImageFsInfoRequest>,
    ) -> Result<Response<proto::ImageFsInfoResponse>, Status> {
        let usage = self
            .store
            .usage()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let timestamp = pods::now_ns();
        let fs = crate::convert::filesystem_usage(
            timestamp,
            self.store.dir().display().to_string(),
            &usage::FsUsage {
                used_bytes: usage.bytes,
                inodes_used: usage.inodes,
            },
        );
        Ok(Response::new(proto::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: match &self.pods {
                Some(pods) => pods
                    .container_filesystems()
                    .await
                    .into_iter()
                    .map(|l| crate::convert::filesystem_usage(timestamp, l.mountpoint, &l.usage))
                    .collect(),
                None => Vec::new(),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        let a = |f: fn(&mut proto::AuthConfig)| {
            let mut c = proto::AuthConfig::default();
            f(&mut c);
            credentials(Some(c))
        };
        assert_eq!(credentials(None).unwrap(), Credentials::Anonymous);
        assert_eq!(
            a(|c| {
                c.username = "u".into();
                c.password = "p".into();
            })
            .unwrap(),
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(
            a(|c| c.auth = "dTpwOng=".into()).unwrap(), // "u:p:x"
            Credentials::Basic {
                username: "u".into(),
                password: "p:x".into()
            }
        );
        assert_eq!(
            a(|c| c.registry_token = "t".into()).unwrap(),
            Credentials::Bearer("t".into())
        );
        assert_eq!(
            a(|c| c.identity_token = "i".into()).unwrap(),
            Credentials::Basic {
                username: "<token>".into(),
                password: "i".into()
            }
        );
        assert_eq!(
            a(|c| c.auth = "!!".into()).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn timeouts() {
        let mut r = Request::new(());
        assert_eq!(grpc_timeout(&r), None);
        r.metadata_mut()
            .insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&r), Some(Duration::from_millis(1500)));
        r.metadata_mut()
            .insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&r), Some(Duration::from_secs(2)));
    }
}
