//! Unit tests of the QEMU backend: command lines, endpoints and
//! capabilities, and disk hot-plug against a scripted QMP monitor (and,
//! ignored by default, against a real QEMU).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::hotplug::{HOTPLUG_PORTS, QMP_LIMIT};
use super::*;
use crate::qmp::QmpClient;
use crate::{Accel, BlockFormat};

fn spec(accel: Accel) -> VmSpec {
    VmSpec {
        id: "abc".into(),
        dir: PathBuf::from("/run/frakti/abc"),
        vcpus: 2,
        memory_mib: 512,
        max_vcpus: 2,
        max_memory_mib: 512,
        kernel: "/k".into(),
        initrd: "/i".into(),
        extra_cmdline: vec!["frakti.log=debug".into()],
        accel,
        netns: None,
        nics: vec![NicSpec {
            tap: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: None,
        }],
        shares: vec![crate::FsShare {
            tag: "frakti".into(),
            socket: "/run/p/virtiofsd.sock".into(),
        }],
        disks: vec![BlockSpec {
            id: "frakti-modules".into(),
            path: "/g/modules.img".into(),
            format: BlockFormat::Raw,
            read_only: true,
        }],
    }
}

fn qemu(seccomp: bool) -> Qemu {
    Qemu {
        config: QemuConfig::default(),
        seccomp,
        sandbox_missing: false,
        tsc_khz: Some(2_445_430),
    }
}

