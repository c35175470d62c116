//! cgroups of pods and containers: where they are (the cgroupfs driver for
//! plain paths, the systemd driver for `.slice` parents), changing the
//! limits of a running one, and removing the cgroups frakti made, on a v1
//! (or hybrid) or a unified v2 hierarchy. Host pods, pod VMs on the host
//! and the guest agent share it.
//!
//! libcontainer creates a container's cgroup from the spec's `cgroupsPath`
//! and applies its limits at creation; this crate does what comes after.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use runtime_api::container::ContainerResources;

/// Parent of the cgroups of pods that came without a `cgroup_parent`.
pub const OWN_PARENT: &str = "/frakti";

/// The v1 controllers a container's cgroup lives in (those libcontainer
/// populates on this kind of host).
const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
];

/// A `cgroup_parent` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParentError {
    /// A systemd slice name is malformed
    #[error(
        "linux.cgroup_parent {0:?} is not a valid systemd slice name \
         (a name ending in .slice, without '/', whose '-'-separated parts are not empty)"
    )]
    Slice(String),
    /// A cgroupfs path is malformed
    #[error("linux.cgroup_parent {0:?} must be a cgroup path without '.' or '..' components")]
    Path(String),
}

/// A pod's place in the cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodCgroup {
    /// The pod's cgroup as a path from the hierarchy root (e.g. `/kubepods/pod1`).
    pub path: String,
    /// The systemd driver names containers `<path>/frakti-<id>.scope`.
    pub systemd: bool,
    /// frakti made this cgroup (no `cgroup_parent`) and removes it with the pod.
    pub owned: bool,
}

impl PodCgroup {
    /// The cgroup of pod `pod_id` for its `cgroup_parent` (empty: frakti's own).
    pub fn for_pod(cgroup_parent: &str, pod_id: &str) -> Result<Self, ParentError> {
        if cgroup_parent.is_empty() {
            return Ok(Self {
                path: format!("{OWN_PARENT}/{pod_id}"),
                systemd: false,
                owned: true,
            });
        }
        if cgroup_parent.ends_with(".slice") {
            return Ok(Self {
                path: expand_slice(cgroup_parent)?,
                systemd: true,
                owned: false,
            });
        }
        let trimmed = cgroup_parent.trim_end_matches('/');
        let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(ParentError::Path(cgroup_parent.to_owned()));
        }
        Ok(Self {
            path: format!("/{}", parts.join("/")),
            systemd: false,
            owned: false,
        })
    }

    /// The cgroup of container `id` in this pod.
    pub fn container(&self, id: &str) -> String {
        let base = self.path.trim_end_matches('/');
        if self.systemd {
            format!("{base}/frakti-{id}.scope")
        } else {
            format!("{base}/{id}")
        }
    }
}

