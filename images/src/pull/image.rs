//! Pulling an image from one endpoint: the manifest (through an index, for
//! the host's platform) verified against its digest, the config, then the
//! layers downloaded a few at once and unpacked in order into snapshots, and
//! finally the image record.

use std::io;
use std::time::Instant;

use oci_client::Reference;
use oci_client::manifest::OciDescriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use super::error::Ctx;
use super::layers::{Inflater, build_snapshot, chain_ids};
use super::registry::auth;
use super::{PullError, host_platform};
use crate::hosts::Endpoint;
use crate::store::{digest_hex, sha256_digest};
use crate::{Credentials, Image, ImageStore};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Layers downloaded at once per pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// Layers decompressed ahead of the one being applied.
const INFLATE_AHEAD: usize = 1;

/// A manifest larger than [`super::blob::MAX_METADATA`] is refused.
fn check_metadata_size(
    body: &[u8],
    invalid: &impl Fn(String) -> PullError,
) -> Result<(), PullError> {
    if body.len() as u64 > super::blob::MAX_METADATA {
        return Err(invalid(format!(
            "manifest of {} bytes is over the {} MiB limit",
            body.len(),
            super::blob::MAX_METADATA >> 20
        )));
    }
    Ok(())
}

/// Aborts spawned downloads when a pull is abandoned (e.g. its deadline passed).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<Result<Option<Inflater>, PullError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl ImageStore {
    pub(super) async fn pull_from(
        &self,
        ep: &Endpoint,
        parsed: &Reference,
        creds: &Credentials,
    ) -> Result<Image, PullError> {
        let ctx = Ctx {
            registry: ep.url(),
            reference: parsed.whole(),
        };
        let client = self.client(ep, creds);
        let auth = auth(creds);
        let remote = match (parsed.digest(), parsed.tag()) {
            (Some(d), _) => {
                Reference::with_digest(ep.host.clone(), parsed.repository().into(), d.into())
            }
            (None, t) => Reference::with_tag(
                ep.host.clone(),
                parsed.repository().into(),
                t.unwrap_or("latest").into(),
            ),
        };
        let storage = |source| PullError::Storage {
            reference: ctx.reference.clone(),
            source,
        };
        let invalid = |message: String| PullError::Invalid {
            reference: ctx.reference.clone(),
            message,
        };

        // Top-level manifest (or index).
        let (body, digest) = client
            .pull_manifest_raw(&remote, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| ctx.classify(e))?;
        check_metadata_size(&body, &invalid)?;
        let top_digest = sha256_digest(&body);
        if let Some(want) = parsed.digest()
            && want != top_digest
        {
            return Err(PullError::DigestMismatch {
                registry: ctx.registry.clone(),
                reference: ctx.reference.clone(),
                expected: want.into(),
                actual: top_digest,
            });
        }
        if digest != top_digest {
            tracing::debug!(registry = %ctx.registry, "registry digest header {digest} differs from content {top_digest}");
        }
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
        let mut index_digest = None;
        let (manifest_body, manifest_digest) = if value.get("manifests").is_some() {
            let index: ImageIndex = serde_json::from_slice(&body)
                .map_err(|e| invalid(format!("bad image index: {e}")))?;
            let (os, arch) = host_platform();
            let pick = index.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == os && p.architecture().to_string() == arch
                })
            });
            let Some(pick) = pick else {
                let available = index
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref())
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(PullError::NoPlatform {
                    reference: ctx.reference.clone(),
                    platform: format!("{os}/{arch}"),
                    available,
                });
            };
            let want = pick.digest().to_string();
            digest_hex(&want).map_err(|e| invalid(e.to_string()))?;
            let by_digest = remote.clone_with_digest(want.clone());
            let (mbody, _) = client
                .pull_manifest_raw(&by_digest, &auth, MANIFEST_TYPES)
                .await
                .map_err(|e| ctx.classify(e))?;
            check_metadata_size(&mbody, &invalid)?;
            let actual = sha256_digest(&mbody);
            if actual != want {
                return Err(PullError::DigestMismatch {
                    registry: ctx.registry.clone(),
                    reference: ctx.reference.clone(),
                    expected: want,
                    actual,
                });
            }
            index_digest = Some(top_digest.clone());
            (mbody.to_vec(), actual)
        } else {
            (body.to_vec(), top_digest.clone())
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_body)
            .map_err(|e| invalid(format!("bad image manifest: {e}")))?;
        let config_desc = manifest.config();
        let config_digest = config_desc.digest().to_string();
        digest_hex(&config_digest).map_err(|e| invalid(e.to_string()))?;
        let layers: Vec<OciDescriptor> = manifest
            .layers()
            .iter()
            .map(|l| OciDescriptor {
                media_type: l.media_type().to_string(),
                digest: l.digest().to_string(),
                size: l.size() as i64,
                urls: None,
                annotations: None,
                artifact_type: None,
            })
            .collect();
        for l in &layers {
            digest_hex(&l.digest).map_err(|e| invalid(e.to_string()))?;
            if l.media_type.contains("foreign") || l.media_type.contains("encrypted") {
                return Err(invalid(format!("unsupported layer type {}", l.media_type)));
            }
        }

        // Mark everything this pull touches, so GC leaves it alone.
        let mut keys: Vec<String> = vec![config_digest.clone(), manifest_digest.clone()];
        keys.extend(index_digest.clone());
        keys.extend(layers.iter().map(|l| l.digest.clone()));
        let _in_flight = self.in_flight(keys.clone());

        // Config.
        let config_bytes = self
            .fetch_small(&client, &remote, &ctx, &config_digest, config_desc.size())
            .await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("bad image config: {e}")))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != layers.len() {
            return Err(invalid(format!(
                "config lists {} layers, manifest {}",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        let _chain_flight = self.in_flight(chains.clone());
        self.inner
            .content
            .put(&manifest_digest, &manifest_body)
            .map_err(storage)?;
        if let Some(idx) = &index_digest {
            self.inner.content.put(idx, &body).map_err(storage)?;
        }

        // Layers: downloads run ahead (a few at once); each downloaded layer
        // is decompressed on its own thread up to INFLATE_AHEAD layers ahead
        // of the one being applied; application follows in order.
        let snapshots = self.inner.dir.join("snapshots");
        let mut handles = AbortOnDrop(Vec::new());
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_DOWNLOADS));
        let (applying_tx, applying_rx) = tokio::sync::watch::channel(0usize);
        for (i, l) in layers.iter().enumerate() {
            let chain_hex = digest_hex(&chains[i]).map_err(|e| invalid(e.to_string()))?;
            if snapshots.join(chain_hex).is_dir() {
                handles.0.push(tokio::spawn(async { Ok(None) }));
                continue;
            }
            let this = self.clone();
            let (client, remote, ctx, l, sem, mut applying) = (
                client.clone(),
                remote.clone(),
                ctx.clone(),
                l.clone(),
                sem.clone(),
                applying_rx.clone(),
            );
            handles.0.push(tokio::spawn(async move {
                {
                    let _permit = sem.acquire_owned().await;
                    this.fetch_blob(&client, &remote, &ctx, &l).await?;
                }
                // Waits only on earlier layers: no cycle.
                if applying
                    .wait_for(|&cur| cur + INFLATE_AHEAD >= i)
                    .await
                    .is_err()
                {
                    return Ok(None); // the pull was abandoned
                }
                let blob = this
                    .inner
                    .content
                    .path(&l.digest)
                    .map_err(|e| PullError::Invalid {
                        reference: ctx.reference.clone(),
                        message: e.to_string(),
                    })?;
                Ok(Some(Inflater::spawn(blob, this.inner.max_image_size)))
            }));
        }
        let mut parent: Option<String> = None;
        // What this pull writes, against the image's cap.
        let mut written = 0u64;
        for (i, l) in layers.iter().enumerate() {
            let _ = applying_tx.send(i);
            let handle = &mut handles.0[i];
            let inflater = match handle.await {
                Ok(r) => r?,
                Err(e) => return Err(storage(io::Error::other(format!("download task: {e}")))),
            };
            let chain = chains[i].clone();
            let chain_hex = digest_hex(&chain)
                .map_err(|e| invalid(e.to_string()))?
                .to_owned();
            let _guard = self.inner.locks.lock(&chain).await;
            let dest = snapshots.join(&chain_hex);
            if !dest.is_dir() {
                let inflater = match inflater {
                    Some(f) => f,
                    None => {
                        let blob = self
                            .inner
                            .content
                            .path(&l.digest)
                            .map_err(|e| invalid(e.to_string()))?;
                        Inflater::spawn(blob, self.inner.max_image_size)
                    }
                };
                let tmp = self
                    .inner
                    .dir
                    .join("tmp")
                    .join(format!("snap-{:016x}", rand::random::<u64>()));
                let parent_dir = parent.as_ref().map(|p| snapshots.join(p));
                let (want_diff, layer_digest) = (diff_ids[i].clone(), l.digest.clone());
                let reference = ctx.reference.clone();
                let started = Instant::now();
                let dest2 = dest.clone();
                let limit = self.inner.max_image_size;
                tokio::task::spawn_blocking(move || {
                    build_snapshot(&tmp, parent_dir.as_deref(), inflater, &want_diff, &dest2)
                        .map_err(|source| PullError::Unpack {
                            reference,
                            layer: layer_digest,
                            source,
                        })
                })
                .await
                .map_err(|e| storage(io::Error::other(format!("unpack task: {e}"))))?
                .and_then(|applied| {
                    tracing::info!(
                        layer = %l.digest,
                        entries = applied.entries,
                        bytes = applied.bytes,
                        whiteouts = applied.whiteouts,
                        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "layer unpacked"
                    );
                    written += applied.bytes;
                    if written > limit {
                        return Err(PullError::Unpack {
                            reference: ctx.reference.clone(),
                            layer: l.digest.clone(),
                            source: crate::UnpackError::TooLarge(format!(
                                "the image expands past the {} MiB cap (max_image_size)",
                                limit >> 20
                            )),
                        });
                    }
                    Ok(())
                })?;
            }
            parent = Some(chain_hex);
        }

        let user = config
            .config()
            .as_ref()
            .and_then(|c| c.user().clone())
            .unwrap_or_default();
        let repo = format!("{}/{}", parsed.registry(), parsed.repository());
        let image = Image {
            id: config_digest.clone(),
            repo_tags: parsed
                .tag()
                .filter(|_| parsed.digest().is_none())
                .map(|t| vec![format!("{repo}:{t}")])
                .unwrap_or_default(),
            repo_digests: vec![format!("{repo}@{top_digest}")],
            size: config_desc.size() + layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>(),
            manifest: manifest_digest,
            index: index_digest,
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            chain_ids: chains,
            user,
            updated: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        };
        self.commit(image).map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_over_the_limit_are_refused() {
        let invalid = |message: String| PullError::Invalid {
            reference: "r".into(),
            message,
        };
        let limit = super::super::blob::MAX_METADATA as usize;
        assert!(check_metadata_size(&vec![b' '; limit], &invalid).is_ok());
        let err = check_metadata_size(&vec![b' '; limit + 1], &invalid).unwrap_err();
        assert!(err.to_string().contains("over the 8 MiB limit"), "{err}");
    }
}
