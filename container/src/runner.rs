//! Creates and drives containers with youki's `libcontainer` (used in the guest).
//!
//! Every call blocks (libcontainer forks and waits); run them on blocking
//! threads. The caller is the reaper of the processes started here.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::Signal;

/// Standard streams handed to a new process; `None` is `/dev/null`.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard input.
    pub stdin: Option<OwnedFd>,
    /// Standard output.
    pub stdout: Option<OwnedFd>,
    /// Standard error.
    pub stderr: Option<OwnedFd>,
}

/// A container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The bundle cannot be written
    #[error("cannot write the bundle of container {0}: {1}")]
    Bundle(String, std::io::Error),
    /// libcontainer refused or failed
    #[error("container {0}: {1}")]
    Runtime(String, String),
    /// The container is not known to the runtime
    #[error("container {0} not found")]
    NotFound(String),
    /// The runtime's devices cannot be given to a privileged container
    #[error("cannot give container {0} the runtime's devices: {1}")]
    Devices(String, crate::devices::DevicesError),
}

/// Containers whose state lives under one root directory.
#[derive(Debug, Clone)]
pub struct Runner {
    state_root: PathBuf,
    bundles: PathBuf,
    /// Run each libcontainer build in a forked child (see [`Runner::forking`]).
    fork: bool,
}

/// libcontainer changes the process's working directory while it connects to
/// a container's notify socket (when it starts a container or an exec), and
/// the working directory is shared by every thread: two such calls at once
/// connect in each other's directory and fail. They run one at a time.
static CWD_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`CWD_USERS`] for one libcontainer call.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    CWD_USERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rt(id: &str, e: impl std::fmt::Display) -> RunError {
    RunError::Runtime(id.to_owned(), e.to_string())
}

impl Runner {
    /// Keeps runtime state under `state_root` and bundles under `bundles`.
    pub fn new(state_root: impl Into<PathBuf>, bundles: impl Into<PathBuf>) -> Self {
        Self {
            state_root: state_root.into(),
            bundles: bundles.into(),
            fork: false,
        }
    }

    /// Runs every libcontainer build (create, exec) in a child forked for
    /// it, for a multi-threaded caller. libcontainer clones with raw
    /// `clone3`, which runs none of the C library's fork handlers: a clone
    /// taken while another thread holds a lock of the allocator inherits
    /// it locked and hangs for good. A `fork()` gives a single-threaded
    /// child with the allocator reset, in which libcontainer's clones are
    /// safe; it also has a working directory of its own, so builds run at
    /// once rather than one at a time. The processes it starts outlive the
    /// child and are reparented to the caller's reaper (PID 1 in the guest).
    pub fn forking(mut self) -> Self {
        self.fork = true;
        self
    }

    /// Runs `build` (which returns a pid) in a forked child when the runner
    /// forks, else here under [`CWD_USERS`].
    fn isolated(
        &self,
        id: &str,
        build: impl FnOnce() -> Result<i32, String>,
    ) -> Result<i32, RunError> {
        if !self.fork {
            let _cwd = one_at_a_time();
            return build().map_err(|e| rt(id, e));
        }
        in_child(build).map_err(|e| rt(id, e))
    }

