//! `frakti check`: whether this host can run pods with a configuration, one
//! line per check with `ok`, `warn` or `fail` and, for the last two, a fix.

use std::fmt;
use std::io::Write;
use std::path::Path;

use hypervisor::{Accel, AccelMode, Qemu};
use network::Cni;

use crate::config::Config;
use crate::probe::{self, run};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pods can run as far as this check goes.
    Ok,
    /// Pods can run, worse than they could.
    Warn,
    /// Pods cannot run.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// One check's finding.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was checked.
    pub name: &'static str,
    /// Its outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}: {}", self.verdict, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n     fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check for `config` with its QEMU backend; `accel` is the verdict the daemon would
/// reach (`None`: the guest assets or QEMU are missing, so no probe ran).
pub fn host(config: &Config, backend: &Qemu, accel: Option<(Accel, String)>) -> Vec<Finding> {
    let mut findings = vec![
        privileges(),
        accelerator(config, accel),
        qemu(config),
        qemu_features(config),
        qemu_sandbox(config),
        vm_user(config),
        virtiofsd(config),
        tun(),
        vhost(),
        guest_assets(config),
        guest_modules(config),
    ];
    findings.push(cni(config));
    findings.push(cgroups(Path::new("/sys/fs/cgroup")));
    findings.push(iptables());
    findings.push(disk(&config.root));
    findings.push(sockets(config, backend));
    if config.host_pods {
        findings.push(host_monitor(config));
    }
    findings
}

/// Prints `findings` to `out`; true when pods can run (no failure).
pub fn report(findings: &[Finding], out: &mut impl Write) -> bool {
    for finding in findings {
        let _ = writeln!(out, "{finding}");
    }
    let failed = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    let warned = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Warn)
        .count();
    let _ = if failed == 0 {
        writeln!(out, "pods can run here ({warned} warning(s))")
    } else {
        writeln!(out, "pods cannot run here: {failed} check(s) failed")
    };
    failed == 0
}

fn privileges() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::ok("privileges", "running as root")
    } else {
        Finding::bad(
            "privileges",
            Verdict::Fail,
            format!("running as uid {}", nix::unistd::geteuid()),
            "run frakti as root (it makes netns, taps, mounts and cgroups)",
        )
    }
}

fn accelerator(config: &Config, verdict: Option<(Accel, String)>) -> Finding {
    const NAME: &str = "accelerator";
    let kvm = hypervisor::accel::kvm_device_usable();
    match (config.accel, verdict) {
        (AccelMode::Kvm, _) => match kvm {
            Ok(()) => Finding::ok(NAME, "KVM, forced by the configuration"),
            Err(why) => Finding::bad(
                NAME,
                Verdict::Fail,
                format!("accel is kvm, but KVM is unusable: {why}"),
                "load kvm_intel or kvm_amd and enable virtualisation in the firmware, or set accel = \"auto\"",
            ),
        },
        (AccelMode::Tcg, _) => Finding::ok(NAME, "TCG, forced by the configuration (slow)"),
        (AccelMode::Auto, Some((Accel::Kvm, why))) => Finding::ok(NAME, format!("KVM: {why}")),
        (AccelMode::Auto, Some((Accel::Tcg, why))) => Finding::bad(
            NAME,
            Verdict::Warn,
            format!("pods run under TCG, software emulation: {why}"),
            "give frakti a usable /dev/kvm (kvm_intel/kvm_amd loaded, nested virtualisation on for a VM host); set accel = \"tcg\" to choose TCG on purpose",
        ),
        (AccelMode::Auto, None) => Finding::bad(
            NAME,
            Verdict::Warn,
            match kvm {
                Ok(()) => "not probed: QEMU or the guest assets are missing".to_owned(),
                Err(why) => format!("pods would run under TCG: {why}"),
            },
            "fix the failures below, then check again",
        ),
    }
}

