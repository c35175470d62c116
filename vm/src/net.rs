//! A VM pod's network: the pod network (namespace + CNI, from `network`'s
//! shared service), a tap mirroring each CNI interface, and the guest's view.

use agent_api::{NetInterface, NetRoute};
use network::{Netns, PodIdentity, PodNetwork, PodNetworkError, PodNetworks, TapLink};
use runtime_api::SandboxConfig;
use serde::{Deserialize, Serialize};

/// The CNI interface inside the pod's namespace.
const IFNAME: &str = network::pod::IFNAME;
/// The tap QEMU attaches to.
const TAP: &str = "tap0";

/// A VM pod's network: the pod network, and the taps its NICs use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmNetwork {
    /// The pod network CNI added.
    #[serde(flatten)]
    pub pod: PodNetwork,
    /// The tap mirroring the CNI interface.
    pub tap: TapLink,
    /// Taps mirroring further interfaces the CNI result put in the namespace.
    #[serde(default)]
    pub extra_taps: Vec<TapLink>,
}

impl VmNetwork {
    /// Every tap, the CNI interface's first: one guest NIC each.
    pub fn taps(&self) -> impl Iterator<Item = &TapLink> {
        std::iter::once(&self.tap).chain(self.extra_taps.iter())
    }

    /// The guest NIC of each tap, in [`VmNetwork::taps`] order.
    pub fn nics(&self) -> impl Iterator<Item = hypervisor::NicSpec> + '_ {
        let netns = self.pod.netns().path();
        self.taps().map(move |tap| hypervisor::NicSpec {
            tap: tap.tap.clone(),
            mac: tap.mac.clone(),
            netns: Some(netns.clone()),
        })
    }
}

/// Most NICs a pod VM takes (hot-plug slots it shares with the disks).
pub const MAX_NICS: usize = 4;

/// Setting up a VM pod's network failed.
#[derive(Debug, thiserror::Error)]
pub enum VmNetworkError {
    /// The pod network (namespace or CNI) failed
    #[error(transparent)]
    Pod(#[from] PodNetworkError),
    /// A tap could not mirror a CNI interface
    #[error(transparent)]
    Tap(#[from] network::TapError),
    /// The CNI result has more interfaces than the VM has NIC slots
    #[error("the CNI result has {0} interfaces in the pod; a pod VM takes at most {MAX_NICS}")]
    TooManyInterfaces(usize),
}

/// Adds the pod network in `netns` and mirrors each of its interfaces in
/// the namespace to a tap; the CNI interface's tap is moved from `booted_with`
/// when the VM booted with one there. On failure the network is removed again.
pub async fn setup(
    networks: &PodNetworks,
    netns: &Netns,
    id: &str,
    config: &SandboxConfig,
    booted_with: Option<&Netns>,
) -> Result<VmNetwork, VmNetworkError> {
    let pod = networks
        .add(netns, &PodIdentity::of_sandbox(id, config))
        .await?;
    match taps(netns, &pod, booted_with).await {
        Ok((tap, extra_taps)) => Ok(VmNetwork {
            pod,
            tap,
            extra_taps,
        }),
        Err(e) => {
            if let Err(undo) = networks.remove(&pod).await {
                tracing::warn!(%id, "cleaning up the pod network: {undo}");
            }
            Err(e)
        }
    }
}

/// The tap a VM of the warm pool boots with, in its own namespace.
pub(crate) async fn boot_tap(netns: &Netns) -> Result<hypervisor::NicSpec, VmNetworkError> {
    network::tap::create(netns, TAP).await?;
    let bytes: [u8; 5] = rand::random();
    // Locally administered, unicast; the pod's MAC replaces it.
    let mac = std::iter::once(2u8)
        .chain(bytes)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(hypervisor::NicSpec {
        tap: TAP.to_owned(),
        mac,
        netns: Some(netns.path()),
    })
}

/// A tap for the CNI interface, and one for each other interface the
/// plugins created in the namespace.
async fn taps(
    netns: &Netns,
    pod: &PodNetwork,
    booted_with: Option<&Netns>,
) -> Result<(TapLink, Vec<TapLink>), VmNetworkError> {
    let sandbox = netns.path().display().to_string();
    let others: Vec<String> = pod
        .result
        .interfaces
        .iter()
        .filter(|i| i.sandbox == sandbox && i.name != IFNAME && i.name != "lo")
        .map(|i| i.name.clone())
        .collect();
    if others.len() + 1 > MAX_NICS {
        return Err(VmNetworkError::TooManyInterfaces(others.len() + 1));
    }
    let tap = match booted_with {
        Some(from) => network::tap::adopt(from, netns, IFNAME, TAP).await?,
        None => network::tap::setup(netns, IFNAME, TAP).await?,
    };
    let mut extra_taps = Vec::new();
    for (n, name) in others.iter().enumerate() {
        extra_taps.push(network::tap::setup(netns, name, &format!("tap{}", n + 1)).await?);
    }
    Ok((tap, extra_taps))
}

/// What the guest agent must configure: the addresses of the CNI interface
/// on the VM's NIC, and the routes (with the address family's gateway when a
/// route names none).
pub fn guest_config(net: &VmNetwork) -> (Vec<NetInterface>, Vec<NetRoute>) {
    let result = &net.pod.result;
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
                current_mac: None,
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
    use network::cni::{Attachment, CniConfig, CniResult, Interface, IpConfig, Route};

    #[test]
    fn guest_gets_our_addresses_and_gatewayed_routes() {
        let pod = PodNetwork {
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
        };
        let net = VmNetwork {
            pod,
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
