//! Guest preparation done by PID 1: console, mounts, kernel modules, reaping.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Directory in the initramfs holding the kernel modules and their load order.
const MODULE_DIR: &str = "/lib/modules";

/// Where the virtio-fs share of the pod is mounted.
pub const SHARED_DIR: &str = "/run/frakti/shared";
/// The pod's `/dev/shm`, shared by its containers.
pub const POD_SHM_DIR: &str = "/run/frakti/sandbox/shm";
/// Makes `/` a real mount instead of the initramfs: `pivot_root(2)` refuses to
/// leave the initramfs, and containers need it. `/` is bind-mounted onto a
/// directory, which is then moved over `/` and entered with chroot.
fn leave_initramfs() {
    let new_root = "/.root";
    if fs::create_dir_all(new_root).is_err() {
        return;
    }
    let bound = mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    let moved = bound
        .and_then(|()| nix::unistd::chdir(new_root))
        .and_then(|()| mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>));
    let entered = moved
        .and_then(|()| nix::unistd::chroot("."))
        .and_then(|()| nix::unistd::chdir("/"));
    if let Err(e) = entered {
        eprintln!("frakti-agent: cannot leave the initramfs: {e}");
    }
}

/// Sets the wall clock to the host's (`0` leaves it).
pub fn set_clock(clock_ns: i64) {
    if clock_ns <= 0 {
        return;
    }
    let ts = nix::sys::time::TimeSpec::new(clock_ns / 1_000_000_000, clock_ns % 1_000_000_000);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        tracing::warn!("cannot set the clock: {e}");
    }
}

/// Mounts what containers need: cgroup v2 with its controllers, the pod's
/// `/dev/shm`, and the virtio-fs share `share_tag` (if any) at [`SHARED_DIR`].
pub fn sandbox_mounts(share_tag: &str) -> Result<(), agent_api::AgentError> {
    use agent_api::AgentError;
    use agent_api::messages::AgentErrorKind;
    let fail = |what: &str, e: nix::errno::Errno| {
        AgentError::new(AgentErrorKind::Internal, format!("{what}: {e}"))
    };
    let cgroup = Path::new("/sys/fs/cgroup");
    if !cgroup.join("cgroup.controllers").exists() {
        mount(
            Some("cgroup2"),
            cgroup,
            Some("cgroup2"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| fail("mount cgroup2", e))?;
        let controllers = fs::read_to_string(cgroup.join("cgroup.controllers")).unwrap_or_default();
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        let _ = fs::write(cgroup.join("cgroup.subtree_control"), enable.join(" "));
    }
    let shm = Path::new(POD_SHM_DIR);
    if !is_mount_point(shm) {
        let _ = fs::create_dir_all(shm);
        mount(
            Some("shm"),
            shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| fail("mount the pod's /dev/shm", e))?;
    }
    if !share_tag.is_empty() && !is_mount_point(Path::new(SHARED_DIR)) {
        load_now(&["fuse.ko", "virtiofs.ko"]);
        let _ = fs::create_dir_all(SHARED_DIR);
        // Not nosuid: the containers' root filesystems are in the share, and
        // a setuid binary of an image must raise privileges in its container
        // as on any runtime (unless no_new_privs). The host's view of the
        // share is nosuid, so such a file is inert on the host.
        mount(
            Some(share_tag),
            SHARED_DIR,
            Some("virtiofs"),
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| fail(&format!("mount virtio-fs {share_tag}"), e))?;
    }
    Ok(())
}

pub(crate) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// Loads every module of the initramfs now (those loaded already are
/// skipped by the kernel).
pub fn load_boot_modules() {
    let dir = Path::new(MODULE_DIR);
    let order = fs::read_to_string(dir.join("load-order")).unwrap_or_default();
    let names: Vec<String> = order.split_whitespace().map(str::to_owned).collect();
    load_modules(dir, &names, &LoadedModules::default());
}

/// Loads `names` (files in the module directory) now, if not loaded yet.
fn load_now(names: &[&str]) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    load_modules(Path::new(MODULE_DIR), &names, &LoadedModules::default());
}

