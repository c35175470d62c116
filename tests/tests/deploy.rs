//! Deployment: `make install` / `make uninstall`, the installed daemon
//! running a pod, `frakti config default` and `config show` read back,
//! `frakti check` on this host and with broken settings.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use cri::proto;
use e2e::{Daemon, frakti_bin, pod_config, pod_status, repo_root, run_pod};

fn make(target: &str, destdir: &Path) -> Output {
    let out = Command::new("make")
        .args(["-s", target])
        .arg(format!("DESTDIR={}", destdir.display()))
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make {target}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn files_under(dir: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1"])
        .output()
        .unwrap();
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches(&*dir.display().to_string()).to_owned())
        .collect();
    files.sort();
    files
}

fn frakti(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

/// `make install DESTDIR=…` lays out a tree whose frakti runs where it lies
/// (its guest assets and monitor found relative to itself) with the
/// installed config; `make uninstall` takes exactly that away again.
#[tokio::test]
async fn an_installed_frakti_runs_a_pod_and_uninstalls_cleanly() {
    let dest = tempfile::tempdir().unwrap();
    let dest = dest.path();
    // Something of the operator's already there must survive both.
    std::fs::create_dir_all(dest.join("usr/local/bin")).unwrap();
    std::fs::write(dest.join("usr/local/bin/other-tool"), "#!/bin/sh\n").unwrap();
    make("install", dest);
    let installed = files_under(dest);
    for want in [
        "/usr/local/bin/frakti",
        "/usr/local/bin/frakti-monitor",
        "/usr/local/share/frakti/guest/vmlinux",
        "/usr/local/share/frakti/guest/initramfs.img",
        "/usr/local/lib/systemd/system/frakti.service",
        "/etc/frakti/config.toml",
        "/etc/cni/net.d/10-frakti.conflist",
    ] {
        assert!(installed.iter().any(|f| f == want), "{want}: {installed:?}");
    }
    let bin = dest.join("usr/local/bin/frakti");
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );

    // The unit starts the installed binary and passes systemd's own check.
    let unit =
        std::fs::read_to_string(dest.join("usr/local/lib/systemd/system/frakti.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/frakti\n"),
        "{unit}"
    );
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("frakti.service");
        std::fs::write(
            &copy,
            unit.replace(
                "ExecStart=/usr/local/bin/frakti",
                &format!("ExecStart={}", bin.display()),
            ),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The installed config is the defaults, read back unchanged; the
    // installed binary finds its assets and monitor beside itself.
    let config = dest.join("etc/frakti/config.toml");
    let config_arg = config.to_str().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        text,
        String::from_utf8(frakti(&bin, &["config", "default"]).stdout).unwrap()
    );
    let show = frakti(&bin, &["--config", config_arg, "config", "show"]);
    assert!(show.status.success());
    let show = String::from_utf8(show.stdout).unwrap();
    let guest = dest.join("usr/local/share/frakti/guest");
    for want in [
        format!("guest_kernel = \"{}\"", guest.join("vmlinux").display()),
        format!(
            "host_monitor = \"{}\"",
            dest.join("usr/local/bin/frakti-monitor").display()
        ),
    ] {
        assert!(show.contains(&want), "{want}: {show}");
    }
    let cni = std::fs::read_to_string(dest.join("etc/cni/net.d/10-frakti.conflist")).unwrap();
    let cni: serde_json::Value = serde_json::from_str(&cni).unwrap();
    assert_eq!(cni["name"], "frakti");

    let daemon = Daemon::start_bin(&bin, &["--config", config_arg])
        .await
        .unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let status = c
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(
        info["guest_kernel"],
        guest.join("vmlinux").display().to_string()
    );
    let id = run_pod(&mut c, pod_config("installed", &[])).await.unwrap();
    let (pod, _) = pod_status(&mut c, &id).await.unwrap();
    assert_eq!(pod.state, proto::PodSandboxState::SandboxReady as i32);
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    drop(c);
    drop(daemon);

    // A second install keeps the operator's edited config; uninstall
    // removes everything else it put there and nothing more.
    std::fs::write(&config, format!("{text}\ncpu = 1\n")).unwrap();
    make("install", dest);
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .ends_with("\ncpu = 1\n")
    );
    let out = make("uninstall", dest);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept"),
        "the edited config is named"
    );
    assert_eq!(
        files_under(dest),
        [
            "/etc",
            "/etc/frakti",
            "/etc/frakti/config.toml",
            "/usr",
            "/usr/local",
            "/usr/local/bin",
            "/usr/local/bin/other-tool"
        ]
    );
}

