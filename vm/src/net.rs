//! A VM pod's network: namespace, CNI, tap mirror, and the guest's view of it.

use agent_api::{NetInterface, NetRoute};
use network::cni::Attachment;
use network::{Cni, CniConfig, CniResult, Netns, PortMapping, TapLink};
use pods::SandboxConfig;
use serde::{Deserialize, Serialize};

/// The CNI interface inside the pod's namespace.
const IFNAME: &str = "eth0";
/// The tap QEMU attaches to.
const TAP: &str = "tap0";

/// Everything needed to tear a pod's network down, even after a restart.
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
    /// The tap mirroring the CNI interface.
    pub tap: TapLink,
    /// Taps mirroring further interfaces the CNI result put in the namespace.
    #[serde(default)]
    pub extra_taps: Vec<TapLink>,
}

impl PodNetwork {
    /// Every tap, the CNI interface's first: one guest NIC each.
    pub fn taps(&self) -> impl Iterator<Item = &TapLink> {
        std::iter::once(&self.tap).chain(self.extra_taps.iter())
    }
}

/// Most NICs a pod VM takes (its hot-plug slots).
pub const MAX_NICS: usize = 4;

fn attachment(id: &str, netns: &Netns, ifname: &str, config: &SandboxConfig) -> Attachment {
    let meta = config
        .metadata
        .clone()
        .unwrap_or_else(|| pods::PodMetadata {
            name: String::new(),
            uid: String::new(),
            namespace: String::new(),
            attempt: 0,
        });
    Attachment {
        container_id: id.to_owned(),
        netns: netns.path(),
        ifname: ifname.to_owned(),
        pod_namespace: meta.namespace,
        pod_name: meta.name,
        pod_uid: meta.uid,
    }
}

/// The pod's network namespace (`/run/netns/frakti-<id>`).
pub fn netns_for(id: &str) -> Netns {
    Netns::new(format!("frakti-{id}"))
}

/// Runs CNI ADD (loopback and the pod network) in `netns` and mirrors the CNI
/// interface to a tap. On failure the CNI part is undone; the namespace stays.
pub async fn setup(
    cni: &Cni,
    netns: &Netns,
    id: &str,
    config: &SandboxConfig,
) -> Result<PodNetwork, String> {
    let port_mappings: Vec<PortMapping> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.to_lowercase(),
            host_ip: p.host_ip.clone(),
        })
        .collect();
    let cni_config = cni.load().map_err(|e| e.to_string())?;
    let loopback = attachment(id, netns, "lo", config);
    let pod = attachment(id, netns, IFNAME, config);
    let undo = async |why: String, added: bool| {
        if added {
            let _ = cni.del(&cni_config, &pod, None, &port_mappings).await;
        }
        let _ = cni.del(&cni.loopback(), &loopback, None, &[]).await;
        why
    };
    if let Err(e) = cni.add(&cni.loopback(), &loopback, &[]).await {
        return Err(undo(e.to_string(), false).await);
    }
    let result = match cni.add(&cni_config, &pod, &port_mappings).await {
        Ok(r) => r,
        // A failed ADD may have left state behind: DEL cleans it (spec §DEL).
        Err(e) => return Err(undo(e.to_string(), true).await),
    };
    let tap = match network::tap::setup(netns, IFNAME, TAP).await {
        Ok(t) => t,
        Err(e) => return Err(undo(e.to_string(), true).await),
    };
    // Other interfaces the plugins created in the namespace get a NIC too.
    let sandbox = netns.path().display().to_string();
    let others: Vec<String> = result
        .interfaces
        .iter()
        .filter(|i| i.sandbox == sandbox && i.name != IFNAME && i.name != "lo")
        .map(|i| i.name.clone())
        .collect();
    if others.len() + 1 > MAX_NICS {
        let why = format!(
            "the CNI result has {} interfaces in the pod; a pod VM takes at most {MAX_NICS}",
            others.len() + 1
        );
        return Err(undo(why, true).await);
    }
    let mut extra_taps = Vec::new();
    for (n, name) in others.iter().enumerate() {
        match network::tap::setup(netns, name, &format!("tap{}", n + 1)).await {
            Ok(t) => extra_taps.push(t),
            Err(e) => return Err(undo(e.to_string(), true).await),
        }
    }
    tracing::info!(%id, network = cni_config.name(), source = %cni_config.source,
        ips = ?result.pod_ips(), "pod network added");
    Ok(PodNetwork {
        netns: netns.name().to_owned(),
        config: cni_config,
        attachment: pod,
        result,
        port_mappings,
        tap,
        extra_taps,
    })
}

