//! A cgroup's CPU, memory and process figures, from cgroup v1 controller
//! directories or a cgroup v2 directory. Working set and available memory
//! are computed as cAdvisor does: usage minus inactive file pages, and the
//! limit minus the working set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{CgroupUsage, CpuUsage, MemoryUsage, UsageError, parse_u64, read};

/// v1 limits at or above this mean "no limit" (the kernel writes
/// PAGE_COUNTER_MAX rounded to pages, near 2^63).
const V1_UNLIMITED: u64 = 1 << 62;

/// The usage of cgroup `path` (from the hierarchy root, e.g. `/kubepods/pod1/c1`)
/// of the hierarchy mounted at `root`: unified when `root` has
/// `cgroup.controllers`, else v1 with one directory per controller.
pub fn read_cgroup(root: &Path, path: &str) -> Result<CgroupUsage, UsageError> {
    let relative = path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        read_v2(&root.join(relative))
    } else {
        read_v1(root, relative)
    }
}

/// The usage of the cgroup v2 directory `dir`.
pub fn read_v2(dir: &Path) -> Result<CgroupUsage, UsageError> {
    let cpu_stat = keyed(&dir.join("cpu.stat"))?;
    let usage_usec = cpu_stat.get("usage_usec").copied().unwrap_or(0);
    let stat_path = dir.join("memory.stat");
    let stat = keyed(&stat_path)?;
    let usage_bytes = number(&dir.join("memory.current"))?;
    let limit = limit_v2(&dir.join("memory.max"))?;
    let swap_bytes = optional_number(&dir.join("memory.swap.current"))?;
    let swap_limit = limit_v2(&dir.join("memory.swap.max")).ok().flatten();
    let memory = memory(
        usage_bytes,
        &stat,
        ["inactive_file", "anon", "pgfault", "pgmajfault"],
        limit,
        swap_bytes,
        swap_limit,
    );
    Ok(CgroupUsage {
        cpu: CpuUsage {
            usage_core_ns: usage_usec.saturating_mul(1000),
        },
        memory,
        processes: optional_number(&dir.join("pids.current"))?,
    })
}

/// The usage of cgroup `relative` in the v1 controllers under `root`.
pub fn read_v1(root: &Path, relative: &str) -> Result<CgroupUsage, UsageError> {
    let controller = |c: &str| -> PathBuf { root.join(c).join(relative) };
    let cpuacct = controller("cpuacct");
    let usage_core_ns = number(&cpuacct.join("cpuacct.usage"))?;
    let mem = controller("memory");
    let stat = keyed(&mem.join("memory.stat"))?;
    let usage_bytes = number(&mem.join("memory.usage_in_bytes"))?;
    let limit = Some(number(&mem.join("memory.limit_in_bytes"))?).filter(|l| *l < V1_UNLIMITED);
    // memsw counts memory plus swap, where swap accounting is on.
    let memsw = optional_number(&mem.join("memory.memsw.usage_in_bytes"))?;
    let swap_bytes = memsw.map(|m| m.saturating_sub(usage_bytes));
    let swap_limit = optional_number(&mem.join("memory.memsw.limit_in_bytes"))?
        .filter(|l| *l < V1_UNLIMITED)
        .zip(limit)
        .map(|(memsw_limit, limit)| memsw_limit.saturating_sub(limit));
    let memory = memory(
        usage_bytes,
        &stat,
        [
            "total_inactive_file",
            "total_rss",
            "total_pgfault",
            "total_pgmajfault",
        ],
        limit,
        swap_bytes,
        swap_limit,
    );
    Ok(CgroupUsage {
        cpu: CpuUsage { usage_core_ns },
        memory,
        processes: optional_number(&controller("pids").join("pids.current"))?,
    })
}

/// Memory figures from usage, the `memory.stat` keys `[inactive file, rss,
/// minor faults, major faults]` and the limits.
fn memory(
    usage_bytes: u64,
    stat: &HashMap<String, u64>,
    keys: [&str; 4],
    limit: Option<u64>,
    swap_bytes: Option<u64>,
    swap_limit: Option<u64>,
) -> MemoryUsage {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let working_set_bytes = usage_bytes.saturating_sub(get(keys[0]));
    MemoryUsage {
        usage_bytes,
        working_set_bytes,
        rss_bytes: get(keys[1]),
        available_bytes: limit.map(|l| l.saturating_sub(working_set_bytes)),
        page_faults: get(keys[2]),
        major_page_faults: get(keys[3]),
        swap_bytes,
        swap_available_bytes: swap_limit.zip(swap_bytes).map(|(l, s)| l.saturating_sub(s)),
    }
}

