//! CRI `runtime.v1alpha2` beside `runtime.v1` on the same socket, for
//! kubelets 1.20–1.25. `v1` began as a copy of `v1alpha2` with the same
//! messages and field numbers, so a `v1alpha2` call is a `v1` call on the
//! wire: this layer routes `/runtime.v1alpha2.<Service>/<Method>` to
//! `/runtime.v1.<Service>/<Method>` and marks the request with
//! [`ApiVersion::V1alpha2`], so `Version` can answer in kind. Fields that
//! `v1` added are absent from an older client's messages and ignored by it in
//! answers, as protobuf does with unknown fields.

use std::task::{Context, Poll};

use http::uri::PathAndQuery;

/// The CRI API version a call was made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `runtime.v1alpha2`.
    V1alpha2,
}

impl ApiVersion {
    /// The version's name, as `VersionResponse.runtime_api_version`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1alpha2 => "v1alpha2",
        }
    }
}

const ALPHA: &str = "/runtime.v1alpha2.";
const V1: &str = "/runtime.v1.";

/// Serves `runtime.v1alpha2` calls with the `runtime.v1` services.
#[derive(Clone, Copy, Debug, Default)]
pub struct V1alpha2Layer;

impl<S> tower::Layer<S> for V1alpha2Layer {
    type Service = V1alpha2<S>;

    fn layer(&self, inner: S) -> V1alpha2<S> {
        V1alpha2 { inner }
    }
}

/// A gRPC service that also answers `runtime.v1alpha2` paths.
#[derive(Clone, Debug)]
pub struct V1alpha2<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for V1alpha2<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(v1) = v1_path(request.uri().path()) {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(v1);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
                request.extensions_mut().insert(ApiVersion::V1alpha2);
            }
        }
        self.inner.call(request)
    }
}

/// The `v1` path of a `v1alpha2` call's path.
fn v1_path(path: &str) -> Option<PathAndQuery> {
    let rest = path.strip_prefix(ALPHA)?;
    PathAndQuery::try_from(format!("{V1}{rest}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_paths_map_to_v1() {
        assert_eq!(
            v1_path("/runtime.v1alpha2.RuntimeService/RunPodSandbox").unwrap(),
            "/runtime.v1.RuntimeService/RunPodSandbox"
        );
        assert_eq!(
            v1_path("/runtime.v1alpha2.ImageService/PullImage").unwrap(),
            "/runtime.v1.ImageService/PullImage"
        );
        assert!(v1_path("/runtime.v1.RuntimeService/Version").is_none());
        assert!(v1_path("/runtime.v1alpha3.RuntimeService/Version").is_none());
    }
}