    fn builder(&self, id: &str, stdio: Stdio) -> Result<ContainerBuilder, RunError> {
        let mut b = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.state_root)
            .map_err(|e| rt(id, e))?;
        if let Some(fd) = stdio.stdin {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            b = b.with_stderr(fd);
        }
        Ok(b)
    }

    /// Creates container `id` from `spec` (created, not started); returns its init pid.
    ///
    /// A bind of the runtime's `/dev` on `/dev` (a privileged container) is
    /// made as device nodes in a tmpfs instead (see [`crate::devices`]).
    pub fn create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        stdio: Stdio,
        console_socket: Option<&Path>,
    ) -> Result<i32, RunError> {
        let bundle = self.bundles.join(id);
        std::fs::create_dir_all(&bundle).map_err(|e| RunError::Bundle(id.to_owned(), e))?;
        let mut spec = spec.clone();
        crate::devices::dev_bind_as_nodes(&mut spec, Path::new("/dev"))
            .map_err(|e| RunError::Devices(id.to_owned(), e))?;
        let sizes = crate::hugepages::available_sizes(
            Path::new("/sys/fs/cgroup"),
            Path::new("/sys/kernel/mm/hugepages"),
        );
        let dropped = crate::hugepages::keep_available(&mut spec, &sizes);
        if !dropped.is_empty() {
            tracing::debug!(container = id, ?dropped, "hugepage sizes this kernel lacks");
        }
        let json = serde_json::to_vec(&spec)
            .map_err(|e| RunError::Bundle(id.to_owned(), std::io::Error::other(e)))?;
        std::fs::write(bundle.join("config.json"), json)
            .map_err(|e| RunError::Bundle(id.to_owned(), e))?;
        let builder = self.builder(id, stdio)?;
        self.isolated(id, move || {
            let container = builder
                .with_console_socket(console_socket)
                .with_executor(ProcessExecutor { profile: None })
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| e.to_string())?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| "no init process after create".to_owned())
        })
    }

    fn load(&self, id: &str) -> Result<Container, RunError> {
        let dir = self.state_root.join(id);
        if !dir.exists() {
            return Err(RunError::NotFound(id.to_owned()));
        }
        Container::load(dir).map_err(|e| rt(id, e))
    }

    /// Starts the created container's process.
    pub fn start(&self, id: &str) -> Result<(), RunError> {
        let mut container = self.load(id)?;
        let _cwd = one_at_a_time();
        container.start().map_err(|e| rt(id, e))
    }

    /// Sends `signal` to the container's init (to all its processes with `all`).
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<(), RunError> {
        let signal =
            libcontainer::signal::Signal::try_from(signal as i32).map_err(|e| rt(id, e))?;
        self.load(id)?.kill(signal, all).map_err(|e| rt(id, e))
    }

    /// Deletes the container's runtime state and cgroup (killing what is left).
    pub fn delete(&self, id: &str) -> Result<(), RunError> {
        match self.load(id) {
            Ok(mut c) => c.delete(true).map_err(|e| rt(id, e))?,
            Err(RunError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let _ = std::fs::remove_dir_all(self.bundles.join(id));
        Ok(())
    }

    /// Starts `args` in the running container, as its process runs (user,
    /// groups, working directory, capabilities, seccomp); returns its pid.
    pub fn exec(
        &self,
        id: &str,
        args: Vec<String>,
        stdio: Stdio,
        console_socket: Option<&Path>,
    ) -> Result<i32, RunError> {
        if !self.state_root.join(id).exists() {
            return Err(RunError::NotFound(id.to_owned()));
        }
        let spec = oci_spec::runtime::Spec::load(self.bundles.join(id).join("config.json"))
            .map_err(|e| rt(id, format!("read its spec: {e}")))?;
        let process = spec.process().clone().unwrap_or_default();
        let user = process.user();
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let builder = self.builder(id, stdio)?;
        let (uid, gid) = (user.uid(), user.gid());
        let gids = user.additional_gids().clone().unwrap_or_default();
        let userns = self.user_namespace_of(id, &spec)?;
        self.isolated(id, move || {
            if let Some(userns) = &userns {
                join_user_namespace(userns)?;
            }
            builder
                .with_console_socket(console_socket)
                .with_executor(ProcessExecutor { profile: seccomp })
                .as_tenant()
                .with_container_args(args)
                .with_user(Some(uid))
                .with_group(Some(gid))
                .with_additional_gids(gids)
                .with_cwd(Some(process.cwd().clone()))
                .with_detach(true)
                .build()
                .map(|pid| pid.as_raw())
                .map_err(|e| e.to_string())
        })
    }

    /// Starts `args` in the running container on a terminal: the process is
    /// the container's own (env, user, capabilities) with `args`, and the
    /// terminal's master is sent to `console_socket`; returns its pid.
    pub fn exec_terminal(
        &self,
        id: &str,
        args: Vec<String>,
        console_socket: &Path,
    ) -> Result<i32, RunError> {
        if !self.state_root.join(id).exists() {
            return Err(RunError::NotFound(id.to_owned()));
        }
        let bundle = self.bundles.join(id);
        let spec =
            oci_spec::runtime::Spec::load(bundle.join("config.json")).map_err(|e| rt(id, e))?;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args));
        process.set_terminal(Some(true));
        process.set_console_size(None);
        let path = bundle.join(format!(
            "exec-{}.json",
            console_socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let json = serde_json::to_vec(&process)
            .map_err(|e| RunError::Bundle(id.to_owned(), std::io::Error::other(e)))?;
        std::fs::write(&path, json).map_err(|e| RunError::Bundle(id.to_owned(), e))?;
        let userns = self.user_namespace_of(id, &spec)?;
        let built = self.builder(id, Stdio::default()).and_then(|b| {
            self.isolated(id, || {
                if let Some(userns) = &userns {
                    join_user_namespace(userns)?;
                }
                b.with_console_socket(Some(console_socket))
                    .with_executor(ProcessExecutor { profile: seccomp })
                    .as_tenant()
                    .with_process(Some(&path))
                    .with_detach(true)
                    .build()
                    .map(|pid| pid.as_raw())
                    .map_err(|e| e.to_string())
            })
        });
        let _ = std::fs::remove_file(&path);
        built
    }
}

impl Runner {
    /// The user namespace file container `id` joins, from its `spec`; an
    /// exec joins it before libcontainer runs (libcontainer's exec enters
    /// every namespace of the container but its user namespace), which
    /// needs a single-threaded caller: a forking runner.
    fn user_namespace_of(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<Option<PathBuf>, RunError> {
        let path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|list| {
                list.iter()
                    .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
            })
            .and_then(|n| n.path().clone());
        if path.is_some() && !self.fork {
            return Err(rt(
                id,
                "an exec into a container with a user namespace needs a forking runner",
            ));
        }
        Ok(path)
    }
}

/// Moves this (single-threaded) process into the user namespace at `path`.
/// As its owner's uid it has every capability there; libcontainer then
/// joins the container's other namespaces, which that namespace owns.
fn join_user_namespace(path: &Path) -> Result<(), String> {
    let ns = std::fs::File::open(path)
        .map_err(|e| format!("open the user namespace {}: {e}", path.display()))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("join the user namespace {}: {e}", path.display()))
}

