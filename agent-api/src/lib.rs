//! The protocol between the frakti host daemon and `frakti-agent` in the guest.
//!
//! This crate owns the wire format (frames, the `Hello`/`Welcome` handshake,
//! the [`Request`]/[`Response`] messages, interactive streams) and the host's
//! client ([`AgentClient`], over a [`Transport`]); typed calls live in
//! [`calls`]. It knows nothing of pods, CRI or the hypervisor: it is given a
//! byte stream and speaks the protocol on it.
//!
//! The channel is one byte stream (a virtio-serial port) that may lose bytes in
//! either direction whenever the host side reconnects. So every frame carries a
//! magic, a length and a CRC: a reader that meets garbage skips forward to the
//! next valid header. Each connection starts with a `Hello`/`Welcome` handshake
//! carrying a fresh session id; nothing from an earlier connection is trusted.

pub mod calls;
pub mod client;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod frame;
pub mod messages;
pub mod streams;

pub use calls::Call;
pub use client::{
    AgentClient, AgentStream, CallError, ConnectError, StreamError, StreamEvent, StreamSender,
    Transport, UnixTransport,
};
pub use frame::{Decoder, Frame, FrameKind};
pub use messages::{
    AgentError, GuestInfo, Hello, NetInterface, NetRoute, Request, Response, Welcome,
};

/// Protocol version spoken by this build; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "frakti.agent";

/// Serial of the read-only disk that carries the guest kernel's full module
/// tree (`/sys/block/vd*/serial` in the guest); the agent's `modprobe` mounts
/// it when the kernel first asks for a module the initramfs lacks.
pub const MODULES_DISK_SERIAL: &str = "frakti-modules";
