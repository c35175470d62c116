//! Pulling: reference normalisation, endpoint selection (mirrors), manifest
//! and platform resolution, verified blob download, layer unpacking.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use crate::hosts::{Endpoint, HostsError, Scheme};
use crate::store::{digest_hex, sha256_digest};
use crate::unpack::{Applied, UnpackError, apply_layer};
use crate::{Credentials, Image, ImageStore, lock};

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Largest manifest or config accepted.
const MAX_METADATA: u64 = 8 << 20;
/// Layers downloaded at once per pull.
const PARALLEL_DOWNLOADS: usize = 3;
/// Layers decompressed ahead of the one being applied.
const INFLATE_AHEAD: usize = 1;
/// Decompressed chunk size and how many are queued per layer.
const INFLATE_CHUNK: usize = 256 << 10;
const INFLATE_QUEUE: usize = 32;
/// Registry clients kept (one per endpoint and credentials).
const MAX_CLIENTS: usize = 64;
/// How often download progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// An image could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image reference is not valid
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry hosts configuration is unusable
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// The image or one of its blobs does not exist in the registry
    #[error("not found: {reference} at registry {registry}: {message}")]
    NotFound {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// The registry refused the credentials (or wants some)
    #[error(
        "registry {registry} refused authentication for {reference} (HTTP {status}): {message}"
    )]
    Unauthenticated {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// HTTP status.
        status: u16,
        /// The registry's message.
        message: String,
    },
    /// The registry denied access
    #[error("registry {registry} denied access to {reference} (HTTP 403): {message}")]
    PermissionDenied {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The registry's message.
        message: String,
    },
    /// The registry cannot be reached
    #[error("registry {registry} unreachable while pulling {reference}: {message}")]
    Unreachable {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The transport error.
        message: String,
    },
    /// The registry answered with an error
    #[error("registry {registry} failed for {reference}{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Registry {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// HTTP status, if known.
        status: Option<u16>,
        /// The registry's message.
        message: String,
    },
    /// Downloaded content does not match its digest
    #[error(
        "content of {reference} from {registry} does not match digest {expected} (got {actual}); nothing was stored"
    )]
    DigestMismatch {
        /// Endpoint URL.
        registry: String,
        /// Normalised reference.
        reference: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The image has no manifest for this platform
    #[error("image {reference} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        /// Normalised reference.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms in the index.
        available: String,
    },
    /// A manifest or config is not valid
    #[error("invalid image {reference}: {message}")]
    Invalid {
        /// Normalised reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A layer could not be unpacked
    #[error("cannot unpack layer {layer} of {reference}: {source}")]
    Unpack {
        /// Normalised reference.
        reference: String,
        /// Layer digest.
        layer: String,
        /// Why.
        source: UnpackError,
    },
    /// Local storage failed
    #[error("cannot store content of {reference}: {source}")]
    Storage {
        /// Normalised reference.
        reference: String,
        /// The I/O error.
        source: io::Error,
    },
}

impl PullError {
    /// Appends `note` to the registry's message (for earlier endpoints' failures).
    fn with_note(mut self, note: &str) -> Self {
        match &mut self {
            Self::NotFound { message, .. }
            | Self::Unauthenticated { message, .. }
            | Self::PermissionDenied { message, .. }
            | Self::Unreachable { message, .. }
            | Self::Registry { message, .. } => {
                message.push_str(note);
            }
            _ => {}
        }
        self
    }

    /// Whether another endpoint (mirror, then upstream) may do better.
    fn try_next_endpoint(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. }
                | Self::Unreachable { .. }
                | Self::Registry { .. }
                | Self::Unauthenticated { .. }
                | Self::PermissionDenied { .. }
        )
    }
}

/// The platform images are selected for: the host's.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    ("linux", arch)
}

