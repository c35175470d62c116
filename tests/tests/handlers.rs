//! RuntimeClass handlers from the config's `[runtime_handlers.<name>]`
//! tables (TCG): a microvm handler and the default q35 one run pods side by
//! side, each on its own machine; a host-kind handler runs its pod on the
//! host; Status lists every handler; an unknown handler is refused with the
//! known names; a handler whose kernel is missing stops frakti at start.

use std::process::Command;

use cri::proto;
use cri::proto::runtime_service_client::RuntimeServiceClient;
use e2e::registry::Registry;
use e2e::workload::{container, pull, push_box, run_container};
use e2e::{Daemon, frakti_bin, pod_config, pod_status, vm_pid};
use tonic::Code;
use tonic::transport::Channel;

const CONFIG: &str = "[runtime_handlers.fast]\n\
                      machine = \"microvm\"\n\
                      memory = 256\n\
                      overhead_memory = 90\n\
                      [runtime_handlers.runc]\n\
                      kind = \"host\"\n";

async fn run_on(
    rt: &mut RuntimeServiceClient<Channel>,
    name: &str,
    handler: &str,
) -> Result<String, tonic::Status> {
    let req = proto::RunPodSandboxRequest {
        config: Some(pod_config(name, &[])),
        runtime_handler: handler.into(),
    };
    Ok(rt.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id)
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test]
async fn handlers_of_the_config_run_pods_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("frakti.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let registry = Registry::start(None).await.unwrap();
    let image = push_box(&registry).await.unwrap();
    let metrics = format!("127.0.0.1:{}", e2e::free_port().unwrap());
    let daemon = Daemon::start(&[
        "--accel",
        "tcg",
        "--config",
        config.to_str().unwrap(),
        "--metrics-address",
        &metrics,
    ])
    .await
    .unwrap();
    pull(&daemon, &image).await.unwrap();
    let mut rt = daemon.runtime().await.unwrap();

    // Status: every handler, with its features.
    let status = rt
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "fast", "frakti", "host", "runc"]);
    assert!(status.runtime_handlers.iter().all(|h| h.features.is_some()));

    // An unknown handler is refused, naming those there are.
    let err = run_on(&mut rt, "lost", "nope").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("nope") && err.message().contains("fast"),
        "{err:?}"
    );

    // A microvm pod and a q35 pod at once.
    let (fast, slow) = tokio::join!(
        async {
            let mut rt = daemon.runtime().await.unwrap();
            run_on(&mut rt, "fast", "fast").await
        },
        async {
            let mut rt = daemon.runtime().await.unwrap();
            run_on(&mut rt, "slow", "").await
        }
    );
    let (fast, slow) = (fast.unwrap(), slow.unwrap());
    let (fast_status, fast_info) = pod_status(&mut rt, &fast).await.unwrap();
    let (_, slow_info) = pod_status(&mut rt, &slow).await.unwrap();
    assert_eq!(fast_status.runtime_handler, "fast");
    assert!(cmdline(vm_pid(&fast_info)).contains("-M microvm,"));
    assert!(cmdline(vm_pid(&slow_info)).contains("-M q35,"));
    // Each pod's QEMU has a uid of its own, from frakti-vm's range: one
    // cannot signal or trace the other.
    let uids = [&fast_info, &slow_info].map(|info| e2e::process_uid(vm_pid(info)));
    assert_ne!(uids[0], uids[1]);
    for uid in uids {
        assert!(e2e::vm_uids().contains(&uid), "{uid}");
    }
    // The metrics count the VMs of every handler.
    let (_, text) = e2e::scrape(&metrics).await.unwrap();
    assert_eq!(e2e::sample(&text, "frakti_vms", &[]), Some(2.0), "{text}");

    let script = "ls /sys/bus/pci/devices | wc -l; grep MemTotal /proc/meminfo; \
                  ip -4 addr show eth0 | grep -c inet; sleep 100000";
    let config_of = |name| pod_config(name, &[]);
    let mut fast_box = container(&image, "box", script);
    let fast_c = run_container(&mut rt, &fast, &config_of("fast"), fast_box.clone())
        .await
        .unwrap();
    let slow_c = run_container(
        &mut rt,
        &slow,
        &config_of("slow"),
        container(&image, "box", script),
    )
    .await
    .unwrap();
    let exec = async |rt: &mut RuntimeServiceClient<Channel>, id: &str| {
        let out = rt
            .exec_sync(proto::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "ls /sys/bus/pci/devices | wc -l; grep MemTotal /proc/meminfo; \
                     ip -4 addr show eth0 | grep -c inet"
                        .into(),
                ],
                timeout: 30,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.exit_code, 0, "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let fast_out = exec(&mut rt, &fast_c).await;
    let lines: Vec<&str> = fast_out.lines().collect();
    assert_eq!(lines[0].trim(), "0", "no PCI on microvm: {fast_out}");
    let kib: u64 = lines[1].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        kib < 256 * 1024,
        "the handler's 256 MiB, not the default: {fast_out}"
    );
    assert_eq!(lines[2].trim(), "1", "the pod's network: {fast_out}");
    let slow_out = exec(&mut rt, &slow_c).await;
    assert_ne!(slow_out.lines().next().unwrap().trim(), "0", "{slow_out}");

    // No hot-plug on microvm: the VM cannot grow past its boot size.
    fast_box.metadata.as_mut().unwrap().name = "big".into();
    fast_box.linux = Some(proto::LinuxContainerConfig {
        resources: Some(proto::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 30,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = run_container(&mut rt, &fast, &config_of("fast"), fast_box)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // A host-kind handler runs its pod on the host.
    let on_host = run_on(&mut rt, "plain", "runc").await.unwrap();
    let (host_status, host_info) = pod_status(&mut rt, &on_host).await.unwrap();
    assert_eq!(host_status.runtime_handler, "runc");
    assert_eq!(host_info["runtime"], "host", "{host_info}");
}

#[test]
fn a_handler_without_its_kernel_stops_frakti() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("frakti.toml");
    std::fs::write(
        &config,
        "[runtime_handlers.broken]\nkernel = \"/nonexistent/vmlinux\"\n",
    )
    .unwrap();
    // The daemon, and `frakti check`, with that config and private directories.
    let frakti = |extra: &[&str]| {
        Command::new(frakti_bin())
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--listen")
            .arg(dir.path().join("frakti.sock"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = frakti(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"broken\"") && stderr.contains("/nonexistent/vmlinux"),
        "{stderr}"
    );
    assert!(!dir.path().join("frakti.sock").exists());
    // `frakti check` names it too, with the fix.
    let out = frakti(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("fail guest assets: handler broken: guest kernel /nonexistent/vmlinux"),
        "{stdout}"
    );
}
