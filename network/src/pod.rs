//! Pod networking as a service shared by every runtime: a network namespace
//! per pod, CNI ADD/CHECK/DEL into it (loopback and the pod network), and
//! the record that lets DEL run again after a daemon restart. What a runtime
//! then does inside the namespace (e.g. a tap for a VM) is its own business.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cni::{Attachment, Cni, CniConfig, CniError, CniResult, PortMapping};
use crate::netns::{Netns, NetnsError};

/// The CNI interface inside a pod's namespace.
pub const IFNAME: &str = "eth0";

/// Who a pod network is for: the pod's sandbox id and Kubernetes identity
/// (passed to plugins as `CNI_ARGS`), and its hostPorts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// Sandbox id (the CNI container id).
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// hostPort mappings (entries without a host port are ignored).
    pub port_mappings: Vec<PortMapping>,
}

impl PodIdentity {
    /// Who the pod network of sandbox `id`, run with `config`, is for.
    pub fn of_sandbox(id: &str, config: &runtime_api::SandboxConfig) -> Self {
        let meta = config.metadata.as_ref();
        Self {
            id: id.to_owned(),
            name: meta.map(|m| m.name.clone()).unwrap_or_default(),
            namespace: meta.map(|m| m.namespace.clone()).unwrap_or_default(),
            uid: meta.map(|m| m.uid.clone()).unwrap_or_default(),
            port_mappings: config
                .port_mappings
                .iter()
                .map(|p| PortMapping {
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.clone(),
                    host_ip: p.host_ip.clone(),
                })
                .collect(),
        }
    }
}

/// A pod network as added: everything CHECK and DEL need, even after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// Name of the namespace under /run/netns.
    pub netns: String,
    /// The network configuration used for ADD (DEL must use the same).
    pub config: CniConfig,
    /// Who the network was added for.
    pub attachment: Attachment,
    /// The ADD result.
    pub result: CniResult,
    /// hostPorts passed to ADD.
    pub port_mappings: Vec<PortMapping>,
}

impl PodNetwork {
    /// The namespace the network lives in.
    pub fn netns(&self) -> Netns {
        Netns::new(self.netns.clone())
    }
}

/// A pod network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetworkError {
    /// A CNI plugin or the configuration failed
    #[error(transparent)]
    Cni(#[from] CniError),
    /// The network namespace could not be created or removed
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The pod networks of one daemon, added with one CNI set-up.
#[derive(Debug, Clone)]
pub struct PodNetworks {
    cni: Arc<Cni>,
}

impl PodNetworks {
    /// Pod networks from `cni`'s configuration and plugins.
    pub fn new(cni: Cni) -> Self {
        Self { cni: Arc::new(cni) }
    }

    /// The CNI set-up.
    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    /// The namespace of sandbox `id` (`/run/netns/frakti-<id>`).
    pub fn netns_for(id: &str) -> Netns {
        Netns::new(format!("frakti-{id}"))
    }

    /// Whether pods can get a network now (a configuration and its plugins).
    pub fn ready(&self) -> Result<CniConfig, CniError> {
        self.cni.status()
    }

    /// Creates the namespace of sandbox `id`.
    pub fn create_netns(&self, id: &str) -> Result<Netns, PodNetworkError> {
        let ns = Self::netns_for(id);
        ns.create()?;
        Ok(ns)
    }

    /// Runs CNI ADD of loopback and of the pod network into `netns`. On
    /// failure what was added is deleted again; the namespace stays.
    pub async fn add(
        &self,
        netns: &Netns,
        pod: &PodIdentity,
    ) -> Result<PodNetwork, PodNetworkError> {
        let port_mappings: Vec<PortMapping> = pod
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| PortMapping {
                protocol: p.protocol.to_lowercase(),
                ..p.clone()
            })
            .collect();
        let config = self.cni.load()?;
        let loopback = attachment(pod, netns, "lo");
        let attachment = attachment(pod, netns, IFNAME);
        if let Err(e) = self.cni.add(&self.cni.loopback(), &loopback, &[]).await {
            let _ = self
                .cni
                .del(&self.cni.loopback(), &loopback, None, &[])
                .await;
            return Err(e.into());
        }
        let result = match self.cni.add(&config, &attachment, &port_mappings).await {
            Ok(r) => r,
            Err(e) => {
                // A failed ADD may have left state behind: DEL cleans it (spec §DEL).
                let _ = self
                    .cni
                    .del(&config, &attachment, None, &port_mappings)
                    .await;
                let _ = self
                    .cni
                    .del(&self.cni.loopback(), &loopback, None, &[])
                    .await;
                return Err(e.into());
            }
        };
        tracing::info!(id = %pod.id, network = config.name(), source = %config.source,
            ips = ?result.pod_ips(), "pod network added");
        Ok(PodNetwork {
            netns: netns.name().to_owned(),
            config,
            attachment,
            result,
            port_mappings,
        })
    }

    /// Runs CNI DEL (pod network, then loopback) and removes the namespace.
    /// Idempotent.
    pub async fn remove(&self, net: &PodNetwork) -> Result<(), PodNetworkError> {
        self.cni
            .del(
                &net.config,
                &net.attachment,
                Some(&net.result),
                &net.port_mappings,
            )
            .await?;
        let mut loopback = net.attachment.clone();
        loopback.ifname = "lo".into();
        self.cni
            .del(&self.cni.loopback(), &loopback, None, &[])
            .await?;
        net.netns().remove()?;
        Ok(())
    }

    /// Runs CNI CHECK: does the network still look as ADD left it?
    /// `Ok(false)` when the configuration's CNI version has no CHECK.
    pub async fn check(&self, net: &PodNetwork) -> Result<bool, CniError> {
        self.cni
            .check(
                &net.config,
                &net.attachment,
                &net.result,
                &net.port_mappings,
            )
            .await
    }
}

fn attachment(pod: &PodIdentity, netns: &Netns, ifname: &str) -> Attachment {
    Attachment {
        container_id: pod.id.clone(),
        netns: netns.path(),
        ifname: ifname.to_owned(),
        pod_namespace: pod.namespace.clone(),
        pod_name: pod.name.clone(),
        pod_uid: pod.uid.clone(),
    }
}
