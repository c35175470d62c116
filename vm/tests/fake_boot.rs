//! Boot, undo, stop and recovery of `VmRuntime` against a fake hypervisor
//! (VMs are `sleep` processes), a fake agent on each VM's agent socket, and
//! a stand-in virtiofsd that only listens on its socket. No VM, no network.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_api::fake::FakeAgent;
use agent_api::{AgentError, Request, Response};
use hypervisor::fake::FakeHypervisor;
use hypervisor::{AccelMode, LaunchError, Process};
use runtime_api::{PodMetadata, RuntimeErrorKind, RuntimeEvent, SandboxConfig, SandboxRuntime};
use tokio::sync::mpsc;
use vm::{VmRuntime, VmRuntimeConfig, VmState};

/// A virtiofsd stand-in: binds `--socket-path` and waits. Its argv[0] names
/// virtiofsd, as the runtime checks before it kills one.
const FAKE_VIRTIOFSD: &str = r#"#!/bin/bash
exec -a fake-virtiofsd /usr/bin/python3 -c '
import socket, sys, time
path = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--socket-path=")][0]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(4)
time.sleep(3600)
' "$@"
"#;

struct Setup {
    _dir: tempfile::TempDir,
    state_dir: PathBuf,
    hv: Arc<FakeHypervisor>,
    agent: FakeAgent,
    runtime: Arc<VmRuntime>,
    events: mpsc::UnboundedReceiver<RuntimeEvent>,
}

fn answer(request: Request) -> Result<Response, AgentError> {
    Ok(match request {
        Request::Ping => Response::Pong,
        _ => Response::Done,
    })
}

