//! Changing a container's cgroup limits (UpdateContainerResources).

use agent_api::messages::{AgentErrorKind, ContainerState};
use agent_api::{AgentError, Response};
use runtime_api::container::ContainerResources;

use super::{CGROUP_ROOT, Containers, err, not_found};

impl Containers {
    /// Sets the cgroup limits of created or running container `id`; all or
    /// nothing.
    pub fn update(&self, id: &str, resources: &ContainerResources) -> Result<Response, AgentError> {
        let cgroup = {
            let entries = self.entries();
            let entry = entries.get(id).ok_or_else(|| not_found(id))?;
            if !matches!(
                entry.info.state,
                ContainerState::Created | ContainerState::Running
            ) {
                return Err(err(
                    AgentErrorKind::FailedPrecondition,
                    format!("container {id} has exited; its limits cannot change"),
                ));
            }
            entry.cgroup.clone()
        };
        let relative = cgroup.strip_prefix(CGROUP_ROOT).map_err(|_| {
            err(
                AgentErrorKind::Internal,
                format!("cgroup {} is outside {CGROUP_ROOT}", cgroup.display()),
            )
        })?;
        let path = format!("/{}", relative.display());
        cgroups::Hierarchy::new(CGROUP_ROOT)
            .update(&path, resources)
            .map_err(|e| {
                let kind = match &e {
                    cgroups::CgroupError::Write { source, .. }
                        if source.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        AgentErrorKind::ResourceExhausted
                    }
                    cgroups::CgroupError::Write { source, .. }
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        AgentErrorKind::InvalidArgument
                    }
                    cgroups::CgroupError::Missing(_) => AgentErrorKind::FailedPrecondition,
                    cgroups::CgroupError::Invalid(_) => AgentErrorKind::InvalidArgument,
                    _ => AgentErrorKind::Internal,
                };
                err(kind, format!("container {id}: {e}"))
            })?;
        Ok(Response::Done)
    }
}