fn number(path: &Path) -> Result<u64, UsageError> {
    parse_u64(path, &read(path)?)
}

fn optional_number(path: &Path) -> Result<Option<u64>, UsageError> {
    if !path.exists() {
        return Ok(None);
    }
    number(path).map(Some)
}

/// A v2 limit file: a number, or `max` for none; a missing file is no limit.
fn limit_v2(path: &Path) -> Result<Option<u64>, UsageError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read(path)?;
    if text.trim() == "max" {
        return Ok(None);
    }
    parse_u64(path, &text).map(Some)
}

/// A flat-keyed file (`key value` per line).
fn keyed(path: &Path) -> Result<HashMap<String, u64>, UsageError> {
    let text = read(path)?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            let v = parse_u64(path, v)?;
            out.insert(k.to_owned(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn v2_figures_follow_cadvisor() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                (
                    "pod/c/cpu.stat",
                    "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
                ),
                ("pod/c/memory.current", "10000\n"),
                (
                    "pod/c/memory.stat",
                    "anon 6000\nfile 4000\ninactive_file 3000\npgfault 77\npgmajfault 5\n",
                ),
                ("pod/c/memory.max", "16000\n"),
                ("pod/c/memory.swap.current", "100\n"),
                ("pod/c/memory.swap.max", "max\n"),
                ("pod/c/pids.current", "4\n"),
            ],
        );
        let u = read_cgroup(root.path(), "/pod/c").unwrap();
        assert_eq!(u.cpu.usage_core_ns, 1_500_000);
        assert_eq!(
            u.memory,
            MemoryUsage {
                usage_bytes: 10000,
                working_set_bytes: 7000,
                rss_bytes: 6000,
                available_bytes: Some(9000),
                page_faults: 77,
                major_page_faults: 5,
                swap_bytes: Some(100),
                swap_available_bytes: None,
            }
        );
        assert_eq!(u.processes, Some(4));
        write(root.path(), &[("pod/c/memory.max", "max\n")]);
        assert_eq!(
            read_v2(&root.path().join("pod/c"))
                .unwrap()
                .memory
                .available_bytes,
            None
        );
    }

    #[test]
    fn v1_figures_read_the_hierarchical_totals() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("cpuacct/p/c/cpuacct.usage", "123456789\n"),
                ("memory/p/c/memory.usage_in_bytes", "8192\n"),
                (
                    "memory/p/c/memory.stat",
                    "rss 1\ninactive_file 1\ntotal_rss 4096\ntotal_inactive_file 1024\n\
                     total_pgfault 9\ntotal_pgmajfault 2\n",
                ),
                ("memory/p/c/memory.limit_in_bytes", "9223372036854771712\n"),
                ("pids/p/c/pids.current", "2\n"),
            ],
        );
        let u = read_cgroup(root.path(), "p/c").unwrap();
        assert_eq!(u.cpu.usage_core_ns, 123_456_789);
        assert_eq!(u.memory.working_set_bytes, 7168);
        assert_eq!(u.memory.rss_bytes, 4096);
        assert_eq!((u.memory.page_faults, u.memory.major_page_faults), (9, 2));
        assert_eq!(u.memory.available_bytes, None, "no limit");
        assert_eq!(u.memory.swap_bytes, None, "no swap accounting");
        assert_eq!(u.processes, Some(2));
        write(
            root.path(),
            &[("memory/p/c/memory.limit_in_bytes", "10240\n")],
        );
        assert_eq!(
            read_cgroup(root.path(), "p/c")
                .unwrap()
                .memory
                .available_bytes,
            Some(3072)
        );
    }

    #[test]
    fn a_missing_cgroup_or_garbage_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = read_cgroup(root.path(), "/nope").unwrap_err();
        assert!(err.to_string().contains("cpuacct.usage"), "{err}");
        write(root.path(), &[("cpuacct/g/cpuacct.usage", "lots\n")]);
        let err = read_cgroup(root.path(), "/g").unwrap_err();
        assert!(
            err.to_string().contains("\"lots\" is not a number"),
            "{err}"
        );
    }
}