/// Parses and normalises a reference like Docker does
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference, PullError> {
    let invalid = |reason: String| PullError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    let r = reference.trim();
    if r.is_empty() {
        return Err(invalid("empty".into()));
    }
    let parsed: Reference = r.parse().map_err(|e| invalid(format!("{e}")))?;
    if let Some(d) = parsed.digest() {
        digest_hex(d).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(parsed)
}

/// Context for errors: where and what.
#[derive(Debug, Clone)]
struct Ctx {
    registry: String,
    reference: String,
}

impl Ctx {
    fn classify(&self, e: OciDistributionError) -> PullError {
        let registry = self.registry.clone();
        let reference = self.reference.clone();
        let by_status = |status: u16, message: String| match status {
            401 => PullError::Unauthenticated {
                registry: registry.clone(),
                reference: reference.clone(),
                status,
                message,
            },
            403 => PullError::PermissionDenied {
                registry: registry.clone(),
                reference: reference.clone(),
                message,
            },
            404 => PullError::NotFound {
                registry: registry.clone(),
                reference: reference.clone(),
                message,
            },
            s => PullError::Registry {
                registry: registry.clone(),
                reference: reference.clone(),
                status: Some(s),
                message,
            },
        };
        match e {
            OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
            OciDistributionError::UnauthorizedError { url } => {
                by_status(401, format!("unauthorized at {url}"))
            }
            OciDistributionError::AuthenticationFailure(m) => {
                by_status(401, format!("token request failed: {}", m.trim()))
            }
            OciDistributionError::ImageManifestNotFoundError(m) => by_status(404, m),
            OciDistributionError::RegistryError { envelope, .. } => {
                let message = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let status = match envelope.errors.first().map(|e| &e.code) {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => 404,
                    Some(OciErrorCode::Unauthorized) => 401,
                    Some(OciErrorCode::Denied) => 403,
                    Some(OciErrorCode::Toomanyrequests) => 429,
                    _ => 400,
                };
                by_status(status, message)
            }
            OciDistributionError::DigestError(d) => match d {
                oci_client::errors::DigestError::VerificationError { expected, actual } => {
                    PullError::DigestMismatch {
                        registry,
                        reference,
                        expected,
                        actual,
                    }
                }
                other => PullError::Registry {
                    registry,
                    reference,
                    status: None,
                    message: other.to_string(),
                },
            },
            OciDistributionError::RequestError(r) => {
                let message = error_chain(&r);
                if r.is_connect() || r.is_timeout() || r.is_request() {
                    PullError::Unreachable {
                        registry,
                        reference,
                        message,
                    }
                } else {
                    match r.status() {
                        Some(s) => by_status(s.as_u16(), message),
                        None => PullError::Unreachable {
                            registry,
                            reference,
                            message,
                        },
                    }
                }
            }
            other => PullError::Registry {
                registry,
                reference,
                status: None,
                message: other.to_string(),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn auth(c: &Credentials) -> RegistryAuth {
    match c {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
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
struct Inflater {
    rx: std::sync::mpsc::Receiver<Chunk>,
    buf: Vec<u8>,
    pos: usize,
    diff_id: Option<String>,
}

impl Inflater {
    fn spawn(blob: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(INFLATE_QUEUE);
        std::thread::spawn(move || {
            let run = || -> io::Result<String> {
                let file = std::fs::File::open(&blob)?;
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
    let applied = apply_layer(root, &mut inflater)?;
    // The tar's end-of-archive padding counts towards the diff ID.
    io::copy(&mut inflater, &mut io::sink()).map_err(UnpackError::Archive)?;
    let diff = inflater
        .diff_id
        .ok_or_else(|| UnpackError::Archive(io::Error::other("layer stream ended early")))?;
    Ok((applied, diff))
}

fn chain_ids(diff_ids: &[String]) -> Vec<String> {
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
    /// A client for `ep` used with `creds` only: the registry client keeps
    /// the first credentials (and tokens) it authenticated with.
    fn client(&self, ep: &Endpoint, creds: &Credentials) -> oci_client::Client {
        let key = (ep.clone(), creds.clone());
        let mut clients = lock(&self.inner.clients);
        if let Some(c) = clients.get(&key) {
            return c.clone();
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let mut extra = Vec::new();
        for ca in &ep.ca {
            match std::fs::read(ca) {
                Ok(data) => extra.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                }),
                Err(e) => {
                    tracing::warn!(ca = %ca.display(), "cannot read CA for {}: {e}", ep.url())
                }
            }
        }
        let config = ClientConfig {
            protocol: match ep.scheme {
                Scheme::Http => ClientProtocol::Http,
                Scheme::Https => ClientProtocol::Https,
            },
            accept_invalid_certificates: ep.skip_verify,
            extra_root_certificates: extra,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("frakti/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let c = oci_client::Client::new(config);
        clients.insert(key, c.clone());
        c
    }

    /// Pulls `reference` with `creds` and returns the stored image. Concurrent
    /// pulls share blob downloads and layer unpacking; the deadline is the
    /// caller's (drop the future to abandon the pull: nothing partial stays).
    pub async fn pull(&self, reference: &str, creds: &Credentials) -> Result<Image, PullError> {
        let started = Instant::now();
        let parsed = parse_reference(reference)?;
        let name = parsed.whole();
        let endpoints = self.inner.hosts.endpoints(parsed.registry())?;
        let mut last: Option<PullError> = None;
        let mut earlier: Vec<String> = Vec::new();
        for ep in &endpoints {
            if parsed.digest().is_none() && !ep.resolve {
                continue;
            }
            if !ep.pull {
                continue;
            }
            match self.pull_from(ep, &parsed, creds).await {
                Ok(img) => {
                    tracing::info!(
                        image = %name,
                        id = %img.id,
                        registry = %ep.url(),
                        size = img.size,
                        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "image pulled"
                    );
                    return Ok(img);
                }
                Err(e) if e.try_next_endpoint() => {
                    tracing::warn!(image = %name, registry = %ep.url(), "pull failed, trying the next endpoint: {e}");
                    if let Some(prev) = last.take() {
                        earlier.push(prev.to_string());
                    }
                    last = Some(e);
                }
                Err(e) => {
                    tracing::warn!(image = %name, registry = %ep.url(), "pull failed: {e}");
                    return Err(e);
                }
            }
        }
        if let Some(e) = last {
            let note = if earlier.is_empty() {
                String::new()
            } else {
                format!(" (tried before: {})", earlier.join("; "))
            };
            return Err(e.with_note(&note));
        }
        Err(PullError::Unreachable {
            registry: parsed.registry().to_owned(),
            reference: name,
            message: "no endpoint in the hosts configuration may resolve or pull".into(),
        })
    }

    async fn pull_from(
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
                Ok(Some(Inflater::spawn(blob)))
            }));
        }
        let mut parent: Option<String> = None;
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
                        Inflater::spawn(blob)
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
                .map(|applied| {
                    tracing::info!(
                        layer = %l.digest,
                        entries = applied.entries,
                        bytes = applied.bytes,
                        whiteouts = applied.whiteouts,
                        secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                        "layer unpacked"
                    );
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

    /// Fetches a small blob (config) into memory and the store, verified.
    async fn fetch_small(
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
    async fn fetch_blob(
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

/// Builds a snapshot in `tmp` (a copy of `parent`, if any, plus the layer),
/// checks the layer's diff ID, and renames it to `dest`.
fn build_snapshot(
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
    fn normalises_like_docker() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let r = parse_reference("registry.k8s.io/pause:3.9").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("registry.k8s.io", "pause", Some("3.9"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("127.0.0.1:5000/x/y@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_reference("").is_err());
        assert!(parse_reference("library/Busybox").is_err());
        assert!(parse_reference("a@sha256:short").is_err());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }
}
