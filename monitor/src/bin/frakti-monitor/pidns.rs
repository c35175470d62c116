//! `pidns`: a pod's PID namespace without a pause image.
//!
//! The helper unshares a new PID namespace and forks: the child is its PID 1,
//! a tiny init that reaps orphans until SIGTERM. The parent bind-mounts the
//! child's namespace onto the file containers join (`linux.namespaces[].path`),
//! prints the child's host pid and exits.

use std::path::Path;

use monitor::args::PidnsArgs;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::unistd::ForkResult;

use crate::sys;

/// Makes the namespace; prints `{"pid": N}` and returns 0, or prints the
/// error and returns 1, leaving nothing behind.
pub fn pidns(args: &PidnsArgs) -> i32 {
    match make(&args.file) {
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
fn init() -> ! {
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    let _ = sys::stdio_to_null();
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
