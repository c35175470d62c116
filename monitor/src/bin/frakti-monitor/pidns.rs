//! `pidns`: a pod's PID namespace without a pause image.
//!
//! The helper unshares a new PID namespace and forks: the child is its PID 1,
//! a tiny init that reaps orphans until SIGTERM. The parent bind-mounts the
//! child's namespace onto the file containers join (`linux.namespaces[].path`),
//! prints the child's host pid and exits.
//!
//! With `--userns` the pod gets a user namespace of its own first, with the
//! given mappings, and network, UTS, IPC and PID namespaces that it owns
//! (a container in that user namespace may mount `/proc`, `sysfs` and
//! `mqueue` only for namespaces it owns). The init holds them all; each is
//! bind-mounted on its file.

use std::path::Path;

use monitor::args::{PidnsArgs, UsernsArgs};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::unistd::ForkResult;

use crate::sys;

/// Makes the namespace; prints `{"pid": N}` and returns 0, or prints the
/// error and returns 1, leaving nothing behind.
pub fn pidns(args: &PidnsArgs) -> i32 {
    let made = match &args.userns {
        None => make(&args.file),
        Some(userns) => make_with_userns(&args.file, userns),
    };
    match made {
        Ok(pid) => {
            println!("{}", serde_json::json!({ "pid": pid }));
            0
        }
        Err(e) => {
            eprintln!("frakti-monitor pidns: {e}");
            1
        }
    }
}

fn make(file: &Path) -> Result<i32, String> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let existed = file.exists();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| format!("create {}: {e}", file.display()))?;
    let undo_file = || {
        if !existed {
            let _ = std::fs::remove_file(file);
        }
    };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        undo_file();
        return Err(format!("unshare the PID namespace: {e}"));
    }
    let child = match sys::fork() {
        Ok(ForkResult::Child) => init(),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            undo_file();
            return Err(format!("fork: {e}"));
        }
    };
    let source = format!("/proc/{child}/ns/pid");
    let mounted = nix::mount::mount(
        Some(source.as_str()),
        file,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = mounted {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(child, None);
        undo_file();
        return Err(format!("bind-mount {source} on {}: {e}", file.display()));
    }
    Ok(child.as_raw())
}

