//! CPU and memory hot-plug over QMP. A VM boots with room to grow
//! (`-smp n,maxcpus=m`, and a virtio-mem device over a shared memfd for the
//! memory above the boot size); vCPUs are added and removed as devices,
//! memory by the virtio-mem device's requested size. The guest onlines and
//! offlines them itself (the agent does).

use std::time::Duration;

use serde_json::{Value, json};

use crate::accel::Accel;
use crate::qmp::{QmpClient, QmpError};
use crate::{ResizeError, Resources, VmEndpoints, VmSpec};

use super::hotplug::QMP_LIMIT;

/// The id of the virtio-mem device and its memory backend.
pub(super) const VIRTIO_MEM: &str = "vmem0";
const VIRTIO_MEM_BACKEND: &str = "vmem0-mem";

/// Hot-plugged memory comes in blocks of this size (the guest's memory
/// block on x86-64 is 128 MiB; the device region is a whole number of them).
pub(super) const MEMORY_BLOCK_MIB: u64 = 128;

/// How long the guest may take to release an unplugged vCPU.
const CPU_UNPLUG_LIMIT: Duration = Duration::from_secs(10);

/// MiB of the hot-pluggable region above the boot memory of `spec` (0: none).
pub(super) fn hotplug_region_mib(spec: &VmSpec) -> u64 {
    let room = spec.max_memory_mib.saturating_sub(spec.memory_mib);
    room - room % MEMORY_BLOCK_MIB
}

/// Whether the VM's spare vCPUs are there from boot, offline in the guest,
/// rather than plugged later. Under TCG they must be: QEMU 7.2 aborts
/// (`tcg_region_initial_alloc__locked: assertion failed`) when a vCPU
/// thread joins after the running ones took every translation region.
pub(super) fn spare_vcpus_at_boot(spec: &VmSpec) -> bool {
    spec.accel == Accel::Tcg && spec.max_vcpus > spec.vcpus
}

/// Kernel command-line words for the vCPUs of `spec`: with spare vCPUs at
/// boot, the guest brings up only `vcpus` of them.
pub(super) fn cmdline(spec: &VmSpec) -> Option<String> {
    spare_vcpus_at_boot(spec).then(|| format!("maxcpus={}", spec.vcpus))
}

/// The QEMU arguments that give `spec` room to grow.
pub(super) fn args(spec: &VmSpec) -> (String, String, Vec<String>) {
    let smp = if spare_vcpus_at_boot(spec) {
        spec.max_vcpus.to_string()
    } else if spec.max_vcpus > spec.vcpus {
        format!("{},maxcpus={}", spec.vcpus, spec.max_vcpus)
    } else {
        spec.vcpus.to_string()
    };
    let mem = spec.memory_mib;
    let region = hotplug_region_mib(spec);
    if region == 0 {
        return (smp, format!("{mem}M"), Vec::new());
    }
    let devices = vec![
        "-object".into(),
        format!("memory-backend-memfd,id={VIRTIO_MEM_BACKEND},size={region}M,share=on"),
        "-device".into(),
        format!("virtio-mem-pci,id={VIRTIO_MEM},memdev={VIRTIO_MEM_BACKEND},requested-size=0"),
    ];
    (
        smp,
        format!("{mem}M,slots=1,maxmem={}M", mem + region),
        devices,
    )
}

fn backend(source: QmpError) -> ResizeError {
    ResizeError::Backend(Box::new(source))
}

/// Asks for `to`: vCPUs are plugged or unplugged (only those hot-plugged
/// before; spare vCPUs present from boot stay, the guest onlines or
/// offlines them), the memory above the boot size is requested from the
/// guest.
/// Returns once QEMU took the requests; the guest follows on its own.
pub(super) async fn resize(vm: &VmEndpoints, to: &Resources) -> Result<(), ResizeError> {
    let qmp = QmpClient::connect(&vm.control_socket, Duration::from_secs(5))
        .await
        .map_err(backend)?;
    set_vcpus(&qmp, to.vcpus).await?;
    set_memory(&qmp, to.memory_mib).await
}

/// What a running VM has: its vCPUs and its memory (boot + plugged), MiB.
pub(super) async fn current(vm: &VmEndpoints) -> Result<Resources, ResizeError> {
    let qmp = QmpClient::connect(&vm.control_socket, Duration::from_secs(5))
        .await
        .map_err(backend)?;
    let cpus = hotpluggable_cpus(&qmp).await?;
    let vcpus = cpus.iter().filter(|c| c.plugged.is_some()).count() as u32;
    let (base, plugged) = memory_summary(&qmp).await?;
    Ok(Resources {
        vcpus,
        memory_mib: (base + plugged) >> 20,
    })
}

/// A CPU slot of `query-hotpluggable-cpus`.
#[derive(Debug, Clone, PartialEq)]
struct CpuSlot {
    driver: String,
    props: serde_json::Map<String, Value>,
    /// QOM path of the vCPU in the slot, if one is there.
    plugged: Option<String>,
}

impl CpuSlot {
    /// The slot's place, for ordering: socket, core, thread.
    fn place(&self) -> (u64, u64, u64) {
        let n = |k: &str| self.props.get(k).and_then(Value::as_u64).unwrap_or(0);
        (n("socket-id"), n("core-id"), n("thread-id"))
    }

