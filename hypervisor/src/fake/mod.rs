//! A fake [`Hypervisor`] for unit tests of its callers (feature `fake`).
//!
//! `launch` starts a real, harmless, long-lived process (`sleep 3600`)
//! whose `argv[0]` names the VM, so pid-based code works on it: pidfd
//! watchers see it exit, `adopt` and `find` recognise it (also from another
//! `FakeHypervisor`, as after a daemon restart), and `stop` kills exactly
//! that pid. Every call is recorded; launch and NIC hot-plug can be told to
//! fail. VMs still running when the fake is dropped are killed.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::process::{self, Process};
use crate::{
    AdoptError, BlockSpec, Capabilities, HotplugError, Hypervisor, LaunchError, NicSpec,
    ResizeError, Resources, StopError, VmEndpoints, VmSpec,
};

/// The fake's pidfile in a VM directory.
const PIDFILE: &str = "fake.pid";

/// A call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// [`Hypervisor::launch`].
    Launch(VmSpec),
    /// [`Hypervisor::find`].
    Find {
        /// VM id.
        id: String,
        /// VM directory.
        dir: PathBuf,
    },
    /// [`Hypervisor::adopt`].
    Adopt {
        /// VM id.
        id: String,
        /// The pid to check.
        pid: i32,
    },
    /// [`Hypervisor::stop`].
    Stop {
        /// VM id.
        id: String,
        /// The VM's pid.
        pid: i32,
    },
    /// [`Hypervisor::add_nic`].
    AddNic {
        /// The VM's pid.
        pid: i32,
        /// NIC number.
        index: usize,
        /// The NIC.
        nic: NicSpec,
    },
    /// [`Hypervisor::add_block`].
    AddBlock {
        /// The VM's pid.
        pid: i32,
        /// The disk.
        disk: BlockSpec,
    },
    /// [`Hypervisor::remove_block`].
    RemoveBlock {
        /// The VM's pid.
        pid: i32,
        /// Disk id.
        id: String,
    },
    /// [`Hypervisor::resize`].
    Resize {
        /// The VM's pid.
        pid: i32,
        /// The size asked for.
        to: Resources,
    },
}

// Shared, so that they are called without the state locked.
type LaunchFailure = Arc<dyn Fn(&VmSpec) -> LaunchError + Send + Sync>;
type NicFailure = Arc<dyn Fn(usize) -> HotplugError + Send + Sync>;
type LaunchHook = Arc<dyn Fn(&VmSpec, &VmEndpoints) + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Vec<FakeCall>,
    /// VMs this fake launched and did not stop: id -> pid.
    running: HashMap<String, i32>,
    /// The size of each VM (by pid): as launched, then as resized.
    sizes: HashMap<i32, Resources>,
    /// Devices plugged per VM pid: NIC indexes and disk ids.
    nics: HashMap<i32, BTreeSet<usize>>,
    disks: HashMap<i32, BTreeSet<String>>,
    fail_launch: Option<LaunchFailure>,
    fail_add_nic: Option<NicFailure>,
    on_launch: Option<LaunchHook>,
}

/// A fake hypervisor whose VMs are `sleep` processes.
pub struct FakeHypervisor {
    state: Mutex<State>,
    capabilities: Mutex<Capabilities>,
}

