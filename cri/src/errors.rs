//! Domain errors -> gRPC status codes.

use pods::{
    RemovePodError, RunPodError, RuntimeError, RuntimeErrorKind, StatusPodError, StopPodError,
};
use tonic::{Code, Status};

fn runtime_code(e: &RuntimeError) -> Code {
    match e.kind {
        RuntimeErrorKind::InvalidArgument => Code::InvalidArgument,
        RuntimeErrorKind::Unavailable => Code::Unavailable,
        RuntimeErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        RuntimeErrorKind::NotFound => Code::NotFound,
        RuntimeErrorKind::FailedPrecondition => Code::FailedPrecondition,
        RuntimeErrorKind::Internal => Code::Internal,
    }
}

/// The gRPC status for a domain error.
pub trait ToStatus: std::fmt::Display {
    /// The gRPC code.
    fn code(&self) -> Code;
    /// The status, with the error's message.
    fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }
}

impl ToStatus for RunPodError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NameReserved { .. } => Code::AlreadyExists,
            Self::NotReady(_) => Code::FailedPrecondition,
            Self::Runtime(e) => runtime_code(e),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for StopPodError {
    fn code(&self) -> Code {
        match self {
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for RemovePodError {
    fn code(&self) -> Code {
        match self {
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::Stop(e) => e.code(),
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for StatusPodError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Ambiguous(_) => Code::InvalidArgument,
        }
    }
}
