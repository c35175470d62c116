//! Talking to registries: one client per endpoint and credentials, and the
//! choice of endpoint for a pull (mirrors in order, then upstream, falling
//! through on errors another endpoint may not have).

use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::{PullError, parse_reference};
use crate::hosts::{Endpoint, Scheme};
use crate::{Credentials, Image, ImageStore, lock};

/// Registry clients kept (one per endpoint and credentials).
const MAX_CLIENTS: usize = 64;

pub(super) fn auth(c: &Credentials) -> RegistryAuth {
    match c {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
    }
}

impl ImageStore {
    /// A client for `ep` used with `creds` only: the registry client keeps
    /// the first credentials (and tokens) it authenticated with.
    pub(super) fn client(&self, ep: &Endpoint, creds: &Credentials) -> oci_client::Client {
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
        let pulled = self.pull_from_endpoints(reference, creds, started).await;
        let outcome = match pulled {
            Ok(_) => telemetry::PullOutcome::Pulled,
            Err(_) => telemetry::PullOutcome::Failed,
        };
        if matches!(pulled, Err(PullError::Unpack { .. })) {
            // A refused image leaves nothing: its blobs and snapshots go now
            // (those of other images and of pulls in flight stay).
            self.collect_garbage_logged("image refused").await;
        }
        telemetry::global().record_pull(outcome, started.elapsed());
        pulled
    }

    /// Tries the endpoints of `reference`'s registry in their order.
    async fn pull_from_endpoints(
        &self,
        reference: &str,
        creds: &Credentials,
        started: Instant,
    ) -> Result<Image, PullError> {
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
}
