//! A test image with every busybox applet, and helpers to run containers in
//! pods through the CRI socket.

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
    daemon
        .images()
        .await?
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
