//! Errors of the container calls, one enum per call, each variant's doc
//! comment being its message.

use runtime_api::{ContainerState, RuntimeError};

use crate::store::StoreError;

/// CreateContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateContainerError {
    /// The request is invalid
    #[error("invalid container config: {0}")]
    Invalid(String),
    /// The pod sandbox does not exist
    #[error("pod sandbox {0:?} not found")]
    SandboxNotFound(String),
    /// The sandbox id prefix matches several sandboxes
    #[error("sandbox id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The pod sandbox is not ready
    #[error("pod sandbox {0} is not ready")]
    SandboxNotReady(String),
    /// The container's name is already taken in its pod
    #[error("container name {name:?} is reserved by container {id}")]
    NameReserved {
        /// `<name>_<attempt>`.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// The runtime failed to create the container
    #[error("cannot create container: {0}")]
    Runtime(#[from] RuntimeError),
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// StartContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum StartContainerError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a created container can be started
    #[error("container {id} is {state:?}, not Created")]
    NotCreated {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The container's pod sandbox is not ready
    #[error("pod sandbox {0} of the container is not ready")]
    SandboxNotReady(String),
    /// The runtime failed to start the container
    #[error("cannot start container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// StopContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum StopContainerError {
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime failed to stop the container
    #[error("cannot stop container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be stored
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// RemoveContainer failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveContainerError {
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// The runtime failed to stop or remove the container
    #[error("cannot remove container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
    /// The record could not be deleted
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// ContainerStatus failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerStatusError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

/// ExecSync failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecSyncError {
    /// The request is invalid
    #[error("invalid exec request: {0}")]
    Invalid(String),
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Commands run only in a running container
    #[error("container {id} is not running ({state:?})")]
    NotRunning {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The runtime failed to run the command
    #[error("cannot exec in container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
}

/// ReopenContainerLog failed.
#[derive(Debug, thiserror::Error)]
pub enum ReopenLogError {
    /// No such container
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The id prefix matches several containers
    #[error("container id prefix {0:?} is ambiguous")]
    Ambiguous(String),
    /// Only a running container's log can be reopened
    #[error("container {id} is not running ({state:?}); its log is not reopened")]
    NotRunning {
        /// Container id.
        id: String,
        /// Its state.
        state: ContainerState,
    },
    /// The runtime failed to reopen the log
    #[error("cannot reopen the log of container {id}: {source}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime's error.
        source: RuntimeError,
    },
}
