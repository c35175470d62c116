//! SPDY/3.1 frames: their wire encoding and the zlib-compressed header blocks.
//!
//! Every frame starts with 8 bytes. A control frame has the high bit set,
//! a 15-bit version (3), a 16-bit type, 8 bits of flags and a 24-bit length.
//! A data frame has the high bit clear, a 31-bit stream id, flags and length.
//!
//! Header blocks (name/value pairs and the zlib contexts that compress them)
//! are in `headers` and re-exported here.

mod headers;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use headers::{HeaderCompressor, HeaderDecompressor, Headers};
use headers::{decode_block, encode_block};

/// The SPDY version spoken here.
pub const VERSION: u16 = 3;
/// FIN flag on SYN_STREAM, SYN_REPLY, HEADERS and DATA: the sender is done.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag on SYN_STREAM: the receiver may not send on it.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The SETTINGS id of the initial per-stream window size.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The initial stream and session flow-control window.
pub const DEFAULT_WINDOW: u32 = 64 * 1024;
/// The largest payload a frame's 24-bit length can describe.
pub const MAX_PAYLOAD: usize = 0xff_ffff;
/// The largest header block accepted once decompressed.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub mod rst {
    /// Generic protocol violation.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// A frame arrived for a stream that is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// An internal error ended the stream.
    pub const INTERNAL_ERROR: u32 = 6;
    /// The peer violated flow control.
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// Data arrived after the stream was half-closed by the peer.
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream's id (odd from clients, even from servers).
        stream_id: u32,
        /// The stream this one is associated with, or 0.
        associated_id: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// FIN / UNIDIRECTIONAL.
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream opened by the peer.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The aborted stream.
        stream_id: u32,
        /// One of [`rst`].
        status: u32,
    },
    /// Session parameters.
    Settings {
        /// CLEAR_SETTINGS flag.
        flags: u8,
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check; the receiver echoes pings the peer started.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// The sender will accept no new streams.
    GoAway {
        /// The last stream id the sender processed.
        last_good_stream_id: u32,
        /// 0 OK, 1 protocol error, 2 internal error.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Grants the peer more send window.
    WindowUpdate {
        /// The stream, or 0 for the session window.
        stream_id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The payload.
        data: Bytes,
    },
    /// A control frame of a type this implementation ignores.
    Unknown {
        /// The frame type.
        frame_type: u16,
    },
}

/// Encoding a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The header block could not be compressed
    #[error("cannot compress header block: {0}")]
    Compress(#[from] flate2::CompressError),
    /// The frame is larger than a SPDY frame can be
    #[error("frame payload of {0} bytes exceeds the SPDY limit")]
    TooLarge(usize),
}

/// Decoding a frame failed; the session cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The peer speaks another SPDY version
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame's fields are inconsistent
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// The header block could not be decompressed
    #[error("cannot decompress header block: {0}")]
    Decompress(String),
    /// A decompressed header block is larger than accepted
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
}

fn control_header(out: &mut BytesMut, frame_type: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | len as u32);
}

