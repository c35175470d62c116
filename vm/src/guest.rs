//! Waiting for a booting guest: the agent's handshake, or the VM process's
//! early death, with what its logs say.

use std::path::Path;

use agent_api::{AgentClient, ConnectError};
use hypervisor::{Process, VmEndpoints};
use tokio::time::Instant;

/// The guest did not come up.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VM process cannot be watched
    #[error("VM process: {0}")]
    Watch(#[source] std::io::Error),
    /// The agent did not answer
    #[error(transparent)]
    Agent(#[from] ConnectError),
    /// The VM process exited during boot
    #[error("the VM process exited during boot ({last_line})")]
    Exited {
        /// The last line of the VMM's log.
        last_line: String,
    },
}

/// Waits for the agent's handshake, failing early if the VM process exits.
pub(crate) async fn wait_boot(
    agent: &AgentClient,
    vm: &VmEndpoints,
    deadline: Instant,
) -> Result<(), BootError> {
    let process = Process::open(vm.pid).map_err(BootError::Watch)?;
    tokio::select! {
        r = agent.wait_ready(deadline) => r.map(drop).map_err(BootError::from),
        () = process.exited() => {
            let last_line = hypervisor::process::last_line(&vm.vmm_log)
                .unwrap_or_else(|| "no output".to_owned());
            Err(BootError::Exited { last_line })
        }
    }
}

/// The last lines of the guest console, for error messages.
pub(crate) fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
