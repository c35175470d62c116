//! The QEMU process: starting it (fresh files in the VM directory, network
//! namespace, own process group), re-finding and adopting it after a daemon
//! restart, and stopping it.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{self, Process};
use crate::qmp::QmpClient;
use crate::{AdoptError, LaunchError, StopError, VmEndpoints, VmSpec, VmUser};

use super::handoff::Handoff;
use super::uids;
use super::{
    AGENT_SOCKET, CONSOLE_LOG, PIDFILE, QEMU_LOG, QMP_SOCKET, Qemu, endpoints_in, vm_name,
};

/// The name errors give the VMM.
const VMM: &str = "QEMU";

/// The QEMU binary is an executable file and the firmware is there.
pub(super) fn check_host(qemu: &Qemu) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let binary = &qemu.config.binary;
    let executable =
        fs::metadata(binary).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return Err(LaunchError::Missing {
            what: "QEMU binary",
            path: binary.clone(),
        });
    }
    if !qemu.config.firmware.exists() {
        return Err(LaunchError::Missing {
            what: "firmware",
            path: qemu.config.firmware.clone(),
        });
    }
    if qemu.sandbox_missing {
        return Err(LaunchError::NoSandbox {
            binary: binary.clone(),
        });
    }
    Ok(())
}

/// Starts QEMU for `spec`, as the configured user, with its files handed
/// over open; returns once it runs.
pub(super) async fn launch(qemu: &Qemu, spec: &VmSpec) -> Result<VmEndpoints, LaunchError> {
    check_host(qemu)?;
    for (what, path) in [
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
    let _ = fs::remove_file(dir.join(PIDFILE));
    let log_path = dir.join(QEMU_LOG);
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LaunchError::Dir { path, source }
    };
    let log = fs::File::create(&log_path).map_err(dir_err(&log_path))?;
    let log2 = log.try_clone().map_err(dir_err(&log_path))?;
    let (qmp, agent) = (dir.join(QMP_SOCKET), dir.join(AGENT_SOCKET));
    let netns = match &spec.netns {
        Some(path) => Some(fs::File::open(path).map_err(dir_err(path))?),
        None => None,
    };
    let child = {
        // Choosing a uid and spawning under it is one step (no await inside).
        let _choosing = qemu
            .config
            .user
            .as_ref()
            .and_then(|u| u.uid_range)
            .map(|_| uids::lock());
        let user = runs_as(qemu.config.user.as_ref(), &spec.id)?;
        let handoff = Handoff::open(spec, [&qmp, &agent, &dir.join(CONSOLE_LOG)], user.as_ref())?;
        let fds = handoff.fds();
        let args = qemu.args(spec, &fds);
        tracing::debug!(
            binary = %qemu.config.binary.display(),
            ?args,
            uid = ?user.as_ref().map(|u| u.uid),
            "starting QEMU"
        );
        let mut command = Command::new(&qemu.config.binary);
        let ns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        let ids = user.map(|u| (u.uid, u.gid, u.groups));
        let inherit = fds.all();
        // SAFETY: between fork and exec the closure only makes async-signal-safe
        // system calls (setns, setgroups, setgid, setuid, fcntl) on values it
        // owns; the descriptors stay open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || enter(ns_fd, ids.as_ref(), &inherit));
        }
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C to the daemon must not reach the VM.
            .process_group(0)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                binary: qemu.config.binary.clone(),
                source,
            })?
    };
    drop(netns);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // The child is watched through its pidfd from here on and reaped by the watcher.
    drop(child);
    let proc = Process::open(pid).map_err(|source| LaunchError::Spawn {
        binary: qemu.config.binary.clone(),
        source,
    })?;
    let pidfile = dir.join(PIDFILE);
    fs::write(&pidfile, format!("{pid}\n")).map_err(dir_err(&pidfile))?;
    // Its sockets listen already, so callers may connect at once: no wait
    // for QEMU's monitor here (the pod's network is set up meanwhile). A
    // QEMU that exits during start-up is reported by whoever waits for the
    // guest, with its log.
    if !proc.is_running() {
        process::reap(pid);
        return Err(LaunchError::Exited {
            vmm: VMM,
            log_tail: process::last_line(&log_path).unwrap_or_default(),
        });
    }
    Ok(endpoints_in(dir, pid))
}

/// Who the VMM of `id` runs as: `user` itself, or with a uid of its range
/// that no process holds (the caller holds [`uids::lock`]).
fn runs_as(user: Option<&VmUser>, id: &str) -> Result<Option<VmUser>, LaunchError> {
    let Some(user) = user else { return Ok(None) };
    let Some((first, count)) = user.uid_range else {
        return Ok(Some(user.clone()));
    };
    let uid = uids::pick(first, count, id, &uids::in_use()).ok_or_else(|| LaunchError::NoUid {
        user: user.name.clone(),
        first,
        count: count.saturating_sub(1),
    })?;
    Ok(Some(VmUser {
        uid,
        ..user.clone()
    }))
}

/// In the forked child before exec: enters the network namespace `netns`,
/// becomes `user` (uid, gid, groups), and keeps `inherit` open across exec.
fn enter(
    netns: Option<RawFd>,
    user: Option<&(u32, u32, Vec<u32>)>,
    inherit: &[RawFd],
) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on integers, and on the caller's `groups`
    // slice, valid for its length.
    unsafe {
        if let Some(fd) = netns {
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
        }
        if let Some((uid, gid, groups)) = user {
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(*gid))?;
            check(libc::setuid(*uid))?;
        }
        for fd in inherit {
            check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
        }
    }
    Ok(())
}

/// Re-finds the VM `id` from the pidfile in `dir`.
pub(super) fn find(id: &str, dir: &Path) -> Result<VmEndpoints, AdoptError> {
    let pidfile = dir.join(PIDFILE);
    let pid = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .ok_or(AdoptError::NoPidfile(pidfile))?;
    adopt(id, dir, pid)
}

/// Attaches to the running QEMU `pid` if it is the VM `id`.
pub(super) fn adopt(id: &str, dir: &Path, pid: i32) -> Result<VmEndpoints, AdoptError> {
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

/// Asks the VM `id` to quit over QMP and kills it if it has not exited after `grace`.
pub(super) async fn stop(id: &str, vm: &VmEndpoints, grace: Duration) -> Result<(), StopError> {
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
