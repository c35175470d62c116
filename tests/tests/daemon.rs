//! Daemon start-up: flags, config errors, accelerator choice.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use cri::proto;
use e2e::{Daemon, frakti_bin, pod_config, pod_status, run_pod};

#[test]
fn help_and_config_errors() {
    let help = Command::new(frakti_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--root",
        "--state-dir",
        "--cpu",
        "--memory",
        "--accel",
        "--log-level",
        "--config",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }

    // --version: the build, and the QEMU and guest kernel pods would get.
    let kernel = e2e::guest_dir().join("vmlinux");
    let out = Command::new(frakti_bin())
        .args(["--version", "--guest-kernel", kernel.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let release = std::fs::read_to_string(e2e::guest_dir().join("kernel-release")).unwrap();
    for want in [
        format!("frakti {}", env!("CARGO_PKG_VERSION")),
        "\ncommit: ".into(),
        "\nbuilt: 20".into(),
        "\nqemu: QEMU emulator version ".into(),
        format!("\nguest kernel: {} ", release.trim()),
    ] {
        assert!(text.contains(&want), "--version lacks {want:?}: {text}");
    }

    let out = Command::new(frakti_bin())
        .args(["--cpu", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `cpu`"));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "memory = 512\nacel = \"tcg\"\n").unwrap();
    let out = Command::new(frakti_bin())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acel") && err.contains(&cfg.display().to_string()),
        "{err}"
    );

    // Every pod socket must fit a unix socket path: a long state dir is
    // refused at start, naming the key and the limit.
    let long = format!("/tmp/{}", "d".repeat(70));
    let out = Command::new(frakti_bin())
        .args(["--state-dir", &long])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `state_dir`") && err.contains("107-byte"),
        "{err}"
    );
    assert!(!std::path::Path::new(&long).exists(), "nothing was created");
    let out = Command::new(frakti_bin())
        .args([
            "--listen",
            &format!("{long}/{}/frakti.sock", "s".repeat(40)),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `listen`"));

    let out = Command::new(frakti_bin())
        .args(["--config", "/nonexistent/frakti.toml"])
        .output();
    assert_eq!(out.unwrap().status.code(), Some(2));

    // QEMU's user must exist: the start is refused naming the key.
    std::fs::write(&cfg, "vm_user = \"frakti-no-such-user\"\n").unwrap();
    let out = Command::new(frakti_bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `vm_user`") && err.contains("frakti-no-such-user"),
        "{err}"
    );
}

#[tokio::test]
async fn config_file_keys_apply_and_auto_accel_boots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    // The file sets memory; --accel is left to auto (probe KVM, else TCG).
    std::fs::write(&cfg, "memory = 192\ncpu = 1\nlog_level = \"debug\"\n").unwrap();
    let daemon = Daemon::start(&["--config", cfg.to_str().unwrap()])
        .await
        .unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let id = run_pod(&mut c, pod_config("auto", &[])).await.unwrap();
    let (_, info) = pod_status(&mut c, &id).await.unwrap();
    // Flags beat the file: the harness passes --memory 256.
    assert_eq!(info["vm"]["memory_mib"], 256, "{info}");
    let accel = info["vm"]["accel"].as_str().unwrap().to_owned();
    assert!(accel == "kvm" || accel == "tcg", "{info}");
    let log = daemon.log();
    let verdict = log
        .lines()
        .find(|l| l.contains("accelerator chosen"))
        .expect("verdict logged");
    assert!(verdict.contains(&format!("accel={accel}")), "{verdict}");
    if accel == "tcg" {
        assert!(verdict.contains("KVM"), "the reason names KVM: {verdict}");
    }
    assert!(log.contains("DEBUG"), "log_level from the file applies");

    // Pod data is root's alone: the root and state directories are 0700
    // (the harness's own directory is opened so that only they stand in
    // the way), the socket 0660 root:root; `nobody` reads nothing.
    let top = daemon.dir_path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, mode) in [
        (top.join("root"), 0o700),
        (daemon.state_dir(), 0o700),
        (daemon.socket(), 0o660),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, 0, 0),
            "{}",
            path.display()
        );
    }
    for dir in [top.join("root"), daemon.state_dir().join(&id)] {
        let out = as_nobody("ls", &[dir.to_str().unwrap()]);
        assert!(!out.status.success(), "nobody lists {}", dir.display());
    }

    // QEMU runs as the unprivileged vm_user (the default, frakti-vm), with a
    // uid of its subordinate range: every uid is that one, every gid the
    // user's, no capability is left, and no new privileges.
    let status = std::fs::read_to_string(format!("/proc/{}/status", e2e::vm_pid(&info))).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let uid = field("Uid:")[0].clone();
    assert!(e2e::vm_uids().contains(&uid.parse().unwrap()), "{status}");
    assert_eq!(field("Uid:"), [uid.as_str(); 4], "{status}");
    let gid = e2e::vm_user_gid().to_string();
    assert_eq!(field("Gid:"), [gid.as_str(); 4], "{status}");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps} {status}");
    }
    assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

