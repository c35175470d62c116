//! The image service through the CRI socket, against a real registry on
//! 127.0.0.1 serving images built here from Debian's busybox-static.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri::proto;
use cri::proto::image_service_client::ImageServiceClient;
use e2e::Daemon;
use e2e::registry::{
    Compression, LayerBuilder, OCI_INDEX, Registry, TestImage, busybox_layer, index, sha256,
    write_mirror,
};
use tonic::Code;
use tonic::transport::Channel;

/// A daemon whose registry hosts configuration is `hosts` (created empty).
async fn daemon(hosts: &Path) -> Daemon {
    std::fs::create_dir_all(hosts).unwrap();
    Daemon::start(&[
        "--accel",
        "tcg",
        "--registry-config-dir",
        hosts.to_str().unwrap(),
    ])
    .await
    .unwrap()
}

fn spec(image: &str) -> Option<proto::ImageSpec> {
    Some(proto::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<proto::AuthConfig>,
) -> Result<String, tonic::Status> {
    let req = proto::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    };
    Ok(c.pull_image(req).await?.into_inner().image_ref)
}

async fn status(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    verbose: bool,
) -> (Option<proto::Image>, serde_json::Value) {
    let resp = c
        .image_status(proto::ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await
        .unwrap()
        .into_inner();
    let info = resp
        .info
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    (resp.image, info)
}

async fn list(c: &mut ImageServiceClient<Channel>) -> Vec<proto::Image> {
    c.list_images(proto::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn images_dir(d: &Daemon) -> PathBuf {
    d.dir_path().join("root/images")
}

/// Busybox (gzip) + a zstd layer with a whiteout and an opaque directory + an
/// uncompressed layer, with `User` = `user`.
fn layered_image(user: &str, marker: &str) -> TestImage {
    let base = busybox_layer()
        .dir("data")
        .file("data/old", b"old", 0o644)
        .dir("data/sub")
        .file("data/sub/deep", b"deep", 0o644)
        .file("etc/remove-me", b"x", 0o644)
        .build(Compression::Gzip);
    let middle = LayerBuilder::default()
        .whiteout("etc/remove-me")
        .opaque("data")
        .file("data/new", b"new", 0o644)
        .build(Compression::Zstd);
    let top = LayerBuilder::default()
        .file("marker", marker.as_bytes(), 0o600)
        .build(Compression::None);
    TestImage::new(vec![base, middle, top], user, "amd64")
}

#[tokio::test]
async fn pull_status_list_remove_with_layers_and_whiteouts() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let img = layered_image("1000:1000", "one");
    let manifest_digest = reg.push_image("frakti/busybox", "1.0", &img).await.unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    assert!(list(&mut c).await.is_empty());

    let name = format!("{}/frakti/busybox:1.0", reg.host);
    let id = pull(&mut c, &name, None).await.unwrap();
    assert_eq!(id, img.id());

    let repo_digest = format!("{}/frakti/busybox@{manifest_digest}", reg.host);
    for key in [&id, &id[7..], &name, &repo_digest] {
        let (got, _) = status(&mut c, key, false).await;
        let got = got.unwrap_or_else(|| panic!("ImageStatus({key}) found nothing"));
        assert_eq!(got.id, id);
        assert_eq!(got.repo_tags, vec![name.clone()]);
        assert_eq!(got.repo_digests, vec![repo_digest.clone()]);
        assert_eq!(got.uid.map(|u| u.value), Some(1000));
        assert!(got.username.is_empty());
        assert!(got.size > 1_000_000, "size {}", got.size);
    }
    let (_, info) = status(&mut c, &id, true).await;
    assert_eq!(info["imageSpec"]["config"]["User"], "1000:1000");
    let rootfs = PathBuf::from(info["rootfs"].as_str().unwrap());

    // The unpacked root filesystem: whiteout, opaque dir, all three layers.
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let out = std::process::Command::new(rootfs.join("bin/busybox"))
        .args(["echo", "hello"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert!(!rootfs.join("etc/remove-me").exists());
    assert!(rootfs.join("etc/passwd").exists());
    assert!(!rootfs.join("data/old").exists() && !rootfs.join("data/sub").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/new")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("marker")).unwrap(),
        "one"
    );

    // A filter by tag, by an unknown name.
    let filtered = c
        .list_images(proto::ListImagesRequest {
            filter: Some(proto::ImageFilter { image: spec(&name) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let none = c
        .list_images(proto::ListImagesRequest {
            filter: Some(proto::ImageFilter {
                image: spec("nothing:here"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(none.is_empty());

    // ImageFsInfo.
    let fs = c
        .image_fs_info(proto::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        images_dir(&d).display().to_string()
    );
    assert!(usage.used_bytes.unwrap().value > 1_000_000);
    assert!(usage.inodes_used.unwrap().value > 10);

    // A second image sharing the base layer: the base snapshot is reused.
    let img2 = layered_image("nobody:nogroup", "two");
    reg.push_image("frakti/other", "v2", &img2).await.unwrap();
    let name2 = format!("{}/frakti/other:v2", reg.host);
    let id2 = pull(&mut c, &name2, None).await.unwrap();
    let (got2, _) = status(&mut c, &id2, false).await;
    let got2 = got2.unwrap();
    assert_eq!((got2.uid, got2.username.as_str()), (None, "nobody"));
    // base + middle shared, two tops: 4 snapshots; blobs: 4 layers + 2 configs + 2 manifests.
    assert_eq!(entries(&images_dir(&d).join("snapshots")), 4);
    assert_eq!(entries(&images_dir(&d).join("blobs/sha256")), 8);
    // Progress in the log: bytes and rate per blob.
    let log = d.log();
    assert!(log.contains("layer unpacked"), "{log}");
    assert!(
        log.contains("blob downloaded") && log.contains("rate_mb_s"),
        "{log}"
    );

    // Remove by tag: only the first image's own content goes.
    c.remove_image(proto::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap();
    assert!(status(&mut c, &id, false).await.0.is_none());
    assert_eq!(list(&mut c).await.len(), 1);
    assert_eq!(entries(&images_dir(&d).join("snapshots")), 3);
    assert!(!rootfs.exists());
    // Removing it again, or an unknown image, succeeds.
    c.remove_image(proto::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap();
    c.remove_image(proto::RemoveImageRequest {
        image: spec("never/pulled:1"),
    })
    .await
    .unwrap();
    // A reference that could name no image is InvalidArgument, for both.
    let err = c
        .remove_image(proto::RemoveImageRequest {
            image: spec("Not::A/Ref"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Not::A/Ref"), "{err:?}");
    let err = c
        .image_status(proto::ImageStatusRequest {
            image: spec("Not::A/Ref"),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Remove by ID: everything is collected.
    c.remove_image(proto::RemoveImageRequest { image: spec(&id2) })
        .await
        .unwrap();
    assert!(list(&mut c).await.is_empty());
    assert_eq!(entries(&images_dir(&d).join("snapshots")), 0);
    assert_eq!(entries(&images_dir(&d).join("blobs/sha256")), 0);
}

#[tokio::test]
async fn multi_arch_index_by_digest_and_docker_manifest() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let amd = TestImage::new(vec![busybox_layer().build(Compression::Gzip)], "0", "amd64");
    let arm = TestImage::new(
        vec![
            LayerBuilder::default()
                .file("arm", b"arm", 0o644)
                .build(Compression::Gzip),
        ],
        "",
        "arm64",
    );
    let amd_digest = reg.push_image("multi", "amd", &amd).await.unwrap();
    let arm_digest = reg.push_image("multi", "arm", &arm).await.unwrap();
    let idx = index(&[
        (arm_digest, arm.manifest().len(), "arm64"),
        (amd_digest, amd.manifest().len(), "amd64"),
    ]);
    let idx_digest = reg
        .push_manifest("multi", "latest", OCI_INDEX, &idx)
        .await
        .unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();

    // By tag (the index) and by the index digest: the amd64 image.
    let name = format!("{}/multi", reg.host);
    let id = pull(&mut c, &name, None).await.unwrap();
    assert_eq!(id, amd.id());
    let by_digest = format!("{name}@{idx_digest}");
    assert_eq!(pull(&mut c, &by_digest, None).await.unwrap(), amd.id());
    let img = status(&mut c, &by_digest, false).await.0.unwrap();
    assert_eq!(img.repo_tags, vec![format!("{name}:latest")]);
    assert_eq!(img.repo_digests, vec![by_digest.clone()]);
    assert_eq!(img.uid.map(|u| u.value), Some(0));

    // A Docker schema 2 manifest.
    let manifest = String::from_utf8(amd.manifest())
        .unwrap()
        .replace(
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        )
        .replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        );
    for l in &amd.layers {
        reg.push_blob("docker", &l.blob).await.unwrap();
    }
    reg.push_blob("docker", &amd.config).await.unwrap();
    reg.push_manifest(
        "docker",
        "v1",
        e2e::registry::DOCKER_MANIFEST,
        manifest.as_bytes(),
    )
    .await
    .unwrap();
    let id = pull(&mut c, &format!("{}/docker:v1", reg.host), None)
        .await
        .unwrap();
    assert_eq!(id, amd.id());
    let img = status(&mut c, &id, false).await.0.unwrap();
    assert_eq!(img.repo_tags.len(), 2, "{:?}", img.repo_tags);

    // A digest that the registry does not have; a tag that does not exist; bad names.
    let missing = format!("{name}@sha256:{}", "0".repeat(64));
    let err = pull(&mut c, &missing, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = pull(&mut c, &format!("{name}:nope"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&reg.host), "{}", err.message());
    for bad in ["", "UPPER", "a:b:c:d", "x@sha256:short"] {
        let err = pull(&mut c, bad, None).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
    }
}

#[tokio::test]
async fn mirror_from_hosts_toml() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let img = TestImage::new(vec![busybox_layer().build(Compression::Zstd)], "", "amd64");
    reg.push_image("pause", "3.9", &img).await.unwrap();
    reg.push_image("library/busybox", "latest", &img)
        .await
        .unwrap();
    write_mirror(hosts.path(), "registry.k8s.io", &reg.host).unwrap();
    write_mirror(hosts.path(), "docker.io", &reg.host).unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let id = pull(&mut c, "registry.k8s.io/pause:3.9", None)
        .await
        .unwrap();
    assert_eq!(id, img.id());
    // A short name, normalised like Docker, through the docker.io mirror.
    assert_eq!(pull(&mut c, "busybox", None).await.unwrap(), img.id());
    let got = status(&mut c, "busybox", false).await.0.unwrap();
    let mut tags = got.repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        [
            "docker.io/library/busybox:latest",
            "registry.k8s.io/pause:3.9"
        ]
    );
    assert!(
        status(&mut c, "docker.io/library/busybox:latest", false)
            .await
            .0
            .is_some()
    );
    assert!(d.log().contains(&format!("http://{}", reg.host)));
}

#[tokio::test]
async fn auth_with_htpasswd() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(Some(("frakti", "s3cret"))).await.unwrap();
    let img = TestImage::new(vec![busybox_layer().build(Compression::Gzip)], "", "amd64");
    reg.push_image("private", "1", &img).await.unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let name = format!("{}/private:1", reg.host);

    let err = pull(&mut c, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reg.host), "{}", err.message());
    assert!(err.message().contains("401"), "{}", err.message());
    let wrong = proto::AuthConfig {
        username: "frakti".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(list(&mut c).await.is_empty());

    let right = proto::AuthConfig {
        username: "frakti".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &name, Some(right)).await.unwrap(), img.id());
    // The `auth` field (base64 "user:password"), on a fresh daemon.
    drop(c);
    drop(d);
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let encoded = proto::AuthConfig {
        auth: "ZnJha3RpOnMzY3JldA==".into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &name, Some(encoded)).await.unwrap(), img.id());
}

/// Layers that would put device nodes on the host, or expand past
/// `max_image_size` or like a decompression bomb, are refused and leave
/// nothing behind.
#[tokio::test]
async fn hostile_layers_are_refused_and_leave_nothing() {
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path()).unwrap();
    let reg = Registry::start(None).await.unwrap();
    let one = |layer: LayerBuilder, c| TestImage::new(vec![layer.build(c)], "", "amd64");
    let device = LayerBuilder::default()
        .dir("dev")
        .device("dev/mem", tar::EntryType::Char, 1, 1);
    reg.push_image("device", "1", &one(device, Compression::Gzip))
        .await
        .unwrap();
    // 4 MiB of hex digits of chained hashes, over a 2 MiB cap; gzip keeps
    // more than half of it.
    let mut noise = Vec::with_capacity(4 << 20);
    let mut block = sha256(b"noise").into_bytes();
    while noise.len() < 4 << 20 {
        block = sha256(&block).into_bytes();
        noise.extend_from_slice(&block[7..]);
    }
    let big = LayerBuilder::default().file("big", &noise, 0o644);
    reg.push_image("big", "1", &one(big, Compression::Gzip))
        .await
        .unwrap();
    // 300 MiB of zeros: a few hundred bytes of zstd.
    let bomb = LayerBuilder::default().file("zeros", &vec![0u8; 300 << 20], 0o644);
    reg.push_image("bomb", "1", &one(bomb, Compression::Zstd))
        .await
        .unwrap();

    let capped = Daemon::start(&[
        "--registry-config-dir",
        hosts.path().to_str().unwrap(),
        "--max-image-size",
        "2",
    ])
    .await
    .unwrap();
    let mut c = capped.images().await.unwrap();
    for (name, code, what) in [
        ("device", Code::FailedPrecondition, "dev/mem"),
        ("big", Code::ResourceExhausted, "max_image_size"),
        ("bomb", Code::ResourceExhausted, "max_image_size"),
    ] {
        let err = pull(&mut c, &format!("{}/{name}:1", reg.host), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(err.message().contains(what), "{name}: {}", err.message());
        let dir = images_dir(&capped);
        assert!(list(&mut c).await.is_empty(), "{name}");
        assert_eq!(entries(&dir.join("snapshots")), 0, "{name}");
        assert_eq!(entries(&dir.join("tmp")), 0, "{name}: nothing half-written");
        assert_eq!(
            entries(&dir.join("blobs/sha256")),
            0,
            "{name}: no blob kept"
        );
    }
    drop(capped);
    // Under the default cap the bomb is stopped by its ratio.
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let err = pull(&mut c, &format!("{}/bomb:1", reg.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1000 times"), "{}", err.message());
    assert_eq!(entries(&images_dir(&d).join("snapshots")), 0);
    drop(d);

    // A store with under 4 MiB free refuses that layer (over 2 MiB of blob)
    // before writing it: it needs room for the blob and as much again.
    let small = tempfile::tempdir().unwrap();
    let tmpfs = e2e::Tmpfs::mount(small.path(), Some(4)).unwrap();
    let d = Daemon::start_with_root(
        Some(tmpfs.path()),
        &["--registry-config-dir", hosts.path().to_str().unwrap()],
    )
    .await
    .unwrap();
    let mut c = d.images().await.unwrap();
    let err = pull(&mut c, &format!("{}/big:1", reg.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("no room"), "{}", err.message());
    assert_eq!(entries(&tmpfs.path().join("images/tmp")), 0);
    drop(d);
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let img = TestImage::new(vec![busybox_layer().build(Compression::Gzip)], "", "amd64");
    reg.push_image("corrupt", "1", &img).await.unwrap();
    // One flipped byte in the layer the registry serves.
    let path = reg.blob_data_path(&sha256(&img.layers[0].blob));
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, data).unwrap();

    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let err = pull(&mut c, &format!("{}/corrupt:1", reg.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains("does not match"),
        "{}",
        err.message()
    );
    assert!(list(&mut c).await.is_empty());
    let dir = images_dir(&d);
    let layer = sha256(&img.layers[0].blob);
    assert!(!dir.join("blobs/sha256").join(&layer[7..]).exists());
    assert_eq!(entries(&dir.join("snapshots")), 0);
    assert_eq!(entries(&dir.join("tmp")), 0, "no partial download left");

    // A layer whose uncompressed content is not what the config says.
    let mut lying = TestImage::new(
        vec![
            LayerBuilder::default()
                .file("f", b"real", 0o644)
                .build(Compression::Gzip),
        ],
        "",
        "amd64",
    );
    let other = sha256(b"something else");
    let config = String::from_utf8(lying.config.clone())
        .unwrap()
        .replace(&lying.layers[0].diff_id, &other);
    lying.config = config.into_bytes();
    reg.push_image("lying", "1", &lying).await.unwrap();
    let err = pull(&mut c, &format!("{}/lying:1", reg.host), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&other), "{}", err.message());
    assert_eq!(entries(&dir.join("snapshots")), 0);
    assert!(list(&mut c).await.is_empty());
}

#[tokio::test]
async fn state_survives_restart() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let img = layered_image("daemon", "r");
    reg.push_image("restart", "1", &img).await.unwrap();
    let mut d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    let name = format!("{}/restart:1", reg.host);
    let id = pull(&mut c, &name, None).await.unwrap();
    let (_, info) = status(&mut c, &id, true).await;
    let rootfs = info["rootfs"].as_str().unwrap().to_owned();
    drop(c);
    d.restart().await.unwrap();
    let mut c = d.images().await.unwrap();
    let got = status(&mut c, &name, false).await.0.unwrap();
    assert_eq!(
        (got.id.as_str(), got.username.as_str()),
        (id.as_str(), "daemon")
    );
    assert!(Path::new(&rootfs).join("bin/busybox").exists());
    // A pull after the restart finds everything in place: no download.
    let before = d.log().matches("blob downloaded").count();
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), id);
    assert_eq!(d.log().matches("blob downloaded").count(), before);

    // The tag moves to a newer image; the old one stays, untagged, by ID.
    let newer = layered_image("daemon", "r2");
    reg.push_image("restart", "1", &newer).await.unwrap();
    assert_eq!(pull(&mut c, &name, None).await.unwrap(), newer.id());
    drop(c);
    d.restart().await.unwrap();
    let mut c = d.images().await.unwrap();
    assert_eq!(status(&mut c, &name, false).await.0.unwrap().id, newer.id());
    let old = status(&mut c, &id, false).await.0.unwrap();
    assert!(old.repo_tags.is_empty(), "{:?}", old.repo_tags);
    assert_eq!(list(&mut c).await.len(), 2);
}

#[tokio::test]
async fn concurrent_pulls_coalesce() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    let a = layered_image("", "a");
    let b = TestImage::new(
        vec![
            LayerBuilder::default()
                .file("big", &vec![7u8; 4 << 20], 0o644)
                .build(Compression::Zstd),
        ],
        "",
        "amd64",
    );
    reg.push_image("conc/a", "1", &a).await.unwrap();
    reg.push_image("conc/b", "1", &b).await.unwrap();
    let d = daemon(hosts.path()).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut c = d.images().await.unwrap();
        let name = if i % 3 == 2 {
            format!("{}/conc/b:1", reg.host)
        } else {
            format!("{}/conc/a:1", reg.host)
        };
        tasks.push(tokio::spawn(async move { pull(&mut c, &name, None).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    assert!(ids.iter().all(|i| *i == a.id() || *i == b.id()));
    // Each blob was downloaded exactly once: 3 layers + config of a, 1 + config of b.
    let log = d.log();
    assert_eq!(log.matches("blob downloaded").count(), 6, "{log}");
    assert_eq!(log.matches("layer unpacked").count(), 4, "{log}");
}

#[tokio::test]
async fn deadline_and_unreachable_registry() {
    let hosts = tempfile::tempdir().unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();
    // A "registry" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_host = silent.local_addr().unwrap().to_string();
    let mut req = tonic::Request::new(proto::PullImageRequest {
        image: spec(&format!("{silent_host}/slow:1")),
        auth: None,
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let err = c.pull_image(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);

    // Nothing listening: Unavailable, naming the registry.
    let port = e2e::registry::free_port().unwrap();
    let err = pull(&mut c, &format!("127.0.0.1:{port}/gone:1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn killed_pull_leaves_no_corrupt_state() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start(None).await.unwrap();
    // 48 MiB that do not compress, so the pull takes a while.
    let mut big = vec![0u8; 48 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let img = TestImage::new(
        vec![
            busybox_layer().build(Compression::Gzip),
            LayerBuilder::default()
                .file("big", &big, 0o644)
                .build(Compression::None),
        ],
        "",
        "amd64",
    );
    reg.push_image("killed", "1", &img).await.unwrap();
    let mut d = daemon(hosts.path()).await;
    let name = format!("{}/killed:1", reg.host);
    let mut c = d.images().await.unwrap();
    let n = name.clone();
    let pulling = tokio::spawn(async move { pull(&mut c, &n, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.kill(libc::SIGKILL);
    assert!(
        pulling.await.unwrap().is_err(),
        "the pull died with the daemon"
    );
    d.restart().await.unwrap();
    let dir = images_dir(&d);
    assert_eq!(
        entries(&dir.join("tmp")),
        0,
        "partial downloads removed at start"
    );
    let mut c = d.images().await.unwrap();
    // Whatever the kill interrupted, the retry completes and is correct.
    let id = pull(&mut c, &name, None).await.unwrap();
    assert_eq!(id, img.id());
    let (_, info) = status(&mut c, &id, true).await;
    let rootfs = PathBuf::from(info["rootfs"].as_str().unwrap());
    assert_eq!(std::fs::read(rootfs.join("big")).unwrap(), big);
    assert!(rootfs.join("bin/busybox").exists());
}

#[tokio::test]
async fn tls_mirror_with_ca_and_skip_verify() {
    let hosts = tempfile::tempdir().unwrap();
    let reg = Registry::start_with(None, true).await.unwrap();
    let img = TestImage::new(vec![busybox_layer().build(Compression::Gzip)], "", "amd64");
    reg.push_image("app", "1", &img).await.unwrap();
    let file = hosts.path().join("tls.invalid/hosts.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let d = daemon(hosts.path()).await;
    let mut c = d.images().await.unwrap();

    // The self-signed certificate is refused without its CA.
    std::fs::write(
        &file,
        format!(
            "server = \"https://tls.invalid\"\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.host
        ),
    )
    .unwrap();
    let err = pull(&mut c, "tls.invalid/app:1", None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        d.log().contains(&format!("registry=https://{}", reg.host)),
        "the mirror was tried first"
    );
    assert!(d.log().contains("invalid peer certificate"), "{}", d.log());
    // The answer names the mirror's failure too, not only the upstream's.
    assert!(
        err.message().contains("invalid peer certificate"),
        "{}",
        err.message()
    );

    // With `ca` it is trusted (the file is re-read on every pull).
    std::fs::write(
        &file,
        format!(
            "server = \"https://tls.invalid\"\n[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            reg.host,
            reg.cert_path().display()
        ),
    )
    .unwrap();
    let id = pull(&mut c, "tls.invalid/app:1", None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", d.log()));
    assert_eq!(id, img.id());
    c.remove_image(proto::RemoveImageRequest {
        image: spec("tls.invalid/app:1"),
    })
    .await
    .unwrap();

    // With `skip_verify` too.
    std::fs::write(
        &file,
        format!(
            "[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
            reg.host
        ),
    )
    .unwrap();
    assert_eq!(
        pull(&mut c, "tls.invalid/app:1", None).await.unwrap(),
        img.id()
    );
}

/// `pinned_images`: a pinned image is reported pinned and RemoveImage
/// refuses it; `ImageFsInfo` measures the store again only after it changed.
#[tokio::test]
async fn pinned_images_stay_and_fs_info_follows_changes() {
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(hosts.path()).unwrap();
    let reg = Registry::start(None).await.unwrap();
    reg.push_image("frakti/pause", "3", &layered_image("0", "pause"))
        .await
        .unwrap();
    reg.push_image("frakti/app", "1", &layered_image("0", "app"))
        .await
        .unwrap();
    let pinned = format!("{}/frakti/pause:3", reg.host);
    let other = format!("{}/frakti/app:1", reg.host);
    let d = Daemon::start(&[
        "--accel",
        "tcg",
        "--registry-config-dir",
        hosts.path().to_str().unwrap(),
        "--pinned-image",
        &pinned,
    ])
    .await
    .unwrap();
    let mut c = d.images().await.unwrap();
    let fs_used =
        |fs: proto::ImageFsInfoResponse| fs.image_filesystems[0].used_bytes.unwrap().value;
    let empty = fs_used(
        c.image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );

    let pinned_id = pull(&mut c, &pinned, None).await.unwrap();
    pull(&mut c, &other, None).await.unwrap();
    assert!(status(&mut c, &pinned, false).await.0.unwrap().pinned);
    assert!(!status(&mut c, &other, false).await.0.unwrap().pinned);
    let listed = list(&mut c).await;
    assert_eq!(
        listed
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.id.clone())
            .collect::<Vec<_>>(),
        vec![pinned_id.clone()]
    );

    // The pulls changed the store: it is measured again.
    let pulled = fs_used(
        c.image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(pulled > empty + 1_000_000, "{empty} -> {pulled}");
    // A file the store did not write is not seen until the store changes.
    std::fs::write(images_dir(&d).join("stray"), vec![1u8; 4 << 20]).unwrap();
    let cached = fs_used(
        c.image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        cached, pulled,
        "ImageFsInfo walked the store again without a change"
    );

    // RemoveImage refuses the pinned image, by any of its names.
    for name in [&pinned, &pinned_id] {
        let err = c
            .remove_image(proto::RemoveImageRequest { image: spec(name) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("pinned_images"), "{err:?}");
    }
    assert!(status(&mut c, &pinned, false).await.0.is_some());
    c.remove_image(proto::RemoveImageRequest {
        image: spec(&other),
    })
    .await
    .unwrap();
    assert!(status(&mut c, &other, false).await.0.is_none());
    // The removal changed the store: measured again, the stray file with it.
    let after = fs_used(
        c.image_fs_info(proto::ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner(),
    );
    assert_ne!(after, cached);
    assert!(after >= 4 << 20, "{after}");
}
