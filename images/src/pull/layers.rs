//! Layers: a downloaded blob decompressed (gzip, zstd or plain) on its own
//! thread while its diff ID is computed, applied onto a copy of its parent
//! snapshot, and committed under its chain ID.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::store::sha256_digest;
use crate::unpack::{Applied, UnpackError, apply_layer};

/// Decompressed chunk size and how many are queued per layer.
const INFLATE_CHUNK: usize = 256 << 10;
const INFLATE_QUEUE: usize = 32;
/// Most a layer may expand relative to its blob, past [`RATIO_FLOOR`]
/// bytes (a decompression bomb, not a layer of zeros a few MiB long).
const MAX_RATIO: u64 = 1000;
const RATIO_FLOOR: u64 = 256 << 20;

/// Why a layer's expansion was stopped (the error is of kind `FileTooLarge`).
fn too_large(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, message)
}

/// Counts the compressed bytes read from a blob.
struct Counted<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

enum Chunk {
    Data(Vec<u8>),
    Done(String),
    Failed(io::Error),
}

/// A layer blob decompressed on its own thread into a bounded queue, its
/// uncompressed bytes hashed on the way (the diff ID): the next layer
/// decompresses while this one is applied. Dropping it stops the thread.
pub(super) struct Inflater {
    rx: std::sync::mpsc::Receiver<Chunk>,
    buf: Vec<u8>,
    pos: usize,
    diff_id: Option<String>,
}

impl Inflater {
    /// Decompresses `blob`, stopping with a `FileTooLarge` error past `limit`
    /// bytes or past [`MAX_RATIO`] times the compressed bytes read.
    pub(super) fn spawn(blob: PathBuf, limit: u64) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(INFLATE_QUEUE);
        std::thread::spawn(move || {
            let run = || -> io::Result<String> {
                let compressed = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let file = Counted {
                    inner: std::fs::File::open(&blob)?,
                    read: compressed.clone(),
                };
                let mut expanded = 0u64;
                let mut buffered = BufReader::with_capacity(INFLATE_CHUNK, file);
                let magic = buffered.fill_buf()?.to_vec();
                let mut decoded: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
                    Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
                } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
                } else {
                    Box::new(buffered)
                };
                let mut hasher = Sha256::new();
                loop {
                    let mut chunk = vec![0u8; INFLATE_CHUNK];
                    let n = decoded.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    chunk.truncate(n);
                    expanded += n as u64;
                    if expanded > limit {
                        return Err(too_large(format!(
                            "the layer expands past the {} MiB cap (max_image_size)",
                            limit >> 20
                        )));
                    }
                    if expanded > RATIO_FLOOR
                        && expanded > MAX_RATIO.saturating_mul(compressed.get())
                    {
                        return Err(too_large(format!(
                            "the layer expands more than {MAX_RATIO} times its compressed size"
                        )));
                    }
                    hasher.update(&chunk);
                    if tx.send(Chunk::Data(chunk)).is_err() {
                        return Err(io::Error::other("layer reader gone"));
                    }
                }
                Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
            };
            let last = match run() {
                Ok(d) => Chunk::Done(d),
                Err(e) => Chunk::Failed(e),
            };
            let _ = tx.send(last);
        });
        Self {
            rx,
            buf: Vec::new(),
            pos: 0,
            diff_id: None,
        }
    }
}

impl Read for Inflater {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.diff_id.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(c)) => {
                    self.buf = c;
                    self.pos = 0;
                }
                Ok(Chunk::Done(d)) => self.diff_id = Some(d),
                Ok(Chunk::Failed(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("layer decompression stopped")),
            }
        }
    }
}

/// Applies the layer `inflater` yields onto `root`, returning what was
/// applied and the digest of the uncompressed tar.
fn apply_blob(root: &Path, mut inflater: Inflater) -> Result<(Applied, String), UnpackError> {
    let applied = apply_layer(root, &mut inflater).map_err(expansion_stopped)?;
    // The tar's end-of-archive padding counts towards the diff ID.
    io::copy(&mut inflater, &mut io::sink())
        .map_err(UnpackError::Archive)
        .map_err(expansion_stopped)?;
    let diff = inflater
        .diff_id
        .ok_or_else(|| UnpackError::Archive(io::Error::other("layer stream ended early")))?;
    Ok((applied, diff))
}

/// An error of the inflater's caps, wherever the unpacking met it, as
/// [`UnpackError::TooLarge`].
fn expansion_stopped(e: UnpackError) -> UnpackError {
    match &e {
        UnpackError::Archive(io) | UnpackError::Io { source: io, .. }
            if io.kind() == io::ErrorKind::FileTooLarge =>
        {
            UnpackError::TooLarge(io.to_string())
        }
        _ => e,
    }
}

pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Builds a snapshot in `tmp` (a copy of `parent`, if any, plus the layer),
/// checks the layer's diff ID, and renames it to `dest`.
pub(super) fn build_snapshot(
    tmp: &Path,
    parent: Option<&Path>,
    blob: Inflater,
    want_diff: &str,
    dest: &Path,
) -> Result<Applied, UnpackError> {
    let io_err = |op: &'static str, path: &Path| {
        let path: PathBuf = path.to_path_buf();
        move |source| UnpackError::Io { op, path, source }
    };
    let result = (|| {
        match parent {
            Some(p) => crate::snapshot::clone_tree(p, tmp)
                .map_err(io_err("copy parent snapshot into", tmp))?,
            None => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(tmp)
                    .map_err(io_err("create", tmp))?;
            }
        }
        let (applied, diff) = apply_blob(tmp, blob)?;
        if diff != want_diff {
            return Err(UnpackError::DiffIdMismatch {
                expected: want_diff.to_owned(),
                actual: diff,
            });
        }
        std::fs::rename(tmp, dest).map_err(io_err("commit snapshot", dest))?;
        Ok(applied)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }
}