/// PID 1 of the namespace: reaps whatever is orphaned to it, exits on SIGTERM.
///
/// The pod's containers see it as their PID 1, so it gives them nothing to
/// reach through it: it is not dumpable (`/proc/1/root`, `/proc/1/fd` and
/// ptrace need a capability in the node's user namespace), and its root is
/// an empty, read-only tmpfs in a mount namespace of its own, not the
/// node's file system.
fn init() -> ! {
    let _ = nix::unistd::setsid();
    let _ = sys::stdio_to_null();
    if jail().is_err() {
        std::process::exit(1);
    }
    // A namespace's init gets no signal from outside for which it has no
    // handler: install one for SIGTERM (and SIGCHLD), then take both
    // synchronously.
    let mut wanted = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGCHLD] {
        if sys::set_handler(s, SigHandler::Handler(sys::note_signal)).is_err() {
            std::process::exit(1);
        }
        wanted.add(s);
    }
    let _ = wanted.thread_block();
    loop {
        while sys::reap_one().is_some() {}
        match wanted.wait() {
            Ok(Signal::SIGTERM) => std::process::exit(0),
            Ok(_) => {}
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Makes this process non-dumpable and moves its root into an empty
/// read-only tmpfs of a private mount namespace.
fn jail() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let empty = "/tmp";
    nix::mount::mount(
        Some("tmpfs"),
        empty,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,mode=0555"),
    )?;
    nix::unistd::chroot(empty)?;
    nix::unistd::chdir("/")
}

/// Creates the namespace files of a pod with a user namespace, runs the
/// child that makes the namespaces, and binds them; nothing is left behind
/// on failure.
fn make_with_userns(pid_file: &Path, u: &UsernsArgs) -> Result<i32, String> {
    let (uid_map, gid_map) = (
        UsernsArgs::map_text(&u.uid_map)?,
        UsernsArgs::map_text(&u.gid_map)?,
    );
    let files = [
        ("user", u.dir.join("user")),
        ("uts", u.dir.join("uts")),
        ("ipc", u.dir.join("ipc")),
        ("net", u.net.clone()),
        ("pid", pid_file.to_path_buf()),
    ];
    let mut made = Vec::new();
    let undo = |made: &[&Path]| {
        for file in made {
            let _ = nix::mount::umount2(*file, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(file);
        }
    };
    for (_, file) in &files {
        if file.exists() {
            undo(&made);
            return Err(format!("{} exists already", file.display()));
        }
        let created = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(file).map(drop));
        if let Err(e) = created {
            undo(&made);
            return Err(format!("create {}: {e}", file.display()));
        }
        made.push(file.as_path());
    }
    let init = match spawn_in_userns(&uid_map, &gid_map, u.hostname.as_deref()) {
        Ok(pid) => pid,
        Err(e) => {
            undo(&made);
            return Err(e);
        }
    };
    for (kind, file) in &files {
        let source = format!("/proc/{init}/ns/{kind}");
        let bound = nix::mount::mount(
            Some(source.as_str()),
            file.as_path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(e) = bound {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            undo(&made);
            return Err(format!("bind-mount {source} on {}: {e}", file.display()));
        }
    }
    Ok(init.as_raw())
}

/// Forks a child that enters a new user namespace, waits for its mappings
/// (written here), makes the namespaces it will own, sets the hostname and
/// forks the PID namespace's init; returns the init's pid.
fn spawn_in_userns(
    uid_map: &str,
    gid_map: &str,
    hostname: Option<&str>,
) -> Result<nix::unistd::Pid, String> {
    use std::io::{Read, Write};
    let pipe = || nix::unistd::pipe().map_err(|e| format!("pipe: {e}"));
    let ((ready_r, ready_w), (go_r, go_w), (pid_r, pid_w)) = (pipe()?, pipe()?, pipe()?);
    let child = match sys::fork() {
        Ok(ForkResult::Child) => {
            drop((ready_r, go_w, pid_r));
            let code = match in_child(ready_w, go_r, hostname) {
                Ok(init) => {
                    // A line: the init holds a copy of this pipe, so the
                    // parent reads no end of file.
                    let _ = std::fs::File::from(pid_w).write_all(format!("{init}\n").as_bytes());
                    0
                }
                Err(e) => {
                    eprintln!("frakti-monitor pidns: {e}");
                    1
                }
            };
            // SAFETY: leaves the forked child without running the parent's
            // exit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(format!("fork: {e}")),
    };
    drop((ready_w, go_r, pid_w));
    let answer = (|| {
        let mut byte = [0u8; 1];
        std::fs::File::from(ready_r)
            .read_exact(&mut byte)
            .map_err(|_| "the child did not make its user namespace".to_owned())?;
        for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
            std::fs::write(format!("/proc/{child}/{file}"), map)
                .map_err(|e| format!("write {file} {map:?}: {e}"))?;
        }
        std::fs::File::from(go_w)
            .write_all(b"1")
            .map_err(|e| format!("tell the child: {e}"))?;
        let mut text = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(std::fs::File::from(pid_r)),
            &mut text,
        )
        .map_err(|e| format!("read the init's pid: {e}"))?;
        text.trim()
            .parse::<i32>()
            .map(nix::unistd::Pid::from_raw)
            .map_err(|_| "the child did not make the pod's namespaces".to_owned())
    })();
    let _ = nix::sys::wait::waitpid(child, None);
    answer
}

/// The child's part: a new user namespace, then (once mapped) the others.
fn in_child(
    ready: std::os::fd::OwnedFd,
    go: std::os::fd::OwnedFd,
    hostname: Option<&str>,
) -> Result<i32, String> {
    use std::io::{Read, Write};
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("unshare the user namespace: {e}"))?;
    std::fs::File::from(ready)
        .write_all(b"1")
        .map_err(|e| format!("tell the parent: {e}"))?;
    let mut byte = [0u8; 1];
    std::fs::File::from(go)
        .read_exact(&mut byte)
        .map_err(|_| "the parent did not map the user namespace".to_owned())?;
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(|e| format!("unshare the pod's namespaces: {e}"))?;
    if let Some(name) = hostname {
        nix::unistd::sethostname(name).map_err(|e| format!("set hostname {name:?}: {e}"))?;
    }
    // The init is the pod's root (the mapping's first host ID), not the
    // node's: with no groups of the node's either.
    nix::unistd::setgroups(&[]).map_err(|e| format!("drop the node's groups: {e}"))?;
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| format!("become the pod's root group: {e}"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| format!("become the pod's root: {e}"))?;
    match sys::fork() {
        Ok(ForkResult::Child) => init(),
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Err(e) => Err(format!("fork the init: {e}")),
    }
}
