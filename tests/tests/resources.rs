//! A VM pod follows its resources (TCG): a container created with a CPU
//! limit grows the VM first, UpdateContainerResources hot-plugs vCPUs and
//! memory that the guest sees and uses, shrinks them back, and refuses
//! what is over the maximum; UpdatePodSandboxResources grows it too. The
//! VM runs in a cgroup under the pod's `cgroup_parent` whose limits follow.

use std::time::Duration;

use cri::proto;
use e2e::workload::TestPod;
use tonic::Code;

const MIB: i64 = 1 << 20;

/// What the VM's host cgroup allows above its RAM (the README's figure).
const VMM_OVERHEAD_MIB: u64 = 192;

fn limits(cpu_quota: i64, memory_mib: i64) -> proto::LinuxContainerResources {
    proto::LinuxContainerResources {
        cpu_period: if cpu_quota > 0 { 100_000 } else { 0 },
        cpu_quota,
        memory_limit_in_bytes: memory_mib * MIB,
        ..Default::default()
    }
}

async fn update(
    pod: &mut TestPod,
    id: &str,
    linux: proto::LinuxContainerResources,
) -> Result<(), tonic::Status> {
    pod.rt
        .update_container_resources(proto::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        })
        .await
        .map(drop)
}

/// vCPUs online and `MemTotal` (KiB), as the container sees them.
async fn guest_size(pod: &mut TestPod, id: &str) -> (u32, u64) {
    let out = pod.exec(id, "nproc; grep MemTotal /proc/meminfo").await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let cpus = lines.next().and_then(|l| l.trim().parse().ok()).unwrap();
    let kib = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    (cpus, kib)
}

