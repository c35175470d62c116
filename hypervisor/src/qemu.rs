//! The QEMU backend: q35 + qboot + PVH kernel, virtio-serial agent channel,
//! shared-memfd RAM (ready for virtio-fs), QMP on a unix socket.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::accel::Accel;
use crate::process::{self, NotReady, Process};
use crate::qmp::QmpClient;
use crate::{AdoptError, HotplugError, Hypervisor, NicSpec, StopError, VmEndpoints, VmSpec};

/// Kernel command line that boots reliably and fast under TCG (DESIGN.md §3).
const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "panic=-1",
    "quiet",
    "cryptomgr.notests",
    "mitigations=off",
    "no_timer_check",
    "audit=0",
    "nokaslr",
    "init_on_alloc=0",
    "8250.nr_uarts=1",
    "random.trust_cpu=on",
    "rcupdate.rcu_expedited=1",
];

/// How long QEMU may take to create its sockets.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where QEMU and its firmware are, and whether to confine it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The `qemu-system-x86_64` binary.
    pub binary: PathBuf,
    /// Firmware; qboot boots a PVH kernel fastest.
    pub firmware: PathBuf,
    /// Run QEMU under its seccomp `-sandbox` when the binary supports it.
    pub seccomp: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            firmware: PathBuf::from("/usr/share/qemu/qboot.rom"),
            seccomp: true,
        }
    }
}

/// Starting QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file the VM needs is missing
    #[error("{what} {path} not found")]
    Missing {
        /// What the file is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Cannot prepare the VM directory
    #[error("cannot prepare VM directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    /// Cannot start the QEMU process
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    /// QEMU exited during start-up
    #[error("QEMU exited during start-up: {0}")]
    Exited(String),
    /// QEMU did not create its sockets in time
    #[error("QEMU did not create its control socket within {0:?}")]
    Timeout(Duration),
}

/// The QEMU hypervisor backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    config: QemuConfig,
    seccomp: bool,
    tsc_khz: Option<u64>,
}

impl Qemu {
    /// A backend with `config`; probes whether the binary has `-sandbox`.
    pub fn new(config: QemuConfig) -> Self {
        let seccomp = config.seccomp && supports_sandbox(&config.binary);
        if config.seccomp && !seccomp {
            tracing::warn!(
                "{} has no -sandbox support: QEMU runs unconfined",
                config.binary.display()
            );
        }
        Self {
            config,
            seccomp,
            tsc_khz: host_tsc_khz(),
        }
    }

    async fn qmp(&self, vm: &VmEndpoints) -> Result<QmpClient, crate::QmpError> {
        QmpClient::connect(&vm.control_socket, Duration::from_secs(5)).await
    }

    /// The configuration in use.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The full kernel command line for `spec`.
    pub fn cmdline(&self, spec: &VmSpec) -> String {
        let mut words: Vec<String> = BASE_CMDLINE.iter().map(|w| (*w).to_owned()).collect();
        if let Some(khz) = self.tsc_khz {
            words.push(format!("tsc_early_khz={khz}"));
        }
        words.extend(spec.extra_cmdline.iter().cloned());
        words.join(" ")
    }

    /// QEMU's arguments for `spec`.
    pub fn args(&self, spec: &VmSpec) -> Vec<String> {
        let dir = &spec.dir;
        let p = |name: &str| dir.join(name).display().to_string();
        let mem = spec.memory_mib;
        let mut args: Vec<String> = vec![
            "-name".into(),
            vm_name(&spec.id),
            "-M".into(),
            "q35,memory-backend=mem".into(),
            "-accel".into(),
            match spec.accel {
                Accel::Kvm => "kvm".into(),
                Accel::Tcg => "tcg,tb-size=16".into(),
            },
        ];
        if spec.accel == Accel::Kvm {
            args.extend(["-cpu".into(), "host".into()]);
        }
        args.extend([
            "-bios".into(),
            self.config.firmware.display().to_string(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{mem}M"),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            self.cmdline(spec),
            "-chardev".into(),
            format!("file,id=console,path={}", p("console.log")),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", p("qmp.sock")),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                p("agent.sock")
            ),
            "-device".into(),
            "virtio-serial-pci,id=vser0,max_ports=4".into(),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={}", AGENT_PORT),
            // Entropy for the guest: without it getrandom() blocks early in boot.
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-pci,rng=rng0".into(),
            "-pidfile".into(),
            p("qemu.pid"),
        ]);
        // Hot-plug slots on q35: one PCIe root port each.
        for port in 1..=HOTPLUG_PORTS {
            args.extend([
                "-device".into(),
                format!("pcie-root-port,id=rp{port},bus=pcie.0,chassis={port},slot={port}"),
            ]);
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            args.extend([
                "-netdev".into(),
                format!(
                    "tap,id=net{i},ifname={},script=no,downscript=no,vhost=off",
                    nic.tap
                ),
                "-device".into(),
                format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac),
            ]);
        }
        for (i, share) in spec.shares.iter().enumerate() {
            args.extend([
                "-chardev".into(),
                format!("socket,id=vfs{i},path={}", share.socket.display()),
                "-device".into(),
                format!("vhost-user-fs-pci,chardev=vfs{i},tag={}", share.tag),
            ]);
        }
        if self.seccomp {
            args.extend([
                "-sandbox".into(),
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            ]);
        }
        args
    }
}