fn qemu(config: &Config) -> Finding {
    const NAME: &str = "qemu";
    let version = match probe::version_line(&config.qemu) {
        Ok(line) => line,
        Err(why) => {
            return Finding::bad(
                NAME,
                Verdict::Fail,
                why,
                "install qemu-system-x86 (QEMU 7.2 or later) or set qemu to its path",
            );
        }
    };
    if !config.qemu_firmware.is_file() {
        return Finding::bad(
            NAME,
            Verdict::Fail,
            format!(
                "{version}; firmware {} missing",
                config.qemu_firmware.display()
            ),
            "install qemu-system-x86 (it ships qboot.rom) or set qemu_firmware",
        );
    }
    Finding::ok(
        NAME,
        format!("{version}, firmware {}", config.qemu_firmware.display()),
    )
}

fn qemu_features(config: &Config) -> Finding {
    const NAME: &str = "qemu features";
    let machines = run(&config.qemu, &["-machine", "help"], "");
    let devices = run(&config.qemu, &["-device", "help"], "");
    let (Ok(machines), Ok(devices)) = (machines, devices) else {
        return Finding::bad(
            NAME,
            Verdict::Fail,
            "QEMU does not list its machines and devices",
            "install qemu-system-x86",
        );
    };
    let has_machine = |m: &str| {
        machines
            .lines()
            .any(|l| l.split_whitespace().next() == Some(m))
    };
    let has_device = |d: &str| devices.contains(&format!("name \"{d}\""));
    let mut missing: Vec<&str> = Vec::new();
    if !has_machine("q35") {
        missing.push("machine q35");
    }
    for device in [
        "vhost-user-fs-pci",
        "virtio-serial-pci",
        "virtio-net-pci",
        "virtio-mem-pci",
    ] {
        if !has_device(device) {
            missing.push(device);
        }
    }
    if !missing.is_empty() {
        return Finding::bad(
            NAME,
            Verdict::Fail,
            format!("QEMU lacks {}", missing.join(", ")),
            "install a QEMU 7.2 or later built with virtio and vhost-user (Debian's qemu-system-x86)",
        );
    }
    let microvm = if has_machine("microvm") {
        ", microvm"
    } else {
        ""
    };
    Finding::ok(
        NAME,
        format!("machines q35{microvm}; vhost-user-fs-pci, virtio-serial, virtio-net, virtio-mem"),
    )
}

fn qemu_sandbox(config: &Config) -> Finding {
    const NAME: &str = "qemu sandbox";
    if !config.qemu_sandbox {
        return Finding::bad(
            NAME,
            Verdict::Warn,
            "off (qemu_sandbox = false): QEMU runs without its seccomp filter",
            "set qemu_sandbox = true with a QEMU built with seccomp",
        );
    }
    // A real start with the options pods use, quit at once over QMP.
    let args = [
        "-machine",
        "none",
        "-nodefaults",
        "-display",
        "none",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-qmp",
        "stdio",
    ];
    let qmp = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";
    match run(&config.qemu, &args, qmp) {
        Ok(_) => Finding::ok(NAME, "-sandbox on (seccomp) with elevateprivileges=deny"),
        Err(why) => Finding::bad(
            NAME,
            Verdict::Fail,
            format!("QEMU does not start with -sandbox on: {why}"),
            "install a QEMU built with seccomp, or set qemu_sandbox = false to run without it",
        ),
    }
}

fn vm_user(config: &Config) -> Finding {
    const NAME: &str = "vm user";
    match config.vm_user_ids() {
        Ok(Some(user)) => Finding::ok(
            NAME,
            format!(
                "QEMU runs as {} (uid {}, gid {})",
                user.name, user.uid, user.gid
            ),
        ),
        Ok(None) => Finding::bad(
            NAME,
            Verdict::Warn,
            format!("QEMU runs as root (vm_user = {:?})", config.vm_user),
            "create an unprivileged system user and set vm_user to it",
        ),
        Err(e) => Finding::bad(
            NAME,
            Verdict::Fail,
            e.to_string(),
            format!(
                "useradd --system --no-create-home --shell /usr/sbin/nologin {}",
                config.vm_user
            ),
        ),
    }
}

fn virtiofsd(config: &Config) -> Finding {
    const NAME: &str = "virtiofsd";
    match probe::version_line(&config.virtiofsd) {
        Ok(line) => Finding::ok(NAME, format!("{line} ({})", config.virtiofsd.display())),
        Err(why) => Finding::bad(
            NAME,
            Verdict::Fail,
            why,
            "install qemu-system-common (/usr/lib/qemu/virtiofsd) or set virtiofsd",
        ),
    }
}

