//! The CRI socket's transport: accepts any HTTP/2 `:authority`.
//!
//! Many gRPC clients on a unix socket (the kubelet 1.20's grpc-go, grpcio
//! and grpc-java by default) send the socket's path as `:authority`. The
//! HTTP/2 server under tonic refuses such a request with
//! `RST_STREAM PROTOCOL_ERROR`, because a path is not a valid URI
//! authority. [`AuthorityTolerant`] sits between the socket and the server:
//! it decodes every header block the client sends, replaces an authority
//! that is not a valid URI authority with `localhost`, and encodes the block
//! again. Nothing in frakti reads the authority.
//!
//! Header blocks are re-encoded as literals that never touch the HPACK
//! dynamic table, so the server's decoder state never depends on the
//! client's. All other frames pass through untouched.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The client's connection preface, passed through as it is.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames sent on to the server stay within the protocol's minimum
/// `SETTINGS_MAX_FRAME_SIZE`, which every server accepts.
const MAX_FRAME: usize = 16_384;
/// Bound on one header block, encoded or decoded, from the client.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The HPACK table size the server advertises (the protocol default).
const HEADER_TABLE_SIZE: usize = 4096;
const AUTHORITY: &[u8] = b":authority";
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Why a client's byte stream could not be carried to the server.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// a CONTINUATION frame without a header block in progress, or for another stream
    #[error("CONTINUATION frame outside a header block")]
    StrayContinuation,
    /// another frame arrived in the middle of a header block
    #[error("frame of type {0:#x} in the middle of a header block")]
    Interleaved(u8),
    /// a HEADERS frame is shorter than its padding and priority fields
    #[error("HEADERS frame is shorter than its padding and priority fields")]
    BadPadding,
    /// the header block is larger than frakti accepts
    #[error("header block over {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    /// the header block is not valid HPACK
    #[error("header block does not decode: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// The client-to-server half: frames in, the same frames out, with every
/// header block re-encoded and its authority made acceptable.
pub(crate) struct Rewriter {
    preface_left: usize,
    passthrough: usize,
    input: Vec<u8>,
    output: Vec<u8>,
    pending: Option<HeaderBlock>,
    decoder: Decoder<'static>,
}

struct HeaderBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("preface_left", &self.preface_left)
            .field("passthrough", &self.passthrough)
            .field("buffered", &self.input.len())
            .field("in_header_block", &self.pending.is_some())
            .finish()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            preface_left: PREFACE_LEN,
            passthrough: 0,
            input: Vec::new(),
            output: Vec::new(),
            pending: None,
            decoder,
        }
    }
}

impl Rewriter {
    /// Takes bytes from the client; what is ready for the server is in
    /// [`Rewriter::output`].
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.input.extend_from_slice(bytes);
        let mut at = 0;
        let result = self.process(&mut at);
        self.input.drain(..at);
        result
    }

    /// Bytes ready for the server; the caller drains what it forwards.
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    fn process(&mut self, at: &mut usize) -> Result<(), FrameError> {
        loop {
            let available = self.input.len() - *at;
            let through = if self.preface_left > 0 {
                &mut self.preface_left
            } else {
                &mut self.passthrough
            };
            if *through > 0 {
                let n = (*through).min(available);
                *through -= n;
                self.output.extend_from_slice(&self.input[*at..*at + n]);
                *at += n;
                if *through > 0 {
                    return Ok(());
                }
                continue;
            }
            if available < FRAME_HEADER_LEN {
                return Ok(());
            }
            let header = &self.input[*at..*at + FRAME_HEADER_LEN];
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let kind = header[3];
            let flags = header[4];
            let stream_id =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            if kind != HEADERS && kind != CONTINUATION {
                if self.pending.is_some() {
                    return Err(FrameError::Interleaved(kind));
                }
                self.output.extend_from_slice(header);
                *at += FRAME_HEADER_LEN;
                self.passthrough = len;
                continue;
            }
            if len > MAX_HEADER_BLOCK {
                return Err(FrameError::TooLarge);
            }
            if available < FRAME_HEADER_LEN + len {
                return Ok(());
            }
            let start = *at + FRAME_HEADER_LEN;
            let payload = self.input[start..start + len].to_vec();
            *at = start + len;
            self.header_frame(kind, flags, stream_id, &payload)?;
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(FrameError::Interleaved(kind));
            }
            let mut start = 0;
            let mut padding = 0;
            if flags & PADDED != 0 {
                padding = usize::from(*payload.first().ok_or(FrameError::BadPadding)?);
                start = 1;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let fields = payload
                    .get(start..start + 5)
                    .ok_or(FrameError::BadPadding)?;
                priority = Some(<[u8; 5]>::try_from(fields).map_err(|_| FrameError::BadPadding)?);
                start += 5;
            }
            let end = payload
                .len()
                .checked_sub(padding)
                .filter(|end| *end >= start)
                .ok_or(FrameError::BadPadding)?;
            self.pending = Some(HeaderBlock {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: payload[start..end].to_vec(),
            });
        } else {
            let block = self
                .pending
                .as_mut()
                .filter(|b| b.stream_id == stream_id)
                .ok_or(FrameError::StrayContinuation)?;
            if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::TooLarge);
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.pending.take()
        {
            self.emit(block)?;
        }
        Ok(())
    }

    /// Decodes a whole header block and writes it out again.
    fn emit(&mut self, block: HeaderBlock) -> Result<(), FrameError> {
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut decoded_len = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                decoded_len += name.len() + value.len();
                if decoded_len > MAX_HEADER_BLOCK {
                    return;
                }
                let value = if *name == *AUTHORITY && !valid_authority(&value) {
                    Cow::Borrowed(REPLACEMENT_AUTHORITY)
                } else {
                    value
                };
                encode_literal(&name, &value, &mut encoded);
            })
            .map_err(FrameError::Hpack)?;
        if decoded_len > MAX_HEADER_BLOCK {
            return Err(FrameError::TooLarge);
        }
        let mut first = true;
        let mut rest: &[u8] = &encoded;
        loop {
            let mut flags = 0;
            let mut payload = Vec::new();
            let kind = if first {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if let Some(priority) = block.priority {
                    flags |= PRIORITY;
                    payload.extend_from_slice(&priority);
                }
                HEADERS
            } else {
                CONTINUATION
            };
            let room = MAX_FRAME - payload.len();
            let (chunk, tail) = rest.split_at(rest.len().min(room));
            payload.extend_from_slice(chunk);
            rest = tail;
            if rest.is_empty() {
                flags |= END_HEADERS;
            }
            write_frame(kind, flags, block.stream_id, &payload, &mut self.output);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Whether the HTTP/2 server takes this `:authority` as it is.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// One header as a literal without indexing, name and value as plain
/// strings (RFC 7541 §6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for string in [name, value] {
        encode_length(string.len(), out);
        out.extend_from_slice(string);
    }
}

/// A string length with a 7-bit prefix and the Huffman bit clear.
fn encode_length(len: usize, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(len, 7, 0, out);
}

fn write_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len().to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A connection to the CRI socket whose client→server bytes go through a
/// [`Rewriter`]; writes go straight to the socket.
#[derive(Debug)]
pub struct AuthorityTolerant<S> {
    inner: S,
    rewriter: Rewriter,
    eof: bool,
}

impl<S> AuthorityTolerant<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::default(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityTolerant<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.rewriter.output();
            if !ready.is_empty() {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; MAX_FRAME];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.rewriter.feed(read.filled()) {
                tracing::warn!("CRI client sent bad HTTP/2 framing: {e}");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityTolerant<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityTolerant<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
