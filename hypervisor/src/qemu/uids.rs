//! One user id per VMM from the VM user's range: a uid is free when no
//! process holds it, which stays true across a daemon restart (running VMs
//! keep theirs) without any record.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, MutexGuard};

/// Held from choosing a uid until the VMM runs under it.
static CHOOSING: Mutex<()> = Mutex::new(());

/// Takes the lock that makes choosing a uid and spawning under it atomic.
pub(super) fn lock() -> MutexGuard<'static, ()> {
    CHOOSING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The uids of every process (their `/proc/<pid>` owner: the effective uid).
pub(super) fn in_use() -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| e.metadata().ok().map(|m| m.uid()))
        .collect()
}

/// A uid of `first..first + count` not in `used`, searched from a place
/// `seed` picks (so ids spread rather than the lowest being reused at once).
pub(super) fn pick(first: u32, count: u32, seed: &str, used: &HashSet<u32>) -> Option<u32> {
    if count == 0 {
        return None;
    }
    let start = seed
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % count;
    (0..count)
        .map(|i| first.wrapping_add((start + i) % count))
        .find(|uid| !used.contains(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_free_uid_of_the_range_or_none() {
        let used: HashSet<u32> = [100, 101].into();
        let uid = pick(100, 3, "pod", &used).unwrap();
        assert_eq!(uid, 102);
        assert_eq!(pick(100, 2, "pod", &used), None, "range full");
        assert_eq!(pick(100, 0, "pod", &used), None);
        // Different pods start at different places of a large range.
        let none = HashSet::new();
        assert_ne!(
            pick(1000, 65536, "pod-a", &none),
            pick(1000, 65536, "pod-b", &none)
        );
        for seed in ["a", "b", "zzzz"] {
            let uid = pick(1000, 10, seed, &none).unwrap();
            assert!((1000..1010).contains(&uid));
        }
    }

    #[test]
    fn sees_this_process_uid() {
        assert!(in_use().contains(&nix::unistd::geteuid().as_raw()));
    }
}
