//! The sandbox side of the host runtime: a pod is a set of namespaces on
//! the host (network by CNI, UTS and IPC bind-mounted, PID held by a tiny
//! init when shared), its `/etc` files, its `/dev/shm` and its cgroup.

use std::collections::HashSet;
use std::path::Path;

use network::{PodIdentity, PodNetworks};
use nix::mount::{MsFlags, mount};
use runtime_api::container::NamespaceMode;
use runtime_api::{
    NotReady, PodResources, RuntimeError, RuntimeErrorKind, SandboxConfig, SandboxRecord,
    SandboxRuntime, StartedSandbox,
};

use crate::config::{self, HostSandbox};
use crate::namespaces::{self, NewNamespaces, SysctlScope, sysctl_scope};
use crate::runtime::HostRuntime;
use crate::supervise;
use cgroups::{Hierarchy, PodCgroup};

fn invalid(message: impl Into<String>) -> RuntimeError {
    RuntimeError::new(RuntimeErrorKind::InvalidArgument, message)
}

/// Sysctls as key and value.
type Sysctls = Vec<(String, String)>;

/// The pod's sysctls by namespace (network, IPC); a sysctl the pod cannot
/// own is refused.
fn split_sysctls(
    config: &SandboxConfig,
    host_network: bool,
    host_ipc: bool,
) -> Result<(Sysctls, Sysctls), RuntimeError> {
    let (mut net, mut ipc) = (Vec::new(), Vec::new());
    for (key, value) in &config.sysctls {
        let key = key.replace('/', ".");
        if value.contains('\n') || key.contains("..") {
            return Err(invalid(format!("sysctl {key}={value:?} is malformed")));
        }
        match sysctl_scope(&key) {
            Some(SysctlScope::Network) if host_network => {
                return Err(invalid(format!(
                    "sysctl {key}: a pod in the node's network namespace cannot set network sysctls"
                )));
            }
            Some(SysctlScope::Ipc) if host_ipc => {
                return Err(invalid(format!(
                    "sysctl {key}: a pod in the node's IPC namespace cannot set IPC sysctls"
                )));
            }
            Some(SysctlScope::Network) => net.push((key, value.clone())),
            Some(SysctlScope::Ipc) => ipc.push((key, value.clone())),
            None => {
                return Err(invalid(format!(
                    "sysctl {key} is not namespaced: a pod on the host cannot set it for the whole node"
                )));
            }
        }
    }
    Ok((net, ipc))
}

impl HostRuntime {
    fn networks(&self) -> Option<&PodNetworks> {
        self.config.networks.as_ref()
    }

