//! A real OCI registry (Debian's `docker-registry`, the CNCF distribution
//! registry) on 127.0.0.1, and images built here and pushed to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process with its own storage, stopped on drop.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn bcrypt_line(user: &str, password: &str) -> anyhow::Result<String> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("run htpasswd (apache2-utils)")?;
    if !out.status.success() {
        bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

impl Registry {
    /// Starts a registry; with `auth`, it requires that user and password (htpasswd).
    pub async fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_with(auth, false).await
    }

    /// The CA certificate a TLS registry's certificate is signed by (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Starts a registry, over HTTPS with a certificate for 127.0.0.1
    /// from a test CA if `tls` (see [`Registry::cert_path`]).
    pub async fn start_with(auth: Option<(&str, &str)>, tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("frakti-registry-")
            .tempdir()?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = auth {
            std::fs::write(dir.path().join("htpasswd"), bcrypt_line(u, p)? + "\n")?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: frakti-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if tls {
            // A CA and a leaf certificate for 127.0.0.1 signed by it.
            let p = |n: &str| dir.path().join(n).display().to_string();
            std::fs::write(
                dir.path().join("ext.cnf"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
            )?;
            let steps: [Vec<String>; 3] = [
                vec![
                    "req".into(),
                    "-x509".into(),
                    "-newkey".into(),
                    "rsa:2048".into(),
                    "-nodes".into(),
                    "-days".into(),
                    "2".into(),
                    "-subj".into(),
                    "/CN=frakti-test-ca".into(),
                    "-keyout".into(),
                    p("ca.key"),
                    "-out".into(),
                    p("ca.pem"),
                ],
                vec![
                    "req".into(),
                    "-newkey".into(),
                    "rsa:2048".into(),
                    "-nodes".into(),
                    "-subj".into(),
                    "/CN=127.0.0.1".into(),
                    "-keyout".into(),
                    p("key.pem"),
                    "-out".into(),
                    p("req.csr"),
                ],
                vec![
                    "x509".into(),
                    "-req".into(),
                    "-in".into(),
                    p("req.csr"),
                    "-CA".into(),
                    p("ca.pem"),
                    "-CAkey".into(),
                    p("ca.key"),
                    "-CAcreateserial".into(),
                    "-days".into(),
                    "2".into(),
                    "-extfile".into(),
                    p("ext.cnf"),
                    "-out".into(),
                    p("cert.pem"),
                ],
            ];
            for args in steps {
                let out = Command::new("openssl")
                    .args(&args)
                    .output()
                    .context("run openssl")?;
                if !out.status.success() {
                    bail!("openssl failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {REGISTRY_BIN} (Debian package docker-registry)"))?;
        let mut reg = Self {
            dir,
            child,
            host,
            scheme: if tls { "https" } else { "http" },
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            http: reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reg
                .http
                .get(format!("{}://{}/v2/", reg.scheme, reg.host))
                .send()
                .await
                && (r.status().is_success() || r.status() == 401)
            {
                return Ok(reg);
            }
            if let Some(status) = reg.child.try_wait()? {
                bail!("registry exited with {status}: {}", reg.log());
            }
            if Instant::now() > deadline {
                bail!("registry did not answer within 20 s: {}", reg.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The registry's log.
    pub fn log(&mut self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn req(&self, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob to `repo` (monolithic upload).
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let start = self
            .req(
                reqwest::Method::POST,
                &format!("{}://{}/v2/{repo}/blobs/uploads/", self.scheme, self.host),
            )
            .send()
            .await?;
        if start.status() != 202 {
            bail!("start upload: HTTP {}", start.status());
        }
        let loc = start
            .headers()
            .get("location")
            .context("no upload location")?
            .to_str()?
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}://{}{loc}", self.scheme, self.host)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await?;
        if put.status() != 201 {
            bail!("upload blob: HTTP {}: {}", put.status(), put.text().await?);
        }
        Ok(digest)
    }

    /// Uploads a manifest (or index) under `reference` (tag or digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> anyhow::Result<String> {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!(
                    "{}://{}/v2/{repo}/manifests/{reference}",
                    self.scheme, self.host
                ),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await?;
        if r.status() != 201 {
            bail!("push manifest: HTTP {}: {}", r.status(), r.text().await?);
        }
        Ok(sha256(body))
    }

    /// Pushes `image` as `repo:tag`; returns the manifest digest.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        image: &TestImage,
    ) -> anyhow::Result<String> {
        for l in &image.layers {
            self.push_blob(repo, &l.blob).await?;
        }
        self.push_blob(repo, &image.config).await?;
        self.push_manifest(repo, tag, OCI_MANIFEST, &image.manifest())
            .await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex_encode(&Sha256::digest(data)))
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer: compressed blob, media type, diff ID.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The blob as pushed.
    pub blob: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// Entries of a layer tar.
#[derive(Debug, Default)]
pub struct LayerBuilder(Vec<(String, Kind)>);

#[derive(Debug)]
enum Kind {
    File(Vec<u8>, u32),
    Dir,
    Symlink(String),
    Device(tar::EntryType, u32, u32),
}

impl LayerBuilder {
    /// A regular file.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        self.0.push((path.into(), Kind::File(data.to_vec(), mode)));
        self
    }
    /// A directory.
    pub fn dir(mut self, path: &str) -> Self {
        self.0.push((path.into(), Kind::Dir));
        self
    }
    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.0.push((path.into(), Kind::Symlink(target.into())));
        self
    }
    /// A device node or FIFO (`kind` Char, Block or Fifo).
    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        self.0.push((path.into(), Kind::Device(kind, major, minor)));
        self
    }
    /// A whiteout of `path`.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }
    /// Marks `dir` opaque.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in &self.0 {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match kind {
                Kind::File(data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, &data[..]).expect("tar file");
                }
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).expect("tar dir");
                }
                Kind::Device(kind, major, minor) => {
                    h.set_entry_type(*kind);
                    h.set_mode(0o600);
                    h.set_size(0);
                    h.set_device_major(*major).expect("tar device");
                    h.set_device_minor(*minor).expect("tar device");
                    b.append_data(&mut h, path, &[][..]).expect("tar device");
                }
                Kind::Symlink(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, t).expect("tar symlink");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    /// The layer, compressed.
    pub fn build(&self, c: Compression) -> Layer {
        let tar = self.tar();
        let diff_id = sha256(&tar);
        let (blob, media_type) = match c {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).expect("gzip");
                (
                    e.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            blob,
            media_type: media_type.into(),
            diff_id,
        }
    }
}

