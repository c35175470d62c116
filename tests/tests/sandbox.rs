//! Pod sandbox lifecycle through the CRI socket, with real VMs.

use std::time::Duration;

use cri::proto;
use e2e::{Daemon, pod_config, pod_status, process_running, run_pod, vm_pid};
use tonic::Code;

const READY: i32 = proto::PodSandboxState::SandboxReady as i32;
const NOT_READY: i32 = proto::PodSandboxState::SandboxNotready as i32;

#[tokio::test]
async fn version_status_and_bad_input() {
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();

    let v = c
        .version(proto::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("frakti", "v1")
    );
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let s = c
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    let cond = |t: &str| conditions.iter().find(|c| c.r#type == t).cloned().unwrap();
    assert!(cond("RuntimeReady").status);
    // An empty CNI directory: the embedded default network is ready.
    assert!(cond("NetworkReady").status, "{:?}", cond("NetworkReady"));
    assert!(s.runtime_handlers.iter().any(|h| h.name == "frakti"));
    assert!(
        s.info["config"].contains("\"accel\":\"tcg\""),
        "{:?}",
        s.info
    );

    // Kubelet's start-up calls.
    let rc = c
        .runtime_config(proto::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        proto::CgroupDriver::Cgroupfs as i32
    );
    let update = proto::UpdateRuntimeConfigRequest {
        runtime_config: Some(proto::RuntimeConfig {
            network_config: Some(proto::NetworkConfig {
                pod_cidr: "10.244.1.0/24".into(),
            }),
        }),
    };
    c.update_runtime_config(update).await.unwrap();
    let s = c
        .status(proto::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.info["podCIDR"], "10.244.1.0/24");

    // Bad input: clear InvalidArgument, nothing created.
    let run = |config: proto::PodSandboxConfig, handler: &str| proto::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: handler.into(),
    };
    let err = c
        .run_pod_sandbox(run(proto::PodSandboxConfig::default(), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata"), "{}", err.message());
    let err = c
        .run_pod_sandbox(run(pod_config("", &[]), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata.name"), "{}", err.message());
    let err = c
        .run_pod_sandbox(run(pod_config("x", &[]), "gvisor"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("gvisor"), "{}", err.message());
    let mut bad_host = pod_config("x", &[]);
    bad_host.hostname = "no spaces allowed".into();
    let err = c.run_pod_sandbox(run(bad_host, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut host_net = pod_config("x", &[]);
    host_net.linux = Some(proto::LinuxPodSandboxConfig {
        security_context: Some(proto::LinuxSandboxSecurityContext {
            namespace_options: Some(proto::NamespaceOption {
                network: proto::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // A host-network pod is no longer refused: it runs on the host runtime.
    let id = c
        .run_pod_sandbox(run(host_net, ""))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let listed = c
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let pod = listed.iter().find(|p| p.id == id).unwrap();
    assert_eq!(pod.runtime_handler, "host");
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    let err = c
        .run_pod_sandbox(proto::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Unknown ids.
    let status = |id: &str| proto::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    };
    assert_eq!(
        c.pod_sandbox_status(status("nope"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.pod_sandbox_status(status("")).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    let listed = c
        .list_pod_sandbox(proto::ListPodSandboxRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().items.is_empty());

    // A container request without a config says what is missing.
    let err = c
        .create_container(proto::CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A resource update without a container id says so.
    let err = c
        .update_container_resources(proto::UpdateContainerResourcesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("container_id"), "{err:?}");
    // Stats of a daemon without containers: an empty list.
    let stats = c
        .list_container_stats(proto::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(stats.is_empty(), "{stats:?}");
    // A pod-level resize names what is missing or unknown.
    let err = c
        .update_pod_sandbox_resources(proto::UpdatePodSandboxResourcesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("pod_sandbox_id"), "{err:?}");
    let err = c
        .update_pod_sandbox_resources(proto::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // The image service answers: a fresh daemon has no images.
    let mut images = daemon.images().await.unwrap();
    let list = images
        .list_images(proto::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.images.is_empty());
}

#[tokio::test]
async fn pod_vm_lifecycle() {
    let daemon = Daemon::start(&["--accel", "tcg"]).await.unwrap();
    let mut c = daemon.runtime().await.unwrap();

    // 1.5 CPUs and 200 MiB + 56 MiB overhead: 2 vCPUs, 256 MiB.
    let mut config = pod_config("web", &[("app", "web"), ("tier", "front")]);
    config.annotations.insert("note".into(), "kept".into());
    config.linux = Some(proto::LinuxPodSandboxConfig {
        resources: Some(proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            memory_limit_in_bytes: 200 << 20,
            ..Default::default()
        }),
        overhead: Some(proto::LinuxContainerResources {
            memory_limit_in_bytes: 56 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run_pod(&mut c, config.clone()).await.unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.chars().all(|ch| ch.is_ascii_hexdigit()));

    let (status, info) = pod_status(&mut c, &id).await.unwrap();
    assert_eq!(status.state, READY);
    assert_eq!(status.metadata.as_ref().unwrap().name, "web");
    assert_eq!(status.labels["app"], "web");
    assert_eq!(status.annotations["note"], "kept");
    assert!(status.created_at > 0);
    let pid = vm_pid(&info);
    assert!(pid > 0 && process_running(pid), "{info}");
    assert_eq!(info["vm"]["vcpus"], 2, "{info}");
    assert_eq!(info["vm"]["memory_mib"], 256, "{info}");
    assert_eq!(info["vm"]["accel"], "tcg");
    // The guest itself agrees: hostname set by the agent, 2 CPUs, ~256 MiB.
    assert_eq!(info["guest"]["hostname"], "web", "{info}");
    assert_eq!(info["guest"]["cpus"], 2, "{info}");
    let mem_kib = info["guest"]["mem_total_kib"].as_u64().unwrap();
    assert!((150_000..=262_144).contains(&mem_kib), "{mem_kib}");
    // QEMU is confined by its seccomp sandbox.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("-sandbox"));

    // The same pod name again is refused while this one exists.
    let err = run_pod(&mut c, config).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());

    // Filters.
    let list = |filter: proto::PodSandboxFilter| proto::ListPodSandboxRequest {
        filter: Some(filter),
    };
    let ids = |r: tonic::Response<proto::ListPodSandboxResponse>| {
        r.into_inner()
            .items
            .into_iter()
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    let by_label = proto::PodSandboxFilter {
        label_selector: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(
        ids(c.list_pod_sandbox(list(by_label)).await.unwrap()),
        vec![id.clone()]
    );
    let wrong_label = proto::PodSandboxFilter {
        label_selector: [("app".to_string(), "db".to_string())].into(),
        ..Default::default()
    };
    assert!(ids(c.list_pod_sandbox(list(wrong_label)).await.unwrap()).is_empty());
    let by_prefix = proto::PodSandboxFilter {
        id: id[..12].into(),
        ..Default::default()
    };
    assert_eq!(
        ids(c.list_pod_sandbox(list(by_prefix)).await.unwrap()),
        vec![id.clone()]
    );
    let not_ready = proto::PodSandboxFilter {
        state: Some(proto::PodSandboxStateValue { state: NOT_READY }),
        ..Default::default()
    };
    assert!(ids(c.list_pod_sandbox(list(not_ready.clone())).await.unwrap()).is_empty());

    // Stop twice: NOTREADY, VM gone.
    for _ in 0..2 {
        c.stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let (status, _) = pod_status(&mut c, &id).await.unwrap();
    assert_eq!(status.state, NOT_READY);
    assert!(!process_running(pid));
    assert_eq!(
        ids(c.list_pod_sandbox(list(not_ready)).await.unwrap()),
        vec![id.clone()]
    );

    // Remove twice: gone, files too.
    for _ in 0..2 {
        c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let err = pod_status(&mut c, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!daemon.state_dir().join(&id).exists());
    assert!(
        !daemon
            .dir_path()
            .join("root/sandboxes")
            .join(format!("{id}.json"))
            .exists()
    );

    // The daemon log says why each step happened.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(daemon.log().contains("pod VM ready"), "{}", daemon.log());

    // A RunPodSandbox whose client gives up (its deadline, a closed
    // connection) runs to its end: the pod is listed, ready, the kubelet
    // finds it by its labels, and its VM is removed with it. Before, the
    // dropped call left a VM that no record named.
    let abandoned = pod_config("abandoned", &[("app", "abandoned")]);
    let mut impatient = c.clone();
    let call = impatient.run_pod_sandbox(proto::RunPodSandboxRequest {
        config: Some(abandoned.clone()),
        runtime_handler: String::new(),
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err(),
        "the pod started within 0.3 s"
    );
    let by_app = proto::PodSandboxFilter {
        label_selector: [("app".to_string(), "abandoned".to_string())].into(),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let id = loop {
        let pods = c
            .list_pod_sandbox(list(by_app.clone()))
            .await
            .unwrap()
            .into_inner()
            .items;
        if let Some(p) = pods.iter().find(|p| p.state == READY) {
            break p.id.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned pod never became ready: {pods:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let err = run_pod(&mut c, abandoned).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    let pid = vm_pid(&pod_status(&mut c, &id).await.unwrap().1);
    assert!(pid > 0 && process_running(pid));
    c.stop_pod_sandbox(proto::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(proto::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!process_running(pid), "its VM outlived its removal");
    assert!(
        daemon
            .log()
            .contains("RunPodSandbox finished after its client went away"),
        "{}",
        daemon.log()
    );
}
