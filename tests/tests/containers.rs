//! Containers in pod VMs through the CRI socket: images from a real registry
//! on 127.0.0.1, real QEMU VMs under TCG, the agent creating containers with
//! libcontainer inside the guest.

use std::path::Path;
use std::time::{Duration, Instant};

use cri::proto;
use e2e::workload::TestPod;
use tonic::Code;

/// VM tests share two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `(stream, tag, content)` of each line of container `name`'s log.
fn log_lines(pod: &TestPod, name: &str) -> Vec<(String, String, String)> {
    let text =
        std::fs::read_to_string(pod.logs.path().join(name).join("0.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "malformed CRI log line {l:?}");
            assert!(
                chrono_like(parts[0]),
                "timestamp {:?} is not RFC3339Nano",
                parts[0]
            );
            (parts[1].into(), parts[2].into(), parts[3].into())
        })
        .collect()
}

/// `2026-11-24T09:00:00.123456789Z`: date, time with nanoseconds, UTC.
fn chrono_like(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 30 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[29] == b'Z'
}

/// `config` sharing the pod's PID namespace.
fn shared_pid(mut config: proto::ContainerConfig) -> proto::ContainerConfig {
    config.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                pid: proto::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn stdout_lines(log: &[(String, String, String)]) -> Vec<String> {
    log.iter()
        .filter(|(s, _, _)| s == "stdout")
        .map(|(_, _, c)| c.clone())
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

#[tokio::test]
async fn run_to_completion_logs_and_process_settings() {
    let _serial = SERIAL.lock().await;
    let mut pod = TestPod::start("box-a", |c| {
        c.dns_config = Some(proto::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
    })
    .await
    .unwrap();

    // Image defaults: Entrypoint + Cmd, WorkingDir, Env.
    let id = pod.run(pod.container("defaults", &[])).await;
    let s = pod.wait_exit(&id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert_eq!(
        stdout_lines(&log_lines(&pod, "defaults")),
        ["image-default"]
    );
    assert!(s.started_at > 0 && s.finished_at >= s.started_at);
    assert_eq!(
        s.log_path,
        pod.logs.path().join("defaults/0.log").display().to_string()
    );

    // Args replace Cmd; envs override the image's; stderr and the exit code.
    let mut c = pod.container(
        "merge",
        &["echo $A $B $C; pwd; id -u; id -G; hostname; cat /etc/resolv.conf; echo oops >&2; exit 3"],
    );
    c.envs = vec![
        proto::KeyValue {
            key: "B".into(),
            value: "cri".into(),
        },
        proto::KeyValue {
            key: "C".into(),
            value: "new".into(),
        },
    ];
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            supplemental_groups: vec![7],
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.run(c).await;
    let s = pod.wait_exit(&id).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    let log = log_lines(&pod, "merge");
    assert_eq!(
        stdout_lines(&log),
        [
            "image cri new",
            "/work",
            "1000",
            "1000 7 50",
            "box-a",
            "search default.svc.cluster.local",
            "nameserver 10.96.0.10",
            "options ndots:5",
        ]
    );
    assert!(log.contains(&("stderr".into(), "F".into(), "oops".into())));

    // Command replaces the entrypoint; working_dir; a line longer than 16 KiB
    // is split into P pieces; run_as_user / run_as_group.
    let mut c = pod.container("long", &[]);
    c.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "pwd; id -u; id -g; head -c 40000 /dev/zero | tr '\\0' x; echo".into(),
    ];
    c.working_dir = "/tmp".into();
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 4242 }),
            run_as_group: Some(proto::Int64Value { value: 4343 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.run(c).await;
    pod.wait_exit(&id).await;
    let log = log_lines(&pod, "long");
    assert_eq!(stdout_lines(&log)[..3], ["/tmp", "4242", "4343"]);
    let pieces: Vec<&(String, String, String)> = log[3..].iter().collect();
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert!(pieces[..pieces.len() - 1].iter().all(|(_, t, _)| t == "P"));
    assert_eq!(pieces.last().unwrap().1, "F");
    let joined: String = pieces.iter().map(|(_, _, c)| c.as_str()).collect();
    assert_eq!(joined, "x".repeat(40000));

    // The image's setuid-root /bin/euid raises privileges in a container
    // (security_contexts_mean_the_same_in_both_runtimes) but is inert on the
    // host: the host's view of a container's root filesystem is nosuid and
    // nodev, while the guest still sees the mode through the share.
    let rootfs = pod
        .daemon
        .state_dir()
        .join(&pod.id)
        .join("shared")
        .join(&id)
        .join("rootfs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let options = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&rootfs.to_str().unwrap()))
        .map(|f| f[5].to_owned())
        .unwrap_or_else(|| panic!("{} is not mounted", rootfs.display()));
    assert!(
        options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"),
        "{options}"
    );
    let mode = std::fs::metadata(rootfs.join("bin/euid")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777,
        0o4755,
        "the file keeps its setuid mode, which virtiofsd serves to the guest"
    );

    // Containers that share the pod's PID namespace see each other, and not
    // the guest's own processes (agent, kernel threads).
    let a = shared_pid(pod.container("pid-a", &["sleep 100001"]));
    pod.run(a).await;
    let b = shared_pid(pod.container("pid-b", &["sleep 100002"]));
    let b = pod.run(b).await;
    let ps = pod
        .exec(&b, "ps -o args; ls /proc | grep -c '^[0-9]'")
        .await;
    let out = text(&ps.stdout);
    assert!(out.contains("sleep 100001"), "{out}");
    let count: u32 = out.lines().last().unwrap().parse().unwrap();
    assert!(count < 10, "the guest's processes are visible: {out}");

    // List filters.
    let listed = pod
        .rt
        .list_containers(proto::ListContainersRequest {
            filter: Some(proto::ContainerFilter {
                label_selector: [("app".to_string(), "merge".to_string())].into(),
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.as_ref().unwrap().name, "merge");

    // Remove is idempotent and removes the writable layer.
    let layers = pod.daemon.dir_path().join("root/layers");
    assert!(
        layers.join(&id).exists(),
        "no writable layer at {}",
        layers.display()
    );
    for _ in 0..2 {
        pod.rt
            .remove_container(proto::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
    }
    assert!(!layers.join(&id).exists());
    let gone = pod
        .rt
        .container_status(proto::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn security_mounts_exec_stop_oom_and_restart() {
    let _serial = SERIAL.lock().await;
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from-host").unwrap();
    std::os::unix::fs::symlink(&data, host.path().join("link")).unwrap();
    // A shared mount point, for host-to-container propagation.
    let prop = host.path().join("prop");
    std::fs::create_dir(&prop).unwrap();
    sh(&format!(
        "mount --bind {0} {0} && mount --make-shared {0}",
        prop.display()
    ));
    let profile = host.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();

    let mut pod = TestPod::start("box-b", |c| {
        c.linux = Some(proto::LinuxPodSandboxConfig {
            sysctls: [
                ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                (
                    "net.ipv4.ip_unprivileged_port_start".to_string(),
                    "80".to_string(),
                ),
            ]
            .into(),
            ..Default::default()
        });
    })
    .await
    .unwrap();

    let mut c = pod.container("secure", &["sleep 100000"]);
    let mount =
        |container: &str, host: &Path, readonly: bool, propagation: proto::MountPropagation| {
            proto::Mount {
                container_path: container.into(),
                host_path: host.display().to_string(),
                readonly,
                propagation: propagation as i32,
                ..Default::default()
            }
        };
    c.mounts = vec![
        mount(
            "/vol",
            &host.path().join("link"),
            false,
            proto::MountPropagation::PropagationPrivate,
        ),
        mount(
            "/ro",
            &data,
            true,
            proto::MountPropagation::PropagationPrivate,
        ),
        mount(
            "/prop",
            &prop,
            false,
            proto::MountPropagation::PropagationHostToContainer,
        ),
    ];
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            readonly_rootfs: true,
            no_new_privs: true,
            // What the kubelet sends for a pod without shareProcessNamespace.
            namespace_options: Some(proto::NamespaceOption {
                pid: proto::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            // The kubelet always sends its default lists; these stand for them.
            masked_paths: vec!["/proc/timer_list".into(), "/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            capabilities: Some(proto::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            }),
            seccomp: Some(proto::SecurityProfile {
                profile_type: proto::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        resources: Some(proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
    });
    let secure = pod.run(c).await;
    // CPU and memory limits are in the container's cgroup in the guest.
    let limits = pod
        .exec(
            &secure,
            "g=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $g/cpu.max $g/memory.max $g/cpu.weight",
        )
        .await;
    let limits = text(&limits.stdout);
    let lines: Vec<&str> = limits.lines().collect();
    assert_eq!(lines[..2], ["50000 100000", "67108864"], "{limits}");
    assert_ne!(
        lines.get(2),
        Some(&"100"),
        "cpu shares not applied: {limits}"
    );

    // Volumes: symlinked path resolved on the host, read-write and read-only.
    assert_eq!(
        text(&pod.exec(&secure, "cat /vol/file").await.stdout),
        "from-host"
    );
    let w = pod
        .exec(&secure, "echo guest > /vol/new && cat /vol/new")
        .await;
    assert_eq!((w.exit_code, text(&w.stdout)), (0, "guest".into()));
    assert_eq!(
        std::fs::read_to_string(data.join("new")).unwrap(),
        "guest\n"
    );
    assert_ne!(pod.exec(&secure, "touch /ro/x").await.exit_code, 0);
    // Read-only root filesystem.
    let ro = pod.exec(&secure, "touch /work/x").await;
    assert_ne!(ro.exit_code, 0);
    assert!(
        text(&ro.stderr).contains("Read-only"),
        "{}",
        text(&ro.stderr)
    );
    // Host-to-container propagation: a mount made on the host afterwards shows up.
    let sub = prop.join("sub");
    std::fs::create_dir(&sub).unwrap();
    sh(&format!(
        "mount -t tmpfs tmpfs {0} && echo fresh > {0}/f",
        sub.display()
    ));
    let mut seen = String::new();
    for _ in 0..20 {
        seen = text(&pod.exec(&secure, "cat /prop/sub/f 2>&1").await.stdout);
        if seen == "fresh" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sh(&format!("umount -l {}", sub.display()));
    assert_eq!(seen, "fresh");

    // Capabilities, no_new_privs, masked paths, sysctls, seccomp RuntimeDefault.
    let caps = pod
        .exec(&secure, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
        .await;
    let caps = text(&caps.stdout);
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(eff & (1 << 12), 0, "CAP_NET_ADMIN missing: {caps}");
    assert_eq!(eff & 1, 0, "CAP_CHOWN not dropped: {caps}");
    assert_eq!(eff & (1 << 21), 0, "CAP_SYS_ADMIN present: {caps}");
    assert!(caps.contains("NoNewPrivs:\t1"), "{caps}");
    // A masked file is /dev/null bind-mounted over it: a character device.
    let masked = pod
        .exec(
            &secure,
            "[ -c /proc/timer_list ] && echo masked; wc -c < /proc/timer_list",
        )
        .await;
    assert_eq!(
        text(&masked.stdout),
        "masked\n0",
        "/proc/timer_list is not masked"
    );
    let sysctl = pod
        .exec(
            &secure,
            "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start",
        )
        .await;
    assert_eq!(text(&sysctl.stdout), "1\n80");
    let ro = pod
        .exec(&secure, "echo 0 > /proc/sys/kernel/shm_rmid_forced")
        .await;
    assert_ne!(ro.exit_code, 0, "/proc/sys is not read-only");
    // A Localhost seccomp profile read on the host: mkdir is refused.
    let mut c = pod.container("local-seccomp", &["sleep 100000"]);
    c.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            seccomp: Some(proto::SecurityProfile {
                profile_type: proto::security_profile::ProfileType::Localhost as i32,
                localhost_ref: profile.display().to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let local = pod.run(c).await;
    let denied = pod.exec(&local, "mkdir /tmp/d").await;
    assert_ne!(denied.exit_code, 0);
    assert!(
        text(&denied.stderr).contains("not permitted"),
        "{}",
        text(&denied.stderr)
    );
    assert_eq!(pod.exec(&local, "touch /tmp/f").await.exit_code, 0);

    let sc = pod
        .exec(&secure, "grep -H Seccomp: /proc/1/status /proc/self/status")
        .await;
    let sc = text(&sc.stdout);
    assert!(
        sc.lines().count() == 2 && sc.lines().all(|l| l.ends_with('2')),
        "no seccomp filter: {sc}"
    );

    // Containers share the pod's network, UTS and /dev/shm, not their PIDs.
    pod.run(pod.container(
        "server",
        &["echo shared > /dev/shm/x; httpd -f -p 8080 -h /work"],
    ))
    .await;
    let mut fetched = String::new();
    for _ in 0..20 {
        let r = pod
            .exec(
                &secure,
                "wget -q -O - http://127.0.0.1:8080/ 2>&1; echo rc=$?",
            )
            .await;
        fetched = text(&r.stdout);
        if !fetched.contains("refused") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!fetched.contains("refused"), "{fetched}");
    assert_eq!(
        text(&pod.exec(&secure, "cat /dev/shm/x").await.stdout),
        "shared"
    );
    assert_eq!(text(&pod.exec(&secure, "hostname").await.stdout), "box-b");
    // PID 1 of its own namespace is the container's process, not the agent.
    let init = pod.exec(&secure, "tr '\\0' ' ' < /proc/1/cmdline").await;
    let init = text(&init.stdout);
    assert!(
        init.contains("sleep 100000"),
        "PID namespace is shared: {init}"
    );
    // Exec'd processes start with no signal ignored or blocked (the agent's
    // own ignored SIGPIPE does not leak in).
    let signals = pod
        .exec(&secure, "exec grep -E '^Sig(Ign|Blk)' /proc/self/status")
        .await;
    let signals = text(&signals.stdout);
    assert_eq!(signals.matches("0000000000000000").count(), 2, "{signals}");

    // ExecSync: exit code and timeout (the process is killed).
    let r = pod.exec(&secure, "echo out; echo err >&2; exit 7").await;
    assert_eq!(
        (r.exit_code, text(&r.stdout), text(&r.stderr)),
        (7, "out".into(), "err".into())
    );
    let started = Instant::now();
    let late = pod.exec_with(&secure, "sleep 30", 1).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(started.elapsed() < Duration::from_secs(25));
    let left = pod.exec(&secure, "ps -o args | grep -c '^sleep 30'").await;
    assert_eq!(text(&left.stdout), "0", "the timed-out exec left a process");

    // 20 ExecSyncs at once (a probe while a user execs): each gets its own
    // output, none fails.
    let mut calls = Vec::new();
    for n in 0..20 {
        let mut rt = pod.rt.clone();
        let req = proto::ExecSyncRequest {
            container_id: secure.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), format!("echo exec-{n}")],
            timeout: 120,
        };
        calls.push(tokio::spawn(async move { rt.exec_sync(req).await }));
    }
    for (n, call) in calls.into_iter().enumerate() {
        let out = call
            .await
            .unwrap()
            .expect("a concurrent ExecSync")
            .into_inner();
        assert_eq!((out.exit_code, text(&out.stdout)), (0, format!("exec-{n}")));
    }

    // Restart the daemon: the container keeps running and is still reachable.
    pod.daemon.restart().await.unwrap();
    pod.rt = pod.daemon.runtime().await.unwrap();
    let s = pod.status(&secure).await;
    assert_eq!(s.state, proto::ContainerState::ContainerRunning as i32);
    assert_eq!(
        text(&pod.exec(&secure, "cat /vol/file").await.stdout),
        "from-host"
    );

    // Stop: SIGTERM ignored, SIGKILL after the timeout.
    let stubborn = pod
        .run(pod.container("stubborn", &["trap '' TERM; while true; do sleep 1; done"]))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
    let waited = started.elapsed();
    let s = pod.status(&stubborn).await;
    assert_eq!(
        (s.state, s.exit_code),
        (proto::ContainerState::ContainerExited as i32, 137)
    );
    assert!(
        waited >= Duration::from_secs(2),
        "stopped before the timeout: {waited:?}"
    );
    // Client-chosen timeouts near i64::MAX seconds saturate, never panic.
    let huge = pod
        .exec_with(&secure, "echo fine", i64::MAX)
        .await
        .expect("ExecSync with a huge timeout");
    assert_eq!((huge.exit_code, text(&huge.stdout)), (0, "fine".into()));
    let polite = pod
        .run(pod.container(
            "polite",
            &["trap 'exit 3' TERM; while true; do sleep 1; done"],
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: polite.clone(),
            timeout: i64::MAX,
        })
        .await
        .expect("StopContainer with a huge timeout");
    let s = pod.status(&polite).await;
    assert_eq!(
        (s.state, s.exit_code),
        (proto::ContainerState::ContainerExited as i32, 3)
    );
    // The agent is still there for the next call.
    assert_eq!(text(&pod.exec(&secure, "echo alive").await.stdout), "alive");
    // Stop of an unknown id succeeds.
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: "0".repeat(64),
            timeout: 0,
        })
        .await
        .unwrap();

    // OOM: over its memory limit the container is killed with reason OOMKilled.
    let mut c = pod.container("hog", &["tail /dev/zero"]);
    c.linux = Some(proto::LinuxContainerConfig {
        resources: Some(proto::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hog = pod.run(c).await;
    let s = pod.wait_exit(&hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));

    // ReopenContainerLog: after a rotation the new file gets the new lines;
    // for a stopped container it fails and creates nothing.
    let ticker = pod
        .run(pod.container("ticker", &["while true; do echo tick; sleep 0.2; done"]))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let path = pod.logs.path().join("ticker/0.log");
    std::fs::rename(&path, pod.logs.path().join("ticker/0.log.1")).unwrap();
    pod.rt
        .reopen_container_log(proto::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        stdout_lines(&log_lines(&pod, "ticker"))
            .iter()
            .any(|l| l == "tick")
    );
    let stubborn_log = pod.logs.path().join("stubborn/0.log");
    let _ = std::fs::remove_file(&stubborn_log);
    let err = pod
        .rt
        .reopen_container_log(proto::ReopenContainerLogRequest {
            container_id: stubborn.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!stubborn_log.exists());

    // Host devices are never silently dropped from a VM pod: a character
    // device cannot pass into a VM, and the refusal names it.
    let mut with_device = pod.container("with-device", &["true"]);
    with_device.devices = vec![proto::Device {
        container_path: "/dev/myzero".into(),
        host_path: "/dev/zero".into(),
        permissions: "rw".into(),
    }];
    let err = pod.create(with_device).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("/dev/zero") && err.message().contains("character device"),
        "{err:?}"
    );

    // The image of existing containers cannot be removed: FailedPrecondition
    // naming them, and their root filesystems stay intact.
    let mut images = pod.daemon.images().await.unwrap();
    let err = images
        .remove_image(proto::RemoveImageRequest {
            image: Some(proto::ImageSpec {
                image: pod.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&ticker) && err.message().contains("in use"),
        "{err:?}"
    );
    let intact = pod.exec(&ticker, "cat /etc/group && ls /bin | wc -l").await;
    assert_eq!(intact.exit_code, 0, "{}", text(&intact.stderr));
    assert!(text(&intact.stdout).starts_with("root:x:0:"));

    sh(&format!("umount -l {}", prop.display()));
}

fn sh(script: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script} failed");
}
