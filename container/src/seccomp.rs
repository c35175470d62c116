//! Seccomp profiles: the runtime's default, and `Localhost` profiles read on the host.
//!
//! The default profile allows everything except system calls that reach
//! outside a container or reconfigure the kernel; calls a granted capability
//! is meant to unlock (e.g. `mount` with `CAP_SYS_ADMIN`) stay allowed. The
//! blocked calls fail with `EPERM`.

use std::path::Path;

use serde_json::{Value, json};

/// Blocked unless the container holds the capability in the first field.
const GUARDED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "setdomainname",
            "sethostname",
            "setns",
            "swapoff",
            "swapon",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (
        "CAP_SYS_MODULE",
        &[
            "create_module",
            "delete_module",
            "finit_module",
            "init_module",
            "query_module",
        ],
    ),
    ("CAP_SYS_BOOT", &["kexec_file_load", "kexec_load", "reboot"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (
        "CAP_SYS_TIME",
        &[
            "adjtimex",
            "clock_adjtime",
            "clock_settime",
            "settimeofday",
            "stime",
        ],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("CAP_SYSLOG", &["syslog"]),
];

/// Blocked for every container.
const ALWAYS: &[&str] = &[
    "add_key",
    "get_kernel_syms",
    "keyctl",
    "move_pages",
    "nfsservctl",
    "request_key",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The runtime's default profile for a container holding `capabilities`.
pub fn runtime_default(capabilities: &[String]) -> Value {
    let mut names: Vec<&str> = ALWAYS.to_vec();
    for (cap, calls) in GUARDED {
        if !capabilities.iter().any(|c| c == cap) {
            names.extend_from_slice(calls);
        }
    }
    names.sort_unstable();
    // clone3 answers ENOSYS, so that libc falls back to clone (whose
    // namespace flags a filter could inspect); EPERM would break threads.
    let clone3 = names.iter().position(|n| *n == "clone3");
    let mut rules = vec![];
    if let Some(i) = clone3 {
        names.remove(i);
        rules.push(
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}),
        );
    }
    rules.insert(
        0,
        json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM}),
    );
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    })
}

/// A `Localhost` profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile path is not absolute
    #[error("seccomp profile path {0:?} must be absolute")]
    Relative(String),
    /// The file cannot be read
    #[error("cannot read seccomp profile {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not a seccomp profile
    #[error("seccomp profile {0} is not valid: {1}")]
    Parse(String, String),
}

/// Reads a `Localhost` profile (OCI/Docker seccomp JSON) from the host.
pub fn localhost(path: &Path) -> Result<Value, ProfileError> {
    let shown = path.display().to_string();
    if !path.is_absolute() {
        return Err(ProfileError::Relative(shown));
    }
    let bytes = std::fs::read(path).map_err(|e| ProfileError::Read(shown.clone(), e))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProfileError::Parse(shown.clone(), e.to_string()))?;
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(value.clone())
        .map_err(|e| ProfileError::Parse(shown, e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(v: &Value) -> Vec<String> {
        serde_json::from_value(v["syscalls"][0]["names"].clone()).unwrap()
    }

    #[test]
    fn default_profile_follows_capabilities() {
        let plain = runtime_default(&[]);
        assert!(blocked(&plain).contains(&"mount".to_string()));
        assert!(blocked(&plain).contains(&"keyctl".to_string()));
        let admin = runtime_default(&["CAP_SYS_ADMIN".to_string()]);
        assert!(!blocked(&admin).contains(&"mount".to_string()));
        serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(plain).unwrap();
    }

    #[test]
    fn localhost_profiles_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        assert_eq!(
            localhost(&good).unwrap()["syscalls"][0]["names"][0],
            "mkdir"
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"defaultAction":"ALLOW_ALL"}"#).unwrap();
        assert!(matches!(localhost(&bad), Err(ProfileError::Parse(..))));
        assert!(matches!(
            localhost(Path::new("rel.json")),
            Err(ProfileError::Relative(_))
        ));
        assert!(matches!(
            localhost(&dir.path().join("none")),
            Err(ProfileError::Read(..))
        ));
    }
}
