//! The runtime registry: the runtimes of this daemon by handler name, and
//! the routing policy that picks one for a new pod. A pod's handler is
//! decided once, stored in its record, and every later call follows it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use runtime_api::container::NamespaceMode;
use runtime_api::{PodRuntime, SandboxConfig};

/// The annotation that asks for a pod on the host (the original frakti's).
pub const OS_CONTAINER_ANNOTATION: &str = "runtime.frakti.alpha.kubernetes.io/OSContainer";

/// No runtime can take the pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The pod names a handler this daemon does not have
    #[error("unknown runtime handler {handler:?} (known: {known:?})")]
    UnknownHandler {
        /// The handler asked for.
        handler: String,
        /// The handlers there are.
        known: Vec<String>,
    },
    /// The pod needs the host runtime and this daemon has none
    #[error("{why}: such a pod needs the host runtime, which this daemon does not have")]
    NeedsHost {
        /// The field that asks for the host, with its value.
        why: String,
    },
    /// The pod needs the host runtime and host pods are disabled
    #[error(
        "{why}: such a pod runs on the host, and host pods are disabled on this node (host_pods = false)"
    )]
    HostDisabled {
        /// The field that asks for the host, with its value.
        why: String,
    },
}

/// Which pods run on the host runtime, and under which handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// The host runtime's handler name (config `host_handler`).
    pub handler: String,
    /// Whether pods may run on the host at all (config `host_pods`).
    pub enabled: bool,
    /// Privileged pods run on the host (config `privileged_pods = "host"`);
    /// otherwise they run in their VM.
    pub privileged_on_host: bool,
}

/// The runtimes of one daemon, by handler name.
#[derive(Clone)]
pub struct Registry {
    runtimes: BTreeMap<String, Arc<dyn PodRuntime>>,
    default_handler: String,
    host: Option<HostPolicy>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("handlers", &self.handlers())
            .field("default_handler", &self.default_handler)
            .field("host", &self.host)
            .finish()
    }
}

impl Registry {
    /// A registry whose default handler (the one of pods that name none) is
    /// `handler`, run by `runtime`.
    pub fn new(handler: impl Into<String>, runtime: Arc<dyn PodRuntime>) -> Self {
        let handler = handler.into();
        Self {
            runtimes: BTreeMap::from([(handler.clone(), runtime)]),
            default_handler: handler,
            host: None,
        }
    }

    /// Adds `handler`, run by `runtime`.
    pub fn with(mut self, handler: impl Into<String>, runtime: Arc<dyn PodRuntime>) -> Self {
        self.runtimes.insert(handler.into(), runtime);
        self
    }

    /// Sets the host policy; its handler must be added (when enabled).
    pub fn with_host(mut self, policy: HostPolicy) -> Self {
        self.host = Some(policy);
        self
    }

    /// Handler names, sorted.
    pub fn handlers(&self) -> Vec<String> {
        self.runtimes.keys().cloned().collect()
    }

    /// The handler of pods that name none.
    pub fn default_handler(&self) -> &str {
        &self.default_handler
    }

    /// The runtime of the default handler.
    pub fn default_runtime(&self) -> &Arc<dyn PodRuntime> {
        &self.runtimes[&self.default_handler]
    }

    /// The runtime of `handler`.
    pub fn get(&self, handler: &str) -> Option<&Arc<dyn PodRuntime>> {
        self.runtimes.get(handler)
    }

    /// The runtime a stored record names: by its handler, or, for records
    /// written before handlers were stored (they name the runtime's kind,
    /// e.g. `vm`), by a runtime of that kind when exactly one has it.
    pub fn for_record(&self, handler: &str) -> Option<&Arc<dyn PodRuntime>> {
        if let Some(runtime) = self.runtimes.get(handler) {
            return Some(runtime);
        }
        let mut kinds = self.runtimes.values().filter(|r| r.name() == handler);
        match (kinds.next(), kinds.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// Each runtime once, with the handlers it serves.
    pub fn runtimes(&self) -> Vec<Arc<dyn PodRuntime>> {
        let mut out: Vec<Arc<dyn PodRuntime>> = Vec::new();
        for runtime in self.runtimes.values() {
            if !out.iter().any(|r| Arc::ptr_eq(r, runtime)) {
                out.push(runtime.clone());
            }
        }
        out
    }

    /// The handler that runs a new pod of `config`. A pod runs on the host
    /// when it names the host handler, asks for a node namespace, carries
    /// the OS-container annotation, or is privileged (if the policy says
    /// so); otherwise on the handler it names, or the default one.
    pub fn route(&self, config: &SandboxConfig) -> Result<String, RouteError> {
        let named = &config.runtime_handler;
        let host = self.host.as_ref();
        let host_named = host.is_some_and(|h| &h.handler == named);
        if !named.is_empty() && !host_named && !self.runtimes.contains_key(named) {
            return Err(RouteError::UnknownHandler {
                handler: named.clone(),
                known: self.handlers(),
            });
        }
        if let Some(why) = needs_host(config, host_named) {
            return match host {
                Some(h) if h.enabled => Ok(h.handler.clone()),
                Some(_) => Err(RouteError::HostDisabled { why }),
                None => Err(RouteError::NeedsHost { why }),
            };
        }
        if config.privileged && host.is_some_and(|h| h.enabled && h.privileged_on_host) {
            return Ok(host.map(|h| h.handler.clone()).unwrap_or_default());
        }
        if named.is_empty() {
            return Ok(self.default_handler.clone());
        }
        Ok(named.clone())
    }
}

/// What in `config` asks for the host runtime, if anything (privileged
/// pods aside, which follow the policy).
fn needs_host(config: &SandboxConfig, host_named: bool) -> Option<String> {
    if host_named {
        return Some(format!("runtime_handler {:?}", config.runtime_handler));
    }
    let ns = &config.namespaces;
    let node = [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)]
        .into_iter()
        .find(|(_, mode)| *mode == NamespaceMode::Node);
    if let Some((what, _)) = node {
        return Some(format!(
            "linux.security_context.namespace_options.{what} is NODE"
        ));
    }
    if config
        .annotations
        .get(OS_CONTAINER_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Some(format!("annotation {OS_CONTAINER_ANNOTATION}=\"true\""));
    }
    None
}
