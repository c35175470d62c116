//! A test image with every busybox applet, and helpers to run containers in
//! pods through the CRI socket.

use std::time::{Duration, Instant};

use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::registry::{Compression, Registry, TestImage, busybox_layer};

/// busybox with every applet linked, a user `web` (1000:1000, also in group
/// `staff`), and a config that sets Entrypoint `sh -c`, Cmd, Env and WorkingDir.
pub fn box_image() -> TestImage {
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut base = busybox_layer()
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/work:/bin/sh\n",
            0o644,
        )
        .file(
            "etc/group",
            b"root:x:0:\nweb:x:1000:\nstaff:x:50:web\n",
            0o644,
        )
        .dir("work")
        .dir("proc")
        .dir("sys")
        .dir("dev")
        .dir("root");
    base = base.file("bin/euid", euid_binary(), 0o4755);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !["sh", "ls", "cat", "echo", "true", "busybox"].contains(&applet) {
            base = base.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    let layer = base.build(Compression::Gzip);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo image-default"],
            "Env": ["PATH=/bin", "A=image", "B=image"],
            "WorkingDir": "/work",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    TestImage {
        layers: vec![layer],
        config: serde_json::to_vec(&config).expect("json"),
    }
}

/// A static program that prints its real and effective uid (`1000 0`),
/// built once with the host's C compiler (the one cargo links with); the
/// test image carries it setuid root as `/bin/euid`.
fn euid_binary() -> &'static [u8] {
    static BINARY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("euid.c");
        std::fs::write(
            &source,
            "#include <stdio.h>\n#include <unistd.h>\n\
             int main(void) { printf(\"%d %d\\n\", (int)getuid(), (int)geteuid()); return 0; }\n",
        )
        .expect("write euid.c");
        let binary = dir.path().join("euid");
        let status = std::process::Command::new("cc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("run cc");
        assert!(status.success(), "cc -static euid.c failed");
        std::fs::read(&binary).expect("read euid")
    })
}

/// Pushes [`box_image`] to `registry` as `frakti/box:1`; returns its reference.
pub async fn push_box(registry: &Registry) -> anyhow::Result<String> {
    registry.push_image("frakti/box", "1", &box_image()).await?;
    Ok(format!("{}/frakti/box:1", registry.host))
}

