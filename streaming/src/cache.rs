//! Pending requests keyed by single-use random tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest};

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// An exec.
    Exec(ExecRequest),
    /// An attach.
    Attach(AttachRequest),
    /// A port forward.
    PortForward(PortForwardRequest),
}

/// Registering a request failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Too many requests are waiting for their clients
    #[error("too many in-flight streaming requests ({0})")]
    Full(usize),
}

/// Tokens to pending requests, each valid once and for a limited time.
#[derive(Debug)]
pub struct RequestCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl RequestCache {
    /// A cache whose tokens expire after `ttl`, holding at most `capacity`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req` and returns its new token.
    pub fn insert(&self, req: Pending) -> Result<String, CacheError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() >= self.capacity {
            entries.retain(|_, (deadline, _)| *deadline > now);
            if entries.len() >= self.capacity {
                return Err(CacheError::Full(self.capacity));
            }
        }
        let token = loop {
            let bytes: [u8; 16] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if !entries.contains_key(&token) {
                break token;
            }
        };
        entries.insert(token.clone(), (now + self.ttl, req));
        Ok(token)
    }

    /// Takes the request of `token` if it exists and has not expired.
    pub fn consume(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (deadline, req) = entries.remove(token)?;
        (deadline > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c".into(),
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let t = cache.insert(exec()).unwrap();
        assert_eq!(t.len(), 32);
        assert_eq!(cache.consume(&t), Some(exec()));
        assert_eq!(cache.consume(&t), None);
        assert_eq!(cache.consume("nope"), None);
    }

    #[test]
    fn tokens_expire() {
        let cache = RequestCache::new(Duration::from_millis(10), 10);
        let t = cache.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(cache.consume(&t), None);
    }

    #[test]
    fn capacity_is_bounded_but_expired_entries_make_room() {
        let cache = RequestCache::new(Duration::from_millis(20), 2);
        cache.insert(exec()).unwrap();
        cache.insert(exec()).unwrap();
        assert!(matches!(cache.insert(exec()), Err(CacheError::Full(2))));
        std::thread::sleep(Duration::from_millis(30));
        cache.insert(exec()).unwrap();
    }
}
