//! Content store: blobs by digest under `blobs/sha256/<hex>`, every one
//! verified against its digest before it is renamed into place.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A digest string is not `sha256:<64 hex>`.
#[derive(Debug, thiserror::Error)]
#[error("unsupported or malformed digest {0:?} (expected sha256:<64 hex digits>)")]
pub struct BadDigest(pub String);

/// Returns the hex part of a `sha256:` digest, checking its form.
pub fn digest_hex(digest: &str) -> Result<&str, BadDigest> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(BadDigest(digest.to_owned())),
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A file in the store's temporary directory, removed on drop unless persisted.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    hasher: Sha256,
    len: u64,
}

impl TempFile {
    /// Creates a new temporary file in `dir`.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let name = format!("blob-{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Appends `data`, hashing it.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        match &mut self.file {
            Some(f) => f.write_all(data),
            None => Err(io::Error::other("file already closed")),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of what was written.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }

    /// Flushes to disk and renames to `dest` (atomic within the file system).
    pub fn persist(mut self, dest: &Path) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all()?;
        }
        std::fs::rename(&self.path, dest)?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The blob store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store with blobs under `blobs` and partial
    /// downloads under `tmp`.
    pub fn open(blobs: PathBuf, tmp: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(blobs.join("sha256"))?;
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { blobs, tmp })
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> Result<PathBuf, BadDigest> {
        Ok(self.blobs.join("sha256").join(digest_hex(digest)?))
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// A new temporary file for a download.
    pub fn temp(&self) -> io::Result<TempFile> {
        TempFile::new(&self.tmp)
    }

    /// Reads a stored blob.
    pub fn read(&self, digest: &str) -> io::Result<Vec<u8>> {
        let path = self.path(digest).map_err(io::Error::other)?;
        std::fs::read(path)
    }

    /// Stores `data` if it matches `digest`; returns false (storing nothing) if not.
    pub fn put(&self, digest: &str, data: &[u8]) -> io::Result<bool> {
        let dest = self.path(digest).map_err(io::Error::other)?;
        if sha256_digest(data) != digest {
            return Ok(false);
        }
        if dest.is_file() {
            return Ok(true);
        }
        let mut t = self.temp()?;
        t.write(data)?;
        t.persist(&dest)?;
        Ok(true)
    }

    /// All stored digests.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.blobs.join("sha256"))? {
            let name = e?.file_name();
            if let Some(n) = name.to_str()
                && digest_hex(&format!("sha256:{n}")).is_ok()
            {
                out.push(format!("sha256:{n}"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_temp_files_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
        let d = sha256_digest(b"hello");
        assert!(!s.put(&d, b"hellO").unwrap());
        assert!(!s.contains(&d));
        assert!(s.put(&d, b"hello").unwrap());
        assert_eq!(s.read(&d).unwrap(), b"hello");
        assert_eq!(s.list().unwrap(), vec![d]);
        {
            let mut t = s.temp().unwrap();
            t.write(b"partial").unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(digest_hex("sha256:../../etc").is_err());
        assert!(digest_hex("md5:abc").is_err());
    }
}