/// Mounts `/dev` and `/proc` and makes sure stdio reaches the console.
pub fn early() {
    leave_initramfs();
    let _ = fs::create_dir_all("/dev");
    let _ = mount(
        Some("devtmpfs"),
        "/dev",
        Some("devtmpfs"),
        MsFlags::MS_NOSUID,
        None::<&str>,
    );
    let _ = fs::create_dir_all("/proc");
    let _ = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    // The kernel opens /dev/console for init only if the initramfs has it.
    // SAFETY: fcntl(F_GETFD) on a plain integer fd only queries its flags.
    let stdout_ok = unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0;
    if !stdout_ok
        && let Ok(console) = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
    {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors, which nothing else owns yet.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Logs to stderr (the console); `frakti.log=<level>` on the kernel command line sets the level.
pub fn logging() {
    let level = fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("frakti.log=").map(str::to_owned))
        })
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .init();
}

/// Kernel modules loaded so far, shared with the request handlers.
pub type LoadedModules = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The module that brings up the agent's channel; it and everything before it
/// in the load order are loaded before the agent serves, the rest after.
const CHANNEL_MODULE: &str = "virtio_console.ko";

/// Set once the host has set the pod up; releases the deferred modules.
static SANDBOX_READY: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// The longest the deferred modules wait for the pod's set-up.
const DEFERRED_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Tells the module loader that the pod's start is done.
pub fn sandbox_ready() {
    let (lock, ready) = &SANDBOX_READY;
    *lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    ready.notify_all();
}

/// The network driver and its dependencies, in load order.
const NET_MODULES: [&str; 3] = ["failover.ko", "net_failover.ko", "virtio_net.ko"];

/// Mounts the basic filesystems and loads the channel's kernel modules; the
/// remaining modules load on a background thread.
pub fn guest() -> LoadedModules {
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 5] = [
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            tracing::warn!("mount {fstype} on {target}: {e}");
        }
    }
    crate::modprobe::install();
    let dir = Path::new(MODULE_DIR);
    let loaded = LoadedModules::default();
    let Ok(order) = fs::read_to_string(dir.join("load-order")) else {
        tracing::warn!("no {}/load-order: no modules loaded", dir.display());
        return loaded;
    };
    let names: Vec<String> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let split = names
        .iter()
        .position(|n| n == CHANNEL_MODULE)
        .map_or(names.len(), |i| i + 1);
    let (now, later) = names.split_at(split);
    load_modules(dir, now, &loaded);
    // The network driver is the next thing the host waits for: load it first.
    // The rest (block, filesystems, vsock, memory) waits until the host has
    // configured the pod's network, so it does not compete with the pod's
    // start for the vCPU; at most DEFERRED_WAIT.
    let (net, rest): (Vec<String>, Vec<String>) = later
        .iter()
        .cloned()
        .partition(|name| NET_MODULES.contains(&name.as_str()));
    let shared = loaded.clone();
    let spawned = std::thread::Builder::new()
        .name("modules".into())
        .spawn(move || {
            load_modules(Path::new(MODULE_DIR), &net, &shared);
            let (lock, ready) = &SANDBOX_READY;
            let guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = ready.wait_timeout_while(guard, DEFERRED_WAIT, |done| !*done);
            load_modules(Path::new(MODULE_DIR), &rest, &shared);
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot load the remaining modules: {e}");
    }
    loaded
}

fn load_modules(dir: &Path, names: &[String], loaded: &LoadedModules) {
    for name in names {
        let file = match fs::File::open(dir.join(name)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("module {name}: {e}");
                continue;
            }
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {
                loaded
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(name.clone());
            }
            Err(e) => tracing::warn!("module {name}: {e}"),
        }
    }
    tracing::debug!(count = names.len(), "modules loaded");
}

/// Reports a fatal error and stops the guest (PID 1 must not just exit).
pub fn fatal(message: &str) -> ! {
    eprintln!("frakti-agent: fatal: {message}");
    if std::process::id() == 1 {
        power_off();
    }
    std::process::exit(1)
}

/// Flushes filesystems and powers the VM off.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(0)
}
