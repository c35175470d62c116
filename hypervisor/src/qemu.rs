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

use serde_json::{Value, json};

use crate::accel::Accel;
use crate::process::{self, NotReady, Process};
use crate::qmp::{QmpClient, QmpError};
use crate::{
    AdoptError, BlockFormat, BlockSpec, Capabilities, HotplugError, Hypervisor, LaunchError,
    NicSpec, StopError, VmEndpoints, VmSpec,
};

/// Files QEMU's VMs keep in their directory; no other code knows these names.
const QMP_SOCKET: &str = "qmp.sock";
const AGENT_SOCKET: &str = "agent.sock";
const CONSOLE_LOG: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const PIDFILE: &str = "qemu.pid";

/// The name errors give the VMM.
const VMM: &str = "QEMU";

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

    async fn qmp(&self, vm: &VmEndpoints) -> Result<QmpClient, QmpError> {
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
            format!("file,id=console,path={}", p(CONSOLE_LOG)),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", p(QMP_SOCKET)),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                p(AGENT_SOCKET)
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
            p(PIDFILE),
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

/// PCIe root ports created for hot-plug: NIC `i` takes port `i + 1`, disks
/// take the highest free one, so the two meet only when all are in use.
const HOTPLUG_PORTS: usize = 4;

/// Most vCPUs of a q35 machine in QEMU 7.2.
const Q35_MAX_VCPUS: u32 = 288;

/// Limit of one QMP command at run time.
const QMP_LIMIT: Duration = Duration::from_secs(10);

/// Longest disk id: it is also the virtio-blk serial, which holds 20 bytes.
const MAX_DISK_ID: usize = 20;

/// The virtio-serial port name the agent looks for.
const AGENT_PORT: &str = "frakti.agent";

fn vm_name(id: &str) -> String {
    format!("frakti-{id}")
}

/// The endpoints of the QEMU VM whose files are in `dir`.
fn endpoints_in(dir: &Path, pid: i32) -> VmEndpoints {
    VmEndpoints {
        pid,
        control_socket: dir.join(QMP_SOCKET),
        agent_socket: dir.join(AGENT_SOCKET),
        console_log: dir.join(CONSOLE_LOG),
        vmm_log: dir.join(QEMU_LOG),
    }
}

/// Maps a QMP failure while `op` (hot-plug, hot-unplug) of `device` into the neutral error.
fn plug_error(op: &'static str, device: &str) -> impl Fn(QmpError) -> HotplugError + use<> {
    let device = device.to_owned();
    move |source| HotplugError::Backend {
        op,
        device: device.clone(),
        source: Box::new(source),
    }
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // q35 can, but see `resize`: not with this command line yet.
            cpu_hotplug: false,
            memory_hotplug: false,
            block_hotplug: true,
            nic_hotplug: true,
            hotplug_slots: HOTPLUG_PORTS as u32,
            max_vcpus: Q35_MAX_VCPUS,
        }
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
            .map_err(|source| LaunchError::Dir {
                path: dir.clone(),
                source,
            })?;
        for stale in [QMP_SOCKET, AGENT_SOCKET, PIDFILE, CONSOLE_LOG] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let log_path = dir.join(QEMU_LOG);
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::Dir { path, source }
        };
        let log = fs::File::create(&log_path).map_err(dir_err(&log_path))?;
        let log2 = log.try_clone().map_err(dir_err(&log_path))?;
        let args = self.args(spec);
        tracing::debug!(binary = %self.config.binary.display(), ?args, "starting QEMU");
        let netns = match &spec.netns {
            Some(path) => Some(fs::File::open(path).map_err(dir_err(path))?),
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
            .map_err(|source| LaunchError::Spawn {
                binary: self.config.binary.clone(),
                source,
            })?;
        drop(netns);
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // The child is watched through its pidfd from here on and reaped by the watcher.
        drop(child);
        let proc = Process::open(pid).map_err(|source| LaunchError::Spawn {
            binary: self.config.binary.clone(),
            source,
        })?;
        let (qmp, agent) = (dir.join(QMP_SOCKET), dir.join(AGENT_SOCKET));
        match process::wait_ready(&proc, &[&qmp, &agent], STARTUP_TIMEOUT, &log_path).await {
            Ok(()) => Ok(endpoints_in(dir, pid)),
            Err(NotReady::Exited(last)) => Err(LaunchError::Exited {
                vmm: VMM,
                log_tail: last.unwrap_or_default(),
            }),
            Err(NotReady::Timeout) => Err(LaunchError::Timeout {
                vmm: VMM,
                limit: STARTUP_TIMEOUT,
            }),
        }
    }

    fn endpoints(&self, dir: &Path, pid: i32) -> VmEndpoints {
        endpoints_in(dir, pid)
    }

    fn find(&self, id: &str, dir: &Path) -> Result<VmEndpoints, AdoptError> {
        let pidfile = dir.join(PIDFILE);
        let pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .ok_or(AdoptError::NoPidfile(pidfile))?;
        self.adopt(id, dir, pid)
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
        Ok(endpoints_in(dir, pid))
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
        let err = plug_error("hot-plug", &device);
        let limit = QMP_LIMIT;
        let qmp = self.qmp(vm).await.map_err(&err)?;
        let netdev = serde_json::json!({
            "type": "tap", "id": format!("net{index}"), "ifname": nic.tap,
            "script": "no", "downscript": "no", "vhost": false,
        });
        qmp.execute("netdev_add", Some(netdev), limit)
            .await
            .map_err(&err)?;
        let dev = serde_json::json!({
            "driver": "virtio-net-pci", "id": device, "netdev": format!("net{index}"),
            "mac": nic.mac, "bus": format!("rp{}", index + 1),
        });
        qmp.execute("device_add", Some(dev), limit)
            .await
            .map_err(&err)?;
        Ok(())
    }

    async fn add_block(&self, vm: &VmEndpoints, disk: &BlockSpec) -> Result<(), HotplugError> {
        check_disk_id(&disk.id)?;
        let (device, node) = (disk_device(&disk.id), disk_node(&disk.id));
        let err = plug_error("hot-plug", &device);
        let qmp = self.qmp(vm).await.map_err(&err)?;
        let port = free_port(&qmp)
            .await
            .map_err(&err)?
            .ok_or_else(|| HotplugError::NoSlot(device.clone()))?;
        qmp.execute("blockdev-add", Some(blockdev(disk, &node)), QMP_LIMIT)
            .await
            .map_err(&err)?;
        let dev = json!({
            "driver": "virtio-blk-pci", "id": device, "drive": node,
            "serial": disk.id, "bus": format!("rp{port}"),
        });
        if let Err(e) = qmp.execute("device_add", Some(dev), QMP_LIMIT).await {
            let del = json!({ "node-name": node });
            if let Err(undo) = qmp.execute("blockdev-del", Some(del), QMP_LIMIT).await {
                tracing::warn!(%device, "removing the disk's block node: {undo}");
            }
            return Err(err(e));
        }
        Ok(())
    }

    async fn remove_block(
        &self,
        vm: &VmEndpoints,
        id: &str,
        limit: Duration,
    ) -> Result<(), HotplugError> {
        check_disk_id(id)?;
        let (device, node) = (disk_device(id), disk_node(id));
        let err = plug_error("hot-unplug", &device);
        let qmp = self.qmp(vm).await.map_err(&err)?;
        // Subscribed before device_del, so DEVICE_DELETED cannot be missed.
        let mut events = qmp.events();
        let del = json!({ "id": device });
        let plugged = match qmp.execute("device_del", Some(del), QMP_LIMIT).await {
            Ok(_) => true,
            Err(QmpError::Command { class, .. }) if class == "DeviceNotFound" => false,
            Err(e) => return Err(err(e)),
        };
        if plugged {
            let deleted = wait_deleted(&qmp, &mut events, &device, limit).await;
            match deleted {
                Ok(true) => {}
                Ok(false) => return Err(HotplugError::Timeout { device, limit }),
                Err(e) => return Err(err(e)),
            }
        }
        let del = json!({ "node-name": node });
        match qmp.execute("blockdev-del", Some(del), QMP_LIMIT).await {
            Ok(_) => Ok(()),
            // Neither device nor node: the disk was not plugged.
            Err(QmpError::Command { desc, .. })
                if !plugged && desc.starts_with("Failed to find node") =>
            {
                Ok(())
            }
            Err(e) => Err(err(e)),
        }
    }

    // `resize` stays the trait's `Unsupported`: the command line reserves no
    // room for more vCPUs (`maxcpus`) or memory (`slots`, `maxmem`) yet.

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