    /// The device id frakti gives the vCPU it plugs into this slot.
    fn device_id(&self) -> String {
        let (s, c, t) = self.place();
        format!("vcpu-{s}-{c}-{t}")
    }
}

async fn hotpluggable_cpus(qmp: &QmpClient) -> Result<Vec<CpuSlot>, ResizeError> {
    let answer = qmp
        .execute("query-hotpluggable-cpus", None, QMP_LIMIT)
        .await
        .map_err(backend)?;
    let mut slots: Vec<CpuSlot> = answer
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| {
                    Some(CpuSlot {
                        driver: s["type"].as_str()?.to_owned(),
                        props: s["props"].as_object()?.clone(),
                        plugged: s["qom-path"].as_str().map(str::to_owned),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    slots.sort_by_key(CpuSlot::place);
    Ok(slots)
}

async fn set_vcpus(qmp: &QmpClient, want: u32) -> Result<(), ResizeError> {
    let slots = hotpluggable_cpus(qmp).await?;
    let have = slots.iter().filter(|s| s.plugged.is_some()).count();
    let want = want as usize;
    if want > slots.len() {
        return Err(ResizeError::TooLarge {
            what: "vCPUs",
            asked: want as u64,
            most: slots.len() as u64,
        });
    }
    if want > have && want <= slots.len() {
        let free = slots.iter().filter(|s| s.plugged.is_none());
        for slot in free.take(want - have) {
            let mut device = slot.props.clone();
            device.insert("driver".into(), json!(slot.driver));
            device.insert("id".into(), json!(slot.device_id()));
            qmp.execute("device_add", Some(Value::Object(device)), QMP_LIMIT)
                .await
                .map_err(backend)?;
        }
    } else if want < have {
        // Only vCPUs plugged at run time can leave, the newest first.
        let ours: Vec<&CpuSlot> = slots
            .iter()
            .rev()
            .filter(|s| {
                s.plugged
                    .as_deref()
                    .is_some_and(|p| p.starts_with("/machine/peripheral/"))
            })
            .take(have - want)
            .collect();
        let mut events = qmp.events();
        for slot in ours {
            let id = slot.device_id();
            qmp.execute("device_del", Some(json!({ "id": id })), QMP_LIMIT)
                .await
                .map_err(backend)?;
            if !super::hotplug::wait_deleted(qmp, &mut events, &id, CPU_UNPLUG_LIMIT)
                .await
                .map_err(backend)?
            {
                return Err(ResizeError::NotReleased {
                    device: id,
                    limit: CPU_UNPLUG_LIMIT,
                });
            }
        }
    }
    Ok(())
}

/// Boot memory and memory plugged since, bytes.
async fn memory_summary(qmp: &QmpClient) -> Result<(u64, u64), ResizeError> {
    let summary = qmp
        .execute("query-memory-size-summary", None, QMP_LIMIT)
        .await
        .map_err(backend)?;
    let base = summary["base-memory"].as_u64().unwrap_or(0);
    let plugged = summary["plugged-memory"].as_u64().unwrap_or(0);
    Ok((base, plugged))
}

async fn set_memory(qmp: &QmpClient, total_mib: u64) -> Result<(), ResizeError> {
    let (base, _) = memory_summary(qmp).await?;
    let above = (total_mib << 20).saturating_sub(base);
    let path = format!("/machine/peripheral/{VIRTIO_MEM}");
    let region = qmp
        .execute(
            "qom-get",
            Some(json!({ "path": format!("/objects/{VIRTIO_MEM_BACKEND}"), "property": "size" })),
            QMP_LIMIT,
        )
        .await;
    let region = match region {
        Ok(size) => size.as_u64().unwrap_or(0),
        // No device: the VM cannot grow, which is fine if it need not.
        Err(QmpError::Command { .. }) if above == 0 => return Ok(()),
        Err(QmpError::Command { .. }) => {
            return Err(ResizeError::TooLarge {
                what: "memory (MiB)",
                asked: total_mib,
                most: base >> 20,
            });
        }
        Err(e) => return Err(backend(e)),
    };
    if above > region {
        return Err(ResizeError::TooLarge {
            what: "memory (MiB)",
            asked: total_mib,
            most: (base + region) >> 20,
        });
    }
    let block = qmp
        .execute(
            "qom-get",
            Some(json!({ "path": path, "property": "block-size" })),
            QMP_LIMIT,
        )
        .await
        .map_err(backend)?
        .as_u64()
        .unwrap_or(2 << 20)
        .max(1);
    let requested = above.div_ceil(block) * block;
    qmp.execute(
        "qom-set",
        Some(json!({ "path": path, "property": "requested-size", "value": requested.min(region) })),
        QMP_LIMIT,
    )
    .await
    .map_err(backend)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_slots_are_ordered_and_named_by_place() {
        let slot = |socket: u64| CpuSlot {
            driver: "qemu64-x86_64-cpu".into(),
            props: json!({"socket-id": socket, "core-id": 0, "thread-id": 0})
                .as_object()
                .unwrap()
                .clone(),
            plugged: None,
        };
        let mut slots = [slot(2), slot(0), slot(1)];
        slots.sort_by_key(CpuSlot::place);
        assert_eq!(slots[0].place(), (0, 0, 0));
        assert_eq!(slots[2].device_id(), "vcpu-2-0-0");
    }
}
