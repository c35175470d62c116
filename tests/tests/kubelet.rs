//! A real kubelet on frakti: kubelet 1.20 (CRI `runtime.v1alpha2`), built
//! from Debian's source package by `scripts/kubelet.sh`, runs standalone (no
//! API server) with a static pod. `make test-kubelet` builds it once per
//! machine and runs this test with `FRAKTI_KUBELET` set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri::proto;
use e2e::registry::Registry;
use e2e::workload::push_box;
use e2e::{Daemon, free_port, pids_with_arg};

/// The node name: it makes the static pod's name and its log paths ours.
fn node() -> String {
    format!("frakti-e2e-{}", std::process::id())
}

/// What the kubelet changes on the host, put back when the test ends
/// (also on a panic): the kernel tunables it sets, its cgroup tree, the
/// pod log directories of this node's pods.
struct HostGuard {
    sysctls: Vec<(PathBuf, String)>,
    cgroup_root: String,
    node: String,
    /// Log directories the kubelet makes that were not there before.
    new_dirs: Vec<&'static str>,
}

impl HostGuard {
    fn new(cgroup_root: &str) -> Self {
        let sysctls = [
            "vm/overcommit_memory",
            "vm/panic_on_oom",
            "kernel/panic",
            "kernel/panic_on_oops",
            "kernel/keys/root_maxkeys",
            "kernel/keys/root_maxbytes",
        ]
        .iter()
        .map(|k| Path::new("/proc/sys").join(k))
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|v| (p, v)))
        .collect();
        let new_dirs = LOG_DIRS
            .into_iter()
            .filter(|d| !Path::new(d).exists())
            .collect();
        // The kubelet wants its cgroup root to exist in every hierarchy.
        for hierarchy in hierarchies() {
            let _ = std::fs::create_dir_all(hierarchy.join(cgroup_root.trim_start_matches('/')));
        }
        Self {
            sysctls,
            cgroup_root: cgroup_root.to_owned(),
            node: node(),
            new_dirs,
        }
    }
}

/// Where the kubelet writes container logs (fixed paths in 1.20).
const LOG_DIRS: [&str; 2] = ["/var/log/pods", "/var/log/containers"];

/// Every mounted cgroup hierarchy: the v1 controllers and the unified one.
fn hierarchies() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut list: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    if Path::new("/sys/fs/cgroup/cgroup.procs").exists() {
        list.push("/sys/fs/cgroup".into());
    }
    list
}

/// Removes the cgroup directory `dir` and every cgroup below it.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value);
        }
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                remove_cgroup_tree(&c.path().join(self.cgroup_root.trim_start_matches('/')));
            }
        }
        remove_cgroup_tree(
            &Path::new("/sys/fs/cgroup").join(self.cgroup_root.trim_start_matches('/')),
        );
        for dir in ["/var/log/pods", "/var/log/containers"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(&self.node) {
                    let path = entry.path();
                    let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
        for dir in &self.new_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The kubelet process, stopped when dropped.
struct Kubelet {
    child: Child,
    log: PathBuf,
    /// Its `--root-dir`, which it bind-mounts onto itself (to make it shared).
    root: PathBuf,
}

/// The mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points
}

impl Kubelet {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Kept for a look after the test: the kubelet says why it did what.
        let _ = std::fs::copy(&self.log, e2e::repo_root().join("target/kubelet-test.log"));
        let pid = i32::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: kill(2) on the kubelet this test spawned and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                self.unmount();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.unmount();
    }
}

impl Kubelet {
    /// Takes away the mounts the kubelet made under its root directory.
    fn unmount(&self) {
        use std::os::unix::ffi::OsStrExt;
        for point in mounts_under(&self.root) {
            let Ok(path) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) with a NUL-terminated path that lives
            // through the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  restartPolicy: Always
  # What RuntimeClass admission would set from deploy/runtimeclass.yaml
  # (a standalone kubelet has no API server to look the class up).
  overhead:
    cpu: 250m
    memory: 384Mi
  volumes:
  - name: shared
    emptyDir: {{}}
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo \"$GREETING\" > /www/index.html && httpd -f -vv -p 8080 -h /www & echo $! > /shared/httpd.pid; touch /shared/ready; wait"]
    env:
    - name: GREETING
      value: hello-from-the-manifest
    livenessProbe:
      httpGet:
        path: /
        port: 8080
      initialDelaySeconds: 2
      periodSeconds: 2
      timeoutSeconds: 5
      failureThreshold: 5
    volumeMounts:
    - name: shared
      mountPath: /shared
    resources:
      limits:
        cpu: 500m
        memory: 160Mi
  - name: sidecar
    image: {image}
    command: ["sh", "-c", "while true; do sleep 1; done"]
    readinessProbe:
      exec:
        command: ["cat", "/shared/ready"]
      periodSeconds: 2
      timeoutSeconds: 10
    volumeMounts:
    - name: shared
      mountPath: /shared
    resources:
      limits:
        cpu: 200m
        memory: 64Mi
"#
    )
}

