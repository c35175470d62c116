//! Pod networking with Debian's CNI plugins, real namespaces and real VMs.

use std::path::Path;
use std::process::Command;

use cri::proto;
use e2e::{Daemon, pids_with_arg, pod_config, pod_status, run_pod, workload};
use tonic::Code;

/// These tests look at host-wide state (namespaces, iptables): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ping(ip: &str) -> bool {
    Command::new("ping")
        .args(["-c", "2", "-W", "3", ip])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_qemu(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu"))
}

fn ipam_file(ip: &str) -> String {
    format!("/var/lib/cni/networks/frakti/{ip}")
}

fn netns(id: &str) -> String {
    format!("/run/netns/frakti-{id}")
}

#[tokio::test]
async fn pods_get_reachable_ips_and_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let registry = e2e::registry::Registry::start(None).await.unwrap();
    let image = workload::push_box(&registry).await.unwrap();
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    workload::pull(&daemon, &image).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let mut config = pod_config("net-a", &[]);
    config.port_mappings.push(proto::PortMapping {
        protocol: proto::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18_081,
        host_ip: String::new(),
    });
    let a = run_pod(&mut c, config.clone()).await.unwrap();
    let config_b = pod_config("net-b", &[]);
    let b = run_pod(&mut c, config_b.clone()).await.unwrap();

    let ip_of = |status: &proto::PodSandboxStatus| status.network.clone().unwrap().ip;
    let ip_a = ip_of(&pod_status(&mut c, &a).await.unwrap().0);
    let (status_b, info_b) = pod_status(&mut c, &b).await.unwrap();
    let ip_b = ip_of(&status_b);
    // CNI CHECK passes on a healthy pod (the default network speaks CNI 1.0.0).
    // Pod B has no hostPorts: Debian's portmap 1.1.1 fails CHECK for IPv4-only
    // mappings (it looks for an ip6tables chain it never created).
    assert_eq!(info_b["network_check"], "ok", "{info_b}");
    assert!(
        ip_a.starts_with("10.77.") && ip_b.starts_with("10.77."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);

    // The guests answer on their pod IPs: traffic crosses veth, tc and tap into the VM.
    assert!(ping(&ip_a), "pod A at {ip_a} does not answer");
    assert!(ping(&ip_b), "pod B at {ip_b} does not answer");

    // An HTTP server in a container of pod A answers on the pod IP (from the
    // host and from pod B) and on its hostPort at 127.0.0.1.
    let server = workload::container(
        &image,
        "web",
        "mkdir -p /www && echo hello-from-a > /www/index.html && httpd -f -p 80 -h /www",
    );
    workload::run_container(&mut c, &a, &config, server)
        .await
        .unwrap();
    let client = workload::container(&image, "client", "sleep 100000");
    let client = workload::run_container(&mut c, &b, &config_b, client)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(r) = http.get(format!("http://{ip_a}/")).send().await {
            body = r.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(body.trim(), "hello-from-a");
    let via_host_port = http
        .get("http://127.0.0.1:18081/")
        .send()
        .await
        .expect("hostPort 18081 on 127.0.0.1")
        .text()
        .await
        .unwrap();
    assert_eq!(via_host_port.trim(), "hello-from-a");
    let from_b = c
        .exec_sync(proto::ExecSyncRequest {
            container_id: client,
            cmd: vec![
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "-".into(),
                format!("http://{ip_a}/"),
            ],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&from_b.stdout).trim(),
        "hello-from-a",
        "pod B cannot reach pod A: {}",
        String::from_utf8_lossy(&from_b.stderr)
    );

    // What CNI and frakti set up is really there.
    assert!(Path::new(&netns(&a)).exists());
    let links = sh(&format!("ip -n frakti-{a} -o link"));
    assert!(links.contains("eth0") && links.contains("tap0"), "{links}");
    assert!(Path::new(&ipam_file(&ip_a)).exists());
    assert!(
        sh("iptables -t nat -S").contains("18081"),
        "no hostPort DNAT rule"
    );

    // Stop A: DEL ran, the namespace is gone, B is untouched.
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: a.clone(),
    })
    .await
    .unwrap();
    assert!(!Path::new(&netns(&a)).exists());
    assert!(
        !Path::new(&ipam_file(&ip_a)).exists(),
        "IPAM allocation of {ip_a} left"
    );
    assert!(
        !sh("iptables -t nat -S").contains("18081"),
        "hostPort rule left"
    );
    assert!(!ping(&ip_a));
    assert!(ping(&ip_b));
    // Stopping again is fine.
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: a.clone(),
    })
    .await
    .unwrap();
    for id in [&a, &b] {
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    assert!(!Path::new(&netns(&b)).exists());
    assert!(!Path::new(&ipam_file(&ip_b)).exists());
    assert!(!sh("ip -o link").contains(&a[..8]));
}

