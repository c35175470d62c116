//! Domain errors -> gRPC status codes.

use pods::{
    ContainerStatusError, CreateContainerError, ExecSyncError, RemoveContainerError,
    RemovePodError, ReopenLogError, RunPodError, RuntimeError, RuntimeErrorKind,
    StartContainerError, StatsError, StatusPodError, StopContainerError, StopPodError, TargetError,
    UpdatePodResourcesError, UpdateResourcesError,
};
use tonic::{Code, Status};

fn runtime_code(e: &RuntimeError) -> Code {
    match e.kind {
        RuntimeErrorKind::InvalidArgument => Code::InvalidArgument,
        RuntimeErrorKind::Unavailable => Code::Unavailable,
        RuntimeErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        RuntimeErrorKind::NotFound => Code::NotFound,
        RuntimeErrorKind::FailedPrecondition => Code::FailedPrecondition,
        RuntimeErrorKind::ResourceExhausted => Code::ResourceExhausted,
        RuntimeErrorKind::Unsupported => Code::Unimplemented,
        RuntimeErrorKind::Internal => Code::Internal,
    }
}

/// The gRPC status for a domain error.
pub trait ToStatus: std::error::Error + 'static {
    /// The gRPC code.
    fn code(&self) -> Code;
    /// The status, with the error's message and its causes.
    fn status(&self) -> Status
    where
        Self: Sized,
    {
        Status::new(self.code(), pods::report(self))
    }
}

impl ToStatus for TargetError {
    fn code(&self) -> Code {
        match self {
            Self::ContainerNotFound(_) | Self::SandboxNotFound(_) => Code::NotFound,
            Self::ContainerAmbiguous(_) | Self::SandboxAmbiguous(_) => Code::InvalidArgument,
            Self::ContainerNotRunning { .. } | Self::SandboxNotReady(_) => Code::FailedPrecondition,
        }
    }
}

impl ToStatus for RunPodError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Route(_) => Code::InvalidArgument,
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
            Self::Container(e) => e.code(),
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for StatsError {
    fn code(&self) -> Code {
        match self {
            Self::ContainerNotFound(_) | Self::SandboxNotFound(_) => Code::NotFound,
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::SandboxNotReady(_) => Code::FailedPrecondition,
            Self::Runtime { source, .. } => runtime_code(source),
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

impl ToStatus for CreateContainerError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Ambiguous(_) => Code::InvalidArgument,
            Self::SandboxNotFound(_) => Code::NotFound,
            Self::SandboxNotReady(_) => Code::FailedPrecondition,
            Self::NameReserved { .. } => Code::AlreadyExists,
            Self::Runtime(e) => runtime_code(e),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for StartContainerError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::NotCreated { .. } | Self::SandboxNotReady(_) => Code::FailedPrecondition,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for StopContainerError {
    fn code(&self) -> Code {
        match self {
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for RemoveContainerError {
    fn code(&self) -> Code {
        match self {
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for ContainerStatusError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Ambiguous(_) => Code::InvalidArgument,
        }
    }
}

impl ToStatus for ExecSyncError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Ambiguous(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::NotRunning { .. } => Code::FailedPrecondition,
            Self::Runtime { source, .. } => runtime_code(source),
        }
    }
}

impl ToStatus for UpdateResourcesError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Ambiguous(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::NotLive { .. } => Code::FailedPrecondition,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for UpdatePodResourcesError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Ambiguous(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Runtime { source, .. } => runtime_code(source),
            Self::Store(_) => Code::Internal,
        }
    }
}

impl ToStatus for ReopenLogError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Ambiguous(_) => Code::InvalidArgument,
            Self::NotRunning { .. } => Code::FailedPrecondition,
            Self::Runtime { source, .. } => runtime_code(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pods::ContainerState;

    #[test]
    fn container_errors_map_to_cri_codes() {
        let reserved = CreateContainerError::NameReserved {
            name: "c_0".into(),
            id: "x".into(),
        };
        assert_eq!(reserved.code(), Code::AlreadyExists);
        assert_eq!(
            CreateContainerError::SandboxNotFound("p".into()).code(),
            Code::NotFound
        );
        assert_eq!(
            CreateContainerError::SandboxNotReady("p".into()).code(),
            Code::FailedPrecondition
        );
        let not_created = StartContainerError::NotCreated {
            id: "c".into(),
            state: ContainerState::Exited,
        };
        assert_eq!(not_created.code(), Code::FailedPrecondition);
        let timeout = ExecSyncError::Runtime {
            id: "c".into(),
            source: RuntimeError::new(RuntimeErrorKind::DeadlineExceeded, "timed out"),
        };
        assert_eq!(timeout.code(), Code::DeadlineExceeded);
        let status = ReopenLogError::NotRunning {
            id: "c".into(),
            state: ContainerState::Created,
        }
        .status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("not running"), "{status:?}");
        assert_eq!(
            ContainerStatusError::NotFound("c".into()).code(),
            Code::NotFound
        );
    }
}
