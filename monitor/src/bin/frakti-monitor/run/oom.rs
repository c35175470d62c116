//! Whether the OOM killer struck the container's memory cgroup.

use std::path::{Component, Path, PathBuf};

/// The files that count OOM kills in the container's memory cgroup.
#[derive(Debug, Default)]
pub struct Cgroup {
    files: Vec<PathBuf>,
}

/// Keeps the normal components of a cgroup path (no root, no `..`).
fn relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The memory cgroup paths of process `pid` (v1 memory, v2) from
/// `/proc/<pid>/cgroup`.
fn of_process(pid: i32) -> (Option<PathBuf>, Option<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return (None, None);
    };
    let (mut v1, mut v2) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(relative(path));
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(relative(path));
        }
    }
    (v1, v2)
}

impl Cgroup {
    /// The container's memory cgroup: the spec's `linux.cgroupsPath` (a
    /// cgroupfs path), else where its init `pid` is.
    pub fn find(spec: &serde_json::Value, pid: i32) -> Self {
        let configured = spec
            .pointer("/linux/cgroupsPath")
            .and_then(serde_json::Value::as_str)
            .filter(|p| !p.contains(':'))
            .map(relative);
        let (v1, v2) = match configured {
            Some(p) => (Some(p.clone()), Some(p)),
            None => of_process(pid),
        };
        let mut files = Vec::new();
        if let Some(p) = v1 {
            files.push(
                Path::new("/sys/fs/cgroup/memory")
                    .join(p)
                    .join("memory.oom_control"),
            );
        }
        if let Some(p) = v2 {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                files.push(Path::new(root).join(&p).join("memory.events"));
            }
        }
        Self { files }
    }

    /// Whether any of its counters shows an OOM kill.
    pub fn oom_killed(&self) -> bool {
        self.files
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|text| oom_kills(&text) > 0))
    }
}

/// The `oom_kill N` count of a `memory.oom_control` or `memory.events` file.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_paths() {
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 1\noom 1\noom_kill 0\n"), 0);
        assert_eq!(oom_kills("garbage"), 0);
        assert_eq!(relative("/a/../b/./c"), PathBuf::from("a/b/c"));
        let spec = serde_json::json!({"linux": {"cgroupsPath": "/pods/c1"}});
        let c = Cgroup::find(&spec, 0);
        assert_eq!(
            c.files[0],
            PathBuf::from("/sys/fs/cgroup/memory/pods/c1/memory.oom_control")
        );
        assert_eq!(
            c.files[1],
            PathBuf::from("/sys/fs/cgroup/unified/pods/c1/memory.events")
        );
        assert!(!c.oom_killed());
        let own = Cgroup::find(&serde_json::json!({}), std::process::id() as i32);
        assert!(!own.files.is_empty());
    }
}