    async fn start_steps(
        &self,
        id: &str,
        config: &SandboxConfig,
        pod: &mut HostSandbox,
    ) -> Result<Vec<String>, RuntimeError> {
        let ns = &config.namespaces;
        let host_ipc = ns.ipc == NamespaceMode::Node;
        let (net_sysctls, ipc_sysctls) = split_sysctls(config, pod.host_network, host_ipc)?;
        std::fs::create_dir_all(&pod.dir)
            .map_err(|e| RuntimeError::internal(format!("create {}", pod.dir.display()), e))?;
        let mut ips = Vec::new();
        let ns_dir = pod.dir.join("ns");
        if let Some(userns) = &ns.userns {
            // The pod's user namespace owns its network, UTS, IPC and PID
            // namespaces (the pod service refused host namespaces): one
            // holder makes them all, and the steps below find them made.
            let netns = PodNetworks::netns_for(id).path();
            let hostname = container::podfiles::pod_hostname(config);
            pod.pid_holder = Some(
                supervise::hold_user_namespace(&self.config, &ns_dir, &netns, userns, &hostname)
                    .await?,
            );
            // The pod service checked that ID 0 is mapped.
            let (root_uid, root_gid) = userns.root().unwrap_or_default();
            pod.userns = Some(config::PodUserns {
                file: ns_dir.join("user"),
                root_uid,
            });
            pod.netns = Some(netns);
            pod.namespaces = namespaces::NamespaceFiles {
                uts: Some(ns_dir.join("uts")),
                ipc: Some(ns_dir.join("ipc")),
            };
            // libcontainer joins the namespaces as the pod's root; the
            // entry on the pod's own `ns` (private to it) also marks the
            // uid as in use.
            std::fs::set_permissions(&ns_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| {
                    RuntimeError::internal("make the pod's namespace directory private", e)
                })?;
            crate::acl::grant_search(&ns_dir, root_uid).map_err(|e| {
                RuntimeError::internal("let the pod's root reach its namespaces", e)
            })?;
            namespaces::set_ipc_sysctls(&ns_dir.join("ipc"), (root_uid, root_gid), &ipc_sysctls)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if !pod.host_network {
            let networks = self.networks().ok_or_else(|| {
                RuntimeError::new(
                    RuntimeErrorKind::FailedPrecondition,
                    "pod networking is not configured",
                )
            })?;
            let netns = networks
                .create_netns(id)
                .map_err(|e| RuntimeError::internal("create the pod's network namespace", e))?;
            pod.netns = Some(netns.path());
            let identity = PodIdentity::of_sandbox(id, config);
            let net_started = std::time::Instant::now();
            let network = networks.add(&netns, &identity).await.map_err(|e| {
                RuntimeError::caused(RuntimeErrorKind::Internal, "set up the pod network", e)
            })?;
            telemetry::global().record_pod_start(
                self.name(),
                telemetry::StartPhase::Network,
                net_started.elapsed(),
            );
            ips = network.result.pod_ips();
            pod.network = Some(network);
            namespaces::set_net_sysctls(&netns.path(), &net_sysctls)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if ns.userns.is_none() {
            self.own_namespaces(config, pod, &ns_dir, host_ipc, ipc_sysctls)
                .await?;
        }
        if !host_ipc {
            let shm = pod.dir.join("shm");
            std::fs::create_dir_all(&shm)
                .map_err(|e| RuntimeError::internal("create the pod's /dev/shm", e))?;
            mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
            )
            .map_err(|e| RuntimeError::internal("mount the pod's /dev/shm", e))?;
            pod.shm = Some(shm);
        }
        container::podfiles::write(&pod.dir, config, &ips, pod.host_network).map_err(|e| {
            RuntimeError::internal("write the pod's hosts, resolv.conf and hostname", e)
        })?;
        Ok(ips)
    }

    /// Makes the pod's UTS and IPC namespaces (and its PID namespace's
    /// holder, mode POD) in the node's user namespace.
    async fn own_namespaces(
        &self,
        config: &SandboxConfig,
        pod: &mut HostSandbox,
        ns_dir: &Path,
        host_ipc: bool,
        ipc_sysctls: Vec<(String, String)>,
    ) -> Result<(), RuntimeError> {
        pod.namespaces = namespaces::create(
            ns_dir,
            &NewNamespaces {
                hostname: (!pod.host_network).then(|| container::podfiles::pod_hostname(config)),
                ipc: !host_ipc,
                ipc_sysctls,
            },
        )
        .map_err(|e| match e {
            namespaces::NamespaceError::Sysctl { .. } => invalid(e.to_string()),
            other => RuntimeError::internal("create the pod's namespaces", other),
        })?;
        if config.namespaces.pid == NamespaceMode::Pod {
            pod.pid_holder =
                Some(supervise::hold_pid_namespace(&self.config, &ns_dir.join("pid")).await?);
        }
        Ok(())
    }

    /// Releases what a pod holds on the host: network, namespaces, holder,
    /// `/dev/shm`. Idempotent.
    async fn release(&self, id: &str, pod: &HostSandbox) -> Result<(), RuntimeError> {
        if let Some(holder) = &pod.pid_holder {
            supervise::release_pid_namespace(holder)?;
        }
        if let (Some(network), Some(networks)) = (&pod.network, self.networks()) {
            networks.remove(network).await.map_err(|e| {
                RuntimeError::caused(RuntimeErrorKind::Internal, "tear down the pod network", e)
            })?;
        }
        if pod.netns.is_some() {
            PodNetworks::netns_for(id)
                .remove()
                .map_err(|e| RuntimeError::internal("remove the pod's network namespace", e))?;
        }
        namespaces::release_all(&pod.namespaces);
        if let Some(userns) = &pod.userns {
            namespaces::release(&userns.file)
                .map_err(|e| RuntimeError::internal("release the pod's user namespace", e))?;
        }
        if let Some(shm) = &pod.shm {
            crate::files::unmount(shm)?;
        }
        Ok(())
    }

    /// Removes what is left of pod `id` on the host after its release.
    fn remove_dirs(&self, pod: &HostSandbox) -> Result<(), RuntimeError> {
        if let Some(userns) = &pod.userns {
            // What the pod's root was let through: the directories above
            // the pod's and its containers' (those go below), unless
            // another pod of the same root (the kubelet's next sandbox of
            // the same pod) still needs them.
            let uid = userns.root_uid;
            let pods = self.config.pod_dir("-");
            let pods = pods.parent().unwrap_or(&pods);
            let still_used = || {
                std::fs::read_dir(pods).is_ok_and(|list| {
                    list.flatten().any(|other| {
                        other.path() != pod.dir && crate::acl::names(&other.path().join("ns"), uid)
                    })
                })
            };
            crate::acl::revoke_search_unless(
                &[&pod.dir, &self.config.container_dir("-")],
                uid,
                still_used,
            )
            .map_err(|e| RuntimeError::internal("take back the pod's root's access", e))?;
        }
        if pod.cgroup.owned {
            Hierarchy::new(&self.config.cgroup_root)
                .remove(&pod.cgroup.path)
                .map_err(|e| RuntimeError::internal("remove the pod's cgroup", e))?;
        }
        crate::files::remove_dir(&pod.dir)
    }
}

#[async_trait::async_trait]
impl SandboxRuntime for HostRuntime {
    fn name(&self) -> &'static str {
        "host"
    }

