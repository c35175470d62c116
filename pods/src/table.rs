//! The in-memory tables of sandboxes and containers, their slots and locks,
//! and lookups by id or unique prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use runtime_api::{ContainerRecord, SandboxRecord};

/// A sandbox's record; the slot's lock serialises operations on it.
pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<SandboxRecord>>>;

/// One known container: its operation lock and its record.
#[derive(Debug)]
pub(crate) struct ContainerSlot {
    /// The container's sandbox (never changes).
    pub(crate) sandbox_id: String,
    /// Serialises operations on this container.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// The record; `None` once removed. Held only briefly, so readers never
    /// wait for an operation in progress.
    pub(crate) record: Mutex<Option<ContainerRecord>>,
}

impl ContainerSlot {
    pub(crate) fn new(record: ContainerRecord) -> Arc<Self> {
        Arc::new(Self {
            sandbox_id: record.sandbox_id.clone(),
            op: tokio::sync::Mutex::new(()),
            record: Mutex::new(Some(record)),
        })
    }

    pub(crate) fn get(&self) -> Option<ContainerRecord> {
        lock(&self.record).clone()
    }
}

/// What a lookup by id or prefix found.
pub(crate) enum Lookup<T> {
    Found(String, T),
    Missing,
    Ambiguous,
}

/// Looks `id` up in `map` as an exact id or a unique prefix.
pub(crate) fn lookup_in<T: Clone>(map: &Mutex<HashMap<String, T>>, id: &str) -> Lookup<T> {
    let map = lock(map);
    if let Some(slot) = map.get(id) {
        return Lookup::Found(id.to_owned(), slot.clone());
    }
    if id.is_empty() {
        return Lookup::Missing;
    }
    let mut matches = map.iter().filter(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((k, slot)), None) => Lookup::Found(k.clone(), slot.clone()),
        (None, _) => Lookup::Missing,
        (Some(_), Some(_)) => Lookup::Ambiguous,
    }
}

/// A new random sandbox or container id: 64 lowercase hex characters.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub use runtime_api::now_ns;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