fn setup(boot_timeout: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let virtiofsd = dir.path().join("virtiofsd");
    std::fs::write(&virtiofsd, FAKE_VIRTIOFSD).unwrap();
    std::fs::set_permissions(&virtiofsd, std::fs::Permissions::from_mode(0o755)).unwrap();
    for asset in ["vmlinux", "initrd"] {
        std::fs::write(dir.path().join(asset), b"").unwrap();
    }
    let agent = FakeAgent::new_async(|request| async move {
        if matches!(request, Request::WaitEvents { .. }) {
            // No container events: hold the long poll, as the agent does.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        answer(request)
    });
    let hv = Arc::new(FakeHypervisor::new());
    let served = agent.clone();
    hv.on_launch(move |_, vm| {
        served.listen(&vm.agent_socket).unwrap();
    });
    let (tx, events) = mpsc::unbounded_channel();
    let runtime = Arc::new(VmRuntime::new(
        VmRuntimeConfig {
            state_dir: state_dir.clone(),
            kernel: dir.path().join("vmlinux"),
            initrd: dir.path().join("initrd"),
            modules: None,
            default_vcpus: 1,
            default_memory_mib: 256,
            accel: AccelMode::Tcg,
            boot_timeout,
            extra_cmdline: Vec::new(),
            networks: None,
            virtiofsd,
            containers_dir: dir.path().join("layers"),
            max_vcpus: 4,
            max_memory_mib: 2048,
            cgroup_root: None,
            handler: "test".into(),
            pool: 0,
        },
        hv.clone(),
        tx,
    ));
    Setup {
        _dir: dir,
        state_dir,
        hv,
        agent,
        runtime,
        events,
    }
}

fn pod(name: &str) -> SandboxConfig {
    SandboxConfig {
        metadata: Some(PodMetadata {
            name: name.into(),
            uid: "uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn runs(pid: i32) -> bool {
    Process::open(pid).is_ok_and(|p| p.is_running())
}

fn state_of(value: &serde_json::Value) -> VmState {
    VmState::parse(value).unwrap()
}

async fn gone(pid: i32) -> bool {
    for _ in 0..50 {
        if !runs(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_booted_pod_is_set_up_then_shut_down_and_removed() {
    let s = setup(Duration::from_secs(10));
    let id = id(1);
    let started = s.runtime.start_sandbox(&id, &pod("web")).await.unwrap();
    let state = state_of(&started.state);
    assert_eq!(Some(state.pid), s.hv.pid_of(&id));
    assert!(started.ips.is_empty(), "no network, no IPs");
    let virtiofsd = state.virtiofsd_pid.expect("a virtiofsd pid");
    assert!(runs(state.pid) && runs(virtiofsd));
    assert_eq!(virtiofsd_processes(&state.dir), 1);
    assert_eq!(
        std::fs::read_to_string(state.shared_dir().join("sandbox/hostname")).unwrap(),
        "web\n"
    );
    let setup = s
        .agent
        .requests()
        .into_iter()
        .find_map(|r| match r {
            Request::SetupSandbox {
                hostname,
                share_tag,
                ..
            } => Some((hostname, share_tag)),
            _ => None,
        })
        .expect("the guest was set up");
    assert_eq!(setup.0, "web");
    assert!(!setup.1.is_empty());
    assert!(
        !s.agent
            .requests()
            .iter()
            .any(|r| matches!(r, Request::ConfigureNetwork { .. })),
        "no network to configure"
    );

    s.runtime.stop_sandbox(&id, &started.state).await.unwrap();
    assert!(s.agent.requests().contains(&Request::Shutdown));
    assert!(gone(state.pid).await, "the VM process is gone");
    assert!(
        gone(virtiofsd).await,
        "virtiofsd is gone: {:?}",
        hypervisor::process::cmdline(virtiofsd)
    );
    // Idempotent.
    s.runtime.stop_sandbox(&id, &started.state).await.unwrap();
    s.runtime.remove_sandbox(&id, &started.state).await.unwrap();
    assert!(!state.dir.exists());
    s.runtime.remove_sandbox(&id, &started.state).await.unwrap();
}

/// The state letter of `pid` in `/proc/<pid>/stat`, if it exists.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

#[tokio::test]
async fn a_virtiofsd_that_exited_first_is_reaped_not_left_a_zombie() {
    let s = setup(Duration::from_secs(10));
    let id = id(7);
    let started = s.runtime.start_sandbox(&id, &pod("z")).await.unwrap();
    let virtiofsd = state_of(&started.state).virtiofsd_pid.unwrap();
    // As when QEMU goes: virtiofsd exits on its own and nobody waits for it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(virtiofsd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if proc_state(virtiofsd) == Some('Z') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proc_state(virtiofsd), Some('Z'), "a zombie before the stop");
    s.runtime.stop_sandbox(&id, &started.state).await.unwrap();
    assert_eq!(proc_state(virtiofsd), None, "reaped by the stop");
    s.runtime.remove_sandbox(&id, &started.state).await.unwrap();
}

#[tokio::test]
async fn a_failed_launch_undoes_virtiofsd_and_the_directory() {
    let s = setup(Duration::from_secs(10));
    s.hv.fail_launch(|_| LaunchError::Missing {
        what: "QEMU binary",
        path: "/nope/qemu".into(),
    });
    let id = id(2);
    let err = s.runtime.start_sandbox(&id, &pod("a")).await.unwrap_err();
    assert_eq!(err.kind, RuntimeErrorKind::Unavailable);
    assert!(
        runtime_api::report(&err).contains("/nope/qemu"),
        "{}",
        runtime_api::report(&err)
    );
    assert!(
        !s.state_dir.join(&id).exists(),
        "the pod directory is removed"
    );
    assert_eq!(virtiofsd_processes(&s.state_dir.join(&id)), 0);
}

#[tokio::test]
async fn a_guest_that_never_answers_times_out_and_is_stopped() {
    let s = setup(Duration::from_millis(800));
    s.agent.refuse_connections(true);
    let id = id(3);
    let err = s
        .runtime
        .start_sandbox(&id, &pod("slow"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, RuntimeErrorKind::DeadlineExceeded);
    assert!(err.to_string().contains("did not come up"), "{err}");
    assert_eq!(s.hv.pid_of(&id), None, "the VM was stopped");
    assert!(!s.state_dir.join(&id).exists());
    assert_eq!(virtiofsd_processes(&s.state_dir.join(&id)), 0);
}

#[tokio::test]
async fn a_vm_that_dies_is_reported_and_not_readopted() {
    let mut s = setup(Duration::from_secs(10));
    let id = id(4);
    let started = s.runtime.start_sandbox(&id, &pod("x")).await.unwrap();
    assert!(s.hv.exit_vm(&id));
    let event = tokio::time::timeout(Duration::from_secs(5), s.events.recv())
        .await
        .expect("an exit event in time")
        .unwrap();
    assert!(
        matches!(&event, RuntimeEvent::SandboxExited { id: got, reason } if *got == id && reason.contains("exited unexpectedly")),
        "{event:?}"
    );
    assert!(!s.runtime.adopt_sandbox(&id, &started.state).await.unwrap());
    s.runtime.remove_sandbox(&id, &started.state).await.unwrap();
}

#[tokio::test]
async fn a_restarted_runtime_readopts_running_vms_and_sweeps_orphans() {
    let s = setup(Duration::from_secs(10));
    let (kept, orphan) = (id(5), id(6));
    let kept_pod = s.runtime.start_sandbox(&kept, &pod("kept")).await.unwrap();
    let orphan_pod = s
        .runtime
        .start_sandbox(&orphan, &pod("orphan"))
        .await
        .unwrap();
    let orphan_pid = state_of(&orphan_pod.state).pid;

    // A second runtime over the same state directory, as after a restart.
    let (tx, _events) = mpsc::unbounded_channel();
    let config = VmRuntimeConfig {
        boot_timeout: Duration::from_secs(5),
        ..runtime_config_of(&s)
    };
    let again = VmRuntime::new(config, s.hv.clone(), tx);
    assert!(again.adopt_sandbox(&kept, &kept_pod.state).await.unwrap());
    let known = HashSet::from([kept.clone()]);
    assert_eq!(again.sweep_orphans(&known), 1);
    assert!(gone(orphan_pid).await, "the orphan's VM was killed");
    assert!(!s.state_dir.join(&orphan).exists());
    assert!(s.state_dir.join(&kept).exists());
    assert!(runs(state_of(&kept_pod.state).pid));
    // The re-adopted VM is stopped through the new runtime.
    again.remove_sandbox(&kept, &kept_pod.state).await.unwrap();
    assert!(gone(state_of(&kept_pod.state).pid).await);
    for virtiofsd in [&kept_pod, &orphan_pod].map(|p| state_of(&p.state).virtiofsd_pid) {
        // The orphan's virtiofsd dies with its socket's peer in production;
        // here the stand-in is only reaped when it is ours to stop.
        if let Some(pid) = virtiofsd
            && runs(pid)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn runtime_config_of(s: &Setup) -> VmRuntimeConfig {
    let dir = s.state_dir.parent().unwrap();
    VmRuntimeConfig {
        state_dir: s.state_dir.clone(),
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd"),
        modules: None,
        default_vcpus: 1,
        default_memory_mib: 256,
        accel: AccelMode::Tcg,
        boot_timeout: Duration::from_secs(10),
        extra_cmdline: Vec::new(),
        networks: None,
        virtiofsd: dir.join("virtiofsd"),
        containers_dir: dir.join("layers"),
        max_vcpus: 4,
        max_memory_mib: 2048,
        cgroup_root: None,
        handler: "test".into(),
        pool: 0,
    }
}

/// Live stand-in virtiofsd processes serving a socket under `dir`.
fn virtiofsd_processes(dir: &Path) -> usize {
    let needle = format!("--socket-path={}", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let text = String::from_utf8_lossy(c);
            text.starts_with("fake-virtiofsd") && text.contains(&needle)
        })
        .count()
}
