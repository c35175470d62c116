//! A real frakti daemon on a private socket, state and root, for tests and benchmarks.
//!
//! The end-to-end tests reach frakti only as kubelet does, through its CRI
//! socket (and the streaming URLs it returns), with the generated CRI
//! types of `cri::proto`; they use none of the daemon's internals.

pub mod registry;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cri::proto::image_service_client::ImageServiceClient;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use cri::proto::{self, PodSandboxConfig, PodSandboxMetadata};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A shell script that prints the terminal's size (`stty size`) once it has
/// one, waiting up to 10 s: a client sends its first size on the resize
/// stream, which may reach the terminal after the command started (as with
/// runc), and until then busybox's `stty size` fails.
pub const PRINT_TERMINAL_SIZE: &str = "i=0; while ! stty size 2>/dev/null | grep -qv '^0 0$' && [ $i -lt 100 ]; \
     do i=$((i+1)); sleep 0.1; done; stty size";

/// A TCP port on 127.0.0.1 that nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// GETs `/metrics` from the endpoint at `address`: its content type and text.
pub async fn scrape(address: &str) -> anyhow::Result<(String, String)> {
    let response = reqwest::get(format!("http://{address}/metrics")).await?;
    if !response.status().is_success() {
        bail!("GET /metrics: {}", response.status());
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((content_type, response.text().await?))
}

/// The value of the first sample `name` in the metrics `text` whose labels
/// include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let has = |(k, v): &(&str, &str)| {
                series_labels
                    .split("\",")
                    .any(|pair| pair.trim_end_matches('"') == format!("{k}=\"{v}"))
            };
            (series_name == name && labels.iter().all(has)).then(|| value.parse().ok())?
        })
}

/// Waits (at most `limit`) until the default handler's warm pool on the
/// metrics endpoint `metrics` has `want` VMs ready.
pub async fn wait_pool_ready(metrics: &str, want: f64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, text) = scrape(metrics).await?;
        let ready = sample(&text, "frakti_vm_pool_ready", &[("handler", "frakti")]);
        if ready == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the warm pool did not reach {want} ready VMs within {limit:?}: {ready:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The daemon binary: `$FRAKTI_BIN`, else `target/release/frakti`.
pub fn frakti_bin() -> PathBuf {
    std::env::var_os("FRAKTI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/frakti"))
}

/// The guest assets: `$FRAKTI_GUEST_DIR`, else `target/guest`.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("FRAKTI_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest"))
}

/// A frakti daemon process with its own directories.
#[derive(Debug)]
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon with `extra` flags (e.g. `--accel tcg`) and waits until it answers.
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_root(None, extra).await
    }

    /// Like [`Daemon::start`], with `--root` at `root` if given (instead of
    /// the daemon's own directory).
    pub async fn start_with_root(root: Option<&Path>, extra: &[&str]) -> anyhow::Result<Self> {
        let guest = guest_dir();
        let guest_flags = [
            "--guest-kernel".into(),
            guest.join("vmlinux").display().to_string(),
            "--guest-initrd".into(),
            guest.join("initramfs.img").display().to_string(),
            "--guest-modules".into(),
            guest.join("modules.img").display().to_string(),
        ];
        Self::launch(frakti_bin(), root, &guest_flags, extra).await
    }

    /// Starts the frakti binary `bin` (e.g. an installed one) with the
    /// harness's directories and `extra`, but none of its guest flags: the
    /// binary finds its guest assets itself.
    pub async fn start_bin(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::launch(bin.to_path_buf(), None, &[], extra).await
    }

    async fn launch(
        bin: PathBuf,
        root: Option<&Path>,
        guest_flags: &[String],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("frakti-e2e-").tempdir()?;
        let root = root.map_or_else(|| dir.path().join("root"), Path::to_path_buf);
        let mut args: Vec<String> = vec![
            "--listen".into(),
            dir.path().join("frakti.sock").display().to_string(),
            "--root".into(),
            root.display().to_string(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            // An empty CNI directory: the embedded default network.
            "--cni-conf-dir".into(),
            dir.path().join("net.d").display().to_string(),
        ];
        // Small pods, unless the test asks for a size.
        if !extra.contains(&"--memory") {
            args.extend(["--memory".into(), "256".into()]);
        }
        // FRAKTI_E2E_LOG_LEVEL=debug: a daemon that says more, its log
        // printed when it goes.
        if let Ok(level) = std::env::var("FRAKTI_E2E_LOG_LEVEL") {
            args.extend(["--log-level".into(), level]);
        }
        // No VMs booted ahead (each costs a TCG boot), unless the test asks.
        if !extra.contains(&"--vm-pool") {
            args.extend(["--vm-pool".into(), "0".into()]);
        }
        args.extend(guest_flags.iter().cloned());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut daemon = Self {
            dir,
            child: None,
            bin,
            args,
        };
        daemon.spawn().await?;
        Ok(daemon)
    }

    /// The CRI socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("frakti.sock")
    }

    /// The daemon's private top directory.
    pub fn dir_path(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The daemon's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("frakti.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("frakti exited with {status}: {}", self.log());
            }
            if let Ok(mut c) = self.runtime().await
                && c.version(proto::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("frakti did not answer within 30 s: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A channel to the daemon's socket.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        channel(&self.socket()).await
    }

    /// A RuntimeService client.
    pub async fn runtime(&self) -> anyhow::Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    /// An ImageService client.
    pub async fn images(&self) -> anyhow::Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(self.channel().await?))
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn kill(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap_or(0);
            // SAFETY: kill(2) with a pid we spawned and still hold unreaped.
            unsafe { libc::kill(pid, signal) };
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same directories and flags.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill(libc::SIGTERM);
        self.spawn().await
    }
}

