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
}
