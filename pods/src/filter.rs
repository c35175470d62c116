//! Which records the `List*` calls return: filters over sandbox and
//! container records.

use std::collections::BTreeMap;

use runtime_api::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};

/// Which sandboxes `ListPodSandbox` returns; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    /// Exact id or unique prefix.
    pub id: Option<String>,
    /// State to match.
    pub state: Option<SandboxState>,
    /// Labels that must all be present with these values.
    pub label_selector: BTreeMap<String, String>,
}

impl SandboxFilter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &SandboxRecord) -> bool {
        if let Some(id) = &self.id
            && !record.id.starts_with(id.as_str())
        {
            return false;
        }
        if let Some(state) = self.state
            && record.state != state
        {
            return false;
        }
        self.label_selector
            .iter()
            .all(|(k, v)| record.config.labels.get(k) == Some(v))
    }
}

/// Which containers `ListContainers` returns; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    /// Exact id or unique prefix.
    pub id: Option<String>,
    /// Sandbox id or prefix.
    pub sandbox_id: Option<String>,
    /// State to match.
    pub state: Option<ContainerState>,
    /// Labels that must all be present with these values.
    pub label_selector: BTreeMap<String, String>,
}

impl ContainerFilter {
    /// Whether `record` passes the filter.
    pub fn matches(&self, record: &ContainerRecord) -> bool {
        if let Some(id) = &self.id
            && !record.id.starts_with(id.as_str())
        {
            return false;
        }
        if let Some(sandbox) = &self.sandbox_id
            && !record.sandbox_id.starts_with(sandbox.as_str())
        {
            return false;
        }
        if let Some(state) = self.state
            && record.status.state != state
        {
            return false;
        }
        self.label_selector
            .iter()
            .all(|(k, v)| record.config.labels.get(k) == Some(v))
    }
}