/// Runs `program` as `nobody` (65534:65534).
fn as_nobody(program: &str, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// `listen_group` opens the CRI socket to one group, and only to it.
#[tokio::test]
async fn listen_group_opens_the_socket_to_a_group() {
    let connect = |socket: &std::path::Path| {
        let script = format!(
            "import socket; socket.socket(socket.AF_UNIX).connect({:?})",
            socket.display().to_string()
        );
        as_nobody("python3", &["-c", &script]).status.success()
    };
    let closed = Daemon::start(&[]).await.unwrap();
    std::fs::set_permissions(closed.dir_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !connect(&closed.socket()),
        "nobody reaches a root-only socket"
    );
    drop(closed);
    let open = Daemon::start(&["--listen-group", "65534"]).await.unwrap();
    std::fs::set_permissions(open.dir_path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = std::fs::metadata(open.socket()).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o7777, meta.gid()),
        (0o660, 65534)
    );
    assert!(connect(&open.socket()), "a member of listen_group connects");
    let out = Command::new(frakti_bin())
        .args(["--listen-group", "no-such-group"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_group"));
}

/// Under systemd `Type=notify`: READY=1 once the CRI socket is served,
/// STOPPING=1 on SIGTERM.
#[test]
fn notifies_systemd_when_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify")).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let socket = dir.path().join("frakti.sock");
    let mut child = Command::new(frakti_bin())
        .args(["--listen", socket.to_str().unwrap()])
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cni-conf-dir")
        .arg(dir.path().join("net.d"))
        .env("NOTIFY_SOCKET", dir.path().join("notify"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 60 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "ready means the socket answers"
    );
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// The systemd unit in `deploy/` is what the daemon needs: readiness by
/// sd_notify, pods surviving a restart, delegated cgroups.
#[test]
fn the_systemd_unit_fits_the_daemon() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/frakti.service"),
    )
    .unwrap();
    let mut section = String::new();
    let mut keys = std::collections::BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        keys.insert(format!("{section}.{key}"), value.to_owned());
    }
    for (key, value) in [
        ("Service.Type", "notify"),
        ("Service.KillMode", "process"),
        ("Service.Delegate", "yes"),
        ("Service.Restart", "on-failure"),
        ("Service.ExecStart", "/usr/local/bin/frakti"),
        ("Install.WantedBy", "multi-user.target"),
    ] {
        assert_eq!(keys.get(key).map(String::as_str), Some(value), "{key}");
    }
}

/// `--log-format json`: every log line is one JSON object, as log
/// collectors expect.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let daemon = Daemon::start(&["--log-format", "json"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    c.version(proto::VersionRequest::default()).await.unwrap();
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|v| v["timestamp"].is_string() && v["level"].is_string())
    );
    let serving = lines
        .iter()
        .find(|v| v["message"] == "frakti serving the CRI")
        .unwrap_or_else(|| panic!("no start line: {log}"));
    assert_eq!(serving["socket"], daemon.socket().display().to_string());
}

