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
        }
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
        let _cwd = one_at_a_time();
        let container = self
            .builder(id, stdio)?
            .with_console_socket(console_socket)
            .with_executor(ProcessExecutor { profile: None })
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| rt(id, e))?;
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| rt(id, "no init process after create"))
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
        let _cwd = one_at_a_time();
        let pid = self
            .builder(id, stdio)?
            .with_console_socket(console_socket)
            .with_executor(ProcessExecutor { profile: seccomp })
            .as_tenant()
            .with_container_args(args)
            .with_user(Some(user.uid()))
            .with_group(Some(user.gid()))
            .with_additional_gids(user.additional_gids().clone().unwrap_or_default())
            .with_cwd(Some(process.cwd().clone()))
            .with_detach(true)
            .build()
            .map_err(|e| rt(id, e))?;
        Ok(pid.as_raw())
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
        let cwd = one_at_a_time();
        let built = self.builder(id, Stdio::default()).map(|b| {
            b.with_console_socket(Some(console_socket))
                .with_executor(ProcessExecutor { profile: seccomp })
                .as_tenant()
                .with_process(Some(&path))
                .with_detach(true)
                .build()
        });
        drop(cwd);
        let _ = std::fs::remove_file(&path);
        let pid = built?.map_err(|e| rt(id, e))?;
        Ok(pid.as_raw())
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