/// PCIe root ports created for hot-plug (NICs take the first ones).
const HOTPLUG_PORTS: usize = 4;

/// The virtio-serial port name the agent looks for.
const AGENT_PORT: &str = "frakti.agent";

fn vm_name(id: &str) -> String {
    format!("frakti-{id}")
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn launch(&self, spec: &VmSpec) -> Result<VmEndpoints, LaunchError> {
        for (what, path) in [
            ("QEMU binary", &self.config.binary),
            ("firmware", &self.config.firmware),
            ("guest kernel", &spec.kernel),
            ("guest initramfs", &spec.initrd),
        ] {
            if !path.exists() {
                return Err(LaunchError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        let dir = &spec.dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| LaunchError::Dir(dir.clone(), e))?;
        for stale in ["qmp.sock", "agent.sock", "qemu.pid", "console.log"] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let log_path = dir.join("qemu.log");
        let log = fs::File::create(&log_path).map_err(|e| LaunchError::Dir(log_path.clone(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LaunchError::Dir(log_path.clone(), e))?;
        let args = self.args(spec);
        tracing::debug!(binary = %self.config.binary.display(), ?args, "starting QEMU");
        let netns = match &spec.netns {
            Some(path) => {
                Some(fs::File::open(path).map_err(|e| LaunchError::Dir(path.clone(), e))?)
            }
            None => None,
        };
        let mut command = Command::new(&self.config.binary);
        if let Some(ns) = &netns {
            let fd = ns.as_raw_fd();
            // SAFETY: between fork and exec the closure only calls setns(2), which is
            // async-signal-safe; `ns` is kept open until after spawn returns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C to the daemon must not reach the VM.
            .process_group(0)
            .spawn()
            .map_err(|e| LaunchError::Spawn(self.config.binary.clone(), e))?;
        drop(netns);
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // The child is watched through its pidfd from here on and reaped by the watcher.
        drop(child);
        let proc =
            Process::open(pid).map_err(|e| LaunchError::Spawn(self.config.binary.clone(), e))?;
        let (qmp, agent) = (dir.join("qmp.sock"), dir.join("agent.sock"));
        match process::wait_ready(&proc, &[&qmp, &agent], STARTUP_TIMEOUT, &log_path).await {
            Ok(()) => Ok(VmEndpoints::in_dir(dir, pid)),
            Err(NotReady::Exited(last)) => Err(LaunchError::Exited(last.unwrap_or_default())),
            Err(NotReady::Timeout) => Err(LaunchError::Timeout(STARTUP_TIMEOUT)),
        }
    }

    fn adopt(&self, id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError> {
        let proc = Process::open(pid).map_err(|_| AdoptError::Gone(pid))?;
        if !proc.is_running() {
            process::reap(pid);
            return Err(AdoptError::Gone(pid));
        }
        let name = vm_name(id);
        let ours = process::cmdline(pid).is_some_and(|args| args.contains(&name));
        if !ours {
            return Err(AdoptError::NotOurs {
                pid,
                id: id.to_owned(),
            });
        }
        Ok(VmEndpoints::in_dir(dir, pid))
    }

    async fn add_nic(
        &self,
        vm: &VmEndpoints,
        index: usize,
        nic: &NicSpec,
    ) -> Result<(), HotplugError> {
        let device = format!("nic{index}");
        if index >= HOTPLUG_PORTS {
            return Err(HotplugError::NoSlot(device));
        }
        let err = |source| HotplugError::Qmp {
            device: device.clone(),
            source,
        };
        let limit = Duration::from_secs(10);
        let qmp = self.qmp(vm).await.map_err(err)?;
        let netdev = serde_json::json!({
            "type": "tap", "id": format!("net{index}"), "ifname": nic.tap,
            "script": "no", "downscript": "no", "vhost": false,
        });
        qmp.execute("netdev_add", Some(netdev), limit)
            .await
            .map_err(err)?;
        let dev = serde_json::json!({
            "driver": "virtio-net-pci", "id": device, "netdev": format!("net{index}"),
            "mac": nic.mac, "bus": format!("rp{}", index + 1),
        });
        qmp.execute("device_add", Some(dev), limit)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn stop(&self, id: &str, vm: &VmEndpoints, grace: Duration) -> Result<(), StopError> {
        let Ok(proc) = Process::open(vm.pid) else {
            return Ok(());
        };
        if !proc.is_running() {
            process::reap(vm.pid);
            return Ok(());
        }
        // Never signal a process that is not this VM (pid reuse).
        if !process::cmdline(vm.pid).is_some_and(|a| a.iter().any(|x| *x == vm_name(id))) {
            return Ok(());
        }
        let limit = Duration::from_secs(1);
        if let Ok(qmp) = QmpClient::connect(&vm.control_socket, limit).await
            && let Err(e) = qmp.execute("quit", None, limit).await
        {
            tracing::debug!(%id, "QMP quit: {e}");
        }
        if tokio::time::timeout(grace, proc.exited()).await.is_ok() {
            return Ok(());
        }
        tracing::warn!(%id, pid = vm.pid, "QEMU did not quit; killing it");
        proc.signal(Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(10), proc.exited())
            .await
            .map_err(|_| StopError::Unkillable(vm.pid))
    }
}

/// Whether `binary` was built with seccomp (`-sandbox` appears in its help).
fn supports_sandbox(binary: &Path) -> bool {
    Command::new(binary)
        .arg("-help")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("-sandbox"))
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`.
fn host_tsc_khz() -> Option<u64> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    // Whole kHz; the value only needs to be close for calibration to be skipped.
    Some((mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            id: "abc".into(),
            dir: PathBuf::from("/run/frakti/abc"),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k".into(),
            initrd: "/i".into(),
            extra_cmdline: vec!["frakti.log=debug".into()],
            accel,
            netns: None,
            nics: vec![NicSpec {
                tap: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
            }],
            shares: vec![crate::FsShare {
                tag: "frakti".into(),
                socket: "/run/p/virtiofsd.sock".into(),
            }],
        }
    }

    fn qemu(seccomp: bool) -> Qemu {
        Qemu {
            config: QemuConfig::default(),
            seccomp,
            tsc_khz: Some(2_445_430),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let args = qemu(true).args(&spec(Accel::Tcg));
        assert_eq!(after(&args, "-accel"), ["tcg,tb-size=16"]);
        assert_eq!(after(&args, "-smp"), ["2"]);
        assert_eq!(after(&args, "-m"), ["512M"]);
        assert_eq!(after(&args, "-name"), ["frakti-abc"]);
        assert!(
            after(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on")
        );
        assert!(!args.contains(&"-cpu".to_string()));
        let append = after(&args, "-append")[0];
        assert!(append.contains("tsc_early_khz=2445430"));
        assert!(append.ends_with("frakti.log=debug"));
        assert!(
            after(&args, "-device").contains(&"virtserialport,chardev=agent,name=frakti.agent")
        );
        assert!(after(&args, "-chardev").contains(&"socket,id=vfs0,path=/run/p/virtiofsd.sock"));
        assert!(after(&args, "-device").contains(&"vhost-user-fs-pci,chardev=vfs0,tag=frakti"));
        assert_eq!(after(&args, "-sandbox").len(), 1);
        assert_eq!(
            after(&args, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"]
        );
        assert!(
            after(&args, "-device").contains(&"virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01")
        );
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_sandbox_when_unsupported() {
        let args = qemu(false).args(&spec(Accel::Kvm));
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert!(after(&args, "-sandbox").is_empty());
    }
}
