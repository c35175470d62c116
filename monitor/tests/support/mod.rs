//! Fixtures for the monitor's integration tests: a busybox rootfs, OCI
//! specs, running `frakti-monitor` and talking to it.
//!
//! Everything is cleaned up by what the fixture started: its containers (by
//! id, through `frakti-monitor delete`), their cgroups (by their own paths),
//! the monitors (by pid) and its tempdir.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use monitor::args::{DeleteArgs, ExecArgs, PidnsArgs, RunArgs};
use monitor::client::{self, Attached, ClientError};
use monitor::protocol::{Exit, Frame, FrameDecoder, FrameKind, Reply, Request, encode_frame};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_frakti-monitor");

/// Applets linked in the rootfs.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ps", "readlink", "ls", "touch", "true", "test", "[", "yes",
];

/// Makes this test process the subreaper of what it starts, so the
/// monitors (which detach from their starter) are reaped here, by pid.
pub fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
}

/// One test's directory, rootfs and containers.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub bundles: PathBuf,
    pub rootfs: PathBuf,
    started: RefCell<Vec<(String, Option<i32>)>>,
}

/// How a container is run.
#[derive(Default, Clone, Copy)]
pub struct Opts {
    pub log: bool,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

/// A container whose monitor reported its pid.
pub struct Running {
    pub id: String,
    pub pid: i32,
    pub monitor: i32,
    pub socket: PathBuf,
    pub exit_file: PathBuf,
    pub log: Option<PathBuf>,
}

impl Fixture {
    pub fn new() -> Self {
        become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("frakti-monitor-test-")
            .tempdir()
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        Self {
            root: dir.path().join("state"),
            bundles: dir.path().join("bundles"),
            rootfs,
            dir,
            started: RefCell::new(Vec::new()),
        }
    }

    /// The container's own cgroup path.
    pub fn cgroup(&self, id: &str) -> String {
        format!("/frakti-monitor-test-{}-{id}", std::process::id())
    }

    /// Writes `<bundles>/<id>/config.json`: `args` in new mount, pid, ipc
    /// and uts namespaces, or in the PID namespace bind-mounted at `pidns`.
    pub fn write_spec(&self, id: &str, args: &[&str], tty: bool, pidns: Option<&Path>) {
        self.write_spec_with(id, args, tty, pidns, |_| {});
    }