/// QEMU's device id of the disk `id`.
fn disk_device(id: &str) -> String {
    format!("disk-{id}")
}

/// QEMU's block node name of the disk `id` (at most 31 characters).
fn disk_node(id: &str) -> String {
    format!("node-{id}")
}

/// Checks that `id` can name a disk (QEMU ids, virtio-blk serial).
fn check_disk_id(id: &str) -> Result<(), HotplugError> {
    let reason = if id.is_empty() || id.len() > MAX_DISK_ID {
        "it must have 1 to 20 characters"
    } else if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        "it must start with a letter"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        "it may hold only letters, digits, - and _"
    } else {
        return Ok(());
    };
    Err(HotplugError::InvalidId {
        id: id.to_owned(),
        reason,
    })
}

/// `blockdev-add` arguments: a format node `node` over a file (or host block device) node.
fn blockdev(disk: &BlockSpec, node: &str) -> Value {
    use std::os::unix::fs::FileTypeExt;
    let is_device = fs::metadata(&disk.path).is_ok_and(|m| m.file_type().is_block_device());
    json!({
        "driver": match disk.format {
            BlockFormat::Raw => "raw",
            BlockFormat::Qcow2 => "qcow2",
        },
        "node-name": node,
        "read-only": disk.read_only,
        "file": {
            "driver": if is_device { "host_device" } else { "file" },
            "filename": disk.path.display().to_string(),
            "read-only": disk.read_only,
        },
    })
}