impl Debug for FakeHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHypervisor")
            .field("running", &self.lock().running)
            .finish_non_exhaustive()
    }
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHypervisor {
    /// A fake that can do everything, with 4 hot-plug slots and 16 vCPUs.
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            capabilities: Mutex::new(Capabilities {
                cpu_hotplug: true,
                memory_hotplug: true,
                block_hotplug: true,
                nic_hotplug: true,
                hotplug_slots: 4,
                max_vcpus: 16,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The pid of VM `id`, if this fake launched it and it was not stopped.
    pub fn pid_of(&self, id: &str) -> Option<i32> {
        self.lock().running.get(id).copied()
    }

    /// Makes every later launch fail with `error(spec)`.
    pub fn fail_launch(&self, error: impl Fn(&VmSpec) -> LaunchError + Send + Sync + 'static) {
        self.lock().fail_launch = Some(Arc::new(error));
    }

    /// Makes every later NIC hot-plug fail with `error(index)`.
    pub fn fail_add_nic(&self, error: impl Fn(usize) -> HotplugError + Send + Sync + 'static) {
        self.lock().fail_add_nic = Some(Arc::new(error));
    }

    /// Makes launch and NIC hot-plug succeed again.
    pub fn clear_failures(&self) {
        let mut state = self.lock();
        state.fail_launch = None;
        state.fail_add_nic = None;
    }

    /// Calls `hook` in each launch once the VM process runs, before launch
    /// returns; e.g. to serve a fake agent on `endpoints.agent_socket`.
    pub fn on_launch(&self, hook: impl Fn(&VmSpec, &VmEndpoints) + Send + Sync + 'static) {
        self.lock().on_launch = Some(Arc::new(hook));
    }

    /// What [`Hypervisor::capabilities`] reports from now on.
    pub fn set_capabilities(&self, capabilities: Capabilities) {
        *self
            .capabilities
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = capabilities;
    }

    /// Kills VM `id` as if it crashed or powered off (not recorded as a
    /// stop); false if this fake has no such VM running.
    pub fn exit_vm(&self, id: &str) -> bool {
        let Some(pid) = self.lock().running.remove(id) else {
            return false;
        };
        kill_ours(id, pid)
    }
}

impl Drop for FakeHypervisor {
    fn drop(&mut self) {
        for (id, pid) in self.lock().running.drain() {
            if kill_ours(&id, pid) {
                // Reaps it if it is our child; fails at once otherwise.
                let _ = waitpid(Pid::from_raw(pid), None);
            }
        }
    }
}

/// `argv[0]` of the process of VM `id`.
fn vm_argv0(id: &str) -> String {
    format!("fake-vm-{id}")
}

/// Whether `pid` is the process of VM `id`.
fn is_ours(id: &str, pid: i32) -> bool {
    process::cmdline(pid).is_some_and(|args| args.first() == Some(&vm_argv0(id)))
}

/// SIGKILLs `pid` if it is VM `id`'s process; true if it was signalled.
fn kill_ours(id: &str, pid: i32) -> bool {
    is_ours(id, pid) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

fn endpoints_in(dir: &Path, pid: i32) -> VmEndpoints {
    VmEndpoints {
        pid,
        control_socket: dir.join("fake-control.sock"),
        agent_socket: dir.join("fake-agent.sock"),
        console_log: dir.join("fake-console.log"),
        vmm_log: dir.join("fake-vmm.log"),
    }
}

#[async_trait::async_trait]
impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        *self
            .capabilities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn launch(&self, spec: &VmSpec) -> Result<VmEndpoints, LaunchError> {
        let fail = {
            let mut state = self.lock();
            state.calls.push(FakeCall::Launch(spec.clone()));
            state.fail_launch.clone()
        };
        if let Some(fail) = fail {
            return Err(fail(spec));
        }
        let dir_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::Dir { path, source }
        };
        std::fs::create_dir_all(&spec.dir).map_err(dir_err(&spec.dir))?;
        let probe = endpoints_in(&spec.dir, 0);
        let _ = std::fs::remove_file(&probe.agent_socket);
        for log in [&probe.console_log, &probe.vmm_log] {
            std::fs::write(log, "").map_err(dir_err(log))?;
        }
        let spawn_err = |source| LaunchError::Spawn {
            binary: PathBuf::from("sleep"),
            source,
        };
        let child = Command::new("sleep")
            .arg0(vm_argv0(&spec.id))
            .arg("3600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // Like a real VMM: watched and reaped through its pid, not the handle.
        drop(child);
        // Right after spawn the new image's arguments may not be in
        // /proc/<pid>/cmdline yet; adopt and stop look for them there.
        for _ in 0..1000 {
            if is_ours(&spec.id, pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let pidfile = spec.dir.join(PIDFILE);
        std::fs::write(&pidfile, format!("{pid}\n")).map_err(dir_err(&pidfile))?;
        let endpoints = endpoints_in(&spec.dir, pid);
        let hook = {
            let mut state = self.lock();
            state.running.insert(spec.id.clone(), pid);
            state.sizes.insert(
                pid,
                Resources {
                    vcpus: spec.vcpus,
                    memory_mib: spec.memory_mib,
                },
            );
            state.on_launch.clone()
        };
        if let Some(hook) = hook {
            hook(spec, &endpoints);
        }
        Ok(endpoints)
    }

    fn endpoints(&self, dir: &Path, pid: i32) -> VmEndpoints {
        endpoints_in(dir, pid)
    }

    fn find(&self, id: &str, dir: &Path) -> Result<VmEndpoints, AdoptError> {
        self.lock().calls.push(FakeCall::Find {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
        });
        let pidfile = dir.join(PIDFILE);
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or(AdoptError::NoPidfile(pidfile))?;
        check_adopt(id, dir, pid)
    }

    fn adopt(&self, id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError> {
        self.lock().calls.push(FakeCall::Adopt {
            id: id.to_owned(),
            pid,
        });
        check_adopt(id, dir, pid)
    }

    async fn stop(&self, id: &str, vm: &VmEndpoints, _grace: Duration) -> Result<(), StopError> {
        {
            let mut state = self.lock();
            state.calls.push(FakeCall::Stop {
                id: id.to_owned(),
                pid: vm.pid,
            });
            if state.running.get(id) == Some(&vm.pid) {
                state.running.remove(id);
            }
        }
        let Ok(proc) = Process::open(vm.pid) else {
            return Ok(());
        };
        if !proc.is_running() {
            process::reap(vm.pid);
            return Ok(());
        }
        if !is_ours(id, vm.pid) {
            return Ok(());
        }
        proc.signal(Signal::SIGKILL);
        tokio::time::timeout(Duration::from_secs(10), proc.exited())
            .await
            .map_err(|_| StopError::Unkillable(vm.pid))
    }

    async fn add_nic(
        &self,
        vm: &VmEndpoints,
        index: usize,
        nic: &NicSpec,
    ) -> Result<(), HotplugError> {
        let slots = self.capabilities().hotplug_slots as usize;
        let fail = {
            let mut state = self.lock();
            state.calls.push(FakeCall::AddNic {
                pid: vm.pid,
                index,
                nic: nic.clone(),
            });
            state.fail_add_nic.clone()
        };
        if let Some(fail) = fail {
            return Err(fail(index));
        }
        let mut state = self.lock();
        let used = used_slots(&state, vm.pid);
        let nics = state.nics.entry(vm.pid).or_default();
        if index >= slots || used >= slots || !nics.insert(index) {
            return Err(HotplugError::NoSlot(format!("nic{index}")));
        }
        Ok(())
    }

    async fn add_block(&self, vm: &VmEndpoints, disk: &BlockSpec) -> Result<(), HotplugError> {
        let caps = self.capabilities();
        let mut state = self.lock();
        state.calls.push(FakeCall::AddBlock {
            pid: vm.pid,
            disk: disk.clone(),
        });
        if !caps.block_hotplug {
            return Err(HotplugError::Unsupported("disk hot-plug"));
        }
        let used = used_slots(&state, vm.pid);
        let disks = state.disks.entry(vm.pid).or_default();
        if disks.contains(&disk.id) {
            return Err(HotplugError::Backend {
                op: "hot-plug",
                device: disk.id.clone(),
                source: "a disk with this id is plugged already".into(),
            });
        }
        if used >= caps.hotplug_slots as usize {
            return Err(HotplugError::NoSlot(disk.id.clone()));
        }
        disks.insert(disk.id.clone());
        Ok(())
    }

    async fn remove_block(
        &self,
        vm: &VmEndpoints,
        id: &str,
        _limit: Duration,
    ) -> Result<(), HotplugError> {
        let caps = self.capabilities();
        let mut state = self.lock();
        state.calls.push(FakeCall::RemoveBlock {
            pid: vm.pid,
            id: id.to_owned(),
        });
        if !caps.block_hotplug {
            return Err(HotplugError::Unsupported("disk hot-unplug"));
        }
        if let Some(disks) = state.disks.get_mut(&vm.pid) {
            disks.remove(id);
        }
        Ok(())
    }

    async fn resize(&self, vm: &VmEndpoints, to: &Resources) -> Result<(), ResizeError> {
        let caps = self.capabilities();
        self.lock().calls.push(FakeCall::Resize {
            pid: vm.pid,
            to: *to,
        });
        if !(caps.cpu_hotplug && caps.memory_hotplug) {
            return Err(ResizeError::Unsupported("resizing a running VM"));
        }
        if to.vcpus > caps.max_vcpus {
            return Err(ResizeError::TooLarge {
                what: "vCPUs",
                asked: u64::from(to.vcpus),
                most: u64::from(caps.max_vcpus),
            });
        }
        self.lock().sizes.insert(vm.pid, *to);
        Ok(())
    }

    async fn resources(&self, vm: &VmEndpoints) -> Result<Resources, ResizeError> {
        self.lock()
            .sizes
            .get(&vm.pid)
            .copied()
            .ok_or(ResizeError::Unsupported(
                "reading the size of a VM this fake did not launch",
            ))
    }
}

/// Hot-plug slots VM `pid` uses.
fn used_slots(state: &State, pid: i32) -> usize {
    state.nics.get(&pid).map_or(0, BTreeSet::len) + state.disks.get(&pid).map_or(0, BTreeSet::len)
}

/// `adopt`'s checks: the process runs and is VM `id`'s.
fn check_adopt(id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError> {
    let proc = Process::open(pid).map_err(|_| AdoptError::Gone(pid))?;
    if !proc.is_running() {
        process::reap(pid);
        return Err(AdoptError::Gone(pid));
    }
    if !is_ours(id, pid) {
        return Err(AdoptError::NotOurs {
            pid,
            id: id.to_owned(),
        });
    }
    Ok(endpoints_in(dir, pid))
}

#[cfg(test)]
mod tests;