    fn user_namespaces(&self) -> bool {
        self.idmap.supported(&self.config.layers_dir)
            && *self
                .acl
                .get_or_init(|| crate::acl::supported_under(&self.config.state_dir))
    }

    async fn ready(&self) -> Result<(), NotReady> {
        let monitor = &self.config.monitor;
        if !is_executable(monitor) {
            return Err(NotReady::new(
                "MonitorMissing",
                format!(
                    "the container monitor {} is missing or not executable",
                    monitor.display()
                ),
            ));
        }
        Ok(())
    }

    async fn network_ready(&self) -> Result<(), NotReady> {
        match self.networks() {
            None => Err(NotReady::new(
                "NetworkPluginNotReady",
                "pod networking is not configured",
            )),
            Some(n) => n
                .ready()
                .map(|_| ())
                .map_err(|e| NotReady::new("NetworkPluginNotReady", e.to_string())),
        }
    }

    async fn start_sandbox(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<StartedSandbox, RuntimeError> {
        let cgroup =
            PodCgroup::for_pod(&config.cgroup_parent, id).map_err(|e| invalid(e.to_string()))?;
        let mut pod = HostSandbox {
            dir: self.config.pod_dir(id),
            host_network: config.namespaces.network == NamespaceMode::Node,
            network: None,
            netns: None,
            namespaces: Default::default(),
            pid_holder: None,
            shm: None,
            cgroup,
            userns: None,
        };
        match self.start_steps(id, config, &mut pod).await {
            Ok(ips) => Ok(StartedSandbox {
                state: config::to_value("sandbox", &pod)?,
                ips,
            }),
            Err(e) => {
                if let Err(undo) = self.release(id, &pod).await {
                    tracing::warn!(%id, "cleanup after a failed start: {}", runtime_api::report(&undo));
                }
                if let Err(undo) = self.remove_dirs(&pod) {
                    tracing::warn!(%id, "cleanup after a failed start: {}", runtime_api::report(&undo));
                }
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, id: &str, state: &serde_json::Value) -> Result<(), RuntimeError> {
        let pod: HostSandbox = config::parse("sandbox", state)?;
        self.release(id, &pod).await
    }

    async fn remove_sandbox(
        &self,
        id: &str,
        state: &serde_json::Value,
    ) -> Result<(), RuntimeError> {
        let pod: HostSandbox = config::parse("sandbox", state)?;
        self.release(id, &pod).await?;
        self.remove_dirs(&pod)
    }

    /// A host pod takes what it needs from the node: the kubelet sizes its
    /// cgroup (`cgroup_parent`), and each container's limits are set on
    /// its own cgroup.
    async fn resize_sandbox(
        &self,
        _sandbox: &SandboxRecord,
        _need: &PodResources,
        _shrink: bool,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn adopt_sandbox(
        &self,
        _id: &str,
        state: &serde_json::Value,
    ) -> Result<bool, RuntimeError> {
        let pod: HostSandbox = config::parse("sandbox", state)?;
        // A host pod is its namespaces: it lives while they are there.
        let netns_ok = pod
            .netns
            .as_ref()
            .is_none_or(|p| network::netns::is_nsfs(p));
        let files_ok = pod
            .namespaces
            .uts
            .iter()
            .chain(pod.namespaces.ipc.iter())
            .all(|p| network::netns::is_nsfs(p));
        let holder_ok = pod
            .pid_holder
            .as_ref()
            .is_none_or(|h| monitor::holds_namespace(h.pid, &h.file));
        Ok(netns_ok && files_ok && holder_ok)
    }

    fn sweep_orphans(&self, known: &HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(self.config.state_dir.join("pods")) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let dir = entry.path();
            for file in ["ns/uts", "ns/ipc", "ns/pid", "shm"] {
                let _ = crate::files::unmount(&dir.join(file));
            }
            let _ = PodNetworks::netns_for(&name).remove();
            if std::fs::remove_dir_all(&dir).is_ok() {
                swept += 1;
            }
        }
        swept
    }

    async fn sandbox_info(&self, id: &str, state: &serde_json::Value) -> serde_json::Value {
        let pod: Result<HostSandbox, _> = config::parse("sandbox", state);
        match pod {
            Ok(pod) => serde_json::json!({
                "runtime": "host",
                "id": id,
                "dir": pod.dir,
                "hostNetwork": pod.host_network,
                "netns": pod.netns,
                "namespaces": pod.namespaces,
                "pidHolder": pod.pid_holder,
                "cgroup": pod.cgroup,
            }),
            Err(e) => serde_json::json!({"runtime": "host", "error": e.to_string()}),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_sysctls_go_to_their_namespace_or_are_refused() {
        let mut c = SandboxConfig::default();
        c.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        c.sysctls
            .insert("kernel/shm_rmid_forced".into(), "1".into());
        let (net, ipc) = split_sysctls(&c, false, false).unwrap();
        assert_eq!(
            net,
            [(
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "0".to_owned()
            )]
        );
        assert_eq!(ipc, [("kernel.shm_rmid_forced".to_owned(), "1".to_owned())]);
        let err = split_sysctls(&c, true, false).unwrap_err();
        assert!(
            err.to_string().contains("node's network namespace"),
            "{err}"
        );
        let err = split_sysctls(&c, false, true).unwrap_err();
        assert!(err.to_string().contains("node's IPC namespace"), "{err}");
        c.sysctls.clear();
        c.sysctls.insert("vm.swappiness".into(), "1".into());
        let err = split_sysctls(&c, false, false).unwrap_err();
        assert!(err.to_string().contains("not namespaced"), "{err}");
    }
}
