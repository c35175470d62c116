//! Pod sandboxes: RunPodSandbox configs in, records out as `PodSandbox`
//! and `PodSandboxStatus`, list filters.

use pods::{
    DnsConfig, PodMetadata, PodResources, PortMapping, SandboxConfig, SandboxFilter, SandboxRecord,
    SandboxState,
};

use super::{map, namespace_options, proto_namespace_mode};
use crate::proto;

/// Translates a RunPodSandbox config; `Err` names what is invalid.
pub fn sandbox_config(
    config: proto::PodSandboxConfig,
    runtime_handler: String,
) -> Result<SandboxConfig, String> {
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let namespaces = namespace_options(security.namespace_options.as_ref())?;
    let dns = config
        .dns_config
        .map_or_else(DnsConfig::default, |d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        });
    let resources = |r: Option<proto::LinuxContainerResources>| r.map(pod_resources);
    Ok(SandboxConfig {
        metadata: config.metadata.map(|m| PodMetadata {
            name: m.name,
            uid: m.uid,
            namespace: m.namespace,
            attempt: m.attempt,
        }),
        hostname: config.hostname,
        log_directory: config.log_directory,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        runtime_handler,
        resources: resources(linux.resources),
        overhead: resources(linux.overhead),
        port_mappings: config
            .port_mappings
            .iter()
            .map(|p| PortMapping {
                // An unknown enum value is kept visible, and refused by validation.
                protocol: proto::Protocol::try_from(p.protocol).map_or_else(
                    |_| format!("unknown protocol {}", p.protocol),
                    |p| p.as_str_name().to_lowercase(),
                ),
                container_port: p.container_port,
                host_port: p.host_port,
                host_ip: p.host_ip.clone(),
            })
            .collect(),
        dns,
        sysctls: linux.sysctls.into_iter().collect(),
        namespaces,
        privileged: security.privileged,
        cgroup_parent: linux.cgroup_parent,
    })
}

/// Pod-level figures from the CRI's container-resources message.
pub(crate) fn pod_resources(r: proto::LinuxContainerResources) -> PodResources {
    PodResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_bytes: r.memory_limit_in_bytes,
    }
}

pub(crate) fn metadata(record: &SandboxRecord) -> Option<proto::PodSandboxMetadata> {
    record.metadata().map(|m| proto::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    })
}

fn state(state: SandboxState) -> i32 {
    match state {
        SandboxState::Ready => proto::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => proto::PodSandboxState::SandboxNotready as i32,
    }
}

/// A record as a `PodSandbox` list entry.
pub fn pod_sandbox(record: &SandboxRecord) -> proto::PodSandbox {
    proto::PodSandbox {
        id: record.id.clone(),
        metadata: metadata(record),
        state: state(record.state),
        created_at: record.created_at_ns,
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        runtime_handler: record.handler.clone(),
    }
}