fn kubelet_config(
    dir: &Path,
    cgroup_root: &str,
    read_only: u16,
    secure: u16,
    healthz: u16,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 1s
syncFrequency: 5s
address: 127.0.0.1
port: {secure}
readOnlyPort: {read_only}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
makeIPTablesUtilChains: false
runtimeRequestTimeout: 4m
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
"#,
        manifests = dir.join("manifests").display(),
    )
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(url).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The static pod as the kubelet reports it (`/pods` of the read-only port).
async fn kubelet_pod(port: u16, name: &str) -> Option<serde_json::Value> {
    let pods = get_json(&format!("http://127.0.0.1:{port}/pods")).await?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == name)
        .cloned()
}

fn ready(pod: &serde_json::Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn restarts(pod: &serde_json::Value, container: &str) -> i64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == container))
        .and_then(|s| s["restartCount"].as_i64())
        .unwrap_or(-1)
}

/// Polls `what` every second until it gives a value, or fails after `limit`
/// with the kubelet's log.
async fn until<T, F, Fut>(kubelet: &Kubelet, limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if Instant::now() > deadline {
            let log = kubelet.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{what}: not within {limit:?}; kubelet log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn container_id(
    c: &mut proto::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    name: &str,
) -> Option<String> {
    let list = c
        .list_containers(proto::ListContainersRequest {
            filter: Some(proto::ContainerFilter {
                state: Some(proto::ContainerStateValue {
                    state: proto::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .ok()?
        .into_inner();
    list.containers
        .into_iter()
        .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        .map(|c| c.id)
}

#[tokio::test]
#[ignore = "needs a kubelet: make test-kubelet"]
async fn a_kubelet_runs_a_static_pod_on_frakti() {
    let kubelet_bin = PathBuf::from(
        std::env::var_os("FRAKTI_KUBELET")
            .expect("FRAKTI_KUBELET: the kubelet binary (make test-kubelet)"),
    );
    let registry = Registry::start(None).await.unwrap();
    let image = push_box(&registry).await.unwrap();
    // Dropped after the daemon, which removes its pods (and their VM
    // cgroups inside the kubelet's pod cgroups) first.
    let cgroup_root = format!("/frakti-kubelet-{}", std::process::id());
    let host = HostGuard::new(&cgroup_root);
    let daemon = Daemon::start(&[]).await.unwrap();
    let dir = tempfile::Builder::new()
        .prefix("frakti-kubelet-")
        .tempdir()
        .unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let (read_only, secure, healthz) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let config = dir.join("kubelet.yaml");
    std::fs::write(
        &config,
        kubelet_config(dir, &cgroup_root, read_only, secure, healthz),
    )
    .unwrap();
    let log = dir.join("kubelet.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&kubelet_bin)
        .arg(format!("--config={}", config.display()))
        .arg("--container-runtime=remote")
        .arg(format!(
            "--container-runtime-endpoint=unix://{}",
            daemon.socket().display()
        ))
        .arg(format!("--root-dir={}", dir.join("root").display()))
        .arg(format!("--cert-dir={}", dir.join("pki").display()))
        .arg(format!("--hostname-override={}", node()))
        .arg("--v=3")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let kubelet = Kubelet {
        child,
        log,
        root: dir.join("root"),
    };

    // The kubelet is up and reached frakti through v1alpha2.
    until(
        &kubelet,
        Duration::from_secs(60),
        "kubelet healthz",
        || async {
            let r = reqwest::get(format!("http://127.0.0.1:{healthz}/healthz"))
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    std::fs::write(dir.join("manifests/web.yaml"), manifest(&image)).unwrap();
    let pod_name = format!("web-{}", node());

    // Running and Ready: the liveness probe passes, the readiness probe
    // sees the file the other container wrote into the shared emptyDir.
    let pod = until(
        &kubelet,
        Duration::from_secs(300),
        "the pod Running and Ready",
        || async { kubelet_pod(read_only, &pod_name).await.filter(ready) },
    )
    .await;
    assert_eq!(restarts(&pod, "web"), 0, "{pod}");
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(ip.starts_with("10."), "pod IP from the CNI network: {pod}");

    // The env var reached the container; the pod answers on its IP.
    let body = reqwest::get(format!("http://{ip}:8080/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "hello-from-the-manifest");

    // The limits reached the sandbox; the probes' traffic is in the log.
    let mut c = daemon.runtime().await.unwrap();
    let web = container_id(&mut c, "web").await.expect("web is running");
    let status = c
        .container_status(proto::ContainerStatusRequest {
            container_id: web.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let linux = status
        .resources
        .and_then(|r| r.linux)
        .expect("limits reported");
    assert_eq!(linux.memory_limit_in_bytes, 160 << 20);
    assert_eq!((linux.cpu_quota, linux.cpu_period), (50_000, 100_000));
    let log_path = status.log_path.clone();
    let probes = until(
        &kubelet,
        Duration::from_secs(60),
        "liveness probes in the log",
        || {
            let log_path = log_path.clone();
            async move {
                let text = std::fs::read_to_string(&log_path).ok()?;
                let n = text.matches("response:200").count();
                (n >= 3).then_some(n)
            }
        },
    )
    .await;
    assert!(probes >= 3);

    // /stats/summary: the pod with its CPU and memory.
    let summary = until(
        &kubelet,
        Duration::from_secs(120),
        "the pod in /stats/summary",
        || async {
            let s = get_json(&format!("http://127.0.0.1:{read_only}/stats/summary")).await?;
            let pod = s["pods"]
                .as_array()?
                .iter()
                .find(|p| p["podRef"]["name"] == pod_name)?
                .clone();
            let cpu = pod["cpu"]["usageCoreNanoSeconds"].as_u64()?;
            let memory = pod["memory"]["workingSetBytes"].as_u64()?;
            (cpu > 0 && memory > 0 && pod["containers"].as_array()?.len() == 2).then_some(pod)
        },
    )
    .await;
    assert!(
        summary["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "web"),
        "{summary}"
    );

    // The web server is killed: its container exits and the kubelet
    // restarts it (restartCount 1), Ready again.
    let killed = c
        .exec_sync(proto::ExecSyncRequest {
            container_id: web.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "kill -9 $(cat /shared/httpd.pid)".into(),
            ],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    // 0, or 137 when the container's end (its init waited for the server)
    // took the exec down with it before it returned.
    assert!(
        [0, 137].contains(&killed.exit_code),
        "kill: {} {}",
        killed.exit_code,
        String::from_utf8_lossy(&killed.stderr)
    );
    let pod = until(
        &kubelet,
        Duration::from_secs(180),
        "web restarted once and Ready",
        || async {
            kubelet_pod(read_only, &pod_name)
                .await
                .filter(|p| restarts(p, "web") == 1 && ready(p))
        },
    )
    .await;
    assert_eq!(restarts(&pod, "sidecar"), 0, "{pod}");

    // The manifest goes: the kubelet stops the pod and no VM is left.
    let sandboxes: Vec<String> = c
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(sandboxes.len(), 1, "one sandbox for the pod: {sandboxes:?}");
    let vm_dir = daemon.state_dir().join(&sandboxes[0]).display().to_string();
    assert!(
        !pids_with_arg(&vm_dir).is_empty(),
        "the VM runs under {vm_dir}"
    );
    std::fs::remove_file(dir.join("manifests/web.yaml")).unwrap();
    until(
        &kubelet,
        Duration::from_secs(180),
        "the pod's VM gone",
        || {
            let vm_dir = vm_dir.clone();
            let mut c = c.clone();
            async move {
                let pods = c
                    .list_pod_sandbox(proto::ListPodSandboxRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .items;
                let stopped = pods
                    .iter()
                    .all(|p| p.state == proto::PodSandboxState::SandboxNotready as i32);
                (stopped && pids_with_arg(&vm_dir).is_empty()).then_some(())
            }
        },
    )
    .await;
    drop(kubelet);
    drop(c);
    drop(daemon);
    drop(host);
    // What the kubelet and the pod made on the host is gone again.
    assert_eq!(mounts_under(dir), Vec::<PathBuf>::new(), "mounts left");
    for hierarchy in hierarchies() {
        let left = hierarchy.join(cgroup_root.trim_start_matches('/'));
        assert!(!left.exists(), "{} left behind", left.display());
    }
    for dir in LOG_DIRS {
        let left: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&node()))
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}
