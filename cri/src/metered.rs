//! Counting and timing CRI calls for the daemon's metrics: a tower layer
//! around the gRPC services that records each call's method, gRPC code and
//! latency on [`telemetry::global()`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The services whose methods are labelled by name; anything else is
/// counted as `other`, so a client cannot make up label values.
const SERVICES: [(&str, &str); 2] = [
    ("runtime.v1.RuntimeService", "RuntimeService"),
    ("runtime.v1.ImageService", "ImageService"),
];

/// Longest method name taken as a label value.
const METHOD_MAX: usize = 64;

/// Wraps the CRI services in [`Metered`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MeteredLayer;

impl<S> tower::Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = match &answer {
                Ok(response) => code_of(response.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            let elapsed = started.elapsed();
            tracing::debug!(
                service,
                method = %method,
                code = code_name(code),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "CRI call"
            );
            telemetry::global().record_request(service, &method, code_name(code), elapsed);
            answer
        })
    }
}

/// The service and method labels of a gRPC path (`/pkg.Service/Method`).
fn labels(path: &str) -> (&'static str, String) {
    let mut parts = path.strip_prefix('/').unwrap_or(path).splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let known = SERVICES.iter().find(|(full, _)| *full == service);
    let plain = !method.is_empty()
        && method.len() <= METHOD_MAX
        && method.bytes().all(|b| b.is_ascii_alphanumeric());
    match (known, plain) {
        (Some((_, short)), true) => (short, method.to_owned()),
        (Some((_, short)), false) => (short, "other".to_owned()),
        (None, _) => ("other", "other".to_owned()),
    }
}

/// The code of an answer: in its headers when the call failed at once
/// (a "trailers-only" answer), otherwise OK. An error a stream sends later,
/// in its trailers, is not seen here.
fn code_of(headers: &http::HeaderMap) -> tonic::Code {
    match headers.get("grpc-status") {
        Some(value) => tonic::Code::from_bytes(value.as_bytes()),
        None => tonic::Code::Ok,
    }
}

/// The name of a gRPC code as the metrics label it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_bounded_labels() {
        assert_eq!(
            labels("/runtime.v1.RuntimeService/RunPodSandbox"),
            ("RuntimeService", "RunPodSandbox".to_owned())
        );
        assert_eq!(
            labels("/runtime.v1.ImageService/PullImage"),
            ("ImageService", "PullImage".to_owned())
        );
        assert_eq!(
            labels("/runtime.v1.RuntimeService/../../x"),
            ("RuntimeService", "other".to_owned())
        );
        let long = format!("/runtime.v1.RuntimeService/{}", "A".repeat(65));
        assert_eq!(labels(&long), ("RuntimeService", "other".to_owned()));
        assert_eq!(
            labels("/grpc.health.v1.Health/Check"),
            ("other", "other".to_owned())
        );
        assert_eq!(labels(""), ("other", "other".to_owned()));
    }

    #[test]
    fn the_code_is_read_from_a_trailers_only_answer() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(code_of(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_name(code_of(&headers)), "NotFound");
        headers.insert("grpc-status", http::HeaderValue::from_static("junk"));
        assert_eq!(code_of(&headers), tonic::Code::Unknown);
    }
}