/// A record as a `PodSandboxStatus`.
pub fn pod_sandbox_status(record: &SandboxRecord) -> proto::PodSandboxStatus {
    proto::PodSandboxStatus {
        id: record.id.clone(),
        metadata: metadata(record),
        state: state(record.state),
        created_at: record.created_at_ns,
        network: Some(proto::PodSandboxNetworkStatus {
            ip: record.ips.first().cloned().unwrap_or_default(),
            additional_ips: record
                .ips
                .iter()
                .skip(1)
                .map(|ip| proto::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(proto::LinuxPodSandboxStatus {
            namespaces: Some(proto::Namespace {
                options: Some(proto::NamespaceOption {
                    network: proto_namespace_mode(record.config.namespaces.network),
                    pid: proto_namespace_mode(record.config.namespaces.pid),
                    ipc: proto_namespace_mode(record.config.namespaces.ipc),
                    target_id: record.config.namespaces.target_id.clone(),
                    userns_options: Some(super::proto_user_namespace(
                        record.config.namespaces.userns.as_ref(),
                    )),
                }),
            }),
        }),
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        runtime_handler: record.handler.clone(),
    }
}

/// Translates a ListPodSandbox filter; `Err` names what is invalid.
pub fn sandbox_filter(filter: Option<proto::PodSandboxFilter>) -> Result<SandboxFilter, String> {
    let Some(f) = filter else {
        return Ok(SandboxFilter::default());
    };
    let state = match f.state.map(|s| s.state) {
        None => None,
        Some(s) if s == proto::PodSandboxState::SandboxReady as i32 => Some(SandboxState::Ready),
        Some(s) if s == proto::PodSandboxState::SandboxNotready as i32 => {
            Some(SandboxState::NotReady)
        }
        Some(other) => return Err(format!("unknown pod sandbox state {other} in filter")),
    };
    Ok(SandboxFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state,
        label_selector: f.label_selector.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pods::container::NamespaceMode;

    #[test]
    fn host_namespaces_are_carried() {
        // Which runtime takes such a pod is the pod service's decision.
        let config = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        network: proto::NamespaceMode::Node as i32,
                        ipc: proto::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = sandbox_config(config, String::new()).unwrap();
        assert_eq!(got.namespaces.network, NamespaceMode::Node);
        assert_eq!(got.namespaces.ipc, NamespaceMode::Node);
        assert_eq!(got.namespaces.pid, NamespaceMode::Pod);
    }

    fn with_userns(userns: proto::UserNamespace) -> Result<SandboxConfig, String> {
        let config = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        userns_options: Some(userns),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        sandbox_config(config, String::new())
    }

    fn range(container_id: u32, host_id: u32, length: u32) -> proto::IdMapping {
        proto::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    #[test]
    fn a_user_namespace_is_carried_checked_and_reported() {
        let pod = |uids: Vec<proto::IdMapping>, gids: Vec<proto::IdMapping>| proto::UserNamespace {
            mode: proto::NamespaceMode::Pod as i32,
            uids,
            gids,
        };
        let good = pod(
            vec![range(0, 65_536, 65_536)],
            vec![range(0, 65_536, 1000), range(1000, 200_000, 10)],
        );
        let got = with_userns(good.clone()).unwrap();
        let userns = got.namespaces.userns.as_ref().unwrap();
        assert_eq!(userns.root(), Some((65_536, 65_536)));
        assert_eq!(
            pods::container::UserNamespace::outside(&userns.gids, 1005),
            Some(200_005)
        );
        assert_eq!(
            pods::container::UserNamespace::outside(&userns.gids, 1010),
            None
        );
        assert_eq!(super::super::proto_user_namespace(Some(userns)), good);
        // Mode NODE (the node's user namespace) is none of the pod's own.
        let node = proto::UserNamespace {
            mode: proto::NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(with_userns(node.clone()).unwrap().namespaces.userns, None);
        assert_eq!(super::super::proto_user_namespace(None), node);

        let refused = [
            (pod(vec![], vec![range(0, 1, 1)]), "needs uids"),
            (pod(vec![range(0, 1, 0)], vec![range(0, 1, 1)]), "empty"),
            (
                pod(vec![range(1, 100, 10)], vec![range(0, 1, 1)]),
                "must map ID 0",
            ),
            (
                pod(vec![range(0, u32::MAX, 2)], vec![range(0, 1, 1)]),
                "passes 2^32",
            ),
            (
                pod(
                    vec![range(0, 100, 10), range(10, 105, 10)],
                    vec![range(0, 1, 1)],
                ),
                "overlap",
            ),
            (
                pod(
                    vec![range(0, 100, 10), range(5, 500, 10)],
                    vec![range(0, 1, 1)],
                ),
                "overlap",
            ),
            (
                proto::UserNamespace {
                    mode: proto::NamespaceMode::Container as i32,
                    ..Default::default()
                },
                "only POD and NODE",
            ),
            (
                proto::UserNamespace {
                    mode: proto::NamespaceMode::Node as i32,
                    uids: vec![range(0, 1, 1)],
                    gids: vec![],
                },
                "takes no ID mappings",
            ),
        ];
        for (userns, why) in refused {
            let err = with_userns(userns.clone()).unwrap_err();
            assert!(err.contains(why), "{userns:?}: {err}");
        }
        let many = (0..341).map(|n| range(n, 1000 + n, 1)).collect();
        let err = with_userns(pod(many, vec![range(0, 1, 1)])).unwrap_err();
        assert!(err.contains("at most 340"), "{err}");
    }

    #[test]
    fn resources_and_overhead_are_carried() {
        let res = proto::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 1 << 28,
            ..Default::default()
        };
        let config = proto::PodSandboxConfig {
            linux: Some(proto::LinuxPodSandboxConfig {
                resources: Some(res.clone()),
                overhead: Some(proto::LinuxContainerResources {
                    memory_limit_in_bytes: 1 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = sandbox_config(config, "frakti".into()).unwrap();
        assert_eq!(c.resources.unwrap().cpu_quota, 50_000);
        assert_eq!(c.resources.unwrap().memory_limit_bytes, 1 << 28);
        assert_eq!(c.overhead.unwrap().memory_limit_bytes, 1 << 20);
        assert_eq!(c.runtime_handler, "frakti");
    }

    #[test]
    fn port_protocols() {
        let port = |protocol| proto::PortMapping {
            protocol,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        };
        let config = proto::PodSandboxConfig {
            port_mappings: vec![port(proto::Protocol::Udp as i32), port(9)],
            ..Default::default()
        };
        let c = sandbox_config(config, String::new()).unwrap();
        assert_eq!(c.port_mappings[0].protocol, "udp");
        assert_eq!(c.port_mappings[1].protocol, "unknown protocol 9");
    }

    #[test]
    fn filter_state_is_checked() {
        let f = proto::PodSandboxFilter {
            state: Some(proto::PodSandboxStateValue { state: 7 }),
            ..Default::default()
        };
        assert!(sandbox_filter(Some(f)).unwrap_err().contains('7'));
        let f = proto::PodSandboxFilter {
            id: "ab".into(),
            state: Some(proto::PodSandboxStateValue { state: 1 }),
            ..Default::default()
        };
        let got = sandbox_filter(Some(f)).unwrap();
        assert_eq!(got.id.as_deref(), Some("ab"));
        assert_eq!(got.state, Some(SandboxState::NotReady));
    }
}
