//! The runtime registry: the runtimes of this daemon by handler name, and
//! the routing policy that picks one for a new pod. A pod's handler is
//! decided once, stored in its record, and every later call follows it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use runtime_api::container::NamespaceMode;
use runtime_api::{PodRuntime, SandboxConfig};

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
    /// The pod asks for a host namespace and no runtime here gives one
    #[error(
        "pods in the host {namespace} namespace cannot run in a VM sandbox \
         (host-namespace pods are not supported yet)"
    )]
    NeedsHost {
        /// The namespace asked for (`network`, `pid`, `ipc`).
        namespace: &'static str,
    },
}

/// The runtimes of one daemon, by handler name.
#[derive(Clone)]
pub struct Registry {
    runtimes: BTreeMap<String, Arc<dyn PodRuntime>>,
    default_handler: String,
    host_handler: Option<String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("handlers", &self.handlers())
            .field("default_handler", &self.default_handler)
            .field("host_handler", &self.host_handler)
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
            host_handler: None,
        }
    }

    /// Adds `handler`, run by `runtime`.
    pub fn with(mut self, handler: impl Into<String>, runtime: Arc<dyn PodRuntime>) -> Self {
        self.runtimes.insert(handler.into(), runtime);
        self
    }

    /// Names `handler` (already added) as the one that runs pods needing
    /// the host's namespaces.
    pub fn with_host_handler(mut self, handler: impl Into<String>) -> Self {
        self.host_handler = Some(handler.into());
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

    /// The handler that runs a new pod of `config`.
    pub fn route(&self, config: &SandboxConfig) -> Result<String, RouteError> {
        let ns = &config.namespaces;
        let host_namespace = [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)]
            .into_iter()
            .find(|(_, mode)| *mode == NamespaceMode::Node)
            .map(|(what, _)| what);
        if let Some(namespace) = host_namespace {
            return self
                .host_handler
                .clone()
                .ok_or(RouteError::NeedsHost { namespace });
        }
        if config.runtime_handler.is_empty() {
            return Ok(self.default_handler.clone());
        }
        if self.runtimes.contains_key(&config.runtime_handler) {
            return Ok(config.runtime_handler.clone());
        }
        Err(RouteError::UnknownHandler {
            handler: config.runtime_handler.clone(),
            known: self.handlers(),
        })
    }
}