#[tokio::test]
async fn stop_after_daemon_restart_runs_del() {
    let _serial = SERIAL.lock().await;
    let mut daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let id = run_pod(&mut c, pod_config("net-restart", &[]))
        .await
        .unwrap();
    let ip = pod_status(&mut c, &id).await.unwrap().0.network.unwrap().ip;
    daemon.kill(libc::SIGKILL);
    daemon.restart().await.unwrap();
    let mut c = daemon.runtime().await.unwrap();
    // The IP survives the restart in the record.
    assert_eq!(
        pod_status(&mut c, &id).await.unwrap().0.network.unwrap().ip,
        ip
    );
    assert!(ping(&ip));
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        !Path::new(&ipam_file(&ip)).exists(),
        "DEL did not run after the restart"
    );
    assert!(!Path::new(&netns(&id)).exists());
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

#[tokio::test]
async fn broken_cni_config_is_reported_and_cleaned_up() {
    let _serial = SERIAL.lock().await;
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let conf_dir = daemon.dir_path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let network_ready = async |c: &mut proto::runtime_service_client::RuntimeServiceClient<_>| {
        let s = c
            .status(proto::StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        s.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap()
    };

    // A plugin that does not exist: NetworkReady=false naming it; pods refused.
    std::fs::write(
        conf_dir.join("10-missing.conflist"),
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let cond = network_ready(&mut c).await;
    assert!(!cond.status);
    assert_eq!(cond.reason, "NetworkPluginNotReady");
    assert!(cond.message.contains("no-such-plugin"), "{}", cond.message);
    let before = sh("ls /run/netns");
    let err = run_pod(&mut c, pod_config("broken-1", &[]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("no-such-plugin"),
        "{}",
        err.message()
    );

    // A plugin that fails: the error names it, and nothing is left behind.
    std::fs::write(
        conf_dir.join("10-missing.conflist"),
        r#"{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"bridge","bridge":"frakti-bad0",
            "ipam":{"type":"host-local","ranges":[[{"subnet":"not-a-subnet"}]]}}]}"#,
    )
    .unwrap();
    let err = run_pod(&mut c, pod_config("broken-2", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert!(
        err.message().contains("CNI plugin bridge ADD failed"),
        "{}",
        err.message()
    );
    assert_eq!(
        sh("ls /run/netns"),
        before,
        "a network namespace was left behind"
    );
    let state = daemon.state_dir().display().to_string();
    let vms: Vec<i32> = pids_with_arg(&state)
        .into_iter()
        .filter(|p| is_qemu(*p))
        .collect();
    assert!(vms.is_empty(), "a VM was left: {vms:?}");
    let list = c
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap();
    assert!(list.into_inner().items.is_empty());

    // The directory is read anew: removing the broken file brings the default back.
    std::fs::remove_file(conf_dir.join("10-missing.conflist")).unwrap();
    assert!(network_ready(&mut c).await.status);
}

#[tokio::test]
async fn dual_stack_pod() {
    let _serial = SERIAL.lock().await;
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let conf_dir = daemon.dir_path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let ipam = daemon.dir_path().join("ipam");
    std::fs::write(
        conf_dir.join("10-dual.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"dual","plugins":[{{"type":"bridge","bridge":"frakti-t6",
            "isGateway":true,"ipMasq":true,"ipam":{{"type":"host-local","dataDir":"{}",
            "ranges":[[{{"subnet":"10.78.0.0/16"}}],[{{"subnet":"fd78::/64"}}]],
            "routes":[{{"dst":"0.0.0.0/0"}},{{"dst":"::/0"}}]}}}}]}}"#,
            ipam.display()
        ),
    )
    .unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let id = run_pod(&mut c, pod_config("dual", &[])).await.unwrap();
    let net = pod_status(&mut c, &id).await.unwrap().0.network.unwrap();
    assert!(net.ip.starts_with("10.78."), "{net:?}");
    let v6 = net
        .additional_ips
        .first()
        .map(|ip| ip.ip.clone())
        .unwrap_or_default();
    assert!(v6.starts_with("fd78::"), "{net:?}");
    assert!(ping(&net.ip), "IPv4 {} does not answer", net.ip);
    let v6_ok = Command::new("ping")
        .args(["-6", "-c", "2", "-W", "3", &v6])
        .output()
        .unwrap();
    assert!(v6_ok.status.success(), "IPv6 {v6} does not answer");
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(ipam.join("dual"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10.") || n.starts_with("fd"))
        .collect();
    assert!(left.is_empty(), "IPAM allocations left: {left:?}");
    let _ = Command::new("ip")
        .args(["link", "del", "frakti-t6"])
        .status();
}

/// A CNI plugin (shell) whose result has two interfaces in the pod: `eth0`
/// on 10.201.0.0/24 and `net1` on 10.202.0.0/24, each a veth to the host.
const TWO_INTERFACES_PLUGIN: &str = r#"#!/bin/sh
set -e
short=$(echo "$CNI_CONTAINERID" | cut -c1-8)
ns=$(basename "$CNI_NETNS")
case "$CNI_COMMAND" in
ADD)
  ip link add "fa$short" type veth peer name "$CNI_IFNAME" address 02:00:0a:c9:00:02 netns "$ns"
  ip link add "fb$short" type veth peer name net1 address 02:00:0a:ca:00:02 netns "$ns"
  ip addr add 10.201.0.1/24 dev "fa$short"
  ip addr add 10.202.0.1/24 dev "fb$short"
  ip link set "fa$short" up
  ip link set "fb$short" up
  ip -n "$ns" link set "$CNI_IFNAME" up
  ip -n "$ns" link set net1 up
  cat <<JSON
{"cniVersion":"1.0.0",
 "interfaces":[{"name":"fa$short"},{"name":"$CNI_IFNAME","mac":"02:00:0a:c9:00:02","sandbox":"$CNI_NETNS"},
               {"name":"fb$short"},{"name":"net1","mac":"02:00:0a:ca:00:02","sandbox":"$CNI_NETNS"}],
 "ips":[{"address":"10.201.0.2/24","gateway":"10.201.0.1","interface":1},
        {"address":"10.202.0.2/24","interface":3}],
 "routes":[{"dst":"0.0.0.0/0"}]}