/// Runs CNI DEL (pod network, then loopback) and removes the namespace. Idempotent.
pub async fn teardown(cni: &Cni, net: &PodNetwork) -> Result<(), String> {
    cni.del(
        &net.config,
        &net.attachment,
        Some(&net.result),
        &net.port_mappings,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut loopback = net.attachment.clone();
    loopback.ifname = "lo".into();
    cni.del(&cni.loopback(), &loopback, None, &[])
        .await
        .map_err(|e| e.to_string())?;
    Netns::new(net.netns.clone())
        .remove()
        .map_err(|e| e.to_string())
}

/// What the guest agent must configure: the addresses of the CNI interface
/// on the VM's NIC, and the routes (with the address family's gateway when a
/// route names none).
pub fn guest_config(net: &PodNetwork) -> (Vec<NetInterface>, Vec<NetRoute>) {
    let result = &net.result;
    let index_of = |name: &str| {
        result
            .interfaces
            .iter()
            .position(|i| i.name == name && !i.sandbox.is_empty())
    };
    let primary = index_of(&net.tap.ifname);
    let interfaces = net
        .taps()
        .map(|tap| {
            let ours = index_of(&tap.ifname);
            let is_primary = tap.ifname == net.tap.ifname;
            let addresses = result
                .ips
                .iter()
                .filter(|ip| match ip.interface {
                    // An address without an interface belongs to the CNI interface.
                    None => is_primary,
                    Some(i) => Some(i) == ours || (is_primary && primary.is_none()),
                })
                .map(|ip| ip.address.clone())
                .collect();
            NetInterface {
                mac: tap.mac.clone(),
                mtu: tap.mtu,
                addresses,
            }
        })
        .collect();
    let gateway_for = |v6: bool| {
        result
            .ips
            .iter()
            .find(|ip| ip.address.contains(':') == v6)
            .and_then(|ip| ip.gateway.clone())
    };
    let routes = result
        .routes
        .iter()
        .map(|r| NetRoute {
            destination: r.dst.clone(),
            gateway: r.gw.clone().or_else(|| gateway_for(r.dst.contains(':'))),
        })
        .collect();
    (interfaces, routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use network::cni::{Interface, IpConfig, Route};

    #[test]
    fn guest_gets_our_addresses_and_gatewayed_routes() {
        let net = PodNetwork {
            netns: "n".into(),
            config: CniConfig {
                source: "t".into(),
                list: serde_json::Value::Null,
            },
            attachment: Attachment {
                container_id: "c".into(),
                netns: "/run/netns/n".into(),
                ifname: "eth0".into(),
                pod_namespace: "ns".into(),
                pod_name: "p".into(),
                pod_uid: "u".into(),
            },
            result: CniResult {
                interfaces: vec![
                    Interface {
                        name: "frakti0".into(),
                        mac: "aa".into(),
                        sandbox: String::new(),
                    },
                    Interface {
                        name: "eth0".into(),
                        mac: "bb".into(),
                        sandbox: "/run/netns/n".into(),
                    },
                ],
                ips: vec![
                    IpConfig {
                        address: "10.77.0.9/16".into(),
                        gateway: Some("10.77.0.1".into()),
                        interface: Some(1),
                    },
                    IpConfig {
                        address: "fd00::9/64".into(),
                        gateway: Some("fd00::1".into()),
                        interface: Some(1),
                    },
                    IpConfig {
                        address: "192.168.0.1/24".into(),
                        gateway: None,
                        interface: Some(0),
                    },
                ],
                routes: vec![
                    Route {
                        dst: "0.0.0.0/0".into(),
                        gw: None,
                    },
                    Route {
                        dst: "::/0".into(),
                        gw: None,
                    },
                    Route {
                        dst: "10.1.0.0/16".into(),
                        gw: Some("10.77.0.254".into()),
                    },
                ],
            },
            port_mappings: Vec::new(),
            tap: TapLink {
                ifname: "eth0".into(),
                tap: "tap0".into(),
                mac: "bb".into(),
                mtu: 1450,
            },
            extra_taps: Vec::new(),
        };
        let (ifaces, routes) = guest_config(&net);
        assert_eq!(ifaces.len(), 1);
        assert_eq!(ifaces[0].addresses, vec!["10.77.0.9/16", "fd00::9/64"]);
        assert_eq!((ifaces[0].mac.as_str(), ifaces[0].mtu), ("bb", 1450));
        let gws: Vec<Option<&str>> = routes.iter().map(|r| r.gateway.as_deref()).collect();
        assert_eq!(
            gws,
            vec![Some("10.77.0.1"), Some("fd00::1"), Some("10.77.0.254")]
        );
    }
}
