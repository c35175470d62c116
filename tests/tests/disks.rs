//! Block devices and disk images in a VM pod (TCG): loop devices with ext4,
//! xfs, vfat and btrfs and a qcow2 image marked by annotation are hot-plugged into the
//! VM once per pod, their filesystems mounted by the guest; what one
//! container writes another reads; a read-only use refuses writes; a CRI
//! device is a node in the container; the disks survive a daemon restart,
//! leave the VM with their last container, and their data stays on the
//! device after the pod is gone.

use std::path::{Path, PathBuf};
use std::process::Command;

use cri::proto;
use e2e::workload::TestPod;
use tonic::Code;

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device over a sparse file with a fresh filesystem; detached when
/// dropped.
struct Loop {
    device: String,
}

impl Loop {
    fn new(dir: &Path, name: &str, size_mib: u64, mkfs: &str) -> Self {
        let file = dir.join(name);
        sh(&format!(
            "truncate -s {size_mib}M {0} && {mkfs} {0} >/dev/null",
            file.display()
        ));
        let device = sh(&format!("losetup --find --show {}", file.display()));
        Self { device }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn mount(container: &str, host: &Path, readonly: bool) -> proto::Mount {
    proto::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn text(out: &proto::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The serials of the disks in the guest, as a container sees them.
async fn serials(pod: &mut TestPod, id: &str) -> Vec<String> {
    let out = pod
        .exec(id, "for s in /sys/block/vd*/serial; do cat $s; echo; done")
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let mut all: Vec<String> = text(&out).lines().map(str::to_owned).collect();
    all.sort();
    all
}

#[tokio::test]
async fn disks_enter_the_vm_once_and_leave_with_their_last_container() {
    let dir = tempfile::tempdir().unwrap();
    let ext4 = Loop::new(dir.path(), "ext4.img", 64, "mkfs.ext4 -q -F");
    let xfs = Loop::new(dir.path(), "xfs.img", 320, "mkfs.xfs -q -f");
    // A qcow2 image holding an ext4 filesystem with a file.
    let qcow: PathBuf = dir.path().join("image.qcow2");
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("hello"), "from-qcow2\n").unwrap();
    sh(&format!(
        "truncate -s 32M {raw} && mkfs.ext4 -q -F -d {seed} {raw} && \
         qemu-img convert -f raw -O qcow2 {raw} {qcow}",
        raw = dir.path().join("raw.img").display(),
        seed = seed.display(),
        qcow = qcow.display(),
    ));
    // A symlink to the device, as /dev/disk/by-id links are.
    let link = dir.path().join("ext4-link");
    std::os::unix::fs::symlink(&ext4.device, &link).unwrap();

    let mut pod = TestPod::start("disks", |c| {
        c.annotations
            .insert("io.frakti.volume./qcow".into(), "disk".into());
    })
    .await
    .unwrap();

    let mut writer = pod.container("writer", &["sleep 100000"]);
    writer.mounts = vec![
        mount("/ext4", &link, false),
        mount("/xfs", Path::new(&xfs.device), false),
        mount("/qcow", &qcow, true),
    ];
    let writer = pod.run(writer).await;
    let out = pod
        .exec(
            &writer,
            "echo from-writer > /ext4/file && echo xfs-data > /xfs/file && cat /qcow/hello \
             && grep -E ' /(ext4|xfs|qcow) ' /proc/mounts | cut -d' ' -f2-4 && sync",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let mounts = text(&out);
    assert!(mounts.starts_with("from-qcow2\n"), "{mounts}");
    assert!(mounts.contains("/ext4 ext4 rw"), "{mounts}");
    assert!(mounts.contains("/xfs xfs rw"), "{mounts}");
    assert!(mounts.contains("/qcow ext4 ro"), "{mounts}");
    // The qcow2 image is read-only at the block level too.
    let out = pod
        .exec(
            &writer,
            "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = vol2 ] && cat $d/ro; done; \
             touch /qcow/x",
        )
        .await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert_eq!(text(&out), "1\n", "{out:?}");

    // A second container reads what the first wrote: ext4 read-only, xfs
    // writable, and the ext4 disk as a device node too.
    let mut reader = pod.container("reader", &["sleep 100000"]);
    reader.mounts = vec![
        mount("/ro", Path::new(&ext4.device), true),
        mount("/xfs", Path::new(&xfs.device), false),
    ];
    reader.devices = vec![proto::Device {
        container_path: "/dev/xvdb".into(),
        host_path: ext4.device.clone(),
        permissions: "r".into(),
    }];
    let reader = pod.run(reader).await;
    let out = pod
        .exec(
            &reader,
            "cat /ro/file /xfs/file && test -b /dev/xvdb \
             && dd if=/dev/xvdb bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(text(&out), "from-writer\nxfs-data\n 53 ef\n");
    let out = pod.exec(&reader, "touch /ro/new").await;
    assert_ne!(out.exit_code, 0, "a read-only mount took a write: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only"),
        "{out:?}"
    );
    // The node is read-only for the container (cgroup rule "r").
    let out = pod
        .exec(&reader, "dd if=/dev/zero of=/dev/xvdb bs=512 count=1")
        .await;
    assert_ne!(out.exit_code, 0, "{out:?}");

    // Other disks of the VM are out of reach: a node made for one (the
    // default capabilities include MKNOD) cannot be opened.
    let out = pod
        .exec(&reader, "mknod /dev/peek b 254 0 && head -c1 /dev/peek")
        .await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );

    // Three disks, each once, beside the module disk.
    assert_eq!(
        serials(&mut pod, &reader).await,
        ["frakti-modules", "vol0", "vol1", "vol2"]
    );

    // A disk attached read-only cannot be written by a later container.
    let mut greedy = pod.container("greedy", &["true"]);
    greedy.mounts = vec![mount("/qcow", &qcow, false)];
    let err = pod.create(greedy).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("read-only"), "{err:?}");
    // The annotation marks a file; a directory is refused by name.
    let mut odd = pod.container("odd", &["true"]);
    odd.annotations
        .insert("io.frakti.volume./d".into(), "disk".into());
    odd.mounts = vec![mount("/d", dir.path(), false)];
    let err = pod.create(odd).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("not a regular file"), "{err:?}");

    // vfat and btrfs too: their modules (and btrfs's many dependencies,
    // vfat's code page) come from the module disk as the guest mounts them.
    let fat = Loop::new(dir.path(), "fat.img", 32, "mkfs.vfat");
    let btrfs = Loop::new(dir.path(), "btrfs.img", 128, "mkfs.btrfs -q -f");
    let mut others = pod.container("others", &["sleep 100000"]);
    others.mounts = vec![
        mount("/fat", Path::new(&fat.device), false),
        mount("/btrfs", Path::new(&btrfs.device), false),
    ];
    let others = pod.run(others).await;
    let out = pod
        .exec(
            &others,
            "echo fat > /fat/f && echo btr > /btrfs/f && cat /fat/f /btrfs/f \
             && grep -E ' /(fat|btrfs) ' /proc/mounts | cut -d' ' -f2-3",
        )
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(text(&out), "fat\nbtr\n/fat vfat\n/btrfs btrfs\n");
    pod.remove(&others).await;
    assert_eq!(
        serials(&mut pod, &reader).await,
        ["frakti-modules", "vol0", "vol1", "vol2"]
    );

    // The daemon restarts; the disks stay, and are known to it.
    pod.daemon.restart().await.unwrap();
    pod.rt = pod.daemon.runtime().await.unwrap();
    let mut late = pod.container("late", &["sleep 100000"]);
    late.mounts = vec![mount("/xfs", Path::new(&xfs.device), true)];
    let late = pod.run(late).await;
    assert_eq!(text(&pod.exec(&late, "cat /xfs/file").await), "xfs-data\n");

    // The qcow2 image leaves with its only container; the others stay
    // while a container uses them.
    pod.remove(&writer).await;
    assert_eq!(
        serials(&mut pod, &late).await,
        ["frakti-modules", "vol0", "vol1"]
    );
    pod.remove(&reader).await;
    assert_eq!(serials(&mut pod, &late).await, ["frakti-modules", "vol1"]);
    pod.remove(&late).await;
    let probe = pod.container("probe", &["sleep 100000"]);
    let probe = pod.run(probe).await;
    assert_eq!(serials(&mut pod, &probe).await, ["frakti-modules"]);

    // The data is on the device once the pod is gone.
    pod.rt
        .stop_pod_sandbox(proto::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    pod.rt
        .remove_pod_sandbox(proto::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        sh(&format!(
            "debugfs -R 'cat /file' {} 2>/dev/null",
            ext4.device
        )),
        "from-writer"
    );
}