/// The cgroupfs path of a systemd slice: `a-b-c.slice` lives at
/// `/a.slice/a-b.slice/a-b-c.slice`, and `-.slice` is the root.
pub fn expand_slice(slice: &str) -> Result<String, ParentError> {
    let bad = || ParentError::Slice(slice.to_owned());
    let name = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if name == "-" {
        return Ok("/".to_owned());
    }
    if name.is_empty() || name.contains('/') {
        return Err(bad());
    }
    let parts: Vec<&str> = name.split('-').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in parts {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

/// The cgroup hierarchy of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    root: PathBuf,
}

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A limit cannot be written
    #[error("cannot set {file} to {value:?}: {source}")]
    Write {
        /// The cgroup file.
        file: PathBuf,
        /// The value.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// The container has no cgroup
    #[error("the container's cgroup {0} does not exist")]
    Missing(PathBuf),
    /// A cgroup cannot be removed
    #[error("cannot remove cgroup {0}: {1}")]
    Remove(PathBuf, std::io::Error),
    /// A limit is malformed
    #[error("{0}")]
    Invalid(String),
    /// A cgroup cannot be created
    #[error("cannot create cgroup {0}: {1}")]
    Create(PathBuf, std::io::Error),
}

impl Hierarchy {
    /// The hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether the host runs the unified (v2-only) hierarchy.
    pub fn unified(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// The directory of cgroup `path` in v1 controller `controller`.
    pub fn v1(&self, controller: &str, path: &str) -> PathBuf {
        self.root
            .join(controller)
            .join(path.trim_start_matches('/'))
    }

    fn v2(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The controllers available: those of the v2 root (`cgroup.controllers`),
    /// or the v1 controllers mounted here (see [`Hierarchy::v1_controllers`]).
    pub fn controllers(&self) -> Vec<String> {
        if !self.unified() {
            return self.v1_controllers();
        }
        std::fs::read_to_string(self.root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The v1 controllers mounted here in which libcontainer makes a
    /// container's cgroup (not the named or unified hierarchies).
    pub fn v1_controllers(&self) -> Vec<String> {
        V1_CONTROLLERS
            .iter()
            .filter(|c| self.root.join(c).join("cgroup.procs").exists())
            .map(|c| (*c).to_owned())
            .collect()
    }

    /// Sets the limits of the cgroup at `path` to `resources` (0 and empty
    /// fields leave a limit as it is). All or nothing: when a write fails,
    /// the limits already written are put back.
    pub fn update(&self, path: &str, resources: &ContainerResources) -> Result<(), CgroupError> {
        check_names(resources)?;
        if !resources.unified.is_empty() && !self.unified() {
            return Err(CgroupError::Invalid(
                "unified cgroup settings need a cgroup v2 host; this one runs v1".into(),
            ));
        }
        let (writes, probe) = if self.unified() {
            (self.v2_writes(path, resources), self.v2(path))
        } else {
            (self.v1_writes(path, resources), self.v1("memory", path))
        };
        if !probe.is_dir() {
            return Err(CgroupError::Missing(probe));
        }
        let mut done: Vec<(PathBuf, String)> = Vec::new();
        for (file, value) in writes {
            let before = std::fs::read_to_string(&file).unwrap_or_default();
            if let Err(source) = std::fs::write(&file, &value) {
                for (file, old) in done.iter().rev() {
                    if let Err(e) = std::fs::write(file, old.trim()) {
                        tracing::warn!(file = %file.display(), "cannot restore a cgroup limit: {e}");
                    }
                }
                return Err(CgroupError::Write {
                    file,
                    value,
                    source,
                });
            }
            done.push((file, before));
        }
        Ok(())
    }

    fn v1_writes(&self, path: &str, r: &ContainerResources) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let cpu = |f: &str| self.v1("cpu", path).join(f);
        if r.cpu_shares > 0 {
            out.push((cpu("cpu.shares"), r.cpu_shares.to_string()));
        }
        if r.cpu_period > 0 {
            out.push((cpu("cpu.cfs_period_us"), r.cpu_period.to_string()));
        }
        if r.cpu_quota != 0 {
            out.push((cpu("cpu.cfs_quota_us"), r.cpu_quota.to_string()));
        }
        if !r.cpuset_cpus.is_empty() {
            out.push((
                self.v1("cpuset", path).join("cpuset.cpus"),
                r.cpuset_cpus.clone(),
            ));
        }
        if !r.cpuset_mems.is_empty() {
            out.push((
                self.v1("cpuset", path).join("cpuset.mems"),
                r.cpuset_mems.clone(),
            ));
        }
        if r.memory_limit_bytes > 0 {
            out.push((
                self.v1("memory", path).join("memory.limit_in_bytes"),
                r.memory_limit_bytes.to_string(),
            ));
        }
        if r.memory_swap_limit_bytes != 0 {
            out.push((
                self.v1("memory", path).join("memory.memsw.limit_in_bytes"),
                r.memory_swap_limit_bytes.to_string(),
            ));
        }
        if r.pids_limit > 0 {
            out.push((
                self.v1("pids", path).join("pids.max"),
                r.pids_limit.to_string(),
            ));
        }
        for (size, limit) in &r.hugepage_limits {
            let file = self
                .v1("hugetlb", path)
                .join(format!("hugetlb.{size}.limit_in_bytes"));
            // A size (or a hugetlb controller) the kernel lacks cannot be
            // allocated: its limit is moot, as at create.
            if file.exists() {
                out.push((file, limit.to_string()));
            }
        }
        out
    }

    fn v2_writes(&self, path: &str, r: &ContainerResources) -> Vec<(PathBuf, String)> {
        let dir = self.v2(path);
        let mut out = Vec::new();
        if r.cpu_shares > 0 {
            out.push((
                dir.join("cpu.weight"),
                shares_to_weight(r.cpu_shares).to_string(),
            ));
        }
        if r.cpu_quota != 0 || r.cpu_period > 0 {
            let quota = if r.cpu_quota > 0 {
                r.cpu_quota.to_string()
            } else {
                "max".to_owned()
            };
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            out.push((dir.join("cpu.max"), format!("{quota} {period}")));
        }
        if !r.cpuset_cpus.is_empty() {
            out.push((dir.join("cpuset.cpus"), r.cpuset_cpus.clone()));
        }
        if !r.cpuset_mems.is_empty() {
            out.push((dir.join("cpuset.mems"), r.cpuset_mems.clone()));
        }
        if r.memory_limit_bytes > 0 {
            out.push((dir.join("memory.max"), r.memory_limit_bytes.to_string()));
        }
        // The CRI's figure is memory plus swap, as v1 has it; v2 limits swap alone.
        match r.memory_swap_limit_bytes {
            0 => {}
            -1 => out.push((dir.join("memory.swap.max"), "max".to_owned())),
            total if r.memory_limit_bytes > 0 => out.push((
                dir.join("memory.swap.max"),
                (total - r.memory_limit_bytes).max(0).to_string(),
            )),
            _ => {}
        }
        if r.pids_limit > 0 {
            out.push((dir.join("pids.max"), r.pids_limit.to_string()));
        }
        for (size, limit) in &r.hugepage_limits {
            let file = dir.join(format!("hugetlb.{size}.max"));
            if file.exists() {
                out.push((file, limit.to_string()));
            }
        }
        for (file, value) in &r.unified {
            out.push((dir.join(file), value.clone()));
        }
        out
    }

    /// The directories of cgroup `path` a process is placed in: its dir in
    /// each v1 controller that holds processes' accounting and limits
    /// (cpu, cpuacct, memory, pids) and in the hybrid unified mount, or
    /// the one v2 dir.
    fn process_dirs(&self, path: &str) -> Vec<PathBuf> {
        if self.unified() {
            return vec![self.v2(path)];
        }
        ["cpu", "cpuacct", "memory", "pids", "unified"]
            .iter()
            .filter(|c| self.root.join(c).join("cgroup.procs").exists())
            .map(|c| self.v1(c, path))
            .collect()
    }

    /// Creates cgroup `path` (and missing parents) where processes are
    /// placed (see [`Hierarchy::add_process`]).
    pub fn create(&self, path: &str) -> Result<(), CgroupError> {
        for dir in self.process_dirs(path) {
            std::fs::create_dir_all(&dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
        }
        Ok(())
    }

    /// Processes moved into cgroup `path` bring the memory they were
    /// charged with (cgroup v1's `memory.move_charge_at_immigrate`; v2
    /// leaves charges where they were made).
    pub fn charge_moved_processes(&self, path: &str) -> Result<(), CgroupError> {
        if self.unified() {
            return Ok(());
        }
        let file = self
            .v1("memory", path)
            .join("memory.move_charge_at_immigrate");
        if !file.exists() {
            return Ok(());
        }
        // 1: anonymous memory, 2: file and shared memory mapped by the task.
        match std::fs::write(&file, "3") {
            Ok(()) => Ok(()),
            // Recent kernels dropped charge moving (the file refuses every
            // value but 0): charges stay where they were made.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(source) => Err(CgroupError::Write {
                file,
                value: "3".into(),
                source,
            }),
        }
    }

    /// Moves process `pid` (all its threads) into cgroup `path`.
    pub fn add_process(&self, path: &str, pid: i32) -> Result<(), CgroupError> {
        for dir in self.process_dirs(path) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Write {
                file: procs,
                value: pid.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// The memory limit of cgroup `path`, bytes (`None`: unlimited or unreadable).
    pub fn memory_limit(&self, path: &str) -> Option<u64> {
        let file = if self.unified() {
            self.v2(path).join("memory.max")
        } else {
            self.v1("memory", path).join("memory.limit_in_bytes")
        };
        let text = std::fs::read_to_string(file).ok()?;
        let limit: u64 = text.trim().parse().ok()?;
        // v1 reports "unlimited" as a huge page-aligned number.
        (limit < (1 << 62)).then_some(limit)
    }

    /// The tightest CPU limit, in cores, of the cgroup at `path` and its
    /// ancestors (`cpu.cfs_quota_us` / `cpu.cfs_period_us`, or `cpu.max`);
    /// `None` when none of them has one. Under v1 a child's quota may not
    /// exceed this (the write fails with `EINVAL`).
    pub fn cpu_ceiling(&self, path: &str) -> Option<f64> {
        let mut ceiling: Option<f64> = None;
        let mut here = Path::new("/").join(path.trim_start_matches('/'));
        loop {
            let cgroup = here.to_string_lossy();
            if let Some(cores) = self.cpu_limit(&cgroup) {
                ceiling = Some(ceiling.map_or(cores, |c| c.min(cores)));
            }
            if !here.pop() {
                return ceiling;
            }
        }
    }

    /// The CPU limit, in cores, set on the cgroup at `path` itself.
    fn cpu_limit(&self, path: &str) -> Option<f64> {
        let (quota, period) = if self.unified() {
            let text = std::fs::read_to_string(self.v2(path).join("cpu.max")).ok()?;
            let mut fields = text.split_whitespace();
            let quota = fields.next()?.parse::<i64>().ok()?;
            (quota, fields.next()?.parse::<i64>().ok()?)
        } else {
            let read = |file: &str| -> Option<i64> {
                std::fs::read_to_string(self.v1("cpu", path).join(file))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?)
        };
        (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
    }

    /// Removes the cgroup at `path` from every controller (it must be
    /// empty); a missing one is not an error.
    pub fn remove(&self, path: &str) -> Result<(), CgroupError> {
        let dirs: Vec<PathBuf> = if self.unified() {
            vec![self.v2(path)]
        } else {
            V1_CONTROLLERS
                .iter()
                .map(|c| self.v1(c, path))
                .chain(std::iter::once(self.v1("unified", path)))
                .collect()
        };
        for dir in dirs {
            remove_dir(&dir)?;
        }
        Ok(())
    }
}

/// Removes an empty cgroup directory, retrying while the kernel still
/// counts a just-exited task in it.
fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(CgroupError::Remove(dir.to_path_buf(), e)),
        }
    }
    Ok(())
}

/// Hugepage sizes and unified keys become file names: they must be plain.
fn check_names(r: &ContainerResources) -> Result<(), CgroupError> {
    for size in r.hugepage_limits.keys() {
        let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
        let unit = &size[digits.len()..];
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || !["KB", "MB", "GB"].contains(&unit)
        {
            return Err(CgroupError::Invalid(format!(
                "hugepage size {size:?} is not a number of KB, MB or GB"
            )));
        }
    }
    for key in r.unified.keys() {
        let plain = key.contains('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if !plain || key.starts_with("cgroup.") {
            return Err(CgroupError::Invalid(format!(
                "unified key {key:?} is not a cgroup v2 controller file"
            )));
        }
    }
    Ok(())
}

/// cgroup v1 CPU shares as a v2 weight (the conversion runc and the kubelet use).
pub fn shares_to_weight(shares: i64) -> u64 {
    let shares = shares.clamp(2, 262_144) as u64;
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_to_their_cgroupfs_paths() {
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert_eq!(expand_slice("kubepods.slice").unwrap(), "/kubepods.slice");
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
        );
        for bad in ["kubepods", "a--b.slice", "-a.slice", "a/b.slice", ".slice"] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_cgroups_follow_the_driver() {
        let fs = PodCgroup::for_pod("/kubepods/burstable/pod1/", "p").unwrap();
        assert_eq!(fs.path, "/kubepods/burstable/pod1");
        assert!(!fs.owned && !fs.systemd);
        assert_eq!(fs.container("c1"), "/kubepods/burstable/pod1/c1");
        let sd = PodCgroup::for_pod("kubepods-besteffort-pod2.slice", "p").unwrap();
        assert_eq!(
            sd.container("c1"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2.slice/frakti-c1.scope"
        );
        let own = PodCgroup::for_pod("", "abc").unwrap();
        assert_eq!(own.path, "/frakti/abc");
        assert!(own.owned);
        let err = PodCgroup::for_pod("/kubepods/../etc", "p").unwrap_err();
        assert!(err.to_string().contains("linux.cgroup_parent"), "{err}");
    }

    #[test]
    fn the_cpu_ceiling_is_the_tightest_quota_above() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("cpu");
        std::fs::create_dir_all(cpu.join("kubepods/pod1/vm")).unwrap();
        let set = |cgroup: &str, quota: &str| {
            std::fs::write(cpu.join(cgroup).join("cpu.cfs_quota_us"), quota).unwrap();
            std::fs::write(cpu.join(cgroup).join("cpu.cfs_period_us"), "100000\n").unwrap();
        };
        set("", "-1\n");
        set("kubepods", "-1\n");
        set("kubepods/pod1/vm", "-1\n");
        let h = Hierarchy::new(dir.path());
        assert_eq!(h.cpu_ceiling("/kubepods/pod1/vm"), None);
        set("kubepods/pod1", "95000\n");
        assert_eq!(h.cpu_ceiling("/kubepods/pod1/vm"), Some(0.95));
        set("kubepods", "50000\n");
        assert_eq!(h.cpu_ceiling("/kubepods/pod1/vm"), Some(0.5));
        assert_eq!(h.cpu_ceiling("/"), None);
    }

    #[test]
    fn shares_convert_to_weights_at_the_ends_and_the_default() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn processes_are_placed_in_the_accounting_controllers() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["cpu", "memory", "pids", "cpuset"] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let h = Hierarchy::new(dir.path());
        h.create("/kubepods/pod1/vm").unwrap();
        assert!(dir.path().join("memory/kubepods/pod1/vm").is_dir());
        assert!(
            !dir.path().join("cpuset/kubepods/pod1/vm").exists(),
            "cpuset needs its CPUs set first; the VM stays in its parent's"
        );
        h.add_process("/kubepods/pod1/vm", 42).unwrap();
        let procs = std::fs::read_to_string(dir.path().join("pids/kubepods/pod1/vm/cgroup.procs"));
        assert_eq!(procs.unwrap(), "42");
        assert_eq!(h.memory_limit("/kubepods/pod1/vm"), None);
        std::fs::write(
            dir.path()
                .join("memory/kubepods/pod1/memory.limit_in_bytes"),
            "1073741824\n",
        )
        .unwrap();
        assert_eq!(h.memory_limit("/kubepods/pod1"), Some(1 << 30));
        std::fs::write(
            dir.path()
                .join("memory/kubepods/pod1/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(h.memory_limit("/kubepods/pod1"), None, "v1's unlimited");
    }

    #[test]
    fn hugepages_swap_and_unified_files_are_written_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory hugetlb").unwrap();
        std::fs::create_dir_all(dir.path().join("pod/c")).unwrap();
        let v2 = Hierarchy::new(dir.path());
        let mut r = ContainerResources {
            memory_limit_bytes: 64 << 20,
            memory_swap_limit_bytes: 96 << 20,
            ..Default::default()
        };
        r.hugepage_limits.insert("2MB".into(), 4 << 20);
        // A size the kernel lacks has no file; its limit is skipped.
        r.hugepage_limits.insert("1GB".into(), 0);
        std::fs::write(dir.path().join("pod/c/hugetlb.2MB.max"), "max\n").unwrap();
        r.unified.insert("memory.high".into(), "50M".into());
        r.pids_limit = 50;
        v2.update("/pod/c", &r).unwrap();
        assert!(!dir.path().join("pod/c/hugetlb.1GB.max").exists());
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(
            read("pod/c/memory.swap.max"),
            (32u64 << 20).to_string(),
            "swap alone in v2"
        );
        assert_eq!(read("pod/c/hugetlb.2MB.max"), (4u64 << 20).to_string());
        assert_eq!(read("pod/c/memory.high"), "50M");
        assert_eq!(read("pod/c/pids.max"), "50");
        for (size, key) in [
            ("2mb", "memory.high"),
            ("2MB", "../x"),
            ("2MB", "cgroup.procs"),
        ] {
            let mut bad = ContainerResources::default();
            bad.hugepage_limits.insert(size.into(), 1);
            bad.unified.insert(key.into(), "1".into());
            let err = v2.update("/pod/c", &bad).unwrap_err();
            assert!(
                matches!(err, CgroupError::Invalid(_)),
                "{size} {key}: {err}"
            );
        }
        // v1: memory plus swap as it is, hugetlb per size, no unified files.
        let dir = tempfile::tempdir().unwrap();
        for c in ["memory", "hugetlb"] {
            std::fs::create_dir_all(dir.path().join(c).join("pod/c")).unwrap();
        }
        std::fs::write(
            dir.path().join("hugetlb/pod/c/hugetlb.2MB.limit_in_bytes"),
            "0\n",
        )
        .unwrap();
        let v1 = Hierarchy::new(dir.path());
        r.unified.clear();
        r.pids_limit = 0;
        v1.update("/pod/c", &r).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(
            read("memory/pod/c/memory.memsw.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
        assert_eq!(
            read("hugetlb/pod/c/hugetlb.2MB.limit_in_bytes"),
            (4u64 << 20).to_string()
        );
        assert!(
            !dir.path()
                .join("hugetlb/pod/c/hugetlb.1GB.limit_in_bytes")
                .exists()
        );
        r.unified.insert("memory.high".into(), "50M".into());
        let err = v1.update("/pod/c", &r).unwrap_err();
        assert!(err.to_string().contains("cgroup v2"), "{err}");
    }

    #[test]
    fn updates_write_the_v1_files_of_each_controller() {
        let dir = tempfile::tempdir().unwrap();
        for c in ["cpu", "cpuset", "memory", "pids"] {
            std::fs::create_dir_all(dir.path().join(c).join("pod/c")).unwrap();
        }
        let h = Hierarchy::new(dir.path());
        let r = ContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            pids_limit: 100,
            ..Default::default()
        };
        h.update("/pod/c", &r).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("cpu/pod/c/cpu.shares"), "512");
        assert_eq!(read("cpu/pod/c/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/pod/c/cpu.cfs_period_us"), "100000");
        assert_eq!(
            read("memory/pod/c/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpuset/pod/c/cpuset.cpus"), "0");
        assert_eq!(read("pids/pod/c/pids.max"), "100");
        assert!(!dir.path().join("cpuset/pod/c/cpuset.mems").exists());
        let err = h.update("/pod/missing", &r).unwrap_err();
        assert!(matches!(err, CgroupError::Missing(_)), "{err}");
        // A write that fails puts the earlier ones back.
        std::fs::remove_file(dir.path().join("memory/pod/c/memory.limit_in_bytes")).unwrap();
        std::fs::create_dir(dir.path().join("memory/pod/c/memory.limit_in_bytes")).unwrap();
        let bigger = ContainerResources {
            cpu_shares: 2048,
            memory_limit_bytes: 1 << 30,
            ..Default::default()
        };
        let err = h.update("/pod/c", &bigger).unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
        assert_eq!(read("cpu/pod/c/cpu.shares"), "512", "not rolled back");
    }
}