impl Daemon {
    /// Stops and removes every pod through the CRI, so that a failed test
    /// leaves no namespace, CNI allocation or VM behind.
    fn remove_all_pods(&self) {
        let socket = self.socket();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut c = connect(&socket).await.ok()?;
                let pods = c
                    .list_pod_sandbox(proto::ListPodSandboxRequest::default())
                    .await
                    .ok()?;
                for pod in pods.into_inner().items {
                    let req = proto::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    };
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), c.remove_pod_sandbox(req))
                            .await;
                }
                Some(())
            });
        });
        let _ = worker.join();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all_pods();
        }
        // A daemon that keeps VMs booted ahead discards them when it stops.
        let pool = self
            .args
            .windows(2)
            .any(|w| w[0] == "--vm-pool" && w[1] != "0");
        if pool {
            self.kill(libc::SIGTERM);
        }
        self.kill(libc::SIGKILL);
        // Never leave VMs behind: kill every QEMU whose files are in our state dir.
        let state = self.state_dir().display().to_string();
        for pid in pids_with_arg(&state) {
            // SAFETY: kill(2) on a QEMU process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::env::var_os("FRAKTI_E2E_LOG_LEVEL").is_some() {
            eprintln!(
                "--- frakti log ({}) ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// A tmpfs a test mounted, unmounted when dropped (also on a panic).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs (of `size_mib`, or the default size) at `at`, made if missing.
    pub fn mount(at: &Path, size_mib: Option<u64>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(at)?;
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs"]);
        if let Some(mib) = size_mib {
            cmd.args(["-o", &format!("size={mib}m")]);
        }
        let status = cmd.arg("frakti-e2e-tmpfs").arg(at).status()?;
        if !status.success() {
            bail!("mount a tmpfs on {}: {status}", at.display());
        }
        Ok(Self(at.to_path_buf()))
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A channel to the CRI socket at `path`.
pub async fn channel(path: &Path) -> anyhow::Result<Channel> {
    let path = path.to_path_buf();
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(channel)
}

async fn connect(path: &Path) -> anyhow::Result<RuntimeServiceClient<Channel>> {
    Ok(RuntimeServiceClient::new(channel(path).await?))
}

/// Pids of processes with an argument containing `needle`.
pub fn pids_with_arg(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn process_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != Some('Z'))
}

/// A pod config with `name` (uid and hostname derived from it) and `labels`.
pub fn pod_config(name: &str, labels: &[(&str, &str)]) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        ..Default::default()
    }
}

/// Runs a pod and returns its id.
pub async fn run_pod(
    client: &mut RuntimeServiceClient<Channel>,
    config: PodSandboxConfig,
) -> Result<String, tonic::Status> {
    let req = proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    };
    Ok(client
        .run_pod_sandbox(req)
        .await?
        .into_inner()
        .pod_sandbox_id)
}

/// Verbose status: the record and the parsed `info` JSON.
pub async fn pod_status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<(proto::PodSandboxStatus, serde_json::Value), tonic::Status> {
    let req = proto::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    };
    let resp = client.pod_sandbox_status(req).await?.into_inner();
    let info = resp
        .info
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((resp.status.unwrap_or_default(), info))
}

/// The QEMU pid from verbose info.
pub fn vm_pid(info: &serde_json::Value) -> i32 {
    info["vm"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(0)
}

/// The uids pod VMs run as: the subordinate range of `frakti-vm` in `/etc/subuid`.
pub fn vm_uids() -> std::ops::Range<u32> {
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    subuid
        .lines()
        .find_map(|l| {
            let mut f = l.strip_prefix("frakti-vm:")?.split(':');
            let first: u32 = f.next()?.parse().ok()?;
            let count: u32 = f.next()?.parse().ok()?;
            Some(first..first + count)
        })
        .expect("frakti-vm has subordinate uids (scripts/deps.sh)")
}

/// The primary gid of `frakti-vm`, the user pod VMs run as.
pub fn vm_user_gid() -> u32 {
    nix::unistd::User::from_name("frakti-vm")
        .ok()
        .flatten()
        .expect("the user frakti-vm (scripts/deps.sh)")
        .gid
        .as_raw()
}

/// The effective uid of process `pid`.
pub fn process_uid(pid: i32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}
