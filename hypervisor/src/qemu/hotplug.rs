//! Hot-plug over QMP: NICs and disks into the q35 PCIe root ports.

use std::fs;
use std::os::fd::AsFd;
use std::time::Duration;

use serde_json::{Value, json};

use super::handoff::{open_disk, open_tap};
use crate::qmp::{QmpClient, QmpError};
use crate::{BlockFormat, BlockSpec, HotplugError, NicSpec, VmEndpoints};

/// PCIe root ports created for hot-plug: NIC `i` takes port `i + 1`, disks
/// take the highest free one, so the two meet only when all are in use.
pub(super) const HOTPLUG_PORTS: usize = 8;

/// Limit of one QMP command at run time.
pub(super) const QMP_LIMIT: Duration = Duration::from_secs(10);

/// Longest disk id: it is also the virtio-blk serial, which holds 20 bytes.
const MAX_DISK_ID: usize = 20;

/// A QMP connection to the VM.
async fn connect(vm: &VmEndpoints) -> Result<QmpClient, QmpError> {
    QmpClient::connect(&vm.control_socket, Duration::from_secs(5)).await
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

/// Hot-plugs NIC `index` into root port `index + 1`.
pub(super) async fn add_nic(
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
    let tap = open_tap(nic.netns.as_deref(), &nic.tap).map_err(|source| HotplugError::Open {
        device: device.clone(),
        source,
    })?;
    let qmp = connect(vm).await.map_err(&err)?;
    let name = format!("net{index}");
    let getfd = json!({ "fdname": name });
    qmp.execute_with_fds("getfd", Some(getfd), &[tap.as_fd()], limit)
        .await
        .map_err(&err)?;
    let netdev = json!({ "type": "tap", "id": name, "fd": name, "vhost": false });
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

/// Hot-plugs `disk` into the highest free root port.
pub(super) async fn add_block(vm: &VmEndpoints, disk: &BlockSpec) -> Result<(), HotplugError> {
    check_disk_id(&disk.id)?;
    let (device, node) = (disk_device(&disk.id), disk_node(&disk.id));
    let err = plug_error("hot-plug", &device);
    let qmp = connect(vm).await.map_err(&err)?;
    let port = free_port(&qmp)
        .await
        .map_err(&err)?
        .ok_or_else(|| HotplugError::NoSlot(device.clone()))?;
    let files = open_disk(disk).map_err(|source| HotplugError::Open {
        device: device.clone(),
        source,
    })?;
    // One fd set holds the disk's descriptors; QEMU frees it once the block
    // node is gone and this connection closed.
    let mut set: Option<u64> = None;
    for file in &files {
        let mut args = json!({ "opaque": device });
        if let Some(id) = set {
            args["fdset-id"] = id.into();
        }
        let added = qmp
            .execute_with_fds("add-fd", Some(args), &[file.as_fd()], QMP_LIMIT)
            .await
            .map_err(&err)?;
        set = added["fdset-id"].as_u64();
    }
    let set = set.ok_or_else(|| {
        err(QmpError::Command {
            command: "add-fd".into(),
            class: "GenericError".into(),
            desc: "no fdset-id in the answer".into(),
        })
    })?;
    let node_args = blockdev(disk, &node, &format!("/dev/fdset/{set}"));
    qmp.execute("blockdev-add", Some(node_args), QMP_LIMIT)
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

/// Hot-unplugs the disk `id`, waiting up to `limit` for the guest to release it.
pub(super) async fn remove_block(
    vm: &VmEndpoints,
    id: &str,
    limit: Duration,
) -> Result<(), HotplugError> {
    check_disk_id(id)?;
    let (device, node) = (disk_device(id), disk_node(id));
    let err = plug_error("hot-unplug", &device);
    let qmp = connect(vm).await.map_err(&err)?;
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

/// QEMU's device id of the disk `id`.
pub(super) fn disk_device(id: &str) -> String {
    format!("disk-{id}")
}

/// QEMU's block node name of the disk `id` (at most 31 characters).
pub(super) fn disk_node(id: &str) -> String {
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

/// `blockdev-add` arguments: a format node `node` over a file (or host block
/// device) node that QEMU opens as `filename` (an fd set of the disk).
pub(super) fn blockdev(disk: &BlockSpec, node: &str, filename: &str) -> Value {
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
            "filename": filename,
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
pub(super) async fn wait_deleted(
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
