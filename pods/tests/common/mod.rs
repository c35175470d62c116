//! A fake runtime for the pod service's tests: it records calls, keeps a
//! "running" flag per sandbox and a process status per container, and can be
//! told to fail.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pods::container::{ContainerImage, ContainerMetadata};
use pods::{
    ContainerConfig, ContainerRecord, ContainerRuntimeStatus, ContainerState, ExecOutput,
    PodMetadata, PodService, Registry, RuntimeError, RuntimeErrorKind, SandboxConfig,
    SandboxRecord, SandboxState, StartedSandbox, Store,
};
use runtime_api::streams::{AttachRequest, Duplex, ExecRequest, StreamIo};
use runtime_api::{ContainerRuntime, ContainerStreams, SandboxRuntime, SessionError};

/// Records calls and keeps a fake "running" flag per sandbox and a process
/// status per container.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    pub running: Mutex<HashMap<String, bool>>,
    pub calls: Mutex<Vec<String>>,
    pub fail_start: Mutex<Option<String>>,
    pub containers: Mutex<HashMap<String, ContainerRuntimeStatus>>,
    pub fail_container_start: Mutex<Option<String>>,
    /// Containers whose stop waits for `gate`.
    pub gated: Mutex<HashSet<String>>,
    pub gate: tokio::sync::Notify,
    /// Stats calls so far: the n-th is taken at 2n s with n s of CPU per
    /// running container (half a core), and n s for the pod.
    pub stats_calls: Mutex<u64>,
    /// Sandboxes whose stats fail.
    pub fail_stats: Mutex<HashSet<String>>,
    /// Each `resize_sandbox`: the need and whether it may shrink.
    pub resizes: Mutex<Vec<(runtime_api::PodResources, bool)>>,
    /// `resize_sandbox` fails with ResourceExhausted.
    pub fail_resize: Mutex<bool>,
}

impl FakeRuntime {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    pub fn log(&self, call: &str, id: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{call} {}", &id[..8]));
    }
}

