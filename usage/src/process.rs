//! A process's CPU time and resident memory, from `/proc/<pid>`.

use std::path::Path;

use crate::{UsageError, read};

/// CPU time and resident memory of one process (all its threads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// User plus system time, ns.
    pub cpu_ns: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Cumulative minor page faults.
    pub page_faults: u64,
    /// Cumulative major page faults.
    pub major_page_faults: u64,
}

/// The identity a process runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIds {
    /// Effective user id.
    pub uid: i64,
    /// Effective group id.
    pub gid: i64,
    /// Supplementary groups.
    pub groups: Vec<i64>,
}

/// The effective ids and supplementary groups of process `pid` (from the
/// `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`).
pub fn read_ids(proc: &Path, pid: u32) -> Result<ProcessIds, UsageError> {
    let path = proc.join(pid.to_string()).join("status");
    let text = read(&path)?;
    let bad = |what: &str| UsageError::Parse {
        path: path.clone(),
        what: what.to_owned(),
    };
    let line = |key: &str| -> Result<Vec<i64>, UsageError> {
        let rest = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| bad(&format!("no {key} line")))?;
        rest.split_whitespace()
            .map(|n| n.parse().map_err(|_| bad(&format!("{key} holds {n:?}"))))
            .collect()
    };
    // `Uid:` and `Gid:` are real, effective, saved and filesystem ids.
    let effective = |ids: Vec<i64>, key: &str| {
        ids.get(1)
            .copied()
            .ok_or_else(|| bad(&format!("{key} is short")))
    };
    Ok(ProcessIds {
        uid: effective(line("Uid:")?, "Uid:")?,
        gid: effective(line("Gid:")?, "Gid:")?,
        groups: line("Groups:")?,
    })
}

/// The usage of process `pid` as `/proc` (mounted at `proc`) reports it.
pub fn read_process(proc: &Path, pid: u32) -> Result<ProcessUsage, UsageError> {
    let stat_path = proc.join(pid.to_string()).join("stat");
    let stat = read(&stat_path)?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the comm: state is field 3; minflt 10, majflt 12, utime 14,
    // stime 15, rss (pages) 24 — counted from 1 over the whole line.
    let field = |n: usize| -> Result<u64, UsageError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| UsageError::Parse {
                path: stat_path.clone(),
                what: format!("field {n} is missing or not a number"),
            })
    };
    // SAFETY: sysconf only reads a configuration value.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    // SAFETY: as above.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096);
    let cpu_ticks = field(14)?.saturating_add(field(15)?);
    Ok(ProcessUsage {
        cpu_ns: cpu_ticks.saturating_mul(1_000_000_000 / ticks),
        rss_bytes: field(24)?.saturating_mul(page),
        page_faults: field(10)?,
        major_page_faults: field(12)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_an_awkward_name_parses() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("42")).unwrap();
        // Fields 1..=24 and a few more; comm holds a space and a ')'.
        let line = "42 (qemu ) x) S 1 42 42 0 -1 4194560 700 0 9 0 250 50 0 0 20 0 3 0 100 \
                    123456789 2048 18446744073709551615 1 1 0 0 0\n";
        std::fs::write(proc.path().join("42/stat"), line).unwrap();
        let u = read_process(proc.path(), 42).unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
        // SAFETY: as above.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
        assert_eq!(u.cpu_ns, 300 * (1_000_000_000 / ticks));
        assert_eq!(u.rss_bytes, 2048 * page);
        assert_eq!((u.page_faults, u.major_page_faults), (700, 9));
    }

    #[test]
    fn ids_come_from_the_status_lines() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("7")).unwrap();
        std::fs::write(
            proc.path().join("7/status"),
            "Name:\tsh\nUid:\t0\t1000\t1000\t1000\nGid:\t0\t3000\t3000\t3000\nGroups:\t4 27 \n",
        )
        .unwrap();
        let ids = read_ids(proc.path(), 7).unwrap();
        assert_eq!(
            ids,
            ProcessIds {
                uid: 1000,
                gid: 3000,
                groups: vec![4, 27]
            }
        );
        std::fs::write(proc.path().join("7/status"), "Uid:\t0\n").unwrap();
        assert!(read_ids(proc.path(), 7).is_err());
        // SAFETY: geteuid only reads this process's credentials.
        let me = unsafe { libc::geteuid() };
        assert_eq!(
            read_ids(Path::new("/proc"), std::process::id())
                .unwrap()
                .uid,
            i64::from(me)
        );
    }

    #[test]
    fn this_process_uses_memory_and_a_missing_one_is_an_error() {
        let me = read_process(Path::new("/proc"), std::process::id()).unwrap();
        assert!(me.rss_bytes > 0);
        assert!(read_process(Path::new("/proc"), u32::MAX).is_err());
    }
}
