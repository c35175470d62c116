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
    };
    let targets = [options.network, options.pid, options.ipc].contains(&NamespaceMode::Target);
    if targets && options.target_id.is_empty() {
        return Err("namespace mode TARGET needs target_id".into());
    }
    Ok(options)
}

/// Labels or annotations as the CRI carries them.
pub(crate) fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