/// Runs `build` in a child of a `fork()` and returns what it returned: the
/// child writes one line, `ok <pid>` or `err <message>`, to a close-on-exec
/// pipe and exits. The parent reads that line, not to the end of the pipe:
/// a created container's init holds its copy until it runs.
fn in_child(build: impl FnOnce() -> Result<i32, String>) -> Result<i32, String> {
    use std::io::{BufRead, Write};
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("pipe for the build: {e}"))?;
    // SAFETY: the child runs only `build` (libcontainer, whose own clones
    // are safe in a single-threaded process) with logging off, writes its
    // line and leaves with `_exit`, running no destructors or atexit
    // handlers of the parent's state; glibc's fork resets the allocator's
    // locks in the child.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read);
            let line = {
                let _quiet =
                    tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)) {
                    Ok(Ok(pid)) => format!("ok {pid}\n"),
                    Ok(Err(e)) => format!("err {}\n", e.replace('\n', " ")),
                    Err(_) => "err the build panicked\n".to_owned(),
                }
            };
            let mut out = std::fs::File::from(write);
            let _ = out.write_all(line.as_bytes());
            // SAFETY: ends the forked child without unwinding into the
            // parent's frames.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(write);
            // The child is reaped by the caller's reaper (PID 1 in the guest).
            let mut line = String::new();
            std::io::BufReader::new(std::fs::File::from(read))
                .read_line(&mut line)
                .map_err(|e| format!("read the build's answer: {e}"))?;
            match line.trim_end().split_once(' ') {
                Some(("ok", pid)) => pid
                    .parse()
                    .map_err(|_| format!("the build answered {line:?}")),
                Some(("err", message)) => Err(message.to_owned()),
                _ => Err("the build's process ended without an answer".to_owned()),
            }
        }
        Err(e) => Err(format!("fork for the build: {e}")),
    }
}

/// Starts a container's process with default signal dispositions and an
/// empty signal mask, and an exec'd process under the container's seccomp
/// profile.
///
/// libcontainer passes on the caller's ignored signals and mask, and the
/// Rust runtime ignores SIGPIPE: without the reset, every container would
/// start with SIGPIPE ignored.
///
/// libcontainer's exec drops the container's seccomp profile, so the profile
/// is loaded here, in the new process right before it executes. Its
/// capabilities are already dropped at this point, so the kernel requires
/// `no_new_privs` for the filter: exec'd processes of a container with a
/// profile always run with `no_new_privs`.
#[derive(Debug, Clone)]
struct ProcessExecutor {
    profile: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// The kernel's `struct sigaction` on x86_64 (the C library's differs, and
/// its wrapper refuses the signals it reserves for itself).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Sets every signal to its default action and unblocks them all.
fn reset_signals() -> Result<(), ExecutorError> {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a valid kernel sigaction of SIG_DFL and
        // no old-action pointer; the set size is the kernel's (8 bytes).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
    // SAFETY: an empty set, initialised by sigemptyset before use.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid sigset_t owned here; sigprocmask only reads it.
    let ok = unsafe {
        libc::sigemptyset(&mut empty) == 0
            && libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) == 0
    };
    if !ok {
        return Err(ExecutorError::Other(format!(
            "reset the signal mask: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

impl Executor for ProcessExecutor {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        reset_signals()?;
        if let Some(profile) = &self.profile {
            // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers and only
            // changes this process's flags.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(ExecutorError::Other(format!(
                    "set no_new_privs: {}",
                    std::io::Error::last_os_error()
                )));
            }
            libcontainer::seccomp::initialize_seccomp(profile)
                .map_err(|e| ExecutorError::Other(format!("load the seccomp profile: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_build_answers_with_its_pid_or_its_error() {
        // The build runs in another process: what it changes here is not seen.
        let here = std::process::id();
        let pid = in_child(|| Ok(i32::try_from(std::process::id()).unwrap())).unwrap();
        assert_ne!(u32::try_from(pid).unwrap(), here);
        assert_eq!(in_child(|| Err("no\nroom".into())), Err("no room".into()));
        assert_eq!(
            in_child(|| panic!("boom")),
            Err("the build panicked".into())
        );
        // A child that dies without a word is an error, not a hang.
        // SAFETY: ends the forked child at once.
        let silent = in_child(|| unsafe { libc::_exit(3) });
        assert_eq!(
            silent,
            Err("the build's process ended without an answer".into())
        );
    }
}