JSON
  ;;
DEL)
  ip link del "fa$short" 2>/dev/null || true
  ip link del "fb$short" 2>/dev/null || true
  ;;
VERSION)
  echo '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}'
  ;;
esac
"#;

#[tokio::test]
async fn several_interfaces_become_several_nics() {
    let _serial = SERIAL.lock().await;
    let bin = tempfile::tempdir().unwrap();
    let plugin = bin.path().join("two-interfaces");
    std::fs::write(&plugin, TWO_INTERFACES_PLUGIN).unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bins = format!("{},/usr/lib/cni,/opt/cni/bin", bin.path().display());
    let daemon = Daemon::start(&["--accel", "tcg", "--cni-bin-dir", &bins])
        .await
        .unwrap();
    let conf_dir = daemon.dir_path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-two.conflist"),
        r#"{"cniVersion":"1.0.0","name":"two","plugins":[{"type":"two-interfaces"}]}"#,
    )
    .unwrap();
    let mut c = daemon.runtime().await.unwrap();
    let id = run_pod(&mut c, pod_config("two-nics", &[])).await.unwrap();
    let (status, _) = pod_status(&mut c, &id).await.unwrap();
    let network = status.network.unwrap();
    assert_eq!(network.ip, "10.201.0.2");
    assert_eq!(network.additional_ips[0].ip, "10.202.0.2");
    // Each address answers through its own NIC of the VM.
    assert!(ping("10.201.0.2"), "eth0's address does not answer");
    assert!(ping("10.202.0.2"), "net1's address does not answer");
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!sh("ip -o link").contains(&format!("fa{}", &id[..8])));
}