impl Frame {
    /// Appends the frame's wire form to `out`, compressing headers with `z`.
    pub fn encode(&self, z: &mut HeaderCompressor, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut body = BytesMut::new();
        let (frame_type, flags) = match self {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(EncodeError::TooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(associated_id & 0x7fff_ffff);
                body.put_u8((priority & 0x7) << 5);
                body.put_u8(0);
                body.extend_from_slice(&z.compress(&encode_block(headers))?);
                (TYPE_SYN_STREAM, *flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & 0x7fff_ffff);
                body.extend_from_slice(&z.compress(&encode_block(headers))?);
                (TYPE_SYN_REPLY, *flags)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & 0x7fff_ffff);
                body.extend_from_slice(&z.compress(&encode_block(headers))?);
                (TYPE_HEADERS, *flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                body.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    body.put_u32((u32::from(*f) << 24) | (id & 0xff_ffff));
                    body.put_u32(*value);
                }
                (TYPE_SETTINGS, *flags)
            }
            Frame::Ping { id } => {
                body.put_u32(*id);
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                body.put_u32(last_good_stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(delta & 0x7fff_ffff);
                (TYPE_WINDOW_UPDATE, 0)
            }
            Frame::Unknown { frame_type } => (*frame_type, 0),
        };
        if body.len() > MAX_PAYLOAD {
            return Err(EncodeError::TooLarge(body.len()));
        }
        control_header(out, frame_type, flags, body.len());
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` if more
    /// bytes are needed.
    pub fn decode(
        buf: &mut BytesMut,
        z: &mut HeaderDecompressor,
    ) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        let mut head = buf.split_to(8);
        let mut body = buf.split_to(len).freeze();
        let first = head.get_u32();
        let flags = head.get_u8();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let frame_type = (first & 0xffff) as u16;
        let need = |n: usize, kind: &'static str| {
            if len < n {
                Err(DecodeError::Malformed(kind))
            } else {
                Ok(())
            }
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(10, "SYN_STREAM")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let associated_id = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                body.advance(1);
                let headers = decode_block(&z.decompress(&body)?)?;
                if stream_id == 0 {
                    return Err(DecodeError::Malformed("SYN_STREAM"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(4, "SYN_REPLY")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let headers = decode_block(&z.decompress(&body)?)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(4, "SETTINGS")?;
                let count = body.get_u32() as usize;
                if body.len() != count * 8 {
                    return Err(DecodeError::Malformed("SETTINGS"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = body.get_u32();
                        ((word >> 24) as u8, word & 0xff_ffff, body.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(4, "PING")?;
                Frame::Ping { id: body.get_u32() }
            }
            TYPE_GOAWAY => {
                need(4, "GOAWAY")?;
                let last_good_stream_id = body.get_u32() & 0x7fff_ffff;
                // SPDY/2 GOAWAY had no status; accept its absence.
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    delta: body.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut z = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        let mut buf = BytesMut::new();
        for f in frames {
            f.encode(&mut z, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(&mut buf, &mut d).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn every_frame_type_roundtrips() {
        let headers = Headers::new()
            .with("streamType", "stdout")
            .with("port", "80")
            .with("port", "81");
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: headers.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: headers.clone(),
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 5,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 12345,
            },
            Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 5,
                flags: 0,
                data: Bytes::new(),
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn data_frame_wire_layout() {
        let mut z = HeaderCompressor::new().unwrap();
        let mut buf = BytesMut::new();
        Frame::Data {
            stream_id: 0x0102_0304,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"ab"),
        }
        .encode(&mut z, &mut buf)
        .unwrap();
        assert_eq!(&buf[..], &[1, 2, 3, 4, 1, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn control_frame_wire_layout() {
        let mut z = HeaderCompressor::new().unwrap();
        let mut buf = BytesMut::new();
        Frame::WindowUpdate {
            stream_id: 3,
            delta: 0x10000,
        }
        .encode(&mut z, &mut buf)
        .unwrap();
        assert_eq!(
            &buf[..],
            &[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 3, 0, 1, 0, 0]
        );
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut z = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        let mut all = BytesMut::new();
        Frame::Ping { id: 9 }.encode(&mut z, &mut all).unwrap();
        let mut buf = BytesMut::from(&all[..5]);
        assert_eq!(Frame::decode(&mut buf, &mut d).unwrap(), None);
        buf.extend_from_slice(&all[5..]);
        assert_eq!(
            Frame::decode(&mut buf, &mut d).unwrap(),
            Some(Frame::Ping { id: 9 })
        );
    }

    #[test]
    fn rejects_other_versions() {
        let mut d = HeaderDecompressor::new();
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            Frame::decode(&mut buf, &mut d),
            Err(DecodeError::Version(2))
        ));
    }
}
