//! Blob downloads: streamed into the content store through a temporary
//! file, checked against the descriptor's digest and size before they are
//! kept; one download per digest at a time.

use std::io;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::manifest::OciDescriptor;

use super::PullError;
use super::error::{Ctx, error_chain};
use crate::ImageStore;

/// Largest manifest or config accepted.
pub(super) const MAX_METADATA: u64 = 8 << 20;
/// How often download progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl ImageStore {
    /// Fetches a small blob (config) into memory and the store, verified.
    pub(super) async fn fetch_small(
        &self,
        client: &oci_client::Client,
        remote: &Reference,
        ctx: &Ctx,
        digest: &str,
        size: u64,
    ) -> Result<Vec<u8>, PullError> {
        if let Ok(b) = self.inner.content.read(digest) {
            return Ok(b);
        }
        if size > MAX_METADATA {
            return Err(PullError::Invalid {
                reference: ctx.reference.clone(),
                message: format!("config of {size} bytes is too large"),
            });
        }
        let desc = OciDescriptor {
            media_type: String::new(),
            digest: digest.into(),
            size: size as i64,
            urls: None,
            annotations: None,
            artifact_type: None,
        };
        self.fetch_blob(client, remote, ctx, &desc).await?;
        self.inner
            .content
            .read(digest)
            .map_err(|source| PullError::Storage {
                reference: ctx.reference.clone(),
                source,
            })
    }

    /// Downloads one blob into the store unless it is there; only one
    /// download per digest runs at a time (others wait and reuse it).
    pub(super) async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        remote: &Reference,
        ctx: &Ctx,
        desc: &OciDescriptor,
    ) -> Result<(), PullError> {
        let storage = |source| PullError::Storage {
            reference: ctx.reference.clone(),
            source,
        };
        let _guard = self.inner.locks.lock(&desc.digest).await;
        if self.inner.content.contains(&desc.digest) {
            return Ok(());
        }
        let dest = self
            .inner
            .content
            .path(&desc.digest)
            .map_err(|e| PullError::Invalid {
                reference: ctx.reference.clone(),
                message: e.to_string(),
            })?;
        let started = Instant::now();
        let mut sized = client
            .pull_blob_stream(remote, desc)
            .await
            .map_err(|e| ctx.classify(e))?;
        let total = sized.content_length.unwrap_or(desc.size.max(0) as u64);
        // The blob, and as much again for what it unpacks to at least.
        let available = free_bytes(&self.inner.dir).map_err(storage)?;
        if total.saturating_mul(2) > available {
            return Err(PullError::NoSpace {
                reference: ctx.reference.clone(),
                blob: desc.digest.clone(),
                needed: total.saturating_mul(2),
                available,
            });
        }
        let mut tmp = self.inner.content.temp().map_err(storage)?;
        let mut last_log = Instant::now();
        while let Some(chunk) = sized.stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let actual = tmp.digest();
                    if tmp.len() == total && actual != desc.digest {
                        return Err(PullError::DigestMismatch {
                            registry: ctx.registry.clone(),
                            reference: ctx.reference.clone(),
                            expected: desc.digest.clone(),
                            actual,
                        });
                    }
                    return Err(PullError::Unreachable {
                        registry: ctx.registry.clone(),
                        reference: ctx.reference.clone(),
                        message: format!("reading blob {}: {}", desc.digest, error_chain(&e)),
                    });
                }
            };
            tmp.write(&chunk).map_err(storage)?;
            telemetry::global().record_pull_bytes(chunk.len() as u64);
            if desc.size > 0 && tmp.len() > desc.size as u64 {
                break; // longer than its descriptor: fails the size check below
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    image = %ctx.reference,
                    blob = %desc.digest,
                    bytes = tmp.len(),
                    total,
                    rate_mb_s = format!("{:.1}", tmp.len() as f64 / secs / 1e6),
                    "pulling"
                );
            }
        }
        let actual = tmp.digest();
        if actual != desc.digest || (desc.size > 0 && tmp.len() != desc.size as u64) {
            return Err(PullError::DigestMismatch {
                registry: ctx.registry.clone(),
                reference: ctx.reference.clone(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        let bytes = tmp.len();
        let dest2 = dest.clone();
        tokio::task::spawn_blocking(move || tmp.persist(&dest2))
            .await
            .map_err(|e| storage(io::Error::other(e)))?
            .map_err(storage)?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            image = %ctx.reference,
            blob = %desc.digest,
            bytes,
            secs = format!("{secs:.2}"),
            rate_mb_s = format!("{:.1}", bytes as f64 / secs / 1e6),
            "blob downloaded"
        );
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
pub fn free_bytes(dir: &std::path::Path) -> io::Result<u64> {
    let path = crate::unpack::cstring(dir)?;
    // SAFETY: `statvfs` is plain integers, for which all zeroes is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) reads a NUL-terminated path and fills the struct
    // we own; it is only read after success.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
