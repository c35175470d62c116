//! Hugepage limits for the page sizes the running kernel has. The kubelet
//! sends a limit for every size the node has (most often 0), but a VM's
//! guest kernel has fewer (no 1 GB pages without the CPU's `pdpe1gb`), and
//! a host may not mount the hugetlb controller at all; libcontainer fails
//! on a limit it has no cgroup file for. A size the kernel lacks cannot be
//! allocated, so its limit is moot and is dropped.

use std::path::Path;

/// The hugepage sizes of the kernel, as OCI names them (`2MB`, `1GB`),
/// from `hugepages` (`/sys/kernel/mm/hugepages`), if the hugetlb cgroup
/// controller is present under `cgroup_root` (`/sys/fs/cgroup`).
pub fn available_sizes(cgroup_root: &Path, hugepages: &Path) -> Vec<String> {
    let controllers = cgroups::Hierarchy::new(cgroup_root).controllers();
    if !controllers.iter().any(|c| c == "hugetlb") {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(hugepages) else {
        return Vec::new();
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(page_size_name(kb))
        })
        .collect();
    sizes.sort();
    sizes
}

/// The OCI name of a page size of `kb` KiB.
fn page_size_name(kb: u64) -> String {
    if kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb.is_multiple_of(1 << 10) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

/// Drops the limits of `spec` for sizes not in `available`; returns the
/// sizes dropped.
pub fn keep_available(spec: &mut oci_spec::runtime::Spec, available: &[String]) -> Vec<String> {
    let Some(mut linux) = spec.linux().clone() else {
        return Vec::new();
    };
    let Some(mut resources) = linux.resources().clone() else {
        return Vec::new();
    };
    let Some(limits) = resources.hugepage_limits().clone() else {
        return Vec::new();
    };
    let (kept, dropped): (Vec<_>, Vec<_>) = limits
        .into_iter()
        .partition(|l| available.iter().any(|s| s == l.page_size()));
    if dropped.is_empty() {
        return Vec::new();
    }
    resources.set_hugepage_limits((!kept.is_empty()).then_some(kept));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    dropped.iter().map(|l| l.page_size().clone()).collect()
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxBuilder, LinuxHugepageLimitBuilder, LinuxResourcesBuilder, Spec};

    use super::*;

    #[test]
    fn sizes_come_from_sysfs_when_the_controller_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let (cg, hp) = (dir.path().join("cg"), dir.path().join("hp"));
        for size in ["hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB"] {
            std::fs::create_dir_all(hp.join(size)).unwrap();
        }
        std::fs::create_dir_all(&cg).unwrap();
        assert!(
            available_sizes(&cg, &hp).is_empty(),
            "no hugetlb controller"
        );
        std::fs::write(cg.join("cgroup.controllers"), "cpu memory hugetlb\n").unwrap();
        assert_eq!(available_sizes(&cg, &hp), ["1GB", "2MB", "64KB"]);
    }

    #[test]
    fn limits_of_missing_sizes_are_dropped() {
        let limit = |size: &str| {
            LinuxHugepageLimitBuilder::default()
                .page_size(size)
                .limit(0)
                .build()
                .unwrap()
        };
        let resources = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![limit("2MB"), limit("1GB")])
            .build()
            .unwrap();
        let mut spec = Spec::default();
        spec.set_linux(Some(
            LinuxBuilder::default()
                .resources(resources)
                .build()
                .unwrap(),
        ));
        assert!(keep_available(&mut spec.clone(), &["2MB".into(), "1GB".into()]).is_empty());
        assert_eq!(keep_available(&mut spec, &["2MB".into()]), ["1GB"]);
        let kept = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let sizes: Vec<&String> = kept
            .hugepage_limits()
            .as_ref()
            .unwrap()
            .iter()
            .map(|l| l.page_size())
            .collect();
        assert_eq!(sizes, ["2MB"]);
        assert_eq!(keep_available(&mut spec, &[]), ["2MB"]);
        let none = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert!(none.hugepage_limits().is_none());
    }
}
