//! CRI messages <-> domain types, by verb family; each function says what is
//! invalid in its `Err`.

mod container;
mod image;
mod sandbox;
mod stats;

use std::collections::HashMap;

use pods::container::{NamespaceMode, NamespaceOptions};

use crate::proto;

pub use container::{
    container, container_config, container_filter, container_resources, container_status,
};
pub use image::image_process;
pub(crate) use sandbox::pod_resources;
pub use sandbox::{pod_sandbox, pod_sandbox_status, sandbox_config, sandbox_filter};
pub use stats::{
    container_stats, container_stats_filter, filesystem_usage, pod_stats, pod_stats_filter,
};

pub(crate) fn namespace_mode(mode: i32, what: &str) -> Result<NamespaceMode, String> {
    match proto::NamespaceMode::try_from(mode) {
        Ok(proto::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(proto::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(proto::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(proto::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(format!("unknown {what} namespace mode {mode}")),
    }
}

/// A domain namespace mode as the CRI enum value.
pub(crate) fn proto_namespace_mode(mode: NamespaceMode) -> i32 {
    match mode {
        NamespaceMode::Pod => proto::NamespaceMode::Pod as i32,
        NamespaceMode::Container => proto::NamespaceMode::Container as i32,
        NamespaceMode::Node => proto::NamespaceMode::Node as i32,
        NamespaceMode::Target => proto::NamespaceMode::Target as i32,
    }
}

/// Namespace options; absent options are the CRI default (all POD).
pub(crate) fn namespace_options(
    ns: Option<&proto::NamespaceOption>,
) -> Result<NamespaceOptions, String> {
    let Some(ns) = ns else {
        return Ok(NamespaceOptions::default());
    };
    let options = NamespaceOptions {
        network: namespace_mode(ns.network, "network")?,
        pid: namespace_mode(ns.pid, "pid")?,
        ipc: namespace_mode(ns.ipc, "ipc")?,
        target_id: ns.target_id.clone(),
        userns: user_namespace(ns.userns_options.as_ref())?,
    };
    let targets = [options.network, options.pid, options.ipc].contains(&NamespaceMode::Target);
    if targets && options.target_id.is_empty() {
        return Err("namespace mode TARGET needs target_id".into());
    }
    Ok(options)
}

/// The pod's user namespace: `None` for mode NODE (or no options), the
/// checked mappings for mode POD.
fn user_namespace(
    options: Option<&proto::UserNamespace>,
) -> Result<Option<pods::container::UserNamespace>, String> {
    let Some(options) = options else {
        return Ok(None);
    };
    match proto::NamespaceMode::try_from(options.mode) {
        Ok(proto::NamespaceMode::Node) => {
            if !options.uids.is_empty() || !options.gids.is_empty() {
                return Err("user namespace mode NODE takes no ID mappings".into());
            }
            Ok(None)
        }
        Ok(proto::NamespaceMode::Pod) => {
            let userns = pods::container::UserNamespace {
                uids: id_mappings(&options.uids),
                gids: id_mappings(&options.gids),
            };
            userns.check()?;
            Ok(Some(userns))
        }
        Ok(other) => Err(format!(
            "user namespace mode {} is not supported (only POD and NODE)",
            other.as_str_name()
        )),
        Err(_) => Err(format!("unknown user namespace mode {}", options.mode)),
    }
}

/// A pod's user namespace as the CRI reports it.
pub(crate) fn proto_user_namespace(
    userns: Option<&pods::container::UserNamespace>,
) -> proto::UserNamespace {
    let list = |l: &[pods::container::IdMapping]| {
        l.iter()
            .map(|m| proto::IdMapping {
                host_id: m.host_id,
                container_id: m.container_id,
                length: m.length,
            })
            .collect()
    };
    match userns {
        None => proto::UserNamespace {
            mode: proto::NamespaceMode::Node as i32,
            ..Default::default()
        },
        Some(u) => proto::UserNamespace {
            mode: proto::NamespaceMode::Pod as i32,
            uids: list(&u.uids),
            gids: list(&u.gids),
        },
    }
}

/// One side of a user namespace's mappings in the domain's terms.
fn id_mappings(list: &[proto::IdMapping]) -> Vec<pods::container::IdMapping> {
    list.iter()
        .map(|m| pods::container::IdMapping {
            container_id: m.container_id,
            host_id: m.host_id,
            length: m.length,
        })
        .collect()
}

/// Labels or annotations as the CRI carries them.
pub(crate) fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
