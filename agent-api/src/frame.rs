//! Frame layout and a resynchronising decoder.
//!
//! ```text
//! 0      4     5      6        8        16       20       24
//! | FRKT | kind | flags | reserved | id (LE) | len (LE) | crc32 (LE) | payload
//! ```

/// Marks the start of every frame.
pub const MAGIC: [u8; 4] = *b"FRKT";
/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted; larger lengths are treated as corruption.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Host opens a session (JSON [`crate::Hello`]).
    Hello = 1,
    /// Agent accepts a session (JSON [`crate::Welcome`]).
    Welcome = 2,
    /// Host request (JSON [`crate::Request`]); `id` pairs it with its response.
    Request = 3,
    /// Agent response (JSON `Result<Response, AgentError>`).
    Response = 4,
    /// Unsolicited agent event (JSON).
    Event = 5,
    /// Bytes of an interactive stream (`id` = stream id); the first payload
    /// byte is the [`crate::streams::Channel`], the rest is data.
    StreamData = 6,
    /// No more data on one channel of a stream (payload: the channel byte).
    StreamEof = 7,
    /// The receiver grants the sender more bytes on a stream (payload: u32 LE).
    StreamWindow = 8,
    /// The stream is over: from the agent with its outcome (JSON
    /// [`crate::streams::StreamEnd`]), from the host to cancel it.
    StreamClose = 9,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Welcome,
            3 => Self::Request,
            4 => Self::Response,
            5 => Self::Event,
            6 => Self::StreamData,
            7 => Self::StreamEof,
            8 => Self::StreamWindow,
            9 => Self::StreamClose,
            _ => return None,
        })
    }
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// Request id (or session id for the handshake).
    pub id: u64,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Builds a frame whose payload is `value` as JSON.
    pub fn json<T: serde::Serialize>(kind: FrameKind, id: u64, value: &T) -> Self {
        // Serialising our own message types into a Vec cannot fail.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        Self { kind, id, payload }
    }

    /// Decodes the payload as JSON.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    /// Encodes the frame to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.id.to_le_bytes());
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Turns a byte stream into frames, skipping anything that is not a valid frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    skipped: u64,
    rejected: u64,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Drops everything buffered (use on reconnect).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Bytes skipped so far because they were not part of a valid frame.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Frames rejected so far: a bad kind, an oversized length, or a bad checksum.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The next complete, valid frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let start = find_magic(&self.buf)?;
            if start > 0 {
                self.discard(start);
            }
            if self.buf.len() < HEADER_LEN {
                return None;
            }
            let kind = FrameKind::from_u8(self.buf[4]);
            let len = u32::from_le_bytes([self.buf[16], self.buf[17], self.buf[18], self.buf[19]])
                as usize;
            let (Some(kind), true) = (kind, len <= MAX_PAYLOAD) else {
                self.rejected += 1;
                self.discard(1);
                continue;
            };
            if self.buf.len() < HEADER_LEN + len {
                return None;
            }
            let crc = u32::from_le_bytes([self.buf[20], self.buf[21], self.buf[22], self.buf[23]]);
            let payload = &self.buf[HEADER_LEN..HEADER_LEN + len];
            if crc32fast::hash(payload) != crc {
                self.rejected += 1;
                self.discard(1);
                continue;
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&self.buf[8..16]);
            let frame = Frame {
                kind,
                id: u64::from_le_bytes(id),
                payload: payload.to_vec(),
            };
            self.buf.drain(..HEADER_LEN + len);
            return Some(frame);
        }
    }

    fn discard(&mut self, n: usize) {
        self.buf.drain(..n);
        self.skipped += n as u64;
    }
}

/// Offset of the first possible magic; a partial magic at the end counts.
fn find_magic(buf: &[u8]) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    for i in 0..buf.len() {
        let rest = &buf[i..];
        let n = rest.len().min(MAGIC.len());
        if rest[..n] == MAGIC[..n] {
            return Some(i);
        }
    }
    // Nothing can start a frame: keep nothing.
    Some(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64, body: &str) -> Frame {
        Frame {
            kind: FrameKind::Request,
            id,
            payload: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn round_trip_split_anywhere() {
        let bytes = [frame(1, "{\"a\":1}").encode(), frame(2, "").encode()].concat();
        for split in 0..bytes.len() {
            let mut d = Decoder::new();
            d.push(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
            d.push(&bytes[split..]);
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
            assert_eq!(
                got,
                vec![frame(1, "{\"a\":1}"), frame(2, "")],
                "split at {split}"
            );
        }
    }

    #[test]
    fn skips_garbage_and_truncated_frames() {
        let good = frame(7, "payload").encode();
        let truncated = &frame(6, "this frame lost its tail").encode()[..30];
        let mut d = Decoder::new();
        d.push(b"FRK garbage FR");
        d.push(truncated);
        d.push(&good);
        assert_eq!(d.next_frame(), Some(frame(7, "payload")));
        assert_eq!(d.next_frame(), None);
        assert!(d.skipped() >= 14 + 30);
    }

    #[test]
    fn rejects_corrupted_payload() {
        let mut bytes = frame(3, "hello").encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let mut d = Decoder::new();
        d.push(&bytes);
        d.push(&frame(4, "next").encode());
        assert_eq!(d.next_frame(), Some(frame(4, "next")));
        assert_eq!(d.rejected(), 1);
    }

    #[test]
    fn oversized_length_is_corruption() {
        let mut bytes = frame(3, "x").encode();
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = Decoder::new();
        d.push(&bytes);
        d.push(&frame(5, "ok").encode());
        assert_eq!(d.next_frame(), Some(frame(5, "ok")));
        assert_eq!(d.rejected(), 1);
    }
}