fn tun() -> Finding {
    const NAME: &str = "/dev/net/tun";
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Finding::ok(NAME, "usable (pod taps)"),
        Err(e) => Finding::bad(
            NAME,
            Verdict::Fail,
            format!("cannot open: {e}"),
            "modprobe tun, or mkdir -p /dev/net && mknod -m 0666 /dev/net/tun c 10 200",
        ),
    }
}

fn vhost() -> Finding {
    let present = |p: &str| Path::new(p).exists();
    let devices: Vec<&str> = ["/dev/vhost-net", "/dev/vhost-vsock"]
        .into_iter()
        .filter(|d| present(d))
        .collect();
    Finding::ok(
        "vhost",
        format!(
            "vhost-user-fs is served by virtiofsd and taps use vhost=off, so no kernel vhost \
             device is needed; present: {}",
            if devices.is_empty() {
                "none".to_owned()
            } else {
                devices.join(", ")
            }
        ),
    )
}

fn guest_assets(config: &Config) -> Finding {
    const NAME: &str = "guest assets";
    let mut found = Vec::new();
    for (name, handler) in config.handlers() {
        if handler.kind != crate::config::HandlerKind::Vm {
            continue;
        }
        for (what, path) in [("kernel", &handler.kernel), ("initramfs", &handler.initrd)] {
            let problem = match std::fs::File::open(path).and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() && m.len() > 0 => continue,
                Ok(_) => "is empty or not a file".to_owned(),
                Err(e) => format!("cannot be read: {e}"),
            };
            return Finding::bad(
                NAME,
                Verdict::Fail,
                format!("handler {name}: guest {what} {} {problem}", path.display()),
                "run `make build` (build tree) or `make install`, or set guest_kernel / \
                 guest_initrd (a table handler: its kernel / initrd)",
            );
        }
        let release = probe::kernel_release(&handler.kernel)
            .map(|r| format!(", kernel {r}"))
            .unwrap_or_default();
        found.push(format!(
            "handler {name} ({}): {} and {}{release}",
            handler.machine.name(),
            handler.kernel.display(),
            handler.initrd.display()
        ));
    }
    Finding::ok(NAME, found.join("; "))
}

fn guest_modules(config: &Config) -> Finding {
    const NAME: &str = "guest modules";
    let path = &config.guest_modules;
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() && m.len() > 0 => Finding::ok(
            NAME,
            format!(
                "{}: the guest kernel loads its modules on demand",
                path.display()
            ),
        ),
        _ => Finding::bad(
            NAME,
            Verdict::Warn,
            format!(
                "{} is missing: containers can use only the guest's boot modules \
                 (no bridges, vlans, netfilter, extra filesystems)",
                path.display()
            ),
            "run `make build` (build tree) or `make install`, or set guest_modules",
        ),
    }
}

fn cni(config: &Config) -> Finding {
    const NAME: &str = "cni";
    let cni = Cni::new(config.cni_conf_dir.clone(), config.cni_bin_dir.clone());
    match cni.status() {
        Ok(network) => {
            let plugins = network.plugin_types();
            Finding::ok(
                NAME,
                format!(
                    "network {:?} from {}; plugins found: {}",
                    network.name(),
                    network.source,
                    plugins.join(", ")
                ),
            )
        }
        Err(e) => Finding::bad(
            NAME,
            Verdict::Fail,
            e.to_string(),
            format!(
                "install containernetworking-plugins, or put the plugins in one of cni_bin_dir \
                 ({}), or fix the network list in {}",
                config
                    .cni_bin_dir
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                config.cni_conf_dir.display()
            ),
        ),
    }
}

/// The controllers frakti limits pods with.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

fn cgroups(root: &Path) -> Finding {
    const NAME: &str = "cgroups";
    let hierarchy = cgroups::Hierarchy::new(root);
    let version = if hierarchy.unified() { "v2" } else { "v1" };
    let available = hierarchy.controllers();
    let missing: Vec<&str> = CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !available.iter().any(|a| a == c))
        .collect();
    if missing.is_empty() {
        Finding::ok(
            NAME,
            format!("{version}; controllers {}", CONTROLLERS.join(", ")),
        )
    } else {
        Finding::bad(
            NAME,
            Verdict::Fail,
            format!("{version}; controllers missing: {}", missing.join(", ")),
            "mount the cgroup controllers (systemd does), or enable them in the kernel command line",
        )
    }
}

