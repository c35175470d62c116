//! Observability against real pods: container and pod stats (CPU rates,
//! memory, network counters, writable layers, filters), container events
//! with several subscribers, complete pod statuses, and the streaming list
//! calls. The same checks run against a host pod and a VM pod (TCG); the VM
//! pod's events also cover a VM killed under its containers. Both scrape
//! the daemon's Prometheus endpoint (the Python client parses it too).

use std::time::{Duration, Instant};

use cri::proto;
use e2e::workload::TestPod;
use e2e::{pod_status, sample, scrape, vm_pid};
use tonic::Code;
use tonic::codec::Streaming;

const OS_CONTAINER: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";
const CREATED: i32 = proto::ContainerEventType::ContainerCreatedEvent as i32;
const STARTED: i32 = proto::ContainerEventType::ContainerStartedEvent as i32;
const STOPPED: i32 = proto::ContainerEventType::ContainerStoppedEvent as i32;
const DELETED: i32 = proto::ContainerEventType::ContainerDeletedEvent as i32;

/// One test at a time: CPU rates need the cores they measure.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn subscribe(pod: &mut TestPod) -> Streaming<proto::ContainerEventResponse> {
    pod.rt
        .get_container_events(proto::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The next event of `events` about `id` (events of other containers are
/// skipped), within `limit`.
async fn next_event(
    events: &mut Streaming<proto::ContainerEventResponse>,
    id: &str,
    limit: Duration,
) -> proto::ContainerEventResponse {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.message())
            .await
            .unwrap_or_else(|_| panic!("no event about {id} within {limit:?}"))
            .expect("the event stream stays healthy")
            .expect("the event stream stays open");
        if event.container_id == id {
            return event;
        }
    }
}

async fn list_stats(
    pod: &mut TestPod,
    filter: proto::ContainerStatsFilter,
) -> Vec<proto::ContainerStats> {
    pod.rt
        .list_container_stats(proto::ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
}

fn of<'a>(stats: &'a [proto::ContainerStats], id: &str) -> &'a proto::ContainerStats {
    stats
        .iter()
        .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
        .unwrap_or_else(|| panic!("no stats for {id} in {stats:?}"))
}

fn nano_cores(s: &proto::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores)
        .map(|v| v.value)
        .expect("a CPU rate")
}

fn working_set(s: &proto::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .expect("a working set")
}

