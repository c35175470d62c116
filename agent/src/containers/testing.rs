//! Test support: containers registered as create and start would, with the
//! test playing their processes, and their exits as the reaper reports them.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agent_api::messages::ContainerState;
use container::runner::Runner;
use tokio::sync::Notify;

use super::Containers;
use crate::attach::AttachPoint;
use crate::capture::spawn_log_reader;
use container::logs::Stream;

impl Containers {
    /// A set whose runtime state would live under `root`; nothing is created.
    pub(crate) fn for_tests(root: &Path) -> Arc<Self> {
        Arc::new(Self {
            runner: Runner::new(root.join("state"), root.join("bundles")),
            entries: Mutex::new(HashMap::new()),
            events: Mutex::new((0, HashMap::new())),
            changed: Notify::new(),
        })
    }

    /// Registers running container `id` as create and start would, wired to
    /// `stdin` (with a terminal: a copy of its master, also `terminal`) and
    /// to the read ends of its `outputs`. No process exists: the test plays
    /// it, and [`Self::main_process_exited`] plays its exit.
    pub(crate) fn insert_running(
        self: &Arc<Self>,
        id: &str,
        stdin: Option<File>,
        outputs: Vec<(OwnedFd, Stream)>,
        terminal: Option<File>,
        stdin_once: bool,
    ) {
        static NEXT_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1 << 30);
        // A pid the reaper never reports.
        let pid = NEXT_PID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let attach = AttachPoint::new(outputs.len(), stdin, terminal, stdin_once);
        let readers = outputs
            .into_iter()
            .map(|(fd, stream)| spawn_log_reader(fd, stream, None, attach.clone()))
            .collect();
        let cgroup = PathBuf::from("/nonexistent");
        self.register(id.to_owned(), pid, cgroup, None, readers, attach);
        if let Some(e) = self.entries().get_mut(id) {
            e.info.state = ContainerState::Running;
        }
    }

    /// What the reaper's report of the main process's exit sets off.
    pub(crate) async fn main_process_exited(&self, id: &str, code: i32) {
        self.on_exit(id, code).await;
    }
}
