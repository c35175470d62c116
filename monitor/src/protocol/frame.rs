//! Frames of an attached connection: `[kind: u8][len: u32 big-endian][data]`.
//!
//! Client → monitor: [`FrameKind::Stdin`], [`FrameKind::CloseStdin`] (no
//! data), [`FrameKind::Resize`] (u16 width + u16 height, big-endian).
//! Monitor → client: [`FrameKind::Stdout`], [`FrameKind::Stderr`], and
//! [`FrameKind::Exit`] (the exit's JSON) after which the monitor closes the
//! connection. A frame's data is at most [`MAX_FRAME`] bytes.

/// Largest data of one frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// Bytes before a frame's data.
pub const HEADER_LEN: usize = 5;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Input for the container (client → monitor).
    Stdin = 0,
    /// The container's standard output or terminal (monitor → client).
    Stdout = 1,
    /// The container's standard error (monitor → client).
    Stderr = 2,
    /// The container exited; data is the [`super::Exit`] JSON (monitor → client).
    Exit = 3,
    /// The client's input ends (client → monitor, no data).
    CloseStdin = 4,
    /// The terminal's new size: u16 width + u16 height, big-endian (client → monitor).
    Resize = 5,
}

impl FrameKind {
    /// The kind with byte `b`, if any.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Stdin,
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Exit,
            4 => Self::CloseStdin,
            5 => Self::Resize,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Its data.
    pub data: Vec<u8>,
}

/// The peer broke the framing; the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame has an unknown kind
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame is larger than allowed
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u64),
}

/// Encodes one frame of `kind` with `data`.
///
/// Data longer than [`MAX_FRAME`] becomes several consecutive frames of the
/// same kind, so the result is always valid on the wire.
pub fn encode_frame(kind: FrameKind, data: &[u8]) -> Vec<u8> {
    let pieces = data.len().div_ceil(MAX_FRAME).max(1);
    let mut out = Vec::with_capacity(data.len() + pieces * HEADER_LEN);
    let mut rest = data;
    loop {
        let (piece, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        out.push(kind as u8);
        // A piece is at most MAX_FRAME bytes, which fits in a u32.
        out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        out.extend_from_slice(piece);
        rest = tail;
        if rest.is_empty() {
            return out;
        }
    }
}

/// Encodes a resize frame.
pub fn encode_resize(width: u16, height: u16) -> Vec<u8> {
    let mut data = [0u8; 4];
    data[..2].copy_from_slice(&width.to_be_bytes());
    data[2..].copy_from_slice(&height.to_be_bytes());
    encode_frame(FrameKind::Resize, &data)
}

/// The `(width, height)` of a resize frame's data; `None` unless it is 4 bytes.
pub fn decode_resize(data: &[u8]) -> Option<(u16, u16)> {
    let data: [u8; 4] = data.try_into().ok()?;
    Some((
        u16::from_be_bytes([data[0], data[1]]),
        u16::from_be_bytes([data[2], data[3]]),
    ))
}

/// Turns received bytes into frames.
///
/// Feed it what was read ([`FrameDecoder::push`]), then take frames until
/// [`FrameDecoder::next_frame`] gives `None`. It holds at most one partial
/// frame (at most `HEADER_LEN + MAX_FRAME` bytes) plus the last push; a
/// header announcing a larger frame or an unknown kind is an error as soon as
/// it arrives.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.pos..];
        let Some(header) = rest.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let kind = FrameKind::from_byte(header[0]).ok_or(FrameError::UnknownKind(header[0]))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len as usize > MAX_FRAME {
            return Err(FrameError::TooLarge(u64::from(len)));
        }
        let end = HEADER_LEN + len as usize;
        let Some(data) = rest.get(HEADER_LEN..end) else {
            return Ok(None);
        };
        let frame = Frame {
            kind,
            data: data.to_vec(),
        };
        self.pos += end;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(decoder: &mut FrameDecoder) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(f) = decoder.next_frame()? {
            frames.push(f);
        }
        Ok(frames)
    }

    #[test]
    fn frames_have_the_documented_layout() {
        assert_eq!(
            encode_frame(FrameKind::Stdout, b"hi"),
            [1, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(encode_frame(FrameKind::CloseStdin, b""), [4, 0, 0, 0, 0]);
        assert_eq!(encode_resize(80, 24), [5, 0, 0, 0, 4, 0, 80, 0, 24]);
        assert_eq!(decode_resize(&[1, 0, 0, 2]), Some((256, 2)));
        assert_eq!(decode_resize(&[1, 0, 0]), None);
        assert_eq!(decode_resize(&[1, 0, 0, 0, 0]), None);
    }

    #[test]
    fn byte_by_byte_and_all_at_once_give_the_same_frames() {
        let mut wire = encode_frame(FrameKind::Stdin, b"abc");
        wire.extend(encode_frame(FrameKind::CloseStdin, b""));
        wire.extend(encode_resize(1, 2));
        wire.extend(encode_frame(FrameKind::Exit, br#"{"exit_code":0}"#));
        let mut whole = FrameDecoder::new();
        whole.push(&wire);
        let expected = drain(&mut whole).unwrap();
        assert_eq!(expected.len(), 4);
        assert_eq!(expected[0].data, b"abc");
        assert_eq!(expected[1].kind, FrameKind::CloseStdin);
        assert_eq!(decode_resize(&expected[2].data), Some((1, 2)));
        assert_eq!(whole.buffered(), 0);
        let mut bytes = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            bytes.push(std::slice::from_ref(b));
            got.extend(drain(&mut bytes).unwrap());
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn long_data_is_split_into_valid_frames() {
        let data: Vec<u8> = (0..MAX_FRAME * 2 + 7).map(|i| i as u8).collect();
        let wire = encode_frame(FrameKind::Stderr, &data);
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let frames = drain(&mut d).unwrap();
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.kind == FrameKind::Stderr));
        assert_eq!(frames[0].data.len(), MAX_FRAME);
        let joined: Vec<u8> = frames.into_iter().flat_map(|f| f.data).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused_from_the_header() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 1, 0, 1]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge(MAX_FRAME as u64 + 1))
        );
        let mut d = FrameDecoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::new();
        d.push(&[9, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(9)));
        let mut d = FrameDecoder::new();
        d.push(&[1, 0, 1, 0, 0]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), HEADER_LEN);
    }

    #[test]
    fn the_buffer_is_reused_after_frames_are_taken() {
        let mut d = FrameDecoder::new();
        let frame = encode_frame(FrameKind::Stdin, &[7; 1000]);
        for _ in 0..1000 {
            d.push(&frame);
            d.push(&frame[..3]);
            assert_eq!(drain(&mut d).unwrap().len(), 1);
            d.push(&frame[3..]);
            assert_eq!(drain(&mut d).unwrap().len(), 1);
        }
        assert!(d.buf.capacity() < 16 * frame.len());
    }
}
