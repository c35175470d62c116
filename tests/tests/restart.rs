//! VM death, daemon SIGKILL and restart with re-adoption.

use std::time::{Duration, Instant};

use cri::proto;
use e2e::{Daemon, pod_config, pod_status, process_running, run_pod, vm_pid};

const READY: i32 = proto::PodSandboxState::SandboxReady as i32;
const NOT_READY: i32 = proto::PodSandboxState::SandboxNotready as i32;

#[tokio::test]
async fn vm_death_and_daemon_restart() {
    let mut daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let doomed = run_pod(&mut c, pod_config("doomed", &[])).await.unwrap();
    let survivor = run_pod(&mut c, pod_config("survivor", &[])).await.unwrap();
    let doomed_pid = vm_pid(&pod_status(&mut c, &doomed).await.unwrap().1);
    let survivor_pid = vm_pid(&pod_status(&mut c, &survivor).await.unwrap().1);

    // kill -9 of QEMU: NOTREADY within a few seconds.
    // SAFETY: kill(2) on the QEMU pid the daemon reported for our pod.
    unsafe { libc::kill(doomed_pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, info) = pod_status(&mut c, &doomed).await.unwrap();
        if status.state == NOT_READY {
            assert!(
                info["state_reason"]
                    .as_str()
                    .unwrap()
                    .contains("exited unexpectedly"),
                "{info}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod still READY 5 s after its VM was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pod_status(&mut c, &survivor).await.unwrap().0.state, READY);

    // SIGKILL of the daemon leaves the VM running; a new daemon re-adopts it.
    daemon.kill(libc::SIGKILL);
    assert!(process_running(survivor_pid));
    daemon.restart().await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let (status, info) = pod_status(&mut c, &survivor).await.unwrap();
    assert_eq!(status.state, READY);
    assert_eq!(vm_pid(&info), survivor_pid);
    // The agent answers the new daemon (reconnect over the same port).
    assert_eq!(info["guest"]["hostname"], "survivor", "{info}");
    assert_eq!(
        pod_status(&mut c, &doomed).await.unwrap().0.state,
        NOT_READY
    );

    // A VM that dies while the daemon is down shows NOTREADY after restart.
    daemon.kill(libc::SIGTERM);
    assert!(
        process_running(survivor_pid),
        "SIGTERM of the daemon must not stop pods"
    );
    // SAFETY: kill(2) on our pod's QEMU while no daemon runs.
    unsafe { libc::kill(survivor_pid, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.restart().await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    assert_eq!(
        pod_status(&mut c, &survivor).await.unwrap().0.state,
        NOT_READY
    );

    // Both can still be stopped and removed.
    for id in [&doomed, &survivor] {
        c.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    let list = c
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap();
    assert!(list.into_inner().items.is_empty());
}

#[tokio::test]
async fn restarted_daemon_stops_adopted_vm() {
    let mut daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let id = run_pod(&mut c, pod_config("adopted", &[])).await.unwrap();
    let pid = vm_pid(&pod_status(&mut c, &id).await.unwrap().1);
    daemon.kill(libc::SIGKILL);
    daemon.restart().await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        !process_running(pid),
        "adopted VM still runs after StopPodSandbox"
    );
    assert_eq!(pod_status(&mut c, &id).await.unwrap().0.state, NOT_READY);
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!daemon.state_dir().join(&id).exists());
}

#[tokio::test]
async fn start_sweeps_pods_without_a_record() {
    // What a daemon killed in the middle of RunPodSandbox leaves: a pod
    // directory and a running process named after the pod, but no record.
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let orphan = "ab".repeat(32);
    let dir = daemon.state_dir().join(&orphan);
    std::fs::create_dir_all(&dir).unwrap();
    let mut stray = std::process::Command::new("python3")
        .args([
            "-c",
            "import time; time.sleep(300)",
            "-name",
            &format!("frakti-{orphan}"),
        ])
        .spawn()
        .unwrap();
    let pid = i32::try_from(stray.id()).unwrap();
    std::fs::write(dir.join("qemu.pid"), format!("{pid}\n")).unwrap();
    // A directory that is not a pod's is left alone.
    std::fs::create_dir_all(daemon.state_dir().join("keep-me")).unwrap();

    let mut daemon = daemon;
    daemon.restart().await.unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Some(_)) = stray.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(exited.is_ok(), "the orphan's process still runs");
    assert!(!dir.exists());
    assert!(daemon.state_dir().join("keep-me").exists());
    assert!(daemon.log().contains("swept the remains"));
}
