//! `frakti-monitor` with real libcontainer containers on this host (as root):
//! a busybox rootfs, its own namespaces and cgroup per container.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use monitor::client::ClientError;
use monitor::exitfile::{self, ExecReport};
use monitor::protocol::{ContainerState, FrameKind, Request, encode_resize};
use support::{Fixture, Opts, log_lines, wait_for_file};

fn gone(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// One container from create to delete: status, start, the CRI log, attach
/// with stdin through `cat`, requests that must fail, kill and wait.
#[test]
fn a_container_runs_logs_attaches_and_is_killed() {
    let f = Fixture::new();
    let script = "echo out-line; echo err-line >&2; exec cat";
    f.write_spec("life", &["sh", "-c", script], false, None);
    let opts = Opts {
        log: true,
        stdin: true,
        ..Opts::default()
    };
    let c = f.run("life", opts).unwrap();
    assert!(c.pid > 0 && !gone(c.pid));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", c.monitor)).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("frakti-monitor"));

    let status = c.call(&Request::Status).unwrap().status.unwrap();
    assert_eq!(
        (status.pid, status.state, status.tty),
        (c.pid, ContainerState::Created, false)
    );
    // Nothing runs before start: the log is empty.
    let log = c.log.clone().unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "");

    let memory_cgroup = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(f.cgroup("life").trim_start_matches('/'));
    let tasks = std::fs::read_to_string(memory_cgroup.join("cgroup.procs")).unwrap();
    assert!(tasks.lines().any(|l| l == c.pid.to_string()), "{tasks}");
    c.call(&Request::Start).unwrap();
    assert!(matches!(
        c.call(&Request::Start),
        Err(ClientError::Refused(_))
    ));
    let status = c.call(&Request::Status).unwrap().status.unwrap();
    assert_eq!(status.state, ContainerState::Running);

    let text = wait_for_file(&log, |t| t.lines().count() >= 2);
    // The container got default signal dispositions and an empty mask (the
    // monitor ignores SIGPIPE and blocks SIGCHLD for itself).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
    for (field, bit) in [("SigIgn:", libc::SIGPIPE), ("SigBlk:", libc::SIGCHLD)] {
        let mask = proc_status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(mask & (1 << (bit - 1)), 0, "{field} {mask:x}");
    }
    let mut lines = log_lines(&text);
    lines.sort();
    assert_eq!(
        lines,
        [
            ("stderr".into(), "F".into(), "err-line".into()),
            ("stdout".into(), "F".into(), "out-line".into()),
        ]
    );

    // Requests that must be refused, and garbage.
    assert!(matches!(
        c.call(&Request::Resize {
            width: 80,
            height: 24
        }),
        Err(ClientError::Refused(_))
    ));
    assert!(matches!(
        c.call(&Request::Kill {
            signal: 999,
            all: false
        }),
        Err(ClientError::Refused(_))
    ));
    for garbage in [&b"nonsense\n"[..], &[b'x'; 5000][..]] {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&c.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(garbage).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with(r#"{"ok":false,"error":"#), "{line}");
    }
    c.call(&Request::ReopenLog).unwrap();

    // Without --stdin-once, one client's close-stdin ends only its input.
    let mut first = c.attach(true, true, false);
    assert!(!first.tty);
    first.send(FrameKind::Stdin, b"one\n");
    assert!(first.read_until(|c| c.stdout.ends_with(b"one\n")));
    first.send(FrameKind::CloseStdin, b"");
    drop(first);
    let mut second = c.attach(true, true, true);
    let mut watcher = c.attach(false, false, true);
    second.send(FrameKind::Stdin, b"hello from attach\n");
    assert!(second.read_until(|c| c.stdout.ends_with(b"hello from attach\n")));

    // A bad frame drops that client only.
    let mut bad = c.attach(true, true, false);
    bad.send(FrameKind::Stdout, b"not yours");
    assert!(bad.read_until(|c| c.closed));

    let waiter = {
        let socket = c.socket.clone();
        std::thread::spawn(move || {
            monitor::client::call(&socket, &Request::Wait, Duration::from_secs(30))
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    c.call(&Request::Kill {
        signal: 9,
        all: false,
    })
    .unwrap();
    let exit = waiter.join().unwrap().unwrap().exit.unwrap();
    assert_eq!((exit.exit_code, exit.oom_killed), (137, false));
    assert!(second.read_until(|c| c.exit.is_some() && c.closed));
    assert_eq!(second.exit, Some(exit));
    assert!(watcher.read_until(|c| c.exit.is_some()));
    assert!(watcher.stdout.is_empty());
    assert_eq!(exitfile::read(&c.exit_file).unwrap(), Some(exit));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(exit.finished_at_ns <= now && exit.finished_at_ns > now - 60_000_000_000);

    assert_eq!(c.monitor_exit(), 0);
    assert!(gone(c.pid));
    assert!(!c.socket.exists());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F hello from attach\n"), "{text}");

    let state = f.root.join("life");
    assert!(state.exists());
    assert!(f.delete("life"));
    assert!(!state.exists());
    assert!(!memory_cgroup.exists());
    assert!(f.delete("life"), "delete is idempotent");
}

/// A script's own exit code, `--stdin-once`, and execs in a running container.
#[test]
fn execs_run_in_the_container_and_stdin_once_ends_it() {
    let f = Fixture::new();
    f.write_spec("ex", &["sh", "-c", "cat; exit 3"], false, None);
    let opts = Opts {
        stdin: true,
        stdin_once: true,
        ..Opts::default()
    };
    let c = f.run("ex", opts).unwrap();
    c.call(&Request::Start).unwrap();

    let report = f.dir.path().join("exec-report");
    let (out, text) = f.exec("ex", &["echo", "exec-ok"], &report);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-ok\n");
    assert_eq!(text, r#"{"exit_code":0}"#);
    let (out, _) = f.exec("ex", &["sh", "-c", "exit 7"], &report);
    assert!(out.status.success());
    assert_eq!(
        exitfile::read_report(&report).unwrap(),
        Some(ExecReport::Exited { exit_code: 7 })
    );
    let (out, _) = f.exec("no-such-container", &["true"], &report);
    assert!(out.status.success());
    assert!(matches!(
        exitfile::read_report(&report).unwrap(),
        Some(ExecReport::Failed {
            not_found: true,
            ..
        })
    ));
    // SIGTERM to the helper kills its process: 137.
    let mut helper = f
        .exec_command("ex", &["sleep", "1000"], &report)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(helper.wait().unwrap().success());
    assert_eq!(
        exitfile::read_report(&report).unwrap(),
        Some(ExecReport::Exited { exit_code: 137 })
    );

    let mut conn = c.attach(true, true, false);
    conn.send(FrameKind::Stdin, b"ping\n");
    assert!(conn.read_until(|c| c.stdout.ends_with(b"ping\n")));
    conn.send(FrameKind::CloseStdin, b"");
    assert!(conn.read_until(|c| c.exit.is_some()));
    assert_eq!(conn.exit.unwrap().exit_code, 3);
    assert_eq!(c.monitor_exit(), 0);
    assert_eq!(exitfile::read(&c.exit_file).unwrap().unwrap().exit_code, 3);
    assert!(!c.socket.exists());
    assert!(f.delete("ex"));
}

/// A container on a terminal: the master arrives through the console
/// socket, output goes to the log as stdout, resizes work.
#[test]
fn a_terminal_container_echoes_and_resizes() {
    let f = Fixture::new();
    f.write_spec("tty", &["sh", "-c", "echo tty-ok; exec cat"], true, None);
    let opts = Opts {
        log: true,
        tty: true,
        stdin: true,
        ..Opts::default()
    };
    let c = f.run("tty", opts).unwrap();
    assert!(c.call(&Request::Status).unwrap().status.unwrap().tty);
    c.call(&Request::Resize {
        width: 100,
        height: 30,
    })
    .unwrap();
    c.call(&Request::Start).unwrap();
    let mut conn = c.attach(true, true, true);
    assert!(conn.tty);
    conn.stream.write_all_frames(&encode_resize(120, 40));
    conn.send(FrameKind::Stdin, b"typed\n");
    assert!(conn.read_until(|c| String::from_utf8_lossy(&c.stdout).contains("typed")));
    let log = c.log.clone().unwrap();
    let text = wait_for_file(&log, |t| t.contains("tty-ok"));
    assert!(log_lines(&text).iter().all(|(s, _, _)| s == "stdout"));
    assert!(text.contains(" stdout F tty-ok"), "{text}");
    c.call(&Request::Kill {
        signal: 9,
        all: true,
    })
    .unwrap();
    assert!(conn.read_until(|c| c.exit.is_some()));
    assert_eq!(conn.exit.unwrap().exit_code, 137);
    assert_eq!(c.monitor_exit(), 0);
    assert!(f.delete("tty"));
}

/// A failed create leaves nothing behind; an existing container is refused.
#[test]
fn a_failed_run_leaves_nothing() {
    let f = Fixture::new();
    f.write_spec("bad", &["/bin/no-such-binary"], false, None);
    let err = f.run("bad", Opts::default()).err().expect("must fail");
    assert!(!err.is_empty());
    assert!(!f.root.join("bad").exists());
    assert!(!f.dir.path().join("bad.sock").exists());
    f.write_spec("mismatch", &["true"], true, None);
    assert!(f.run("mismatch", Opts::default()).is_err());
    assert!(!f.root.join("mismatch").exists());
}

/// The OOM killer's work in the container's memory cgroup shows in its exit.
#[test]
fn an_oom_kill_is_recorded() {
    let f = Fixture::new();
    let hog = ["sh", "-c", "a=$(yes)"];
    f.write_spec_with("oom", &hog, false, None, |spec| {
        spec["linux"]["resources"] = serde_json::json!({"memory": {"limit": 32 << 20}});
    });
    let c = f.run("oom", Opts::default()).unwrap();
    c.call(&Request::Start).unwrap();
    let exit = monitor::client::call(&c.socket, &Request::Wait, Duration::from_secs(60))
        .unwrap()
        .exit
        .unwrap();
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, 137);
    assert_eq!(c.monitor_exit(), 0);
    assert!(f.delete("oom"));
}

/// `pidns` makes a namespace two containers share, removed by SIGTERM.
#[test]
fn a_pid_namespace_is_shared_and_removed() {
    let f = Fixture::new();
    let file = f.dir.path().join("pidns");
    let holder = f.pidns(&file);
    assert!(monitor::holds_namespace(holder, &file));
    let ino = std::fs::metadata(&file).unwrap().ino();

    f.write_spec("a", &["sleep", "1000"], false, Some(&file));
    let script = "readlink /proc/self/ns/pid; ps -o pid,args";
    f.write_spec("b", &["sh", "-c", script], false, Some(&file));
    let a = f.run("a", Opts::default()).unwrap();
    a.call(&Request::Start).unwrap();
    let b = f
        .run(
            "b",
            Opts {
                log: true,
                ..Opts::default()
            },
        )
        .unwrap();
    b.call(&Request::Start).unwrap();
    let exit = monitor::client::call(&b.socket, &Request::Wait, Duration::from_secs(30)).unwrap();
    assert_eq!(exit.exit.unwrap().exit_code, 0);
    assert_eq!(b.monitor_exit(), 0);
    let text = std::fs::read_to_string(b.log.as_ref().unwrap()).unwrap();
    let out: Vec<String> = log_lines(&text).into_iter().map(|(_, _, t)| t).collect();
    assert_eq!(out[0], format!("pid:[{ino}]"), "{text}");
    assert!(out.iter().any(|l| l.ends_with("sleep 1000")), "{text}");

    a.call(&Request::Kill {
        signal: 9,
        all: false,
    })
    .unwrap();
    assert_eq!(a.monitor_exit(), 0);
    assert!(f.delete("a") && f.delete("b"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(holder), None).unwrap();
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(holder), 0)
    );
    assert!(!monitor::holds_namespace(holder, &file));
    nix::mount::umount(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
}

/// Writes raw frame bytes.
trait WriteFrames {
    fn write_all_frames(&mut self, bytes: &[u8]);
}

impl WriteFrames for std::os::unix::net::UnixStream {
    fn write_all_frames(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(self, bytes).unwrap();
    }
}
