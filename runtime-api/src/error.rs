//! The error every runtime operation returns: a broad kind (which decides the
//! gRPC code, in `cri`), a message, and the cause it came from.

use std::error::Error;

/// A cause kept behind a [`RuntimeError`].
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// A runtime operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    /// Broad class, for mapping to gRPC codes.
    pub kind: RuntimeErrorKind,
    /// What went wrong (without the cause's own text).
    pub message: String,
    /// What it came from, if it came from another error.
    #[source]
    pub source: Option<Cause>,
}

impl RuntimeError {
    /// An error of `kind` with `message` and no cause.
    pub fn new(kind: RuntimeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind`: `context` failed because of `source`.
    pub fn caused(
        kind: RuntimeErrorKind,
        context: impl Into<String>,
        source: impl Into<Cause>,
    ) -> Self {
        Self {
            kind,
            message: context.into(),
            source: Some(source.into()),
        }
    }

    /// An internal error: `context` failed because of `source`.
    pub fn internal(context: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::caused(RuntimeErrorKind::Internal, context, source)
    }
}

/// Broad classes of runtime errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeErrorKind {
    /// The request cannot be satisfied as given.
    InvalidArgument,
    /// The host lacks something the runtime needs (assets, devices).
    Unavailable,
    /// The operation did not finish in time.
    DeadlineExceeded,
    /// The object does not exist (any more) in the runtime.
    NotFound,
    /// The object is not in a state that allows the operation.
    FailedPrecondition,
    /// The request asks for more than the node or the sandbox can give.
    ResourceExhausted,
    /// This runtime cannot do the operation.
    Unsupported,
    /// Anything else.
    Internal,
}

/// The error and its causes as one line, `outer: cause: cause`, skipping a
/// cause whose text the line already holds (errors that print their source).
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_walks_the_chain_once() {
        let io = std::io::Error::other("disk on fire");
        let e = RuntimeError::internal("write the record", io);
        assert_eq!(e.to_string(), "write the record");
        assert_eq!(report(&e), "write the record: disk on fire");

        #[derive(Debug, thiserror::Error)]
        #[error("cannot start pod sandbox: {0}")]
        struct Outer(#[source] RuntimeError);
        let outer = Outer(e);
        assert_eq!(
            report(&outer),
            "cannot start pod sandbox: write the record: disk on fire"
        );
    }
}
