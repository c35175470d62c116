//! Unit tests of the fake hypervisor: launch, adopt, stop, told failures,
//! disk slots and resize, run against real `sleep` processes.

use super::*;
use crate::{Accel, BlockFormat};

fn spec(id: &str, dir: &Path) -> VmSpec {
    VmSpec {
        id: id.to_owned(),
        dir: dir.join(id),
        vcpus: 1,
        memory_mib: 128,
        max_vcpus: 1,
        max_memory_mib: 128,
        kernel: "/k".into(),
        initrd: "/i".into(),
        extra_cmdline: Vec::new(),
        accel: Accel::Tcg,
        netns: None,
        nics: Vec::new(),
        shares: Vec::new(),
        disks: Vec::new(),
    }
}

fn running(pid: i32) -> bool {
    Process::open(pid).is_ok_and(|p| p.is_running())
}

#[tokio::test]
async fn launch_runs_a_process_that_stop_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    let spec = spec("vm1", tmp.path());
    let vm = fake.launch(&spec).await.unwrap();
    assert!(running(vm.pid));
    assert_eq!(fake.pid_of("vm1"), Some(vm.pid));
    assert!(vm.agent_socket.starts_with(&spec.dir));
    assert_eq!(fake.endpoints(&spec.dir, vm.pid), vm);
    // Found from its directory, as after a restart, also by another fake.
    assert_eq!(fake.find("vm1", &spec.dir).unwrap(), vm);
    let other = FakeHypervisor::new();
    assert_eq!(other.adopt("vm1", &spec.dir, vm.pid).unwrap(), vm);
    drop(other);
    assert!(running(vm.pid), "dropping another fake must not kill it");
    let watcher = Process::open(vm.pid).unwrap();
    fake.stop("vm1", &vm, Duration::from_secs(1)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher.exited())
        .await
        .unwrap();
    assert!(!running(vm.pid));
    assert_eq!(fake.pid_of("vm1"), None);
    assert!(matches!(
        fake.find("vm1", &spec.dir),
        Err(AdoptError::Gone(_))
    ));
    // Already gone: still fine.
    fake.stop("vm1", &vm, Duration::ZERO).await.unwrap();
    let calls = fake.calls();
    assert_eq!(calls[0], FakeCall::Launch(spec.clone()));
    assert!(calls.contains(&FakeCall::Stop {
        id: "vm1".into(),
        pid: vm.pid,
    }));
}

#[tokio::test]
async fn adopt_and_stop_leave_other_processes_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    let me = i32::try_from(std::process::id()).unwrap();
    assert!(matches!(
        fake.adopt("vm1", tmp.path(), me),
        Err(AdoptError::NotOurs { .. })
    ));
    assert!(matches!(
        fake.find("vm1", tmp.path()),
        Err(AdoptError::NoPidfile(_))
    ));
    // A VM's pid under another id is not that VM.
    let vm = fake.launch(&spec("vm2", tmp.path())).await.unwrap();
    fake.stop("vm3", &vm, Duration::ZERO).await.unwrap();
    assert!(running(vm.pid));
    assert!(fake.exit_vm("vm2"));
    assert!(!fake.exit_vm("vm2"));
    let watcher = Process::open(vm.pid).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watcher.exited())
        .await
        .unwrap();
}

#[tokio::test]
async fn launch_and_add_nic_fail_when_told_to() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    fake.fail_launch(|spec| LaunchError::Missing {
        what: "guest kernel",
        path: spec.kernel.clone(),
    });
    let err = fake.launch(&spec("vm1", tmp.path())).await.unwrap_err();
    assert!(matches!(err, LaunchError::Missing { .. }), "{err}");
    assert_eq!(fake.pid_of("vm1"), None);
    fake.clear_failures();
    let seen = Arc::new(Mutex::new(None));
    {
        let seen = seen.clone();
        fake.on_launch(move |spec, vm| *seen.lock().unwrap() = Some((spec.id.clone(), vm.pid)));
    }
    let vm = fake.launch(&spec("vm1", tmp.path())).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(("vm1".to_owned(), vm.pid)));
    let nic = NicSpec {
        tap: "tap0".into(),
        mac: "02:00:00:00:00:01".into(),
        netns: None,
    };
    fake.add_nic(&vm, 0, &nic).await.unwrap();
    fake.fail_add_nic(|index| HotplugError::NoSlot(format!("nic{index}")));
    let err = fake.add_nic(&vm, 1, &nic).await.unwrap_err();
    assert_eq!(err.to_string(), "no free hot-plug slot for nic1");
    assert!(fake.calls().contains(&FakeCall::AddNic {
        pid: vm.pid,
        index: 1,
        nic,
    }));
    fake.stop("vm1", &vm, Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn disks_take_slots_and_resize_follows_the_capabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    let vm = fake.launch(&spec("vm1", tmp.path())).await.unwrap();
    let disk = |id: &str| BlockSpec {
        id: id.to_owned(),
        path: "/img".into(),
        format: BlockFormat::Raw,
        read_only: true,
    };
    for id in ["a", "b", "c", "d"] {
        fake.add_block(&vm, &disk(id)).await.unwrap();
    }
    assert!(matches!(
        fake.add_block(&vm, &disk("e")).await,
        Err(HotplugError::NoSlot(_))
    ));
    assert!(matches!(
        fake.add_block(&vm, &disk("a")).await,
        Err(HotplugError::Backend { .. })
    ));
    fake.remove_block(&vm, "a", Duration::ZERO).await.unwrap();
    fake.add_block(&vm, &disk("e")).await.unwrap();
    let to = Resources {
        vcpus: 2,
        memory_mib: 256,
    };
    fake.resize(&vm, &to).await.unwrap();
    fake.set_capabilities(Capabilities::default());
    assert!(matches!(
        fake.resize(&vm, &to).await,
        Err(ResizeError::Unsupported(_))
    ));
    assert!(matches!(
        fake.add_block(&vm, &disk("f")).await,
        Err(HotplugError::Unsupported(_))
    ));
}

#[tokio::test]
async fn dropping_the_fake_kills_its_vms() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHypervisor::new();
    let vm = fake.launch(&spec("vm1", tmp.path())).await.unwrap();
    drop(fake);
    assert!(!running(vm.pid));
}
