//! Container events: every container transition (created, started,
//! stopped, deleted) published in order, with its pod's status and the
//! statuses of the pod's containers, to any number of subscribers.
//!
//! Transitions are queued where they happen (often under a record's lock)
//! and a single publisher task, started with the first subscriber, turns
//! them into events. A subscriber that falls more than [`BUFFER`] events
//! behind loses its subscription; nobody else waits for it.

use std::sync::{Arc, Mutex, Weak};

use runtime_api::{ContainerRecord, SandboxRecord};
use tokio::sync::{broadcast, mpsc};

use crate::filter::ContainerFilter;
use crate::service::PodService;
use crate::table::{lock, now_ns};

/// Events a subscriber may fall behind by before it is dropped.
pub const BUFFER: usize = 1024;

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// It was created.
    Created,
    /// Its process started.
    Started,
    /// Its process ended (or its pod stopped under it).
    Stopped,
    /// It was removed.
    Deleted,
}

/// A container transition with the state of its pod when it was published.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// The container.
    pub container_id: String,
    /// What happened.
    pub kind: ContainerEventKind,
    /// When it happened, ns since the epoch.
    pub at_ns: i64,
    /// Its pod sandbox; `None` if the sandbox was already gone.
    pub sandbox: Option<SandboxRecord>,
    /// The pod's containers (a deleted container is no longer among them).
    pub containers: Vec<ContainerRecord>,
}

/// A transition waiting to be published.
#[derive(Debug)]
pub(crate) struct Transition {
    container_id: String,
    sandbox_id: String,
    kind: ContainerEventKind,
    at_ns: i64,
    /// The sandbox as the caller saw it, when it holds it.
    sandbox: Option<SandboxRecord>,
    /// The pod's containers right after the transition.
    containers: Vec<ContainerRecord>,
}

/// The queue of transitions and the broadcast of events.
#[derive(Debug)]
pub(crate) struct EventHub {
    events: broadcast::Sender<Arc<ContainerEvent>>,
    queue: mpsc::UnboundedSender<Transition>,
    /// The queue's receiving end until the publisher takes it.
    pending: Mutex<Option<mpsc::UnboundedReceiver<Transition>>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        Self {
            events: broadcast::channel(BUFFER).0,
            queue,
            pending: Mutex::new(Some(pending)),
        }
    }
}

impl PodService {
    /// Queues a transition of `record` with the pod's containers as they are
    /// now; `sandbox` is the pod as the caller holds it. Nothing is queued
    /// while nobody listens. Call it holding no container record's lock.
    pub(crate) fn container_transition(
        &self,
        record: &ContainerRecord,
        kind: ContainerEventKind,
        sandbox: Option<&SandboxRecord>,
    ) {
        if self.events.events.receiver_count() == 0 {
            return;
        }
        let containers = self.list_containers(&ContainerFilter {
            sandbox_id: Some(record.sandbox_id.clone()),
            ..Default::default()
        });
        let _ = self.events.queue.send(Transition {
            container_id: record.id.clone(),
            sandbox_id: record.sandbox_id.clone(),
            kind,
            at_ns: now_ns(),
            sandbox: sandbox.cloned(),
            containers,
        });
    }

    /// Subscribes to container events from now on.
    pub fn subscribe_events(self: &Arc<Self>) -> broadcast::Receiver<Arc<ContainerEvent>> {
        let receiver = self.events.events.subscribe();
        if let Some(queue) = lock(&self.events.pending).take() {
            tokio::spawn(publish(Arc::downgrade(self), queue));
        }
        receiver
    }
}

/// Turns queued transitions into events, in order, while the service lives.
async fn publish(service: Weak<PodService>, mut queue: mpsc::UnboundedReceiver<Transition>) {
    while let Some(t) = queue.recv().await {
        let Some(service) = service.upgrade() else {
            return;
        };
        let sandbox = match t.sandbox {
            Some(sandbox) => Some(sandbox),
            None => service.sandbox_snapshot(&t.sandbox_id).await,
        };
        // No receiver left is not an error: the next subscriber starts afresh.
        let _ = service.events.events.send(Arc::new(ContainerEvent {
            container_id: t.container_id,
            kind: t.kind,
            at_ns: t.at_ns,
            sandbox,
            containers: t.containers,
        }));
    }
}