/// The busybox-static base layer: `/bin/busybox` plus a few applet links.
pub fn busybox_layer() -> LayerBuilder {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian busybox-static)");
    let mut l = LayerBuilder::default()
        .dir("bin")
        .file("bin/busybox", &busybox, 0o755)
        .dir("etc")
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
            0o644,
        )
        .dir("tmp");
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        l = l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l
}

/// An image: layers, config, manifest.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Layers, base first.
    pub layers: Vec<Layer>,
    /// The config blob.
    pub config: Vec<u8>,
}

impl TestImage {
    /// An image of `layers` for `arch` with config `User` = `user`.
    pub fn new(layers: Vec<Layer>, user: &str, arch: &str) -> Self {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"User": user, "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        Self {
            layers,
            config: serde_json::to_vec(&config).expect("json"),
        }
    }

    /// The image ID (config digest).
    pub fn id(&self) -> String {
        sha256(&self.config)
    }

    /// The OCI manifest.
    pub fn manifest(&self) -> Vec<u8> {
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({"mediaType": l.media_type, "digest": sha256(&l.blob), "size": l.blob.len()})
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.id(), "size": self.config.len()},
            "layers": layers,
        });
        serde_json::to_vec(&m).expect("json")
    }
}

/// An OCI index over (manifest digest, size, arch).
pub fn index(entries: &[(String, usize, &str)]) -> Vec<u8> {
    let manifests: Vec<_> = entries
        .iter()
        .map(|(d, size, arch)| {
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size,
                "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .expect("json")
}

/// Writes `hosts.toml` for `host` in `dir` mapping it to `mirror` (plain HTTP).
pub fn write_mirror(dir: &Path, host: &str, mirror: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join(host))?;
    std::fs::write(
        dir.join(host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(())
}