/// The container's CPU use in cores over `window`, from two stats samples.
async fn cores_used(pod: &mut TestPod, id: &str, window: Duration) -> f64 {
    let sample = async |pod: &mut TestPod| {
        let stats = pod
            .rt
            .container_stats(proto::ContainerStatsRequest {
                container_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let cpu = stats.cpu.unwrap();
        (cpu.timestamp, cpu.usage_core_nano_seconds.unwrap().value)
    };
    let (t0, u0) = sample(pod).await;
    tokio::time::sleep(window).await;
    let (t1, u1) = sample(pod).await;
    (u1 - u0) as f64 / (t1 - t0) as f64
}

/// The v1 controllers a VM's cgroup is made in.
/// The pod cgroup's CPU quota (period 100 ms): 1.5 cores.
const POD_CPU_QUOTA: u64 = 150_000;

const CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "unified"];

/// A `cgroup_parent` of this test's own, as the kubelet makes one for a
/// pod, with a memory limit and a CPU limit of 1.5 cores; removed (after
/// the pod) on drop.
struct PodCgroup(String);

impl PodCgroup {
    fn new(limit_mib: u64) -> Self {
        let path = format!("/frakti-e2e-resize-{}", std::process::id());
        for c in CONTROLLERS {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{c}{path}")).unwrap();
        }
        std::fs::write(
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
            (limit_mib << 20).to_string(),
        )
        .unwrap();
        std::fs::write(
            format!("/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us"),
            POD_CPU_QUOTA.to_string(),
        )
        .unwrap();
        Self(path)
    }

    /// A limit file of the VM's cgroup inside it.
    fn vm(&self, controller: &str, file: &str) -> u64 {
        let path = format!("/sys/fs/cgroup/{controller}{}/vm/{file}", self.0);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for c in CONTROLLERS {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}{}/vm", self.0));
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}{}", self.0));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_pod_grows_and_shrinks_with_its_containers() {
    let parent = PodCgroup::new(900);
    let cgroup_parent = parent.0.clone();
    let mut pod = TestPod::start("resize", |c| {
        c.linux.get_or_insert_default().cgroup_parent = cgroup_parent;
    })
    .await
    .unwrap();
    // QEMU and virtiofsd run in the pod's cgroup, limited to the VM.
    let (_, info) = e2e::pod_status(&mut pod.rt, &pod.id).await.unwrap();
    let qemu = e2e::vm_pid(&info);
    let own = std::fs::read_to_string(format!("/proc/{qemu}/cgroup")).unwrap();
    let vm_cgroup = format!("{}/vm", parent.0);
    assert!(
        own.lines()
            .any(|l| l.contains(":memory:") && l.ends_with(&vm_cgroup)),
        "{own}"
    );
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/memory{vm_cgroup}/cgroup.procs")).unwrap();
    assert!(procs.lines().count() >= 2, "QEMU and virtiofsd: {procs}");
    let overhead = VMM_OVERHEAD_MIB;
    assert_eq!(
        parent.vm("memory", "memory.limit_in_bytes"),
        (256 + overhead) << 20
    );
    assert_eq!(parent.vm("cpu", "cpu.cfs_quota_us"), 100_000);
    // Their tasks are bounded too: a VMM the guest took over cannot fork
    // the host out of pids.
    assert_eq!(parent.vm("pids", "pids.max"), 1024);
    let work = pod.run(pod.container("work", &["sleep 100000"])).await;
    let (cpus, boot_kib) = guest_size(&mut pod, &work).await;
    assert_eq!(cpus, 1, "the pod boots with --cpu 1");
    assert!(boot_kib < 256 * 1024, "{boot_kib} KiB");

    // A container whose CPU limit is more than the VM has: the VM grows
    // first. It carries the hugepage limits a kubelet sends for every size
    // the node has, 1 GB pages included, which the guest kernel lacks.
    let mut quick = pod.container("quick", &["sleep 100000"]);
    quick.linux = Some(proto::LinuxContainerConfig {
        resources: Some(proto::LinuxContainerResources {
            hugepage_limits: ["2MB", "1GB"]
                .map(|size| proto::HugepageLimit {
                    page_size: size.into(),
                    limit: 0,
                })
                .to_vec(),
            ..limits(125_000, 0)
        }),
        ..Default::default()
    });
    let quick = pod.run(quick).await;
    assert_eq!(
        guest_size(&mut pod, &work).await.0,
        2,
        "1.25 CPUs need 2 vCPUs"
    );
    pod.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: quick,
        })
        .await
        .unwrap();

    // 2 CPUs and 384 MiB: the VM has 2 vCPUs and 384 + 128 MiB.
    update(&mut pod, &work, limits(200_000, 384)).await.unwrap();
    let (cpus, grown_kib) = guest_size(&mut pod, &work).await;
    assert_eq!(cpus, 2);
    assert!(
        grown_kib >= boot_kib + 240 * 1024,
        "MemTotal {boot_kib} -> {grown_kib} KiB for 256 MiB more"
    );
    assert_eq!(
        parent.vm("memory", "memory.limit_in_bytes"),
        (512 + overhead) << 20
    );
    // Two vCPUs, but the pod's cgroup allows 1.5 cores: the VM gets those
    // (under cgroup v1 a larger quota below it cannot even be written).
    assert_eq!(parent.vm("cpu", "cpu.cfs_quota_us"), POD_CPU_QUOTA);
    let status = pod.status(&work).await;
    let linux = status.resources.unwrap().linux.unwrap();
    assert_eq!(
        (linux.cpu_quota, linux.memory_limit_in_bytes),
        (200_000, 384 * MIB),
        "the limits in force"
    );
    // The new memory is usable: 300 MiB allocated and written at once.
    let out = pod
        .exec_with(&work, "dd if=/dev/zero of=/dev/null bs=300M count=1", 60)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    // And both vCPUs run: two busy loops use well over one core.
    let out = pod
        .exec(
            &work,
            "for i in 1 2; do timeout 8 sh -c 'while :; do :; done' >/dev/null 2>&1 & done",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cores = cores_used(&mut pod, &work, Duration::from_secs(4)).await;
    assert!(cores > 1.2, "two busy loops used {cores:.2} cores");
    // The loops end by themselves.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Back to 1 CPU and 128 MiB: the VM gives back its vCPU and memory.
    update(&mut pod, &work, limits(100_000, 128)).await.unwrap();
    let (cpus, shrunk_kib) = guest_size(&mut pod, &work).await;
    assert_eq!(cpus, 1);
    assert!(
        shrunk_kib + 128 * 1024 <= grown_kib,
        "MemTotal {grown_kib} -> {shrunk_kib} KiB after giving back 256 MiB"
    );

    assert_eq!(parent.vm("cpu", "cpu.cfs_quota_us"), 100_000);
    assert_eq!(
        parent.vm("memory", "memory.limit_in_bytes"),
        (256 + overhead) << 20
    );

    // Over the maximum (max_cpu is the host's cores, here 2): refused, and
    // the container keeps its limits.
    let err = update(&mut pod, &work, limits(300_000, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_cpu"), "{err:?}");
    let err = update(&mut pod, &work, limits(0, 1 << 30))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_memory"), "{err:?}");
    let linux = pod.status(&work).await.resources.unwrap().linux.unwrap();
    assert_eq!(
        (linux.cpu_quota, linux.memory_limit_in_bytes),
        (100_000, 128 * MIB)
    );
    assert_eq!(guest_size(&mut pod, &work).await.0, 1);

    // The kubelet's pod-level resize: 512 MiB for the pod, 640 MiB for the VM.
    pod.rt
        .update_pod_sandbox_resources(proto::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.id.clone(),
            resources: Some(limits(0, 512)),
            overhead: None,
        })
        .await
        .unwrap();
    let (_, pod_kib) = guest_size(&mut pod, &work).await;
    assert!(
        pod_kib >= shrunk_kib + 360 * 1024,
        "MemTotal {shrunk_kib} -> {pod_kib} KiB for a 640 MiB VM"
    );

    // More than the pod's cgroup (900 MiB) allows: refused.
    let err = update(&mut pod, &work, limits(0, 800)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("pod's cgroup"), "{err:?}");
    assert_eq!(guest_size(&mut pod, &work).await.1, pod_kib);

    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/memory{vm_cgroup}")).exists(),
        "the VM's cgroup goes with the pod"
    );
    drop(parent);
}