    /// [`Fixture::write_spec`], with `edit` applied to the spec's JSON.
    pub fn write_spec_with(
        &self,
        id: &str,
        args: &[&str],
        tty: bool,
        pidns: Option<&Path>,
        edit: impl FnOnce(&mut serde_json::Value),
    ) {
        let pid_ns = match pidns {
            Some(p) => serde_json::json!({"type": "pid", "path": p}),
            None => serde_json::json!({"type": "pid"}),
        };
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": tty,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
            },
            "root": {"path": self.rootfs, "readonly": false},
            "hostname": "monitor-test",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            ],
            "linux": {
                "namespaces": [pid_ns, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                "cgroupsPath": self.cgroup(id),
            },
        });
        edit(&mut spec);
        let bundle = self.bundles.join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    }

    pub fn run_args(&self, id: &str, opts: Opts) -> RunArgs {
        RunArgs {
            id: id.into(),
            root: self.root.clone(),
            bundles: self.bundles.clone(),
            socket: self.dir.path().join(format!("{id}.sock")),
            exit_file: self.dir.path().join(format!("{id}.exit")),
            log: opts.log.then(|| self.dir.path().join(format!("{id}.log"))),
            tty: opts.tty,
            stdin: opts.stdin,
            stdin_once: opts.stdin_once,
        }
    }

    /// Runs `frakti-monitor run`; the monitor's verdict.
    pub fn run(&self, id: &str, opts: Opts) -> Result<Running, String> {
        let args = self.run_args(id, opts);
        self.started.borrow_mut().push((id.to_owned(), None));
        let out = Command::new(BIN).args(args.to_args()).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pid = json["pid"].as_i64().unwrap() as i32;
        let monitor = parent_of(pid);
        self.started.borrow_mut().last_mut().unwrap().1 = Some(monitor);
        Ok(Running {
            id: id.into(),
            pid,
            monitor,
            socket: args.socket,
            exit_file: args.exit_file,
            log: args.log,
        })
    }

    /// Runs `frakti-monitor exec` with `stdout` captured; its report and output.
    pub fn exec(&self, id: &str, args: &[&str], report: &Path) -> (std::process::Output, String) {
        let exec = ExecArgs {
            id: id.into(),
            root: self.root.clone(),
            bundles: self.bundles.clone(),
            report: report.to_owned(),
            console_socket: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        let out = Command::new(BIN).args(exec.to_args()).output().unwrap();
        let report = std::fs::read_to_string(report).unwrap_or_default();
        (out, report)
    }

    pub fn exec_command(&self, id: &str, args: &[&str], report: &Path) -> Command {
        let exec = ExecArgs {
            id: id.into(),
            root: self.root.clone(),
            bundles: self.bundles.clone(),
            report: report.to_owned(),
            console_socket: None,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        let mut c = Command::new(BIN);
        c.args(exec.to_args());
        c
    }

    /// Runs `frakti-monitor delete`; whether it succeeded.
    pub fn delete(&self, id: &str) -> bool {
        let args = DeleteArgs {
            id: id.into(),
            root: self.root.clone(),
            bundles: self.bundles.clone(),
        };
        Command::new(BIN)
            .args(args.to_args())
            .status()
            .unwrap()
            .success()
    }

    /// Runs `frakti-monitor pidns`; the holder's pid.
    pub fn pidns(&self, file: &Path) -> i32 {
        let out = Command::new(BIN)
            .args(
                PidnsArgs {
                    file: file.into(),
                    userns: None,
                }
                .to_args(),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["pid"].as_i64().unwrap() as i32
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (id, monitor) in self.started.borrow().iter() {
            let _ = self.delete(id);
            if let Some(pid) = monitor {
                let pid = nix::unistd::Pid::from_raw(*pid);
                if nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    == Ok(nix::sys::wait::WaitStatus::StillAlive)
                {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(pid, None);
                }
            }
            let cgroup = self.cgroup(id);
            if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
                for c in controllers.flatten() {
                    let _ = std::fs::remove_dir(c.path().join(cgroup.trim_start_matches('/')));
                }
            }
        }
    }
}

/// The parent pid of `pid`.
pub fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

impl Running {
    pub fn call(&self, request: &Request) -> Result<Reply, ClientError> {
        client::call(&self.socket, request, Duration::from_secs(10))
    }

    /// Waits (reaping it) for the monitor to exit; its exit code.
    pub fn monitor_exit(&self) -> i32 {
        let pid = nix::unistd::Pid::from_raw(self.monitor);
        match nix::sys::wait::waitpid(pid, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("monitor ended with {other:?}"),
        }
    }

    pub fn attach(&self, stdin: bool, stdout: bool, stderr: bool) -> Conn {
        let attached =
            client::attach(&self.socket, stdin, stdout, stderr, Duration::from_secs(10)).unwrap();
        Conn::new(attached)
    }
}

/// Reads `path` until `done` says its text is complete (at most 10 s).
pub fn wait_for_file(path: &Path, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The (stream, tag, text) of each CRI log line, checking the timestamp.
pub fn log_lines(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|l| {
            let parts: Vec<&str> = l.splitn(4, ' ').collect();
            assert_eq!(parts.len(), 4, "{l:?}");
            let ts = parts[0];
            // RFC 3339 with nanoseconds, in UTC: 2006-01-02T15:04:05.999999999Z
            assert_eq!(ts.len(), 30, "{ts}");
            assert_eq!(&ts[10..11], "T");
            assert_eq!(&ts[19..20], ".");
            assert!(ts.ends_with('Z'));
            (parts[1].into(), parts[2].into(), parts[3].into())
        })
        .collect()
}

/// An attached connection.
pub struct Conn {
    pub stream: UnixStream,
    pub tty: bool,
    decoder: FrameDecoder,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<Exit>,
    pub closed: bool,
}

impl Conn {
    fn new(a: Attached) -> Self {
        let mut decoder = FrameDecoder::new();
        decoder.push(&a.leftover);
        let mut c = Self {
            stream: a.stream,
            tty: a.tty,
            decoder,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: None,
            closed: false,
        };
        c.take_frames();
        c
    }

    pub fn send(&mut self, kind: FrameKind, data: &[u8]) {
        self.stream.write_all(&encode_frame(kind, data)).unwrap();
    }

    fn take_frames(&mut self) {
        while let Some(Frame { kind, data }) = self.decoder.next_frame().unwrap() {
            match kind {
                FrameKind::Stdout => self.stdout.extend(data),
                FrameKind::Stderr => self.stderr.extend(data),
                FrameKind::Exit => self.exit = Some(Exit::from_json(&data).unwrap()),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Reads frames until `done` (at most 10 s); whether it was reached.
    pub fn read_until(&mut self, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 4096];
        while !done(self) {
            if self.closed || Instant::now() > deadline {
                return false;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    self.take_frames();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.closed = true,
            }
        }
        true
    }
}
