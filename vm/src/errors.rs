//! How failures below the VM runtime (the agent, the hypervisor, helpers)
//! become runtime errors: the kind decides the gRPC code, the cause is kept.

use agent_api::CallError;
use agent_api::messages::AgentErrorKind;
use hypervisor::LaunchError;
use runtime_api::error::Cause;
use runtime_api::{RuntimeError, RuntimeErrorKind};

/// An internal error: `what` failed because of `cause`.
pub(crate) fn internal(what: impl Into<String>, cause: impl Into<Cause>) -> RuntimeError {
    RuntimeError::internal(what, cause)
}

/// A failed agent call: the agent's own refusals keep their kind; a channel
/// that does not answer is `Unavailable`; an answer that does not fit the
/// request is `Internal`.
pub(crate) fn agent_failure(what: &str, error: CallError) -> RuntimeError {
    match error {
        CallError::Agent(e) => {
            let kind = match e.kind {
                AgentErrorKind::InvalidArgument => RuntimeErrorKind::InvalidArgument,
                AgentErrorKind::NotFound => RuntimeErrorKind::NotFound,
                AgentErrorKind::FailedPrecondition => RuntimeErrorKind::FailedPrecondition,
                AgentErrorKind::DeadlineExceeded => RuntimeErrorKind::DeadlineExceeded,
                AgentErrorKind::ResourceExhausted => RuntimeErrorKind::ResourceExhausted,
                AgentErrorKind::Internal => RuntimeErrorKind::Internal,
            };
            RuntimeError::new(kind, format!("{what}: {}", e.message))
        }
        e @ CallError::Unexpected { .. } => {
            RuntimeError::caused(RuntimeErrorKind::Internal, what, e)
        }
        e => RuntimeError::caused(RuntimeErrorKind::Unavailable, what, e),
    }
}

/// A VM that did not start: a missing binary or asset is `Unavailable`.
pub(crate) fn launch_failure(error: LaunchError) -> RuntimeError {
    let kind = match error {
        LaunchError::Missing { .. } => RuntimeErrorKind::Unavailable,
        _ => RuntimeErrorKind::Internal,
    };
    RuntimeError::caused(kind, "start the VM", error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_api::AgentError;

    #[test]
    fn agent_errors_keep_their_kind_and_text() {
        let e = agent_failure(
            "start the container",
            CallError::Agent(AgentError {
                kind: AgentErrorKind::NotFound,
                message: "no container c1".into(),
            }),
        );
        assert_eq!(e.kind, RuntimeErrorKind::NotFound);
        assert_eq!(e.to_string(), "start the container: no container c1");

        let e = agent_failure("stop", CallError::Disconnected);
        assert_eq!(e.kind, RuntimeErrorKind::Unavailable);
        assert!(runtime_api::report(&e).starts_with("stop: the agent connection closed"));

        let e = agent_failure(
            "status",
            CallError::Unexpected {
                call: "ContainerStatus",
                answer: "Pong".into(),
            },
        );
        assert_eq!(e.kind, RuntimeErrorKind::Internal);
        assert!(runtime_api::report(&e).contains("ContainerStatus"));
    }

    #[test]
    fn a_missing_asset_is_unavailable() {
        let e = launch_failure(LaunchError::Missing {
            what: "QEMU binary",
            path: "/nope/qemu".into(),
        });
        assert_eq!(e.kind, RuntimeErrorKind::Unavailable);
        assert!(runtime_api::report(&e).contains("/nope/qemu"));
    }
}
