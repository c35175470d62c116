//! Interactive byte streams (exec, attach, port-forward) multiplexed over the
//! agent channel.
//!
//! A stream is opened by a request that names a stream id chosen by the host
//! (`ExecStart`, `Attach`, `PortForward`); after that both sides exchange
//! `StreamData` / `StreamEof` frames carrying that id. Each direction is
//! credit-based: a sender may have at most [`WINDOW`] unacknowledged bytes in
//! flight per stream, and the receiver returns credit with `StreamWindow`
//! frames as it hands bytes on. The agent ends a stream with `StreamClose`
//! (carrying the exit code of an exec); the host sends `StreamClose` to
//! cancel one (the exec's process group is killed, the connection closed).
//!
//! Streams belong to one session: when the host reconnects, the agent drops
//! every stream of the earlier session, and the host fails them.

use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameKind};

/// Credit each side starts with, per stream and direction.
pub const WINDOW: u32 = 256 * 1024;
/// Largest data payload of one `StreamData` frame.
pub const MAX_CHUNK: usize = 32 * 1024;

/// Which byte stream a `StreamData` or `StreamEof` frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Channel {
    /// Host to agent: the process's stdin, or bytes for the forwarded port.
    Stdin = 0,
    /// Agent to host: the process's stdout (or terminal), or bytes from the port.
    Stdout = 1,
    /// Agent to host: the process's stderr.
    Stderr = 2,
}

impl Channel {
    /// The channel of a wire byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Stdin,
            1 => Self::Stdout,
            2 => Self::Stderr,
            _ => return None,
        })
    }
}

/// How a stream ended, as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// Exit code of an exec (128 + signal when killed); none for attach and
    /// port-forward.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the stream failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

/// A `StreamData` frame.
pub fn data_frame(stream: u64, channel: Channel, data: &[u8]) -> Frame {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel as u8);
    payload.extend_from_slice(data);
    Frame {
        kind: FrameKind::StreamData,
        id: stream,
        payload,
    }
}

/// A `StreamEof` frame.
pub fn eof_frame(stream: u64, channel: Channel) -> Frame {
    Frame {
        kind: FrameKind::StreamEof,
        id: stream,
        payload: vec![channel as u8],
    }
}

/// A `StreamWindow` frame granting `credit` more bytes.
pub fn window_frame(stream: u64, credit: u32) -> Frame {
    Frame {
        kind: FrameKind::StreamWindow,
        id: stream,
        payload: credit.to_le_bytes().to_vec(),
    }
}

/// A `StreamClose` frame.
pub fn close_frame(stream: u64, end: &StreamEnd) -> Frame {
    Frame::json(FrameKind::StreamClose, stream, end)
}

/// The channel and data of a `StreamData` or `StreamEof` payload.
pub fn split_payload(payload: &[u8]) -> Option<(Channel, &[u8])> {
    let (first, rest) = payload.split_first()?;
    Some((Channel::from_u8(*first)?, rest))
}

/// The credit of a `StreamWindow` payload.
pub fn window_credit(payload: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(payload.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = data_frame(9, Channel::Stderr, b"abc");
        assert_eq!(f.id, 9);
        assert_eq!(
            split_payload(&f.payload),
            Some((Channel::Stderr, &b"abc"[..]))
        );
        let f = eof_frame(9, Channel::Stdin);
        assert_eq!(split_payload(&f.payload), Some((Channel::Stdin, &b""[..])));
        assert_eq!(
            window_credit(&window_frame(1, 70_000).payload),
            Some(70_000)
        );
        assert_eq!(split_payload(&[7, 1]), None);
        assert_eq!(window_credit(&[1, 2]), None);
        let end = StreamEnd {
            exit_code: Some(3),
            error: None,
        };
        assert_eq!(close_frame(2, &end).parse::<StreamEnd>().unwrap(), end);
    }
}