/// The highest hot-plug port with nothing plugged in (a device being
/// unplugged still counts), found from the ports' buses in QOM.
async fn free_port(qmp: &QmpClient) -> Result<Option<usize>, QmpError> {
    for port in (1..=HOTPLUG_PORTS).rev() {
        let bus = json!({ "path": format!("/machine/peripheral/rp{port}/rp{port}") });
        let props = qmp.execute("qom-list", Some(bus), QMP_LIMIT).await?;
        let occupied = props.as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["name"].as_str().is_some_and(|n| n.starts_with("child[")))
        });
        if !occupied {
            return Ok(Some(port));
        }
    }
    Ok(None)
}

/// Waits up to `limit` for `DEVICE_DELETED` of `device`; `Ok(false)` on timeout.
async fn wait_deleted(
    qmp: &QmpClient,
    events: &mut tokio::sync::broadcast::Receiver<Value>,
    device: &str,
    limit: Duration,
) -> Result<bool, QmpError> {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Ok(false),
            Ok(Ok(event)) => {
                if event["event"] == "DEVICE_DELETED" && event["data"]["device"] == device {
                    return Ok(true);
                }
            }
            // Events were dropped: ask whether the device is still there.
            Ok(Err(RecvError::Lagged(_))) => {
                let all = json!({ "path": "/machine/peripheral" });
                let props = qmp.execute("qom-list", Some(all), QMP_LIMIT).await?;
                let present = props
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["name"] == device));
                if !present {
                    return Ok(true);
                }
            }
            Ok(Err(RecvError::Closed)) => return Err(QmpError::Closed),
        }
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

    /// A scripted monitor for hot-plug: ports `occupied` have a device,
    /// `device_del` of a plugged disk is answered with `DEVICE_DELETED`
    /// unless `stuck`; records every command.
    async fn fake_monitor(
        listener: tokio::net::UnixListener,
        occupied: Vec<usize>,
        stuck: bool,
        log: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut disks = std::collections::HashSet::new();
        let mut nodes = std::collections::HashSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let (read, mut write) = stream.into_split();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).unwrap();
                let (id, args) = (msg["id"].clone(), msg["arguments"].clone());
                let command = msg["execute"].as_str().unwrap().to_owned();
                if command != "qmp_capabilities" {
                    log.lock().unwrap().push(msg.clone());
                }
                let not_found = |desc: String| json!({"error": {"class": "GenericError", "desc": desc}, "id": id});
                let reply = match command.as_str() {
                    "qom-list" => {
                        let path = args["path"].as_str().unwrap();
                        let port: usize = path.rsplit("rp").next().unwrap().parse().unwrap();
                        let mut props = vec![json!({"name": "type", "type": "string"})];
                        if occupied.contains(&port) {
                            props.push(json!({"name": "child[0]", "type": "link<virtio-net-pci>"}));
                        }
                        json!({"return": props, "id": id})
                    }
                    "blockdev-add" => {
                        nodes.insert(args["node-name"].as_str().unwrap().to_owned());
                        json!({"return": {}, "id": id})
                    }
                    "device_add" => {
                        disks.insert(args["id"].as_str().unwrap().to_owned());
                        json!({"return": {}, "id": id})
                    }
                    "device_del" => {
                        let dev = args["id"].as_str().unwrap().to_owned();
                        if disks.contains(&dev) {
                            write
                                .write_all(
                                    format!("{}\n", json!({"return": {}, "id": id})).as_bytes(),
                                )
                                .await
                                .unwrap();
                            if !stuck {
                                disks.remove(&dev);
                                let backend = json!({"event": "DEVICE_DELETED", "data": {"path": format!("/machine/peripheral/{dev}/virtio-backend")}});
                                let done = json!({"event": "DEVICE_DELETED", "data": {"device": dev, "path": format!("/machine/peripheral/{dev}")}});
                                write
                                    .write_all(format!("{backend}\n{done}\n").as_bytes())
                                    .await
                                    .unwrap();
                            }
                            continue;
                        }
                        json!({"error": {"class": "DeviceNotFound", "desc": format!("Device '{dev}' not found")}, "id": id})
                    }
                    "blockdev-del" => {
                        let node = args["node-name"].as_str().unwrap();
                        if nodes.remove(node) {
                            json!({"return": {}, "id": id})
                        } else {
                            not_found(format!("Failed to find node with node-name='{node}'"))
                        }
                    }
                    _ => json!({"return": {}, "id": id}),
                };
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
        }
    }

    fn monitor(
        occupied: Vec<usize>,
        stuck: bool,
    ) -> (
        tempfile::TempDir,
        VmEndpoints,
        std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let vm = endpoints_in(dir.path(), 1);
        let listener = tokio::net::UnixListener::bind(&vm.control_socket).unwrap();
        let log = std::sync::Arc::default();
        tokio::spawn(fake_monitor(
            listener,
            occupied,
            stuck,
            std::sync::Arc::clone(&log),
        ));
        (dir, vm, log)
    }

    fn disk(id: &str) -> BlockSpec {
        BlockSpec {
            id: id.into(),
            path: "/img/vol.erofs".into(),
            format: BlockFormat::Raw,
            read_only: true,
        }
    }

    fn commands(log: &std::sync::Mutex<Vec<Value>>) -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .map(|m| m["execute"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_disk_goes_to_the_highest_free_port_and_comes_out_again() {
        let (_dir, vm, log) = monitor(vec![4], false);
        let q = qemu(false);
        q.add_block(&vm, &disk("vol1")).await.unwrap();
        {
            let log = log.lock().unwrap();
            let add = log.iter().find(|m| m["execute"] == "blockdev-add").unwrap();
            assert_eq!(
                add["arguments"],
                json!({"driver": "raw", "node-name": "node-vol1", "read-only": true,
                    "file": {"driver": "file", "filename": "/img/vol.erofs", "read-only": true}})
            );
            let dev = log.iter().find(|m| m["execute"] == "device_add").unwrap();
            assert_eq!(
                dev["arguments"],
                json!({"driver": "virtio-blk-pci", "id": "disk-vol1", "drive": "node-vol1",
                    "serial": "vol1", "bus": "rp3"})
            );
        }
        log.lock().unwrap().clear();
        q.remove_block(&vm, "vol1", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(commands(&log), ["device_del", "blockdev-del"]);
        // Not plugged any more: still fine.
        q.remove_block(&vm, "vol1", Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn no_free_port_bad_ids_and_a_stuck_unplug_are_errors() {
        let (_dir, vm, log) = monitor(vec![1, 2, 3, 4], true);
        let q = qemu(false);
        let err = q.add_block(&vm, &disk("vol1")).await.unwrap_err();
        assert!(
            matches!(err, HotplugError::NoSlot(ref d) if d == "disk-vol1"),
            "{err}"
        );
        assert!(!commands(&log).contains(&"blockdev-add".to_owned()));
        for bad in ["", "1abc", "a b", "abcdefghijklmnopqrstu"] {
            let err = q.add_block(&vm, &disk(bad)).await.unwrap_err();
            assert!(
                matches!(err, HotplugError::InvalidId { .. }),
                "{bad:?}: {err}"
            );
        }
        let (_dir, vm, log) = monitor(Vec::new(), true);
        q.add_block(&vm, &disk("vol2")).await.unwrap();
        let err = q
            .remove_block(&vm, "vol2", Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, HotplugError::Timeout { .. }), "{err}");
        // The node stays while the guest holds the disk.
        assert!(!commands(&log).contains(&"blockdev-del".to_owned()));
    }

    #[tokio::test]
    async fn endpoints_and_capabilities() {
        let q = qemu(false);
        let vm = q.endpoints(Path::new("/run/p"), 42);
        assert_eq!(vm.pid, 42);
        assert_eq!(vm.control_socket, Path::new("/run/p/qmp.sock"));
        assert_eq!(vm.agent_socket, Path::new("/run/p/agent.sock"));
        assert_eq!(vm.vmm_log, Path::new("/run/p/qemu.log"));
        let caps = q.capabilities();
        assert!(caps.block_hotplug && caps.nic_hotplug);
        assert_eq!(caps.hotplug_slots, 4);
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            q.find("abc", dir.path()),
            Err(AdoptError::NoPidfile(_))
        ));
        // Our own pid is not the VM `abc`.
        fs::write(
            dir.path().join(PIDFILE),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert!(matches!(
            q.find("abc", dir.path()),
            Err(AdoptError::NotOurs { .. })
        ));
    }

    /// Against a real QEMU (no guest): disks land on free root ports, and
    /// without a guest to release it an unplug times out.
    #[tokio::test]
    #[ignore = "needs qemu-system-x86_64"]
    async fn hotplug_against_real_qemu() {
        /// Kills QEMU however the test ends.
        struct Reaper(std::process::Child);
        impl Drop for Reaper {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let vm = endpoints_in(dir.path(), 0);
        let mut args: Vec<String> = ["-M", "q35", "-nodefaults", "-display", "none", "-S"]
            .map(String::from)
            .to_vec();
        let qmp_arg = format!("unix:{},server=on,wait=off", vm.control_socket.display());
        args.extend(["-qmp".into(), qmp_arg]);
        for port in 1..=HOTPLUG_PORTS {
            args.extend([
                "-device".into(),
                format!("pcie-root-port,id=rp{port},bus=pcie.0,chassis={port},slot={port}"),
            ]);
        }
        let child = Command::new(&QemuConfig::default().binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _reaper = Reaper(child);
        while !vm.control_socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let q = qemu(false);
        let spec = |id: &str| BlockSpec {
            path: image.clone(),
            ..disk(id)
        };
        q.add_block(&vm, &spec("d1")).await.unwrap();
        q.add_block(&vm, &spec("d2")).await.unwrap();
        {
            // QEMU serves one QMP connection at a time: this one is closed below.
            let qmp = QmpClient::connect(&vm.control_socket, QMP_LIMIT)
                .await
                .unwrap();
            for (dev, bus) in [("disk-d1", "rp4"), ("disk-d2", "rp3")] {
                let path =
                    json!({"path": format!("/machine/peripheral/{dev}"), "property": "parent_bus"});
                let parent = qmp.execute("qom-get", Some(path), QMP_LIMIT).await.unwrap();
                assert_eq!(parent, format!("/machine/peripheral/{bus}/{bus}"));
            }
        }
        // A second disk `d1`: QEMU refuses the duplicate node name.
        let err = q.add_block(&vm, &spec("d1")).await.unwrap_err();
        assert!(err.to_string().contains("node-d1"), "{err}");
        let err = q
            .remove_block(&vm, "d2", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, HotplugError::Timeout { .. }), "{err}");
        q.remove_block(&vm, "never", Duration::from_millis(300))
            .await
            .unwrap();
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_sandbox_when_unsupported() {
        let args = qemu(false).args(&spec(Accel::Kvm));
        assert_eq!(after(&args, "-accel"), ["kvm"]);
        assert_eq!(after(&args, "-cpu"), ["host"]);
        assert!(after(&args, "-sandbox").is_empty());
    }
}
