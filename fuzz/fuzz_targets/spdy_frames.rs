//! SPDY/3.1 frames from a streaming client, with zlib header blocks
//! decompressed against the SPDY dictionary.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use streaming::spdy::Frame;
use streaming::spdy::frame::{HeaderCompressor, HeaderDecompressor};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut z = HeaderDecompressor::new();
    let mut compressor = HeaderCompressor::new().expect("zlib");
    while let Ok(Some(frame)) = Frame::decode(&mut buf, &mut z) {
        // A decoded frame encodes again (or says why it cannot).
        let mut out = BytesMut::new();
        let _ = frame.encode(&mut compressor, &mut out);
    }
});