/// Descriptor numbers as a launch would hand them over.
fn fds() -> Fds {
    Fds {
        qmp: 10,
        agent: 11,
        console: 12,
        kernel: 13,
        initrd: 14,
        shares: vec![15],
        disks: vec![vec![16]],
        taps: vec![17],
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
    let args = qemu(true).args(&spec(Accel::Tcg), &fds());
    assert_eq!(after(&args, "-accel"), ["tcg,tb-size=64"]);
    assert_eq!(after(&args, "-smp"), ["2"]);
    assert_eq!(after(&args, "-m"), ["512M"]);
    assert_eq!(after(&args, "-name"), ["frakti-abc"]);
    assert!(after(&args, "-object").contains(&"memory-backend-memfd,id=mem,size=512M,share=on"));
    assert!(!args.contains(&"-cpu".to_string()));
    let append = after(&args, "-append")[0];
    assert!(append.contains("tsc_early_khz=2445430"));
    assert!(append.ends_with("frakti.log=debug"));
    assert!(after(&args, "-device").contains(&"virtserialport,chardev=agent,name=frakti.agent"));
    // Every file and socket is handed over open: QEMU needs no path of the VM directory.
    assert_eq!(
        after(&args, "-chardev"),
        [
            "file,id=console,path=/dev/fdset/1",
            "socket,id=qmp,fd=10,server=on,wait=off",
            "socket,id=agent,fd=11,server=on,wait=off",
            "socket,id=vfs0,fd=15",
        ]
    );
    assert_eq!(after(&args, "-add-fd"), ["fd=12,set=1", "fd=16,set=2"]);
    assert_eq!(after(&args, "-kernel"), ["/proc/self/fd/13"]);
    assert_eq!(after(&args, "-initrd"), ["/proc/self/fd/14"]);
    assert!(
        after(&args, "-pidfile").is_empty(),
        "frakti writes the pidfile"
    );
    assert!(
        !args.iter().any(|a| a.contains("/run/frakti/abc")),
        "{args:?}"
    );
    assert!(after(&args, "-device").contains(&"vhost-user-fs-pci,chardev=vfs0,tag=frakti"));
    assert_eq!(after(&args, "-sandbox").len(), 1);
    assert_eq!(after(&args, "-netdev"), ["tap,id=net0,fd=17,vhost=off"]);
    assert!(after(&args, "-device").contains(&"virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01"));
    // A boot disk: read-only at both nodes, on the root bus (no hot-plug port).
    let node: Value = serde_json::from_str(after(&args, "-blockdev")[0]).unwrap();
    assert_eq!(
        node,
        json!({"driver": "raw", "node-name": "node-frakti-modules", "read-only": true,
            "file": {"driver": "file", "filename": "/dev/fdset/2", "read-only": true}})
    );
    assert!(after(&args, "-device").contains(
        &"virtio-blk-pci,id=disk-frakti-modules,drive=node-frakti-modules,serial=frakti-modules"
    ));
}

#[test]
fn a_microvm_has_mmio_devices_and_no_hotplug() {
    let microvm = qemu(true).for_machine(Machine::Microvm);
    let args = microvm.args(&spec(Accel::Tcg), &fds());
    assert_eq!(after(&args, "-M"), ["microvm,memory-backend=mem"]);
    assert_eq!(after(&args, "-global"), ["virtio-mmio.force-legacy=false"]);
    assert!(
        after(&args, "-bios").is_empty(),
        "microvm has its own firmware"
    );
    let devices = after(&args, "-device");
    for d in [
        "virtio-serial-device,id=vser0,max_ports=4",
        "virtio-rng-device,rng=rng0",
        "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01",
        "vhost-user-fs-device,chardev=vfs0,tag=frakti",
        "virtio-blk-device,id=disk-frakti-modules,drive=node-frakti-modules,serial=frakti-modules",
    ] {
        assert!(devices.contains(&d), "{d}: {devices:?}");
    }
    assert!(
        !devices
            .iter()
            .any(|d| d.contains("-pci") || d.starts_with("pcie-root-port"))
    );
    assert!(after(&args, "-append")[0].contains(" pci=off"));
    let caps = microvm.capabilities();
    assert!(!caps.cpu_hotplug && !caps.memory_hotplug && !caps.block_hotplug && !caps.nic_hotplug);
    assert_eq!(caps.hotplug_slots, 0);
    assert!(qemu(true).capabilities().block_hotplug);
    assert_eq!("microvm".parse::<Machine>(), Ok(Machine::Microvm));
    assert!("pc".parse::<Machine>().unwrap_err().contains("q35"));
}

#[test]
fn a_vm_with_room_to_grow_has_spare_vcpus_and_a_virtio_mem_region() {
    let mut grow = spec(Accel::Kvm);
    grow.max_vcpus = 4;
    grow.max_memory_mib = 512 + 300;
    let args = qemu(true).args(&grow, &fds());
    assert_eq!(
        after(&args, "-smp"),
        ["2,maxcpus=4"],
        "KVM plugs vCPUs later"
    );
    // The region is whole 128 MiB guest memory blocks: the VM can reach
    // 768 MiB, not the 812 asked.
    assert_eq!(after(&args, "-m"), ["512M,slots=1,maxmem=768M"]);
    assert_eq!(
        Hypervisor::most(&qemu(true), &grow),
        Resources {
            vcpus: 4,
            memory_mib: 768
        }
    );
    assert!(
        after(&args, "-object").contains(&"memory-backend-memfd,id=vmem0-mem,size=256M,share=on")
    );
    assert!(
        after(&args, "-device")
            .contains(&"virtio-mem-pci,id=vmem0,memdev=vmem0-mem,requested-size=0")
    );
    assert!(!after(&args, "-append")[0].contains("maxcpus="));
    // Under TCG the spare vCPUs are there from boot, offline in the guest.
    grow.accel = Accel::Tcg;
    let args = qemu(true).args(&grow, &fds());
    assert_eq!(after(&args, "-smp"), ["4"]);
    assert!(after(&args, "-append")[0].contains("maxcpus=2"));
    assert!(
        after(&args, "-append")[0].contains("swiotlb=noforce"),
        "no bounce buffers for a region above 4 GiB"
    );
    // Less than a block of room: no region.
    grow.max_memory_mib = 512 + 100;
    let args = qemu(true).args(&grow, &fds());
    assert_eq!(after(&args, "-m"), ["512M"]);
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
    let mut disks = std::collections::HashSet::new();
    let mut nodes = std::collections::HashSet::new();
    let answer = move |command: &str, args: &Value, id: &Value| -> Vec<Value> {
        log.lock()
            .unwrap()
            .push(json!({"execute": command, "arguments": args, "id": id}));
        let not_found =
            |desc: String| json!({"error": {"class": "GenericError", "desc": desc}, "id": id});
        let reply = match command {
            "qom-list" => {
                let path = args["path"].as_str().unwrap();
                let port: usize = path.rsplit("rp").next().unwrap().parse().unwrap();
                let mut props = vec![json!({"name": "type", "type": "string"})];
                if occupied.contains(&port) {
                    props.push(json!({"name": "child[0]", "type": "link<virtio-net-pci>"}));
                }
                json!({"return": props, "id": id})
            }
            "add-fd" => json!({"return": {"fdset-id": 7, "fd": 20}, "id": id}),
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
                if !disks.contains(&dev) {
                    return vec![
                        json!({"error": {"class": "DeviceNotFound", "desc": format!("Device '{dev}' not found")}, "id": id}),
                    ];
                }
                let mut out = vec![json!({"return": {}, "id": id})];
                if !stuck {
                    disks.remove(&dev);
                    out.push(json!({"event": "DEVICE_DELETED", "data": {"path": format!("/machine/peripheral/{dev}/virtio-backend")}}));
                    out.push(json!({"event": "DEVICE_DELETED", "data": {"device": dev, "path": format!("/machine/peripheral/{dev}")}}));
                }
                return out;
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
        vec![reply]
    };
    crate::qmp::testing::scripted_monitor(listener, answer).await;
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
        // Any file frakti can open: QEMU gets it as an fd set.
        path: "/dev/null".into(),
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
    // The highest port is taken: the disk goes to the one below it.
    let (_dir, vm, log) = monitor(vec![HOTPLUG_PORTS], false);
    let q = qemu(false);
    q.add_block(&vm, &disk("vol1")).await.unwrap();
    {
        let log = log.lock().unwrap();
        let add = log.iter().find(|m| m["execute"] == "blockdev-add").unwrap();
        assert_eq!(
            add["arguments"],
            json!({"driver": "raw", "node-name": "node-vol1", "read-only": true,
                "file": {"driver": "file", "filename": "/dev/fdset/7", "read-only": true}})
        );
        let add_fd = log.iter().find(|m| m["execute"] == "add-fd").unwrap();
        assert_eq!(add_fd["arguments"], json!({"opaque": "disk-vol1"}));
        let dev = log.iter().find(|m| m["execute"] == "device_add").unwrap();
        assert_eq!(
            dev["arguments"],
            json!({"driver": "virtio-blk-pci", "id": "disk-vol1", "drive": "node-vol1",
                "serial": "vol1", "bus": format!("rp{}", HOTPLUG_PORTS - 1)})
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
    let (_dir, vm, log) = monitor((1..=HOTPLUG_PORTS).collect(), true);
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
    assert_eq!(caps.hotplug_slots, 8, "a NIC and seven disks");
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
        let (top, next) = (
            format!("rp{HOTPLUG_PORTS}"),
            format!("rp{}", HOTPLUG_PORTS - 1),
        );
        for (dev, bus) in [("disk-d1", top), ("disk-d2", next)] {
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
    let args = qemu(false).args(&spec(Accel::Kvm), &fds());
    assert_eq!(after(&args, "-accel"), ["kvm"]);
    assert_eq!(after(&args, "-cpu"), ["host"]);
    assert!(after(&args, "-sandbox").is_empty());
}

#[test]
fn a_qemu_without_sandbox_support_starts_no_vm_unless_told() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("qemu-without-seccomp");
    // Its -help lists no -sandbox option.
    fs::write(&binary, "#!/bin/sh\necho 'usage: qemu [options]'\n").unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
    let firmware = dir.path().join("qboot.rom");
    fs::write(&firmware, "").unwrap();
    let config = |seccomp| QemuConfig {
        binary: binary.clone(),
        firmware: firmware.clone(),
        seccomp,
        machine: Machine::Q35,
        user: None,
    };
    let err = launch::check_host(&Qemu::new(config(true))).unwrap_err();
    assert!(matches!(err, LaunchError::NoSandbox { .. }), "{err}");
    assert!(err.to_string().contains("qemu_sandbox = false"), "{err}");
    let unconfined = Qemu::new(config(false));
    launch::check_host(&unconfined).unwrap();
    assert!(
        after(&unconfined.args(&spec(Accel::Tcg), &fds()), "-sandbox").is_empty(),
        "turned off: no -sandbox"
    );
}
