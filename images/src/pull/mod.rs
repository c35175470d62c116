//! Pulling: reference normalisation, endpoint selection (mirrors), manifest
//! and platform resolution, verified blob download, layer unpacking.
//!
//! By concern: `error` (what can fail), `registry` (clients and the choice
//! of endpoint), `image` (one endpoint: manifest, config, layer pipeline,
//! image record), `blob` (verified downloads), `layers` (decompression,
//! diff IDs and snapshots).

mod blob;
mod error;
mod image;
mod layers;
mod registry;

use oci_client::Reference;

pub use blob::free_bytes;
pub use error::PullError;

use crate::store::digest_hex;

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
}
