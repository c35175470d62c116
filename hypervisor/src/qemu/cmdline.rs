//! QEMU's command line and the guest kernel's, and the host probes they
//! depend on (`-sandbox` support, TSC frequency).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::VmSpec;
use crate::accel::Accel;

use super::handoff::{CONSOLE_FDSET, DISK_FDSETS, Fds};
use super::hotplug::{HOTPLUG_PORTS, blockdev, disk_device, disk_node};
use super::{Machine, Qemu, vm_name};

/// Kernel command line that boots reliably and fast under TCG
/// (docs/architecture.md, "The guest").
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
    // Hot-plugged memory comes online by itself, movable so it can leave again.
    "memhp_default_state=online_movable",
    // The hot-plug region lies above 4 GiB, which makes the kernel reserve
    // 64 MiB of bounce buffers at boot; virtio devices never need them.
    "swiotlb=noforce",
];

/// QEMU's TCG translation cache, MiB. A pod's boot fills about 44 MiB of
/// it: at 16 the cache thrashed, and every container create and exec in
/// the guest (libcontainer's clones) paid for translating the same code
/// again. Measured on 2 cores: ExecSync of `true` 480-1200 ms at 16, 77 ms
/// at 64; CreateContainer 1.3 s at 16, 0.3-0.45 s at 64 or 128; an idle
/// 512 MiB pod's RSS 218 MiB at 16, 262 MiB at 64 and at 128.
const TCG_TB_SIZE_MIB: u32 = 64;

/// The virtio-serial port name the agent looks for.
const AGENT_PORT: &str = "frakti.agent";

impl Qemu {
    /// The full kernel command line for `spec`.
    pub fn cmdline(&self, spec: &VmSpec) -> String {
        let mut words: Vec<String> = BASE_CMDLINE.iter().map(|w| (*w).to_owned()).collect();
        if let Some(khz) = self.tsc_khz {
            words.push(format!("tsc_early_khz={khz}"));
        }
        if self.config.machine == Machine::Microvm {
            // No PCI bus to probe; QEMU appends the virtio-mmio devices.
            words.push("pci=off".into());
        }
        words.extend(super::resize::cmdline(spec));
        words.extend(spec.extra_cmdline.iter().cloned());
        words.join(" ")
    }

    /// QEMU's arguments for `spec`, its files and sockets handed over as `fds`.
    pub fn args(&self, spec: &VmSpec, fds: &Fds) -> Vec<String> {
        let mem = spec.memory_mib;
        let machine = self.config.machine;
        let device = |kind: &str| machine.device(kind);
        let (smp, memory, growth) = super::resize::args(spec);
        let mut args: Vec<String> = vec![
            "-name".into(),
            vm_name(&spec.id),
            "-M".into(),
            format!("{},memory-backend=mem", machine.name()),
            "-accel".into(),
            match spec.accel {
                Accel::Kvm => "kvm".into(),
                Accel::Tcg => format!("tcg,tb-size={TCG_TB_SIZE_MIB}"),
            },
        ];
        if spec.accel == Accel::Kvm {
            args.extend(["-cpu".into(), "host".into()]);
        }
        match machine {
            Machine::Q35 => {
                args.extend(["-bios".into(), self.config.firmware.display().to_string()])
            }
            // vhost-user devices refuse legacy virtio-mmio.
            Machine::Microvm => {
                args.extend(["-global".into(), "virtio-mmio.force-legacy=false".into()])
            }
        }
        args.extend([
            "-smp".into(),
            smp,
            "-m".into(),
            memory,
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            // QEMU reads them by path: its own descriptors' links.
            "-kernel".into(),
            format!("/proc/self/fd/{}", fds.kernel),
            "-initrd".into(),
            format!("/proc/self/fd/{}", fds.initrd),
            "-append".into(),
            self.cmdline(spec),
            "-add-fd".into(),
            format!("fd={},set={CONSOLE_FDSET}", fds.console),
            "-chardev".into(),
            format!("file,id=console,path=/dev/fdset/{CONSOLE_FDSET}"),
            "-serial".into(),
            "chardev:console".into(),
            "-chardev".into(),
            format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!("socket,id=agent,fd={},server=on,wait=off", fds.agent),
            "-device".into(),
            format!("{},id=vser0,max_ports=4", device("virtio-serial")),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={}", AGENT_PORT),
            // Entropy for the guest: without it getrandom() blocks early in boot.
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            format!("{},rng=rng0", device("virtio-rng")),
        ]);
        // Hot-plug slots on q35: one PCIe root port each.
        if machine == Machine::Q35 {
            for port in 1..=HOTPLUG_PORTS {
                args.extend([
                    "-device".into(),
                    format!("pcie-root-port,id=rp{port},bus=pcie.0,chassis={port},slot={port}"),
                ]);
            }
        }
        args.extend(growth);
        for (i, (nic, tap)) in spec.nics.iter().zip(&fds.taps).enumerate() {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net{i},fd={tap},vhost=off"),
                "-device".into(),
                format!("{},netdev=net{i},mac={}", device("virtio-net"), nic.mac),
            ]);
        }
        for (i, (share, fd)) in spec.shares.iter().zip(&fds.shares).enumerate() {
            args.extend([
                "-chardev".into(),
                format!("socket,id=vfs{i},fd={fd}"),
                "-device".into(),
                format!(
                    "{},chardev=vfs{i},tag={}",
                    device("vhost-user-fs"),
                    share.tag
                ),
            ]);
        }
        // Boot disks sit on the root bus, leaving the hot-plug ports free.
        for (i, (disk, files)) in spec.disks.iter().zip(&fds.disks).enumerate() {
            let node = disk_node(&disk.id);
            let set = DISK_FDSETS + i;
            for fd in files {
                args.extend(["-add-fd".into(), format!("fd={fd},set={set}")]);
            }
            args.extend([
                "-blockdev".into(),
                blockdev(disk, &node, &format!("/dev/fdset/{set}")).to_string(),
                "-device".into(),
                format!(
                    "{},id={},drive={node},serial={}",
                    device("virtio-blk"),
                    disk_device(&disk.id),
                    disk.id
                ),
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

/// Whether `binary` was built with seccomp (`-sandbox` appears in its help).
pub(super) fn supports_sandbox(binary: &Path) -> bool {
    Command::new(binary)
        .arg("-help")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("-sandbox"))
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`.
pub(super) fn host_tsc_khz() -> Option<u64> {
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
