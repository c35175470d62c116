//! Why a pull failed: [`PullError`], and the mapping of registry client
//! errors onto it with the endpoint and reference they concern.

use std::io;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::hosts::HostsError;
use crate::unpack::UnpackError;

/// An image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image reference is not valid
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry hosts configuration is unusable
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The image or one of its blobs does not exist in the registry
    #[error("not found: {reference} at registry {registry}: {message}")]
    NotFound {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// The registry refused the credentials (or wants some)
    #[error(
        "registry {registry} refused authentication for {reference} (HTTP {status}): {message}"
    )]
    Unauthenticated {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The registry denied access
    #[error("registry {registry} denied access to {reference} (HTTP 403): {message}")]
    PermissionDenied {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// The registry cannot be reached
    #[error("registry {registry} unreachable while pulling {reference}: {message}")]
    Unreachable {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The transport error.
        message: String,
    },
    /// The registry answered with an error
    #[error("registry {registry} failed for {reference}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Registry {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// HTTP status, if known.
        status: Option<u16>,
        /// The registry's message.
        message: String,
    },
    /// Downloaded content does not match its digest
    #[error(
        "content of {reference} from {registry} does not match digest {expected} (got {actual}); nothing was stored"
    )]
    DigestMismatch {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The image has no manifest for this platform
    #[error("image {reference} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        /// Normalised reference.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms in the index.
        available: String,
    },
    /// A manifest or config is not valid
    #[error("invalid image {reference}: {message}")]
    Invalid {
        /// Normalised reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The image store's filesystem has no room for a blob
    #[error(
        "no room for {blob} of {reference}: it needs {needed} bytes, the image store's filesystem has {available} free"
    )]
    NoSpace {
        /// Normalised reference.
        reference: String,
        /// The blob's digest.
        blob: String,
        /// Its size.
        needed: u64,
        /// Free bytes.
        available: u64,
    },
    /// A layer could not be unpacked
    #[error("cannot unpack layer {layer} of {reference}: {source}")]
    Unpack {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        layer: String,
        /// Why.
        source: UnpackError,
    },
    /// Local storage failed
    #[error("cannot store content of {reference}: {source}")]
    Storage {
        /// Normalised reference.
        reference: String,
        /// The I/O error.
        source: io::Error,
    },
}

impl PullError {
    /// Appends `note` to the registry's message (for earlier endpoints' failures).
    pub(super) fn with_note(mut self, note: &str) -> Self {
        match &mut self {
            Self::NotFound { message, .. }
            | Self::Unauthenticated { message, .. }
            | Self::PermissionDenied { message, .. }
            | Self::Unreachable { message, .. }
            | Self::Registry { message, .. } => {
                message.push_str(note);
            }
            _ => {}
        }
        self
    }

    /// Whether another endpoint (mirror, then upstream) may do better.
    pub(super) fn try_next_endpoint(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. }
                | Self::Unreachable { .. }
                | Self::Registry { .. }
                | Self::Unauthenticated { .. }
                | Self::PermissionDenied { .. }
        )
    }
}

/// Context for errors: where and what.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub(super) registry: String,
    pub(super) reference: String,
}

impl Ctx {
    pub(super) fn classify(&self, e: OciDistributionError) -> PullError {
        let registry = self.registry.clone();
        let reference = self.reference.clone();
        let by_status = |status: u16, message: String| match status {
            401 => PullError::Unauthenticated {
                registry: registry.clone(),
                reference: reference.clone(),
                status,
                message,
            },
            403 => PullError::PermissionDenied {
                registry: registry.clone(),
                reference: reference.clone(),
                message,
            },
            404 => PullError::NotFound {
                registry: registry.clone(),
                reference: reference.clone(),
                message,
            },
            s => PullError::Registry {
                registry: registry.clone(),
                reference: reference.clone(),
                status: Some(s),
                message,
            },
        };
        match e {
            OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
            OciDistributionError::UnauthorizedError { url } => {
                by_status(401, format!("unauthorized at {url}"))
            }
            OciDistributionError::AuthenticationFailure(m) => {
                by_status(401, format!("token request failed: {}", m.trim()))
            }
            OciDistributionError::ImageManifestNotFoundError(m) => by_status(404, m),
            OciDistributionError::RegistryError { envelope, .. } => {
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let status = match envelope.errors.first().map(|e| &e.code) {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => 404,
                    Some(OciErrorCode::Unauthorized) => 401,
                    Some(OciErrorCode::Denied) => 403,
                    Some(OciErrorCode::Toomanyrequests) => 429,
                    _ => 400,
                };
                by_status(status, message)
            }
            OciDistributionError::DigestError(d) => match d {
                oci_client::errors::DigestError::VerificationError { expected, actual } => {
                    PullError::DigestMismatch {
                        registry,
                        reference,
                        expected,
                        actual,
                    }
                }
                other => PullError::Registry {
                    registry,
                    reference,
                    status: None,
                    message: other.to_string(),
                },
            },
            OciDistributionError::RequestError(r) => {
                let message = error_chain(&r);
                if r.is_connect() || r.is_timeout() || r.is_request() {
                    PullError::Unreachable {
                        registry,
                        reference,
                        message,
                    }
                } else {
                    match r.status() {
                        Some(s) => by_status(s.as_u16(), message),
                        None => PullError::Unreachable {
                            registry,
                            reference,
                            message,
                        },
                    }
                }
            }
            other => PullError::Registry {
                registry,
                reference,
                status: None,
                message: other.to_string(),
            },
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
