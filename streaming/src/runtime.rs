//! The seam to whatever runs the sessions: the request and stream types and
//! the [`StreamingRuntime`] trait live in `runtime-api`, shared with the pod
//! service that routes sessions to each pod's runtime.

pub use runtime_api::streams::{
    AttachRequest, BoxRead, BoxWrite, Duplex, ExecRequest, PortForwardRequest, SessionError,
    StreamIo, StreamingRuntime, TerminalSize,
};
