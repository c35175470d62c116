//! Capability sets: the default set of a container, plus adds, minus drops.

/// Every capability the guest kernel knows.
pub const ALL: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What a container gets when it asks for nothing (the usual runtime default).
pub const DEFAULT: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The capability number of a `CAP_` name (its place in [`ALL`]).
pub fn number(name: &str) -> Option<u32> {
    ALL.iter().position(|c| *c == name).map(|n| n as u32)
}

/// The calling process's capability bounding set (the `CapBnd` mask of
/// `/proc/self/status`); `None` if it cannot be read.
pub fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Whether `name` is in the bounding set `mask`.
pub fn in_bounding_set(name: &str, mask: u64) -> bool {
    number(name).is_some_and(|n| n < 64 && mask & (1 << n) != 0)
}

/// `CAP_`-prefixed upper-case name of `name`, if it is a capability.
pub fn normalize(name: &str) -> Option<&'static str> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL.iter().copied().find(|c| *c == full)
}

/// The default set with `add` added and `drop` removed (`ALL` allowed in
/// both; drops apply after adds, as Kubernetes documents). Errors name an
/// unknown capability.
pub fn effective(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
    let mut set: Vec<&'static str> = if add.iter().any(is_all) {
        ALL.to_vec()
    } else {
        DEFAULT.to_vec()
    };
    for a in add.iter().filter(|a| !is_all(a)) {
        let cap = normalize(a).ok_or_else(|| a.clone())?;
        if !set.contains(&cap) {
            set.push(cap);
        }
    }
    if drop.iter().any(is_all) {
        // Dropping ALL keeps only what was added explicitly.
        set.clear();
        for a in add.iter().filter(|a| !is_all(a)) {
            set.extend(normalize(a));
        }
    }
    for d in drop.iter().filter(|d| !is_all(d)) {
        let cap = normalize(d).ok_or_else(|| d.clone())?;
        set.retain(|c| *c != cap);
    }
    Ok(set.into_iter().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn add_drop_and_all() {
        let caps = effective(&s(&["NET_ADMIN"]), &s(&["CAP_CHOWN"])).unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(effective(&[], &s(&["ALL"])).unwrap(), Vec::<String>::new());
        assert_eq!(
            effective(&s(&["NET_RAW"]), &s(&["all"])).unwrap(),
            ["CAP_NET_RAW"]
        );
        assert_eq!(effective(&s(&["ALL"]), &[]).unwrap().len(), ALL.len());
        assert_eq!(effective(&s(&["BOGUS"]), &[]), Err("BOGUS".to_string()));
    }

    #[test]
    fn numbers_follow_the_kernel_and_masks_are_read() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_SYS_RESOURCE"), Some(24));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_BOGUS"), None);
        let mask = (1 << 0) | (1 << 24);
        assert!(in_bounding_set("CAP_SYS_RESOURCE", mask));
        assert!(!in_bounding_set("CAP_KILL", mask));
        // This process's own set, as the kernel reports it for pid 1's view too.
        let own = own_bounding_set().expect("CapBnd in /proc/self/status");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains(&format!("{own:016x}")), "{own:x}");
    }
}