/// `frakti check` passes on this host (the accelerator line is ok with
/// KVM, a warning under TCG) and fails, with a fix, on a broken setting.
#[test]
fn check_diagnoses_the_host_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let kernel = e2e::guest_dir().join("vmlinux");
    let initrd = e2e::guest_dir().join("initramfs.img");
    let net = dir.path().join("net.d");
    std::fs::create_dir_all(&net).unwrap();
    let run = |kernel: &Path| {
        let args = [
            "--state-dir",
            state.to_str().unwrap(),
            "--root",
            dir.path().to_str().unwrap(),
            "--guest-kernel",
            kernel.to_str().unwrap(),
            "--guest-initrd",
            initrd.to_str().unwrap(),
            "--cni-conf-dir",
            net.to_str().unwrap(),
            "check",
        ];
        let out = frakti(&frakti_bin(), &args);
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };

    let (code, text) = run(&kernel);
    assert_eq!(code, Some(0), "{text}");
    for name in [
        "accelerator",
        "qemu",
        "qemu features",
        "qemu sandbox",
        "virtiofsd",
        "/dev/net/tun",
        "vhost",
        "guest assets",
        "guest modules",
        "cni",
        "cgroups",
        "iptables",
        "disk",
        "socket paths",
    ] {
        let line = text
            .lines()
            .find(|l| {
                l.get(5..)
                    .is_some_and(|l| l.starts_with(&format!("{name}: ")))
            })
            .unwrap_or_else(|| panic!("no {name} line: {text}"));
        assert!(!line.starts_with("fail"), "{line}");
    }
    let accel = text.lines().find(|l| l.contains(" accelerator: ")).unwrap();
    assert!(
        accel.starts_with("ok   accelerator: KVM")
            || accel.starts_with("warn accelerator: pods run under TCG"),
        "{accel}"
    );
    assert!(text.ends_with("warning(s))\n"), "{text}");

    // A missing kernel: the guest assets fail, with the fix.
    let (code, text) = run(Path::new("/nonexistent/vmlinux"));
    assert_eq!(code, Some(1), "{text}");
    let at = text.find("fail guest assets: ").expect(&text);
    assert!(text[at..].contains("/nonexistent/vmlinux"), "{text}");
    assert!(
        text[at..].contains("\n     fix: run `make build`"),
        "{text}"
    );

    // A network whose plugin is not installed.
    std::fs::write(
        net.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let (code, text) = run(&kernel);
    assert_eq!(code, Some(1), "{text}");
    let at = text.find("fail cni: ").expect(&text);
    assert!(text[at..].contains("no-such-plugin"), "{text}");
    assert!(
        text[at..].contains("\n     fix: install containernetworking-plugins"),
        "{text}"
    );
    assert!(!state.exists() || std::fs::read_dir(&state).unwrap().next().is_none());
}

/// The shipped Kubernetes manifests name what frakti serves: each
/// RuntimeClass handler is one that `Status` lists, and the kubelet
/// snippet points at the default socket.
#[tokio::test]
async fn the_kubernetes_manifests_fit_the_daemon() {
    let deploy = repo_root().join("deploy");
    let classes = std::fs::read_to_string(deploy.join("runtimeclass.yaml")).unwrap();
    let handlers: Vec<&str> = classes
        .lines()
        .filter_map(|l| l.strip_prefix("handler: "))
        .collect();
    assert_eq!(handlers, ["frakti", "host"]);
    assert!(classes.contains("podFixed:"), "{classes}");
    let daemon = Daemon::start(&[]).await.unwrap();
    let status = daemon
        .runtime()
        .await
        .unwrap()
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let served: Vec<String> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .collect();
    for handler in handlers {
        assert!(
            served.iter().any(|s| s == handler),
            "{handler} not in {served:?}"
        );
    }
    let kubelet = std::fs::read_to_string(deploy.join("kubelet-config.yaml")).unwrap();
    let defaults = String::from_utf8(frakti(&frakti_bin(), &["config", "default"]).stdout).unwrap();
    let socket = defaults
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        kubelet.contains(&format!("containerRuntimeEndpoint: unix://{socket}\n")),
        "{kubelet}"
    );
}