fn iptables() -> Finding {
    const NAME: &str = "iptables";
    match probe::version_line(Path::new("iptables")) {
        Ok(line) => Finding::ok(NAME, format!("{line} (CNI portmap: hostPort)")),
        Err(why) => Finding::bad(
            NAME,
            Verdict::Warn,
            format!("{why}: pods with a hostPort cannot start"),
            "install iptables",
        ),
    }
}

/// Below this, image pulls soon fail.
const LOW_DISK: u64 = 5 << 30;
/// Below this, not even a small image fits.
const NO_DISK: u64 = 512 << 20;

fn disk(root: &Path) -> Finding {
    const NAME: &str = "disk";
    // The nearest directory that exists: `root` may not be made yet.
    let existing = root
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    // What the image store (under root) checks before a pull.
    let free = match images::free_bytes(existing) {
        Ok(free) => free,
        Err(e) => {
            return Finding::bad(
                NAME,
                Verdict::Warn,
                format!("cannot read the free space of {}: {e}", existing.display()),
                "check the filesystem of root",
            );
        }
    };
    let detail = format!("{} MiB free under {}", free >> 20, root.display());
    if free < NO_DISK {
        Finding::bad(
            NAME,
            Verdict::Fail,
            detail,
            "free space, or set root to a larger filesystem",
        )
    } else if free < LOW_DISK {
        Finding::bad(
            NAME,
            Verdict::Warn,
            detail,
            "free space, or set root to a larger filesystem: images need room",
        )
    } else {
        Finding::ok(NAME, detail)
    }
}

fn sockets(config: &Config, qemu: &Qemu) -> Finding {
    const NAME: &str = "socket paths";
    match crate::check_socket_paths(config, qemu) {
        Ok(longest) => Finding::ok(
            NAME,
            format!(
                "the longest is {longest} bytes, within the {}-byte limit",
                vm::MAX_SOCKET_PATH
            ),
        ),
        Err(e) => Finding::bad(
            NAME,
            Verdict::Fail,
            e.to_string(),
            "choose a shorter listen or state_dir",
        ),
    }
}

fn host_monitor(config: &Config) -> Finding {
    const NAME: &str = "host pods";
    if config.host_monitor.is_file() {
        Finding::ok(
            NAME,
            format!(
                "handler {:?}, monitor {}",
                config.host_handler,
                config.host_monitor.display()
            ),
        )
    } else {
        Finding::bad(
            NAME,
            Verdict::Fail,
            format!("the monitor {} is missing", config.host_monitor.display()),
            "install frakti-monitor beside frakti (`make install`), set host_monitor, or set host_pods = false",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_prints_its_fix_under_it() {
        let f = Finding::bad("cni", Verdict::Fail, "no plugin", "install them");
        assert_eq!(f.to_string(), "fail cni: no plugin\n     fix: install them");
        assert_eq!(Finding::ok("qemu", "7.2").to_string(), "ok   qemu: 7.2");
    }

    #[test]
    fn the_report_fails_only_on_a_failure() {
        let mut out = Vec::new();
        let warn = Finding::bad("a", Verdict::Warn, "slow", "faster");
        assert!(report(&[Finding::ok("x", "y"), warn.clone()], &mut out));
        let fail = Finding::bad("b", Verdict::Fail, "broken", "mend");
        assert!(!report(&[warn, fail], &mut out));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("pods can run here (1 warning(s))"), "{text}");
        assert!(
            text.contains("pods cannot run here: 1 check(s) failed"),
            "{text}"
        );
    }

    #[test]
    fn missing_cgroup_controllers_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let f = cgroups(dir.path());
        assert_eq!(f.verdict, Verdict::Fail);
        assert!(f.detail.contains("v2") && f.detail.contains("pids"), "{f}");
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        assert_eq!(cgroups(dir.path()).verdict, Verdict::Ok);
    }
}
