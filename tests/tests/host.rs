//! Mixed runtimes: pods that need the node run as namespace containers on
//! the host, behind the same socket as the VM pods. Real processes, real
//! namespaces, real cgroups, a real CNI network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cri::proto;
use e2e::workload::{TestPod, container, get_through_forward, pull, push_box, run_container};
use e2e::{Daemon, pod_config, pod_status, process_running};
use streaming::client::{CommandIo, PortForwarder, exec_spdy};
use streaming::protocol::SPDY_REMOTECOMMAND;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const OS_CONTAINER: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";
const RUNNING: i32 = proto::ContainerState::ContainerRunning as i32;
const EXITED: i32 = proto::ContainerState::ContainerExited as i32;

/// One host test at a time: they share the node's namespaces.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_owned)
        .collect()
}

/// An OS-container pod: its own network (CNI), UTS, IPC and PID namespaces
/// on the host; logs, exec, port-forward, a daemon SIGKILL and restart with
/// containers running and exiting meanwhile, and nothing left after removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_os_container_pod_runs_on_the_host_and_survives_a_daemon_restart() {
    let _serial = SERIAL.lock().await;
    let mut pod = TestPod::start("hostpod", |c| {
        c.annotations.insert(OS_CONTAINER.into(), "true".into());
    })
    .await
    .unwrap();
    let (status, info) = pod_status(&mut pod.rt, &pod.id).await.unwrap();
    assert_eq!(info["runtime"], "host", "{info}");
    assert_eq!(info["runtime_handler"], "host", "{info}");
    let pod_ip = status.network.unwrap().ip;
    assert!(!pod_ip.is_empty(), "no pod IP");
    let lease = Path::new("/var/lib/cni/networks/frakti").join(&pod_ip);
    assert!(lease.exists(), "no IPAM lease at {}", lease.display());
    let listed = pod
        .rt
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed[0].runtime_handler, "host");
    let netns = PathBuf::from(info["netns"].as_str().unwrap());
    let pod_dir = PathBuf::from(info["dir"].as_str().unwrap());
    let holder = info["pidHolder"]["pid"].as_i64().unwrap() as i32;
    assert!(process_running(holder));

    // The node's kernel, the pod's own hostname and network namespace.
    let mut printer = pod.container(
        "printer",
        &["trap '' TERM; cat /proc/sys/kernel/random/boot_id; hostname; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"],
    );
    // The hugepage limits a kubelet sends for the node's sizes, even where
    // the hugetlb controller is not mounted.
    printer.linux.get_or_insert_default().resources = Some(proto::LinuxContainerResources {
        hugepage_limits: ["2MB", "1GB"]
            .map(|size| proto::HugepageLimit {
                page_size: size.into(),
                limit: 0,
            })
            .to_vec(),
        ..Default::default()
    });
    // A host device, as runc gives it: a node with the host's numbers, and
    // the access asked for.
    printer.devices = vec![proto::Device {
        container_path: "/dev/myzero".into(),
        host_path: "/dev/zero".into(),
        permissions: "rw".into(),
    }];
    let printer = pod.run(printer).await;
    let log = pod.logs.path().join("printer/0.log");
    wait_for("the printer's first lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("line 2"))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let first: Vec<&str> = text
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap())
        .collect();
    assert_eq!(first[0], host_boot_id(), "{text}");
    assert_eq!(first[1], "hostpod");
    assert!(
        text.lines().all(|l| l.split(' ').nth(1) == Some("stdout")),
        "{text}"
    );
    let signals = pod
        .exec(&printer, "exec grep -E '^Sig(Ign|Blk)' /proc/self/status")
        .await;
    let signals = String::from_utf8_lossy(&signals.stdout).into_owned();
    assert_eq!(signals.matches("0000000000000000").count(), 2, "{signals}");
    let inside = pod
        .exec(
            &printer,
            "readlink /proc/self/ns/net; id -u; echo err >&2; exit 7",
        )
        .await;
    assert_eq!(inside.exit_code, 7);
    assert_eq!(String::from_utf8_lossy(&inside.stderr), "err\n");
    let net_inode = sh(&format!("stat -L -c net:[%i] {}", netns.display()));
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout)
            .lines()
            .next()
            .unwrap(),
        net_inode
    );
    let zero = pod
        .exec(
            &printer,
            "stat -c '%F %t:%T' /dev/myzero; head -c 3 /dev/myzero | od -An -tx1",
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&zero.stdout),
        "character special file 1:5\n 00 00 00\n",
        "{}",
        String::from_utf8_lossy(&zero.stderr)
    );
    let err = pod.exec_with(&printer, "sleep 30", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let cinfo = pod.info(&printer).await["runtime"].clone();
    assert_eq!(cinfo["runtime"], "host", "{cinfo}");
    let cgroup = cinfo["cgroup"].as_str().unwrap().to_owned();
    let memory_cgroup = Path::new("/sys/fs/cgroup/memory").join(cgroup.trim_start_matches('/'));
    let init = cinfo["pid"].as_i64().unwrap() as i32;
    let procs = std::fs::read_to_string(memory_cgroup.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|p| p == init.to_string()), "{procs}");

    // UpdateContainerResources reaches the container's cgroup.
    let update = |linux: proto::LinuxContainerResources| proto::UpdateContainerResourcesRequest {
        container_id: printer.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    pod.rt
        .update_container_resources(update(proto::LinuxContainerResources {
            cpu_shares: 512,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        }))
        .await
        .unwrap();
    let cpu_cgroup = Path::new("/sys/fs/cgroup/cpu").join(cgroup.trim_start_matches('/'));
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap().trim().to_owned();
    assert_eq!(read(cpu_cgroup.join("cpu.shares")), "512");
    assert_eq!(read(cpu_cgroup.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(memory_cgroup.join("memory.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    // Swap alone: the memory limit stays, memory plus swap is set.
    pod.rt
        .update_container_resources(update(proto::LinuxContainerResources {
            memory_swap_limit_in_bytes: 384 << 20,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        read(memory_cgroup.join("memory.memsw.limit_in_bytes")),
        (384u64 << 20).to_string()
    );
    let s = pod.status(&printer).await;
    let linux = s.resources.unwrap().linux.unwrap();
    assert_eq!(
        (
            linux.cpu_shares,
            linux.memory_limit_in_bytes,
            linux.memory_swap_limit_in_bytes
        ),
        (512, 256 << 20, 384 << 20),
        "unset fields keep their limits"
    );
    // cgroup v2 settings on this v1 host are refused, saying why.
    let err = pod
        .rt
        .update_container_resources(update(proto::LinuxContainerResources {
            unified: [("memory.high".to_owned(), "100M".to_owned())].into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cgroup v2"), "{err:?}");
    // The container sees its own cgroups, with the new limit.
    let seen = pod
        .exec(&printer, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout).trim(),
        (256u64 << 20).to_string()
    );
    let err = pod
        .rt
        .update_container_resources(update(proto::LinuxContainerResources {
            cpu_period: 10,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(read(cpu_cgroup.join("cpu.shares")), "512");

    // Port-forward reaches a server on the pod's loopback.
    let web = pod.container(
        "web",
        &["mkdir -p /tmp/www && echo host-page > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"],
    );
    pod.run(web).await;
    let url = pod
        .rt
        .port_forward(proto::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let forwarder = PortForwarder::connect(&url).await.unwrap();
    get_through_forward(&forwarder, 8080, "host-page").await;
    forwarder.close().await;

    // Attach with stdin to a `cat`: what goes in comes out; a terminal exec
    // sees its size.
    let mut echo = pod.container("echo", &["exec cat"]);
    echo.stdin = true;
    let echo = pod.run(echo).await;
    let url = pod
        .rt
        .attach(proto::AttachRequest {
            container_id: echo.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (out_w, mut out_r) = tokio::io::duplex(64 * 1024);
    let (mut in_w, in_r) = tokio::io::duplex(4096);
    let io = CommandIo {
        stdin: Some(Box::new(in_r)),
        stdout: Some(Box::new(out_w)),
        stderr: None,
        resize: None,
        tty: false,
    };
    let session = tokio::spawn(async move { exec_spdy(&url, SPDY_REMOTECOMMAND, io).await });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains("ping-through-attach") {
        in_w.write_all(b"ping-through-attach\n").await.unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), out_r.read(&mut buf)).await
        {
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(Instant::now() < deadline, "attach echoed nothing: {seen:?}");
    }
    session.abort();
    let req = proto::ExecRequest {
        container_id: echo.clone(),
        cmd: vec!["sh".into(), "-c".into(), e2e::PRINT_TERMINAL_SIZE.into()],
        tty: true,
        stdout: true,
        ..Default::default()
    };
    let url = pod.rt.exec(req).await.unwrap().into_inner().url;
    let (out_w, mut out_r) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(streaming::TerminalSize {
        width: 91,
        height: 17,
    })
    .unwrap();
    let io = CommandIo {
        stdin: None,
        stdout: Some(Box::new(out_w)),
        stderr: None,
        resize: Some(rx),
        tty: true,
    };
    let status = exec_spdy(&url, SPDY_REMOTECOMMAND, io).await.unwrap();
    drop(tx);
    let mut out = Vec::new();
    out_r.read_to_end(&mut out).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out).contains("17 91"),
        "{status:?}: {out:?}"
    );

    // The daemon dies; the containers do not, their logs go on, and an
    // exit while it is down is not lost.
    let short = pod.container("short", &["sleep 2; echo bye; exit 3"]);
    let short = pod.run(short).await;
    pod.daemon.kill(libc::SIGKILL);
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        after > before + 3,
        "the log stopped with the daemon: {before} -> {after}"
    );
    assert!(process_running(init), "the container died with the daemon");
    pod.daemon.restart().await.unwrap();
    pod.rt = pod.daemon.runtime().await.unwrap();
    assert_eq!(pod.status(&printer).await.state, RUNNING);
    let s = pod.status(&short).await;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (EXITED, 3, "Error"),
        "{s:?}"
    );
    let short_log = std::fs::read_to_string(pod.logs.path().join("short/0.log")).unwrap();
    assert!(short_log.contains("stdout F bye"), "{short_log}");
    // The re-adopted container still answers exec, and its exit is seen.
    assert_eq!(pod.exec(&printer, "true").await.exit_code, 0);
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: printer.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    let s = pod.status(&printer).await;
    // The printer ignores SIGTERM: SIGKILL after the 1 s timeout.
    assert_eq!((s.state, s.exit_code), (EXITED, 137), "{s:?}");
    assert!(!process_running(init));

    // Removal leaves nothing behind.
    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    assert!(!netns.exists(), "netns {} left", netns.display());
    assert!(!lease.exists(), "IPAM lease {} left", lease.display());
    assert!(!pod_dir.exists(), "pod dir {} left", pod_dir.display());
    assert!(
        !memory_cgroup.exists(),
        "cgroup {} left",
        memory_cgroup.display()
    );
    let pod_cgroup = Path::new("/sys/fs/cgroup/memory/frakti").join(&pod.id);
    assert!(!pod_cgroup.exists(), "cgroup {} left", pod_cgroup.display());
    assert!(!process_running(holder), "the PID namespace holder is left");
    let left = mounts_under(pod.daemon.dir_path());
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let sockets = pod.daemon.state_dir().join("host/c").display().to_string();
    let left = e2e::pids_with_arg(&sockets);
    assert!(left.is_empty(), "monitors left: {left:?}");
    let rules = sh("iptables-save 2>/dev/null || true");
    assert!(
        !rules.contains(&pod.id[..12]),
        "iptables rules left: {rules}"
    );
}

/// Pods in the node's namespaces, privileged pods, each routing rule, and
/// the same question to a VM pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_namespaces_privileges_and_routing() {
    let _serial = SERIAL.lock().await;
    let registry = e2e::registry::Registry::start(None).await.unwrap();
    let image = push_box(&registry).await.unwrap();
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    pull(&daemon, &image).await.unwrap();
    let mut rt = daemon.runtime().await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let tag = std::process::id();

    let run = |name: &str, handler: &str, tweak: &dyn Fn(&mut proto::PodSandboxConfig)| {
        let mut config = pod_config(name, &[]);
        config.log_directory = logs.path().display().to_string();
        tweak(&mut config);
        (
            proto::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            },
            config,
        )
    };
    let node_ns = |network: i32, pid: i32, ipc: i32| {
        move |c: &mut proto::PodSandboxConfig| {
            let linux = c.linux.get_or_insert_with(Default::default);
            let sc = linux.security_context.get_or_insert_with(Default::default);
            sc.namespace_options = Some(proto::NamespaceOption {
                network,
                pid,
                ipc,
                ..Default::default()
            });
        }
    };
    const POD: i32 = proto::NamespaceMode::Pod as i32;
    const CONTAINER: i32 = proto::NamespaceMode::Container as i32;
    const NODE: i32 = proto::NamespaceMode::Node as i32;

    // Host things the pods must (or must not) see.
    let dummy = format!("frk{tag}");
    sh(&format!("ip link add {dummy} type veth peer name {dummy}p"));
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let shm_id = sh("ipcmk -M 4096 | grep -o '[0-9]*$'");

    async fn one_shot(
        rt: &mut proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
        req: proto::RunPodSandboxRequest,
        config: proto::PodSandboxConfig,
        image: &str,
        script: &str,
        privileged: bool,
    ) -> (String, String) {
        let id = rt
            .run_pod_sandbox(req)
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        let mut c = container(image, "probe", "sleep 600");
        if privileged {
            c.linux = Some(proto::LinuxContainerConfig {
                security_context: Some(proto::LinuxContainerSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let cid = run_container(rt, &id, &config, c).await.unwrap();
        let out = rt
            .exec_sync(proto::ExecSyncRequest {
                container_id: cid,
                cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                timeout: 30,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            out.exit_code,
            0,
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (id, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    // hostNetwork: the node's interfaces; no CNI IP.
    let (req, config) = run("hostnet", "", &node_ns(NODE, CONTAINER, POD));
    let (id, out) = one_shot(
        &mut rt,
        req,
        config,
        &image,
        &format!("cat /sys/class/net/{dummy}/ifindex; cat /proc/sys/kernel/random/boot_id"),
        false,
    )
    .await;
    let (status, info) = pod_status(&mut rt, &id).await.unwrap();
    assert_eq!(info["runtime"], "host", "{info}");
    assert_eq!(info["hostNetwork"], true);
    assert!(status.network.unwrap().ip.is_empty());
    let ifindex = sh(&format!("cat /sys/class/net/{dummy}/ifindex"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, [ifindex.as_str(), host_boot_id().as_str()]);

    // hostPID: a host process is visible.
    let (req, config) = run("hostpid", "", &node_ns(POD, NODE, POD));
    let (_, out) = one_shot(
        &mut rt,
        req,
        config,
        &image,
        &format!("cat /proc/{}/cmdline | tr '\\0' ' '", sleeper.id()),
        false,
    )
    .await;
    assert_eq!(out.trim(), "sleep 600");

    // hostIPC: a host SysV segment is visible.
    let (req, config) = run("hostipc", "", &node_ns(POD, CONTAINER, NODE));
    let (_, out) = one_shot(&mut rt, req, config, &image, "cat /proc/sysvipc/shm", false).await;
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(shm_id.as_str())),
        "{out}"
    );
    // ... while a pod with its own IPC namespace does not see it.
    let (req, config) = run("ownipc", "host", &|_| {});
    let (_, out) = one_shot(&mut rt, req, config, &image, "cat /proc/sysvipc/shm", false).await;
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(shm_id.as_str())),
        "{out}"
    );

    // Privileged: host devices, writable /sys, and a bridge it may create
    // in its own network namespace; a mount it makes under a bidirectional
    // mount shows on the host.
    let shared = tempfile::tempdir().unwrap();
    let shared_path = shared.path().display().to_string();
    sh(&format!(
        "mount --bind {shared_path} {shared_path} && mount --make-rshared {shared_path}"
    ));
    let (req, config) = run("privileged", "", &|c| {
        let linux = c.linux.get_or_insert_with(Default::default);
        linux.security_context = Some(proto::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    });
    let id = rt
        .run_pod_sandbox(req)
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut c = container(&image, "probe", "sleep 600");
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    c.mounts = vec![proto::Mount {
        container_path: "/mnt/shared".into(),
        host_path: shared_path.clone(),
        propagation: proto::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let cid = run_container(&mut rt, &id, &config, c).await.unwrap();
    let out = rt
        .exec_sync(proto::ExecSyncRequest {
            container_id: cid,
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "ip link add frakti-br0 type bridge && cat /sys/class/net/frakti-br0/type && test -e /dev/kmsg && mkdir /mnt/shared/sub && mount -t tmpfs made-in-pod /mnt/shared/sub && echo ok".into(),
            ],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\nok\n");
    assert!(
        !Path::new("/sys/class/net/frakti-br0").exists(),
        "the bridge is in the pod's namespace, not the node's"
    );
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        host_mounts
            .lines()
            .any(|l| l.contains(&format!("{shared_path}/sub")) && l.contains("made-in-pod")),
        "the pod's mount did not reach the host"
    );
    // A BIDIRECTIONAL mount of a private host path is refused, naming it.
    let private = tempfile::tempdir().unwrap();
    let mut c = container(&image, "private", "sleep 600");
    c.mounts = vec![proto::Mount {
        container_path: "/mnt/p".into(),
        host_path: private.path().display().to_string(),
        propagation: proto::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let err = rt
        .create_container(proto::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(c),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("/mnt/p"), "{err:?}");
    rt.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    let _ = Command::new("umount")
        .arg(format!("{shared_path}/sub"))
        .status();
    let _ = Command::new("umount").arg(&shared_path).status();

    // The same question to a VM pod: its own kernel.
    let (req, config) = run("vmpod", "", &|_| {});
    let (id, out) = one_shot(
        &mut rt,
        req,
        config,
        &image,
        "cat /proc/sys/kernel/random/boot_id",
        false,
    )
    .await;
    assert_ne!(out.trim(), host_boot_id());
    let (_, info) = pod_status(&mut rt, &id).await.unwrap();
    assert_eq!(info["runtime_handler"], "frakti", "{info}");

    let _ = sleeper.kill();
    let _ = sleeper.wait();
    sh(&format!("ip link del {dummy}; ipcrm -m {shm_id}"));

    // host_pods = false: the host handler is refused, naming the setting.
    drop(rt);
    drop(daemon);
    let strict = Daemon::start(&["--accel", "tcg", "--host-pods", "false"])
        .await
        .unwrap();
    let mut rt = strict.runtime().await.unwrap();
    let (req, _) = run("refused", "host", &|_| {});
    let err = rt.run_pod_sandbox(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("host_pods = false"), "{err:?}");
}

/// One security-context case: what the container asks, what it runs, what
/// it must print.
struct SecurityCase {
    name: &'static str,
    tweak: fn(&mut proto::LinuxContainerSecurityContext),
    script: &'static str,
    expect: &'static str,
}

const SECURITY_CASES: &[SecurityCase] = &[
    SecurityCase {
        name: "user",
        tweak: |sc| {
            sc.run_as_user = Some(proto::Int64Value { value: 1000 });
            sc.run_as_group = Some(proto::Int64Value { value: 50 });
        },
        script: "id -u; id -g",
        expect: "1000\n50",
    },
    SecurityCase {
        // web (1000) is in group staff (50) in the image's /etc/group.
        name: "groups-merge",
        tweak: |sc| {
            sc.run_as_user = Some(proto::Int64Value { value: 1000 });
            sc.supplemental_groups = vec![4000];
        },
        script: "id -G",
        expect: "1000 50 4000",
    },
    SecurityCase {
        name: "groups-strict",
        tweak: |sc| {
            sc.run_as_user = Some(proto::Int64Value { value: 1000 });
            sc.supplemental_groups = vec![4000];
            sc.supplemental_groups_policy = proto::SupplementalGroupsPolicy::Strict as i32;
        },
        script: "id -G",
        expect: "1000 4000",
    },
    SecurityCase {
        name: "setuid",
        // The image's /bin/euid is setuid root and prints "uid euid".
        tweak: |sc| sc.run_as_user = Some(proto::Int64Value { value: 1000 }),
        script: "/bin/euid",
        expect: "1000 0",
    },
    SecurityCase {
        name: "setuid-no-new-privs",
        tweak: |sc| {
            sc.run_as_user = Some(proto::Int64Value { value: 1000 });
            sc.no_new_privs = true;
        },
        script: "/bin/euid",
        expect: "1000 1000",
    },
    SecurityCase {
        name: "readonly-rootfs",
        tweak: |sc| sc.readonly_rootfs = true,
        script: "touch /x 2>/dev/null && echo writable || echo readonly",
        expect: "readonly",
    },
    SecurityCase {
        name: "default-caps",
        tweak: |_| {},
        script: "grep CapEff /proc/self/status",
        expect: "CapEff:\t00000000a80425fb",
    },
    SecurityCase {
        name: "caps",
        tweak: |sc| {
            sc.capabilities = Some(proto::Capability {
                add_capabilities: vec!["NET_RAW".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            });
        },
        script: "grep CapEff /proc/self/status",
        expect: "CapEff:\t0000000000002000",
    },
    SecurityCase {
        name: "no-new-privs",
        tweak: |sc| sc.no_new_privs = true,
        script: "grep NoNewPrivs /proc/self/status",
        expect: "NoNewPrivs:\t1",
    },
    SecurityCase {
        name: "seccomp",
        tweak: |sc| {
            sc.seccomp = Some(proto::SecurityProfile {
                profile_type: proto::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            });
        },
        script: "grep Seccomp: /proc/self/status",
        expect: "Seccomp:\t2",
    },
    SecurityCase {
        name: "masked-and-readonly-paths",
        // As the kubelet sends them for procMount Default.
        tweak: |sc| {
            sc.masked_paths = ["/proc/kcore", "/proc/keys", "/proc/timer_list"]
                .map(String::from)
                .to_vec();
            sc.readonly_paths = ["/proc/sys", "/proc/sysrq-trigger"]
                .map(String::from)
                .to_vec();
        },
        script: "wc -c < /proc/timer_list; (echo 1 > /proc/sys/kernel/shm_rmid_forced) 2>/dev/null && echo rw || echo ro",
        expect: "0\nro",
    },
];

/// The same security contexts mean the same in a VM pod and in a host pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_mean_the_same_in_both_runtimes() {
    let _serial = SERIAL.lock().await;
    let mut pod = TestPod::start("secvm", |_| {}).await.unwrap();
    let mut host_config = pod_config("sechost", &[]);
    host_config.log_directory = pod.logs.path().display().to_string();
    host_config
        .annotations
        .insert(OS_CONTAINER.into(), "true".into());
    let host_id = pod
        .rt
        .run_pod_sandbox(proto::RunPodSandboxRequest {
            config: Some(host_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let vm = (pod.id.clone(), pod.config.clone());
    for case in SECURITY_CASES {
        for (runtime, (pod_id, config)) in [
            ("vm", &vm),
            ("host", &(host_id.clone(), host_config.clone())),
        ] {
            let name = format!("{runtime}-{}", case.name);
            let mut c = container(&pod.image, &name, case.script);
            let mut sc = proto::LinuxContainerSecurityContext::default();
            (case.tweak)(&mut sc);
            c.linux = Some(proto::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            });
            let (id, code, out) = run_to_end(&mut pod, pod_id, config, c).await;
            assert_eq!((code, out.as_str()), (0, case.expect), "{name}");
            if case.name == "groups-strict" {
                // ContainerStatus.user: the groups the process really had.
                let user = pod.status(&id).await.user.and_then(|u| u.linux);
                let user = user.unwrap_or_else(|| panic!("{name}: no ContainerStatus.user"));
                assert_eq!((user.uid, user.gid), (1000, 1000), "{name}: {user:?}");
                assert_eq!(user.supplemental_groups, [4000], "{name}: {user:?}");
            }
        }
    }

    // A read-only mount whose host source has a submount: the submount stays
    // writable, unless the mount is recursive_read_only.
    let vol = tempfile::tempdir().unwrap();
    let sub = e2e::Tmpfs::mount(&vol.path().join("sub"), None).unwrap();
    let volume =
        |recursive_read_only, readonly, propagation: proto::MountPropagation| proto::Mount {
            container_path: "/v".into(),
            host_path: vol.path().display().to_string(),
            readonly,
            recursive_read_only,
            propagation: propagation as i32,
            ..Default::default()
        };
    let private = proto::MountPropagation::PropagationPrivate;
    let script = "for d in /v /v/sub; do (touch $d/x) 2>/dev/null && echo rw || echo ro; done";
    for (runtime, (pod_id, config)) in [
        ("vm", &vm),
        ("host", &(host_id.clone(), host_config.clone())),
    ] {
        for (kind, recursive, expect) in [("ro", false, "ro\nrw"), ("rro", true, "ro\nro")] {
            let name = format!("{runtime}-{kind}-submount");
            let mut c = container(&pod.image, &name, script);
            c.mounts = vec![volume(recursive, true, private)];
            let (_, code, out) = run_to_end(&mut pod, pod_id, config, c).await;
            assert_eq!((code, out.as_str()), (0, expect), "{name}");
        }
        // The API: recursive_read_only needs readonly and private propagation.
        for (bad, what) in [
            (volume(true, false, private), "needs readonly"),
            (
                volume(
                    true,
                    true,
                    proto::MountPropagation::PropagationHostToContainer,
                ),
                "PROPAGATION_PRIVATE",
            ),
        ] {
            let mut c = container(&pod.image, &format!("{runtime}-bad-rro"), "true");
            c.mounts = vec![bad];
            let status = run_container(&mut pod.rt, pod_id, config, c)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(what), "{status:?}");
        }
    }
    drop(sub);
    let status = pod
        .rt
        .status(proto::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .runtime_handlers
            .iter()
            .all(|h| h.features.is_some_and(|f| f.recursive_read_only_mounts)),
        "{:?}",
        status.runtime_handlers
    );
    assert!(
        status
            .features
            .is_some_and(|f| f.supplemental_groups_policy),
        "{:?}",
        status.features
    );
}

/// Runs container `c` in pod `pod_id` until it exits: its id, its exit
/// code and its log's lines.
async fn run_to_end(
    pod: &mut TestPod,
    pod_id: &str,
    config: &proto::PodSandboxConfig,
    c: proto::ContainerConfig,
) -> (String, i32, String) {
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = run_container(&mut pod.rt, pod_id, config, c)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let s = pod.wait_exit(&id).await;
    let log = std::fs::read_to_string(pod.logs.path().join(&name).join("0.log")).unwrap();
    let out: Vec<&str> = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    (id, s.exit_code, out.join("\n"))
}