/// `Status` says what keeps pods from starting, and RunPodSandbox agrees.
#[tokio::test]
async fn status_names_what_keeps_pods_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("qemu-not-executable");
    std::fs::write(&not_exec, "").unwrap();
    // A QEMU built without seccomp: its -help lists no -sandbox.
    let unconfined = dir.path().join("qemu-without-sandbox");
    std::fs::write(&unconfined, "#!/bin/sh\necho 'usage: qemu [options]'\n").unwrap();
    std::fs::set_permissions(&unconfined, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cases = [
        (
            vec!["--accel", "tcg", "--qemu", unconfined.to_str().unwrap()],
            "HypervisorNotReady",
            "qemu_sandbox = false".to_owned(),
        ),
        (
            vec!["--accel", "tcg", "--qemu", "/nonexistent/qemu"],
            "HypervisorNotReady",
            "/nonexistent/qemu".to_owned(),
        ),
        (
            vec!["--accel", "tcg", "--qemu", not_exec.to_str().unwrap()],
            "HypervisorNotReady",
            not_exec.display().to_string(),
        ),
        (
            vec!["--accel", "tcg", "--virtiofsd", "/nonexistent/virtiofsd"],
            "VirtiofsdMissing",
            "/nonexistent/virtiofsd".to_owned(),
        ),
    ];
    for (flags, reason, names) in cases {
        let daemon = Daemon::start(&flags).await.unwrap();
        let mut c = daemon.runtime().await.unwrap();
        let s = c
            .status(proto::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        let ready = s
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "RuntimeReady")
            .unwrap();
        assert!(!ready.status, "{flags:?}: {ready:?}");
        assert_eq!(ready.reason, reason, "{flags:?}");
        assert!(
            ready.message.contains(&names),
            "{flags:?}: {}",
            ready.message
        );
        let err = c
            .run_pod_sandbox(proto::RunPodSandboxRequest {
                config: Some(pod_config("not-ready", &[])),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{flags:?}");
        assert!(err.message().contains(&names), "{}", err.message());
    }
}

/// A `runtime.v1alpha2` client (kubelet 1.20–1.25) is served by the same
/// socket: the messages are the same on the wire, and `Version` answers
/// with the API version it was asked in.
#[tokio::test]
async fn v1alpha2_calls_are_served_beside_v1() {
    use tonic_prost::ProstCodec;
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let channel = daemon.channel().await.unwrap();
    async fn call<Q, A>(channel: &tonic::transport::Channel, path: &'static str, req: Q) -> A
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let codec: ProstCodec<Q, A> = ProstCodec::default();
        grpc.unary(
            tonic::Request::new(req),
            http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_inner()
    }
    let version: proto::VersionResponse = call(
        &channel,
        "/runtime.v1alpha2.RuntimeService/Version",
        proto::VersionRequest {
            version: "0.1.0".into(),
        },
    )
    .await;
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("frakti", "v1alpha2")
    );
    let v1 = daemon
        .runtime()
        .await
        .unwrap()
        .version(proto::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v1.runtime_api_version, "v1");
    let status: proto::StatusResponse = call(
        &channel,
        "/runtime.v1alpha2.RuntimeService/Status",
        proto::StatusRequest { verbose: false },
    )
    .await;
    let conditions = status.status.unwrap().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status),
        "{conditions:?}"
    );
    let images: proto::ListImagesResponse = call(
        &channel,
        "/runtime.v1alpha2.ImageService/ListImages",
        proto::ListImagesRequest::default(),
    )
    .await;
    assert!(images.images.is_empty());
    // An unknown version is still unknown.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec: ProstCodec<proto::VersionRequest, proto::VersionResponse> = ProstCodec::default();
    let err = grpc
        .unary(
            tonic::Request::new(proto::VersionRequest::default()),
            http::uri::PathAndQuery::from_static("/runtime.v1alpha9.RuntimeService/Version"),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
