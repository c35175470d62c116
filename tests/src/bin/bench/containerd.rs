//! Debian's containerd + runc beside frakti: installed with apt when
//! missing, run with a root, state, socket, config and CNI network of its
//! own, and stopped at the end (its pods removed first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cri::proto;
use e2e::registry::Registry;

/// The CNI network containerd's pods get (not frakti's `frakti0`).
const BRIDGE: &str = "ctrbench0";
const SUBNET: &str = "10.99.0.0/16";
const NETWORK: &str = "frakti-bench-containerd";

/// A running containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its version line.
    pub version: String,
}

/// Installs containerd and runc from the distribution when missing.
fn install() -> anyhow::Result<()> {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("containerd") && have("runc") && have("containerd-shim-runc-v2") {
        return Ok(());
    }
    eprintln!("installing containerd and runc (apt) for the side-by-side figures");
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "containerd",
            "runc",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("run apt-get")?;
    if !status.success() {
        bail!("apt-get install containerd runc failed: {status}");
    }
    Ok(())
}

/// Pushes a pause image (busybox sleeping forever) to `registry`.
pub async fn push_pause(registry: &Registry) -> anyhow::Result<String> {
    let mut image = e2e::workload::box_image();
    let mut config: serde_json::Value = serde_json::from_slice(&image.config)?;
    config["config"]["Entrypoint"] = serde_json::json!(["/bin/sleep", "2147483647"]);
    config["config"]["Cmd"] = serde_json::Value::Null;
    image.config = serde_json::to_vec(&config)?;
    registry.push_image("bench/pause", "1", &image).await?;
    Ok(format!("{}/bench/pause:1", registry.host))
}

impl Containerd {
    /// Starts containerd pulling from the plain-HTTP `registry`, its pods
    /// sandboxed by `pause_image`.
    pub async fn start(registry: &str, pause_image: &str) -> anyhow::Result<Self> {
        install()?;
        let dir = tempfile::Builder::new()
            .prefix("frakti-bench-containerd-")
            .tempdir()?;
        let d = dir.path();
        let hosts = d.join("certs.d").join(registry);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        std::fs::create_dir_all(d.join("net.d"))?;
        std::fs::write(
            d.join("net.d").join("10-bench.conflist"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "plugins": [
                    {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": true,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            }))?,
        )?;
        let p = |name: &str| d.join(name).display().to_string();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # A host without CAP_SYS_RESOURCE (a container) cannot lower a score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
            root = p("root"),
            state = p("state"),
            socket = p("containerd.sock"),
            net = p("net.d"),
            certs = p("certs.d"),
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let version = Command::new("containerd")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut me = Self {
            dir,
            child: Some(child),
            version,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = me.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("containerd exited with {status}: {}", me.log());
            }
            if let Ok(mut c) = me.runtime().await
                && c.version(proto::VersionRequest {
                    version: "v1".into(),
                })
                .await
                .is_ok()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s: {}", me.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Its CRI RuntimeService.
    pub async fn runtime(
        &self,
    ) -> anyhow::Result<
        proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    > {
        Ok(proto::runtime_service_client::RuntimeServiceClient::new(
            e2e::channel(&self.socket()).await?,
        ))
    }

    /// Its CRI ImageService.
    pub async fn images(
        &self,
    ) -> anyhow::Result<proto::image_service_client::ImageServiceClient<tonic::transport::Channel>>
    {
        Ok(proto::image_service_client::ImageServiceClient::new(
            e2e::channel(&self.socket()).await?,
        ))
    }

    /// Removes its pods, stops it, and removes its mounts, bridge and files.
    pub async fn stop(mut self) {
        if let Ok(mut c) = self.runtime().await
            && let Ok(pods) = c
                .list_pod_sandbox(proto::ListPodSandboxRequest::default())
                .await
        {
            for pod in pods.into_inner().items {
                let _ = c
                    .stop_pod_sandbox(proto::StopPodSandboxRequest {
                        pod_sandbox_id: pod.id.clone(),
                    })
                    .await;
                let _ = c
                    .remove_pod_sandbox(proto::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    })
                    .await;
            }
        }
        self.kill();
    }

    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the containerd this bench spawned and holds unreaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Detaches every mount under `dir` (containerd's snapshots, shm), deepest first.
fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