#[async_trait::async_trait]
impl SandboxRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn ready(&self) -> Result<(), runtime_api::NotReady> {
        Ok(())
    }
    async fn network_ready(&self) -> Result<(), runtime_api::NotReady> {
        Err(runtime_api::NotReady::new(
            "NetworkPluginNotReady",
            "no network in the fake",
        ))
    }
    async fn start_sandbox(
        &self,
        id: &str,
        _config: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError> {
        if let Some(msg) = self.fail_start.lock().unwrap().clone() {
            return Err(RuntimeError::new(RuntimeErrorKind::Internal, msg));
        }
        self.log("start", id);
        self.running.lock().unwrap().insert(id.into(), true);
        Ok(StartedSandbox {
            state: serde_json::json!({"fake": id}),
            ips: vec!["10.9.0.2".into()],
        })
    }
    async fn stop_sandbox(&self, id: &str, _s: &serde_json::Value) -> Result<(), RuntimeError> {
        self.log("stop", id);
        self.running.lock().unwrap().insert(id.into(), false);
        Ok(())
    }
    async fn remove_sandbox(&self, id: &str, _s: &serde_json::Value) -> Result<(), RuntimeError> {
        self.log("remove", id);
        self.running.lock().unwrap().remove(id);
        Ok(())
    }
    async fn resize_sandbox(
        &self,
        sandbox: &SandboxRecord,
        need: &runtime_api::PodResources,
        shrink: bool,
    ) -> Result<(), RuntimeError> {
        self.log("resize", &sandbox.id);
        if *self.fail_resize.lock().unwrap() {
            return Err(RuntimeError::new(
                RuntimeErrorKind::ResourceExhausted,
                "the pod would need more vCPUs than max_cpu",
            ));
        }
        self.resizes.lock().unwrap().push((*need, shrink));
        Ok(())
    }
    async fn adopt_sandbox(&self, id: &str, _s: &serde_json::Value) -> Result<bool, RuntimeError> {
        self.log("adopt", id);
        Ok(self
            .running
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(false))
    }
    async fn sandbox_info(&self, id: &str, _s: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({"id": id})
    }
    fn sweep_orphans(&self, known: &HashSet<String>) -> usize {
        self.calls
            .lock()
            .unwrap()
            .push(format!("sweep {}", known.len()));
        0
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn create_container(
        &self,
        sandbox: &SandboxRecord,
        id: &str,
        _config: &ContainerConfig,
        log_path: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        assert_eq!(sandbox.state, SandboxState::Ready);
        self.log("create_c", id);
        self.containers
            .lock()
            .unwrap()
            .insert(id.into(), ContainerRuntimeStatus::created());
        Ok(serde_json::json!({"log": log_path}))
    }
    async fn start_container(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        self.log("start_c", &c.id);
        if let Some(msg) = self.fail_container_start.lock().unwrap().clone() {
            return Err(RuntimeError::new(RuntimeErrorKind::Internal, msg));
        }
        let status = ContainerRuntimeStatus {
            state: ContainerState::Running,
            started_at_ns: 10,
            ..ContainerRuntimeStatus::created()
        };
        self.containers
            .lock()
            .unwrap()
            .insert(c.id.clone(), status.clone());
        Ok(status)
    }
    async fn stop_container(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        self.log(&format!("stop_c/{}s", timeout.as_secs()), &c.id);
        if self.gated.lock().unwrap().contains(&c.id) {
            self.gate.notified().await;
        }
        let status = ContainerRuntimeStatus {
            state: ContainerState::Exited,
            started_at_ns: 10,
            finished_at_ns: 20,
            exit_code: 137,
            reason: "Error".into(),
            message: String::new(),
            user: None,
        };
        self.containers
            .lock()
            .unwrap()
            .insert(c.id.clone(), status.clone());
        Ok(status)
    }
    async fn remove_container(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        self.log("remove_c", &c.id);
        self.containers.lock().unwrap().remove(&c.id);
        Ok(())
    }
    async fn container_status(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
    ) -> Result<ContainerRuntimeStatus, RuntimeError> {
        self.containers
            .lock()
            .unwrap()
            .get(&c.id)
            .cloned()
            .ok_or_else(|| RuntimeError::new(RuntimeErrorKind::NotFound, "no such container"))
    }
    async fn exec_sync(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        self.log("exec", &c.id);
        if cmd[0] == "sleep" && timeout.is_some() {
            return Err(RuntimeError::new(
                RuntimeErrorKind::DeadlineExceeded,
                "command timed out",
            ));
        }
        Ok(ExecOutput {
            stdout: cmd.join(" ").into_bytes(),
            stderr: Vec::new(),
            exit_code: 3,
        })
    }
    async fn update_container_resources(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
        resources: &runtime_api::container::ContainerResources,
    ) -> Result<(), RuntimeError> {
        self.log("update", &c.id);
        if resources.memory_limit_bytes == 1 {
            return Err(RuntimeError::new(
                RuntimeErrorKind::ResourceExhausted,
                "memory_limit_in_bytes 1 is below what the container uses",
            ));
        }
        Ok(())
    }
    async fn pod_stats(
        &self,
        sandbox: &SandboxRecord,
        containers: &[ContainerRecord],
    ) -> Result<runtime_api::PodUsage, RuntimeError> {
        self.log("stats", &sandbox.id);
        if self.fail_stats.lock().unwrap().contains(&sandbox.id) {
            return Err(RuntimeError::new(RuntimeErrorKind::Internal, "stats fail"));
        }
        let n = {
            let mut calls = self.stats_calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        let cpu = Some(runtime_api::stats::CpuUsage {
            usage_core_ns: n * 1_000_000_000,
        });
        let statuses = self.containers.lock().unwrap().clone();
        Ok(runtime_api::PodUsage {
            timestamp_ns: i64::try_from(n).unwrap() * 2_000_000_000,
            cpu,
            containers: containers
                .iter()
                .map(|c| {
                    let running = statuses
                        .get(&c.id)
                        .is_some_and(|s| s.state == ContainerState::Running);
                    runtime_api::ContainerUsage {
                        id: c.id.clone(),
                        cpu: if running { cpu } else { None },
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        })
    }
    async fn writable_layers(&self) -> Result<runtime_api::LayerUsage, RuntimeError> {
        Ok(runtime_api::LayerUsage {
            mountpoint: "/fake/layers".into(),
            usage: Default::default(),
        })
    }
    async fn reopen_container_log(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
    ) -> Result<(), RuntimeError> {
        self.log("reopen", &c.id);
        Ok(())
    }
    async fn container_info(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
    ) -> serde_json::Value {
        serde_json::json!({"container": c.id})
    }
}

/// Sessions answer with what reached them: exec writes its command to
/// stdout and exits 7; a forwarded port is an in-memory pipe.
#[async_trait::async_trait]
impl ContainerStreams for FakeRuntime {
    async fn exec(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
        req: &ExecRequest,
        io: StreamIo,
    ) -> Result<i32, SessionError> {
        use tokio::io::AsyncWriteExt;
        self.log("exec", &c.id);
        if let Some(mut out) = io.stdout {
            out.write_all(req.cmd.join(" ").as_bytes())
                .await
                .map_err(|e| SessionError::Failed(e.to_string()))?;
        }
        Ok(7)
    }
    async fn attach(
        &self,
        _sandbox: &SandboxRecord,
        c: &ContainerRecord,
        _req: &AttachRequest,
        _io: StreamIo,
    ) -> Result<(), SessionError> {
        self.log("attach", &c.id);
        Ok(())
    }
    async fn port_forward(
        &self,
        sandbox: &SandboxRecord,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        self.log(&format!("forward {port}"), &sandbox.id);
        let (ours, _theirs) = tokio::io::duplex(64);
        Ok(Box::new(ours))
    }
}

pub fn config(name: &str, labels: &[(&str, &str)]) -> SandboxConfig {
    SandboxConfig {
        metadata: Some(PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

pub fn service(dir: &std::path::Path, rt: Arc<FakeRuntime>) -> Arc<PodService> {
    PodService::new(Store::open(dir).unwrap(), Registry::new("frakti", rt))
}

pub fn container(name: &str, attempt: u32, labels: &[(&str, &str)]) -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata {
            name: name.into(),
            attempt,
        },
        image: ContainerImage {
            user_ref: "busybox".into(),
            id: "sha256:1234".into(),
            image_ref: "docker.io/library/busybox@sha256:abcd".into(),
            rootfs: "/var/lib/frakti/images/snapshots/1234".into(),
            ..Default::default()
        },
        log_path: format!("{name}/{attempt}.log"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

pub fn pod_with_logs(name: &str) -> SandboxConfig {
    SandboxConfig {
        log_directory: format!("/var/log/pods/default_{name}"),
        ..config(name, &[])
    }
}

pub fn short(id: &str) -> &str {
    &id[..8]
}