/// A container of `image` named `name` running `sh -c script`.
pub fn container(image: &str, name: &str, script: &str) -> proto::ContainerConfig {
    proto::ContainerConfig {
        metadata: Some(proto::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(proto::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        args: vec![script.into()],
        log_path: format!("{name}/0.log"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// Creates and starts `config` in pod `pod_id`; returns the container id.
pub async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &proto::PodSandboxConfig,
    config: proto::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    rt.start_container(proto::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    Ok(id)
}

/// Pulls `image` through the daemon's image service.
pub async fn pull(daemon: &crate::Daemon, image: &str) -> anyhow::Result<()> {
    pull_with(&mut daemon.images().await?, image).await
}

/// Pulls `image` through the image service `images` (any CRI runtime's).
pub async fn pull_with(
    images: &mut proto::image_service_client::ImageServiceClient<Channel>,
    image: &str,
) -> anyhow::Result<()> {
    images
        .pull_image(proto::PullImageRequest {
            image: Some(proto::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// A daemon with [`box_image`] pulled from a registry of its own, and one
/// running pod whose containers log under [`TestPod::logs`].
#[derive(Debug)]
pub struct TestPod {
    /// The daemon.
    pub daemon: crate::Daemon,
    /// Its runtime service.
    pub rt: RuntimeServiceClient<Channel>,
    /// The pod's id.
    pub id: String,
    /// The config the pod was run with.
    pub config: proto::PodSandboxConfig,
    /// Reference of the pulled test image.
    pub image: String,
    /// The pod's log directory.
    pub logs: tempfile::TempDir,
    /// Address of the daemon's metrics endpoint.
    pub metrics: String,
    _registry: Registry,
}

impl TestPod {
    /// Starts a registry and a daemon (TCG), pulls the test image and runs a
    /// pod named `name`, its config changed by `tweak` first.
    pub async fn start(
        name: &str,
        tweak: impl FnOnce(&mut proto::PodSandboxConfig),
    ) -> anyhow::Result<Self> {
        let registry = Registry::start(None).await?;
        let image = push_box(&registry).await?;
        let metrics = format!("127.0.0.1:{}", crate::free_port()?);
        let daemon =
            crate::Daemon::start(&["--accel", "tcg", "--metrics-address", &metrics]).await?;
        pull(&daemon, &image).await?;
        let logs = tempfile::tempdir()?;
        let mut config = crate::pod_config(name, &[]);
        config.log_directory = logs.path().display().to_string();
        tweak(&mut config);
        let mut rt = daemon.runtime().await?;
        let id = crate::run_pod(&mut rt, config.clone()).await?;
        Ok(Self {
            daemon,
            rt,
            id,
            config,
            image,
            logs,
            metrics,
            _registry: registry,
        })
    }

    /// A container of the test image named `name` with these args (to `sh -c`).
    pub fn container(&self, name: &str, args: &[&str]) -> proto::ContainerConfig {
        let mut c = container(&self.image, name, "");
        c.args = args.iter().map(|s| s.to_string()).collect();
        c
    }

    /// Creates `config` in the pod (not started).
    pub async fn create(
        &mut self,
        config: proto::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = proto::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        Ok(self
            .rt
            .create_container(req)
            .await?
            .into_inner()
            .container_id)
    }

    /// Creates and starts `config`; panics if either fails.
    pub async fn run(&mut self, config: proto::ContainerConfig) -> String {
        run_container(&mut self.rt, &self.id, &self.config, config)
            .await
            .expect("create and start the container")
    }

    /// Stops (no grace) and removes container `id`; panics if either fails.
    pub async fn remove(&mut self, id: &str) {
        self.rt
            .stop_container(proto::StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            })
            .await
            .expect("StopContainer");
        self.rt
            .remove_container(proto::RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .expect("RemoveContainer");
    }

    /// The container's verbose `info` (parsed JSON; null when absent);
    /// panics if the container is unknown.
    pub async fn info(&mut self, id: &str) -> serde_json::Value {
        let resp = self
            .rt
            .container_status(proto::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .expect("ContainerStatus")
            .into_inner();
        resp.info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// The container's status; panics if it is unknown.
    pub async fn status(&mut self, id: &str) -> proto::ContainerStatus {
        self.rt
            .container_status(proto::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a status")
    }

    /// Waits (at most a minute) until the container has exited.
    pub async fn wait_exit(&mut self, id: &str) -> proto::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(id).await;
            if s.state == proto::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// ExecSync of `sh -c script` with a 30 s timeout; panics if the call fails.
    pub async fn exec(&mut self, id: &str, script: &str) -> proto::ExecSyncResponse {
        self.exec_with(id, script, 30).await.expect("ExecSync")
    }

    /// ExecSync of `sh -c script` with `timeout` seconds.
    pub async fn exec_with(
        &mut self,
        id: &str,
        script: &str,
        timeout: i64,
    ) -> Result<proto::ExecSyncResponse, tonic::Status> {
        let req = proto::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
        };
        Ok(self.rt.exec_sync(req).await?.into_inner())
    }
}

/// GETs `/index.html` on `port` through `forwarder` until the answer holds
/// `needle` (the server may still be starting); panics after 30 s with the
/// last answer and the connection's error.
pub async fn get_through_forward(
    forwarder: &streaming::client::PortForwarder,
    port: u16,
    needle: &str,
) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let conn = forwarder
            .open(port)
            .await
            .expect("open a forwarded connection");
        conn.writer()
            .write(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .expect("write the request");
        let mut resp = Vec::new();
        let _ = conn.reader().read_to_end(&mut resp).await;
        if String::from_utf8_lossy(&resp).contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no page: {:?} / {:?}",
            String::from_utf8_lossy(&resp),
            conn.error_message().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
