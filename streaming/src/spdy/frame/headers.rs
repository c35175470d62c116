//! SPDY/3.1 header blocks: name/value pairs, their wire form, and the zlib
//! contexts (primed with the SPDY dictionary) that compress them, one per
//! connection and direction.

use bytes::{Buf, BufMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

use super::{DecodeError, EncodeError, MAX_HEADER_BLOCK};
use crate::spdy::dictionary::DICTIONARY;

/// Name/value pairs of a header block. Names are lowercase; a header with
/// several values keeps them NUL-separated in one entry, as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty header block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value to `name` (lowercased), keeping earlier values.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => self.0.push((name, value.to_owned())),
        }
    }

    /// Builder form of [`Headers::add`].
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.add(name, value);
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name` (case-insensitive).
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_ascii_lowercase();
        self.0
            .iter()
            .filter(move |(n, _)| *n == name)
            .flat_map(|(_, v)| v.split('\0'))
    }

    /// The pairs as stored (multi-values NUL-separated).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the block has no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compresses header blocks; one per connection and direction, since the zlib
/// context carries over from frame to frame.
pub struct HeaderCompressor(Compress);

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor")
            .field("total_in", &self.0.total_in())
            .finish()
    }
}

impl HeaderCompressor {
    /// A fresh zlib context primed with the SPDY dictionary.
    pub fn new() -> Result<Self, EncodeError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&DICTIONARY)?;
        Ok(Self(z))
    }

    /// Compresses one block and sync-flushes, so the peer can inflate it alone.
    pub fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        loop {
            let done = (self.0.total_in() - start) as usize;
            out.reserve(raw.len() - done + 64);
            self.0
                .compress_vec(&raw[done..], &mut out, FlushCompress::Sync)?;
            let done = (self.0.total_in() - start) as usize;
            // A sync flush is complete once zlib stops short of filling the output.
            if done == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Inflates header blocks; one per connection, its context persists.
pub struct HeaderDecompressor(Decompress);

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("total_in", &self.0.total_in())
            .finish()
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh zlib context; the dictionary is supplied when the stream asks.
    pub fn new() -> Self {
        Self(Decompress::new(true))
    }

    /// Inflates one frame's compressed header block.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            let done = (self.0.total_in() - start) as usize;
            let before = (self.0.total_in(), self.0.total_out());
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            match self
                .0
                .decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(DecodeError::Decompress(e.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(DecodeError::HeaderBlockTooLarge);
            }
            let done = (self.0.total_in() - start) as usize;
            if done == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if before == (self.0.total_in(), self.0.total_out()) && out.len() < out.capacity() {
                return Err(DecodeError::Decompress("no progress".into()));
            }
        }
    }
}

pub(super) fn encode_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::with_capacity(64);
    raw.put_u32(headers.len() as u32);
    for (name, value) in headers.iter() {
        raw.put_u32(name.len() as u32);
        raw.extend_from_slice(name.as_bytes());
        raw.put_u32(value.len() as u32);
        raw.extend_from_slice(value.as_bytes());
    }
    raw
}

pub(super) fn decode_block(mut raw: &[u8]) -> Result<Headers, DecodeError> {
    const KIND: &str = "header block";
    let take = |raw: &mut &[u8]| -> Result<String, DecodeError> {
        if raw.len() < 4 {
            return Err(DecodeError::Malformed(KIND));
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(DecodeError::Malformed(KIND));
        }
        let s = std::str::from_utf8(&raw[..len])
            .map_err(|_| DecodeError::Malformed(KIND))?
            .to_owned();
        raw.advance(len);
        Ok(s)
    };
    if raw.len() < 4 {
        return Err(DecodeError::Malformed(KIND));
    }
    let count = raw.get_u32();
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        headers.add(&name, &value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_multiple_values_and_lowercase_names() {
        let h = Headers::new()
            .with("Port", "80")
            .with("port", "81")
            .with("X", "y");
        assert_eq!(h.get("PORT"), Some("80"));
        assert_eq!(h.get_all("port").collect::<Vec<_>>(), ["80", "81"]);
        assert_eq!(h.len(), 2);
        let raw = encode_block(&h);
        assert_eq!(decode_block(&raw).unwrap(), h);
    }

    #[test]
    fn header_blocks_use_the_dictionary_and_a_shared_context() {
        let h = Headers::new()
            .with("streamtype", "error")
            .with("content-type", "text/plain");
        let raw = encode_block(&h);
        let mut z = HeaderCompressor::new().unwrap();
        let first = z.compress(&raw).unwrap();
        // zlib header with FDICT set, followed by the dictionary's Adler-32.
        assert_eq!(first[0], 0x78);
        assert_ne!(first[1] & 0x20, 0, "FDICT flag must be set");
        let adler = u32::from_be_bytes([first[2], first[3], first[4], first[5]]);
        let mut check = Decompress::new(true);
        let mut sink = Vec::with_capacity(1024);
        let err = check
            .decompress_vec(&first, &mut sink, FlushDecompress::Sync)
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(adler));
        // The second block of the same context refers back to the first, so
        // it is smaller and cannot be inflated on its own.
        let second = z.compress(&raw).unwrap();
        assert!(second.len() < first.len());
        let mut fresh = HeaderDecompressor::new();
        assert!(fresh.decompress(&second).is_err());
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&first).unwrap(), raw);
        assert_eq!(d.decompress(&second).unwrap(), raw);
    }
}
