//! Registry hosts configuration in containerd's layout: `<dir>/<host>/hosts.toml`
//! (or `<dir>/_default/hosts.toml`) lists the endpoints to try for a registry,
//! in order, before its `server` (default: the registry itself over HTTPS).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Scheme of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TLS.
    Https,
    /// Plain HTTP (only where configured, and for loopback hosts).
    Http,
}

/// One place to fetch a registry's content from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// May resolve tags to digests.
    pub resolve: bool,
    /// May serve manifests and blobs by digest.
    pub pull: bool,
    /// Skip TLS verification.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
}

impl Endpoint {
    /// `scheme://host`.
    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        format!("{scheme}://{}", self.host)
    }
}

/// A hosts.toml file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file cannot be read
    #[error("cannot read registry hosts file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not valid
    #[error("invalid registry hosts file {0}: {1}")]
    Parse(PathBuf, String),
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    #[serde(default)]
    host: BTreeMap<String, HostEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    /// Kept for containerd compatibility; the path is always `/v2/<repo>`.
    #[allow(dead_code)]
    override_path: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            Self::One(s) => vec![s.into()],
            Self::Many(v) => v.into_iter().map(PathBuf::from).collect(),
        }
    }
}

/// Whether `host` (with or without port) is a loopback name, where plain
/// HTTP is used without configuration.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

fn parse_url(url: &str, file: &Path) -> Result<(Scheme, String), HostsError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        (Scheme::Https, url)
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    if host.is_empty() || !(path.is_empty() || path == "v2") {
        return Err(HostsError::Parse(
            file.into(),
            format!(
                "{url:?}: expected scheme://host[:port] (a path other than /v2 is not supported)"
            ),
        ));
    }
    Ok((scheme, host.to_owned()))
}

fn capabilities(caps: Option<&Vec<String>>) -> (bool, bool) {
    match caps {
        None => (true, true),
        Some(c) => (
            c.iter().any(|c| c == "resolve"),
            c.iter().any(|c| c == "pull"),
        ),
    }
}

/// The registry hosts directory.
#[derive(Debug, Clone)]
pub struct Hosts {
    dir: Option<PathBuf>,
}

impl Hosts {
    /// Reads configuration from `dir` (which may not exist: then every
    /// registry is reached directly).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The endpoints to try for `registry`, in order. Read on every call, so
    /// edits apply to the next pull without a restart.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
        let default_server = |host: &str| Endpoint {
            scheme: if is_loopback(host) {
                Scheme::Http
            } else {
                Scheme::Https
            },
            host: if host == "docker.io" {
                "registry-1.docker.io".to_owned()
            } else {
                host.to_owned()
            },
            resolve: true,
            pull: true,
            skip_verify: false,
            ca: Vec::new(),
        };
        let Some(dir) = &self.dir else {
            return Ok(vec![default_server(registry)]);
        };
        let file = [
            dir.join(registry.replace(':', "_")).join("hosts.toml"),
            dir.join(registry).join("hosts.toml"),
            dir.join("_default").join("hosts.toml"),
        ]
        .into_iter()
        .find(|p| p.is_file());
        let Some(file) = file else {
            return Ok(vec![default_server(registry)]);
        };
        let text = std::fs::read_to_string(&file).map_err(|e| HostsError::Read(file.clone(), e))?;
        let parsed: HostsFile =
            toml::from_str(&text).map_err(|e| HostsError::Parse(file.clone(), e.to_string()))?;
        let mut out = Vec::new();
        for (url, entry) in &parsed.host {
            let (scheme, host) = parse_url(url, &file)?;
            let (resolve, pull) = capabilities(entry.capabilities.as_ref());
            out.push(Endpoint {
                scheme,
                host,
                resolve,
                pull,
                skip_verify: entry.skip_verify.unwrap_or(false),
                ca: entry.ca.as_ref().map_or_else(Vec::new, |c| match c {
                    OneOrMany::One(s) => vec![s.into()],
                    OneOrMany::Many(v) => v.iter().map(PathBuf::from).collect(),
                }),
            });
        }
        // TOML tables carry no order; keep the file's order of [host."…"] sections.
        out.sort_by_key(|e| {
            text.find(&format!("\"{}", e.url()))
                .or_else(|| text.find(&e.host))
                .unwrap_or(usize::MAX)
        });
        let server = match &parsed.server {
            Some(url) => {
                let (scheme, host) = parse_url(url, &file)?;
                let (resolve, pull) = capabilities(parsed.capabilities.as_ref());
                Endpoint {
                    scheme,
                    host,
                    resolve,
                    pull,
                    skip_verify: parsed.skip_verify.unwrap_or(false),
                    ca: parsed.ca.map(OneOrMany::into_vec).unwrap_or_default(),
                }
            }
            None => default_server(registry),
        };
        if !out.contains(&server) {
            out.push(server);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_the_host_itself() {
        let hosts = Hosts::new(Some("/nonexistent".into()));
        let e = hosts.endpoints("gcr.io").unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].url(), "https://gcr.io");
        assert_eq!(
            hosts.endpoints("docker.io").unwrap()[0].host,
            "registry-1.docker.io"
        );
        assert_eq!(
            hosts.endpoints("127.0.0.1:5000").unwrap()[0].url(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            hosts.endpoints("localhost").unwrap()[0].scheme,
            Scheme::Http
        );
        assert!(!is_loopback("example.com:5000"));
    }

    #[test]
    fn mirrors_in_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("registry.k8s.io")).unwrap();
        std::fs::write(
            dir.path().join("registry.k8s.io/hosts.toml"),
            r#"server = "https://registry.k8s.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://a-mirror.example:8443/v2"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/etc/ssl/mirror.pem"]
"#,
        )
        .unwrap();
        let hosts = Hosts::new(Some(dir.path().into()));
        let e = hosts.endpoints("registry.k8s.io").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].url(), "http://127.0.0.1:5000");
        assert!(e[0].resolve && e[0].pull);
        assert_eq!(e[1].url(), "https://a-mirror.example:8443");
        assert!(!e[1].resolve && e[1].pull && e[1].skip_verify);
        assert_eq!(e[1].ca, vec![PathBuf::from("/etc/ssl/mirror.pem")]);
        assert_eq!(e[2].url(), "https://registry.k8s.io");
        // Other hosts are untouched.
        assert_eq!(
            hosts.endpoints("gcr.io").unwrap()[0].url(),
            "https://gcr.io"
        );
    }

    #[test]
    fn default_file_and_port_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\"]\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("reg.example:8443")).unwrap();
        std::fs::write(
            dir.path().join("reg.example:8443/hosts.toml"),
            "server = \"https://reg.example:8443\"\nskip_verify = true\n",
        )
        .unwrap();
        let hosts = Hosts::new(Some(dir.path().into()));
        let e = hosts.endpoints("quay.io").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].url(), "http://127.0.0.1:5000");
        assert!(e[0].pull && !e[0].resolve);
        assert_eq!(e[1].url(), "https://quay.io");
        let e = hosts.endpoints("reg.example:8443").unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].skip_verify);
    }

    #[test]
    fn bad_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gcr.io")).unwrap();
        std::fs::write(dir.path().join("gcr.io/hosts.toml"), "server = [").unwrap();
        let err = Hosts::new(Some(dir.path().into()))
            .endpoints("gcr.io")
            .unwrap_err();
        assert!(err.to_string().contains("gcr.io/hosts.toml"), "{err}");
    }
}