async fn pod_stats(pod: &mut TestPod) -> proto::PodSandboxStats {
    pod.rt
        .pod_sandbox_stats(proto::PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

fn rx_bytes(stats: &proto::PodSandboxStats) -> u64 {
    let network = stats.linux.as_ref().unwrap().network.as_ref().unwrap();
    let default = network.default_interface.as_ref().unwrap();
    assert_eq!(default.name, "eth0");
    default.rx_bytes.unwrap().value
}

/// Every check of this file against one pod; returns the ids of a running
/// container and the open event stream, for the runtime's own last checks.
async fn stats_events_and_statuses(
    pod: &mut TestPod,
) -> (String, Streaming<proto::ContainerEventResponse>) {
    let mut first = subscribe(pod).await;
    let mut second = subscribe(pod).await;

    let burner = pod
        .run(pod.container("burner", &["while :; do :; done"]))
        .await;
    let mut idle = pod.container("idle", &["exec sleep 1000"]);
    idle.linux = Some(proto::LinuxContainerConfig {
        security_context: Some(proto::LinuxContainerSecurityContext {
            run_as_user: Some(proto::Int64Value { value: 1234 }),
            run_as_group: Some(proto::Int64Value { value: 5678 }),
            supplemental_groups: vec![42],
            ..Default::default()
        }),
        ..Default::default()
    });
    let idle = pod.run(idle).await;
    let filler = pod
        .run(pod.container(
            "filler",
            &["a=$(yes abcdefgh | head -c 67108864); touch /tmp/ready; sleep 1000; echo ${#a}"],
        ))
        .await;
    let quitter = pod
        .run(pod.container("quitter", &["sleep 1; exit 3"]))
        .await;

    // Events: each subscriber sees created, started and (on its own) stopped.
    for events in [&mut first, &mut second] {
        for (id, kinds) in [
            (&burner, vec![CREATED, STARTED]),
            (&quitter, vec![CREATED, STARTED, STOPPED]),
        ] {
            for kind in kinds {
                let event = next_event(events, id, Duration::from_secs(60)).await;
                assert_eq!(event.container_event_type, kind, "{event:?}");
                assert!(event.created_at > 0);
                let sandbox = event.pod_sandbox_status.as_ref().unwrap();
                assert_eq!(sandbox.id, pod.id);
                let own = event
                    .containers_statuses
                    .iter()
                    .find(|c| &c.id == id)
                    .expect("the container among the pod's statuses");
                if kind == STOPPED {
                    assert_eq!(own.exit_code, 3, "{own:?}");
                    assert_eq!(own.state, proto::ContainerState::ContainerExited as i32);
                }
            }
        }
    }

    // The identity the idle container's process really has.
    let user = pod.status(&idle).await.user.and_then(|u| u.linux);
    let user = user.expect("ContainerStatus.user");
    assert_eq!((user.uid, user.gid), (1234, 5678), "{user:?}");
    assert!(user.supplemental_groups.contains(&42), "{user:?}");

    // Pod status carries its containers' statuses and when they were taken.
    let resp = pod
        .rt
        .pod_sandbox_status(proto::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.timestamp > 0);
    assert_eq!(resp.containers_statuses.len(), 4);
    assert!(
        resp.containers_statuses
            .iter()
            .any(|c| c.id == quitter && c.exit_code == 3)
    );

    // CPU: two samples; the burner uses most of a core, the idle one nothing.
    let deadline = Instant::now() + Duration::from_secs(120);
    while pod.exec(&filler, "test -f /tmp/ready").await.exit_code != 0 {
        assert!(Instant::now() < deadline, "the filler never filled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    list_stats(pod, Default::default()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = list_stats(pod, Default::default()).await;
    assert_eq!(all.len(), 4, "{all:?}");
    let burning = nano_cores(of(&all, &burner));
    assert!(burning > 500_000_000, "the burner used {burning} ns/s");
    let resting = nano_cores(of(&all, &idle));
    assert!(
        resting < 50_000_000,
        "the idle container used {resting} ns/s"
    );
    let cpu = of(&all, &burner).cpu.unwrap();
    assert!(cpu.timestamp > 0);
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 1_000_000_000);

    // Memory: 64 MiB held by the filler shows in its working set.
    let filled = working_set(of(&all, &filler));
    let empty = working_set(of(&all, &idle));
    assert!(filled >= 64 << 20, "the filler's working set is {filled}");
    assert!(empty < 16 << 20, "the idle working set is {empty}");
    let memory = of(&all, &filler).memory.unwrap();
    assert!(memory.usage_bytes.unwrap().value >= filled);
    assert!(memory.rss_bytes.unwrap().value >= 64 << 20);
    assert!(memory.page_faults.unwrap().value > 0);

    // The writable layer: a file written in the container shows.
    let before = of(&all, &filler).writable_layer.clone().unwrap();
    assert!(!before.fs_id.as_ref().unwrap().mountpoint.is_empty());
    let wrote = pod
        .exec(&filler, "head -c 4194304 /dev/zero > /big && sync")
        .await;
    assert_eq!(wrote.exit_code, 0, "{wrote:?}");
    let after = list_stats(
        pod,
        proto::ContainerStatsFilter {
            id: filler.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after.len(), 1, "a filter by id");
    let layer = after[0].writable_layer.clone().unwrap();
    assert!(
        layer.used_bytes.unwrap().value >= before.used_bytes.unwrap().value + (4 << 20),
        "{before:?} -> {layer:?}"
    );
    assert!(layer.inodes_used.unwrap().value > before.inodes_used.unwrap().value);

    // ImageFsInfo names where the writable layers are, with what they use.
    let fs = pod
        .daemon
        .images()
        .await
        .unwrap()
        .image_fs_info(proto::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let mountpoint = &before.fs_id.as_ref().unwrap().mountpoint;
    let layers = fs
        .container_filesystems
        .iter()
        .find(|f| &f.fs_id.as_ref().unwrap().mountpoint == mountpoint)
        .unwrap_or_else(|| panic!("{mountpoint} not in {fs:?}"));
    assert!(layers.used_bytes.unwrap().value > 0);
    assert!(layers.inodes_used.unwrap().value > 0);
    assert_eq!(
        fs.container_filesystems.len(),
        2,
        "the VM's and the host's: {fs:?}"
    );

    // A stopped container: its attributes and layer, no CPU or memory.
    let stopped = of(&all, &quitter);
    assert!(
        stopped.cpu.is_none() && stopped.memory.is_none(),
        "{stopped:?}"
    );
    assert_eq!(
        stopped
            .attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "quitter"
    );
    assert!(stopped.writable_layer.is_some());

    // Filters: by pod, by label; a single container; unknown ids.
    let by_pod = list_stats(
        pod,
        proto::ContainerStatsFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_pod.len(), 4);
    let by_label = list_stats(
        pod,
        proto::ContainerStatsFilter {
            label_selector: [("app".to_owned(), "burner".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, burner);
    let none = list_stats(
        pod,
        proto::ContainerStatsFilter {
            pod_sandbox_id: "0000".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(none.is_empty());
    let one = pod
        .rt
        .container_stats(proto::ContainerStatsRequest {
            container_id: burner.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(one.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let unknown = pod
        .rt
        .container_stats(proto::ContainerStatsRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let unknown = pod
        .rt
        .pod_sandbox_stats(proto::PodSandboxStatsRequest {
            pod_sandbox_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Pod stats: the pod's CPU and memory, its processes, its containers,
    // and network counters that grow with traffic to the pod IP.
    let (status, _) = pod_status(&mut pod.rt, &pod.id).await.unwrap();
    let ip = status.network.unwrap().ip;
    let before = pod_stats(pod).await;
    let linux = before.linux.as_ref().unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value >= 64 << 20);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 3);
    assert_eq!(linux.containers.len(), 4);
    let ping = std::process::Command::new("ping")
        .args(["-c", "5", "-i", "0.2", "-s", "1000", "-W", "5", &ip])
        .output()
        .unwrap();
    assert!(ping.status.success(), "ping {ip}: {ping:?}");
    let after = pod_stats(pod).await;
    assert!(
        rx_bytes(&after) >= rx_bytes(&before) + 5000,
        "{} -> {}",
        rx_bytes(&before),
        rx_bytes(&after)
    );
    let listed = pod
        .rt
        .list_pod_sandbox_stats(proto::ListPodSandboxStatsRequest {
            filter: Some(proto::PodSandboxStatsFilter {
                id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod.id);
    // The pod's rate comes from the two samples just taken.
    assert!(
        listed[0]
            .linux
            .as_ref()
            .unwrap()
            .cpu
            .unwrap()
            .usage_nano_cores
            .is_some()
    );

    // Metrics: cAdvisor names, one label value per declared key, and the
    // burner's CPU seconds.
    let descriptors = pod
        .rt
        .list_metric_descriptors(proto::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys = |name: &str| {
        descriptors
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no descriptor {name}"))
            .label_keys
            .len()
    };
    let metrics = pod
        .rt
        .list_pod_sandbox_metrics(proto::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert_eq!(metrics.len(), 1);
    let ours = &metrics[0];
    assert_eq!(ours.pod_sandbox_id, pod.id);
    for m in ours
        .metrics
        .iter()
        .chain(ours.container_metrics.iter().flat_map(|c| &c.metrics))
    {
        assert_eq!(m.label_values.len(), keys(&m.name), "{m:?}");
    }
    let rx = ours
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("pod network metrics");
    assert!(rx.value.unwrap().value > 0);
    let burner_cpu = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == burner)
        .and_then(|c| {
            c.metrics
                .iter()
                .find(|m| m.name == "container_cpu_usage_seconds_total")
        })
        .expect("the burner's CPU metric");
    assert!(burner_cpu.value.unwrap().value >= 1, "{burner_cpu:?}");

    // The streaming forms give what the lists give.
    let mut streamed = Vec::new();
    let mut stream = pod
        .rt
        .stream_container_stats(proto::StreamContainerStatsRequest {
            filter: Some(Default::default()),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = stream.message().await.unwrap() {
        streamed.extend(batch.container_stats);
    }
    let mut ids: Vec<String> = streamed
        .iter()
        .map(|s| s.attributes.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    let mut want = vec![
        burner.clone(),
        idle.clone(),
        filler.clone(),
        quitter.clone(),
    ];
    want.sort();
    assert_eq!(ids, want);
    let mut containers = Vec::new();
    let mut stream = pod
        .rt
        .stream_containers(proto::StreamContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = stream.message().await.unwrap() {
        containers.extend(batch.containers);
    }
    let listed = pod
        .rt
        .list_containers(proto::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers, listed);
    let mut sandboxes = Vec::new();
    let mut stream = pod
        .rt
        .stream_pod_sandboxes(proto::StreamPodSandboxesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = stream.message().await.unwrap() {
        sandboxes.extend(batch.pod_sandboxes);
    }
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].id, pod.id);

    // Removing a container is one deleted event for each subscriber.
    pod.rt
        .remove_container(proto::RemoveContainerRequest {
            container_id: quitter.clone(),
        })
        .await
        .unwrap();
    for events in [&mut first, &mut second] {
        let event = next_event(events, &quitter, Duration::from_secs(30)).await;
        assert_eq!(event.container_event_type, DELETED, "{event:?}");
        assert!(event.containers_statuses.iter().all(|c| c.id != quitter));
    }
    drop(second);
    (idle, first)
}

/// Scrapes the daemon of `pod`, which pulled an image, ran the pod on
/// `runtime` and answered calls of every kind; asserts what they left.
async fn scraped_metrics(pod: &TestPod, runtime: &str) -> String {
    let (content_type, text) = scrape(&pod.metrics).await.unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let value = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert!(
        value("frakti_image_pull_bytes_total", &[]).unwrap() > 0.0,
        "{text}"
    );
    let pulled = [("result", "pulled")];
    assert_eq!(
        value("frakti_image_pull_duration_seconds_count", &pulled),
        Some(1.0)
    );
    for phase in ["network", "total"] {
        let labels = [("runtime", runtime), ("phase", phase)];
        assert_eq!(
            value("frakti_pod_start_duration_seconds_count", &labels),
            Some(1.0),
            "phase {phase}: {text}"
        );
    }
    let started = [("method", "StartContainer"), ("code", "OK")];
    assert!(value("frakti_cri_requests_total", &started).unwrap() >= 2.0);
    let unknown = [("method", "ContainerStats"), ("code", "NotFound")];
    assert!(value("frakti_cri_request_errors_total", &unknown).unwrap() >= 1.0);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_pod_is_measured_and_its_containers_report_events() {
    let _serial = SERIAL.lock().await;
    let mut pod = TestPod::start("obs-host", |c| {
        c.annotations.insert(OS_CONTAINER.into(), "true".into());
    })
    .await
    .unwrap();
    let (idle, mut events) = stats_events_and_statuses(&mut pod).await;

    // A stop signal from the container config is used and reported.
    let mut config = pod.container(
        "usr1",
        &["trap 'echo got usr1; exit 0' USR1; touch /tmp/trapped; while :; do sleep 0.1; done"],
    );
    config.stop_signal = proto::Signal::Sigusr1 as i32;
    let usr1 = pod.run(config).await;
    assert_eq!(
        pod.status(&usr1).await.stop_signal,
        proto::Signal::Sigusr1 as i32
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod.exec(&usr1, "test -f /tmp/trapped").await.exit_code != 0 {
        assert!(Instant::now() < deadline, "the trap was never set");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pod.rt
        .stop_container(proto::StopContainerRequest {
            container_id: usr1.clone(),
            timeout: 30,
        })
        .await
        .unwrap();
    let stopped = pod.status(&usr1).await;
    assert_eq!(
        stopped.exit_code, 0,
        "stopped by SIGUSR1, not killed: {stopped:?}"
    );
    assert_eq!(
        pod.status(&idle).await.stop_signal,
        proto::Signal::Sigterm as i32
    );
    let text = scraped_metrics(&pod, "host").await;
    assert_eq!(sample(&text, "frakti_vms", &[]), Some(0.0), "{text}");
    let boot = [("runtime", "vm"), ("phase", "vm_boot")];
    assert_eq!(
        sample(&text, "frakti_pod_start_duration_seconds_count", &boot),
        None
    );

    // Stopping the pod stops its containers: an event each.
    pod.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    let event = next_event(&mut events, &idle, Duration::from_secs(30)).await;
    assert_eq!(event.container_event_type, STOPPED, "{event:?}");
    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_pod_is_measured_and_a_killed_vm_stops_its_containers() {
    let _serial = SERIAL.lock().await;
    let mut pod = TestPod::start("obs-vm", |_| {}).await.unwrap();
    let (idle, mut events) = stats_events_and_statuses(&mut pod).await;

    // The pod's figures are what the VM costs on the host: QEMU's memory
    // at least (the guest's containers hold more than 64 MiB of it).
    let (_, info) = pod_status(&mut pod.rt, &pod.id).await.unwrap();
    let qemu = vm_pid(&info);
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{qemu}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let stats = pod_stats(&mut pod).await;
    let memory = stats.linux.unwrap().memory.unwrap();
    let working_set = memory.working_set_bytes.unwrap().value;
    assert!(
        working_set >= rss_kib * 1024 / 2,
        "the pod's working set {working_set} should include QEMU's {rss_kib} KiB"
    );
    let text = scraped_metrics(&pod, "vm").await;
    assert_eq!(sample(&text, "frakti_vms", &[]), Some(1.0), "{text}");
    let vm = [("sandbox_id", pod.id.as_str())];
    let rss = sample(&text, "frakti_pod_vm_host_memory_rss_bytes", &vm).unwrap();
    assert!(
        rss >= (rss_kib * 1024 / 2) as f64,
        "{rss} against QEMU's {rss_kib} KiB"
    );
    assert!(sample(&text, "frakti_pod_vm_host_cpu_seconds_total", &vm).unwrap() > 0.0);
    for phase in ["vm_boot", "agent_ready"] {
        let labels = [("runtime", "vm"), ("phase", phase)];
        let count = sample(&text, "frakti_pod_start_duration_seconds_count", &labels);
        assert_eq!(count, Some(1.0), "phase {phase}: {text}");
    }

    // The VM dies: the running container is reported stopped.
    // SAFETY: kill only sends a signal, to the pid of this test's own VM.
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGKILL) }, 0);
    let event = next_event(&mut events, &idle, Duration::from_secs(60)).await;
    assert_eq!(event.container_event_type, STOPPED, "{event:?}");
    assert_eq!(
        event.pod_sandbox_status.as_ref().unwrap().state,
        proto::PodSandboxState::SandboxNotready as i32
    );
    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
}
