//! Attach sessions end to end inside the agent, without a VM: a container
//! registered as create and start would (its stdin, output pipes or terminal
//! played by the test), the stream table the host's frames go to, and the
//! frames the agent sends back.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_api::messages::AgentErrorKind;
use agent_api::streams::{Channel, StreamEnd, data_frame, eof_frame, split_payload};
use agent_api::{Decoder, Frame, FrameKind};

use crate::containers::Containers;
use crate::output::Output;
use crate::streams::StreamTable;
use container::logs::Stream;

/// What the host received on one stream.
#[derive(Debug, Default)]
struct Seen {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    eof: Vec<Channel>,
    credit: u64,
    end: Option<StreamEnd>,
}

/// The host's side of the channel: every frame the agent sends, by stream.
struct Host {
    frames: tokio::sync::mpsc::UnboundedReceiver<Frame>,
    seen: HashMap<u64, Seen>,
}

impl Host {
    fn take(&mut self, f: Frame) {
        let seen = self.seen.entry(f.id).or_default();
        match f.kind {
            FrameKind::StreamData => match split_payload(&f.payload) {
                Some((Channel::Stdout, d)) => seen.stdout.extend_from_slice(d),
                Some((Channel::Stderr, d)) => seen.stderr.extend_from_slice(d),
                other => panic!("unexpected data {other:?}"),
            },
            FrameKind::StreamEof => {
                let (c, _) = split_payload(&f.payload).unwrap();
                seen.eof.push(c);
            }
            FrameKind::StreamWindow => {
                seen.credit += u64::from(agent_api::streams::window_credit(&f.payload).unwrap());
            }
            FrameKind::StreamClose => {
                assert!(seen.end.is_none(), "stream {} closed twice", f.id);
                seen.end = Some(f.parse().unwrap());
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// Takes frames until `done` holds (true) or `limit` passed (false).
    async fn wait(&mut self, limit: Duration, done: impl Fn(&HashMap<u64, Seen>) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.seen) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(f)) => self.take(f),
                Ok(None) | Err(_) => return done(&self.seen),
            }
        }
    }

    /// Takes frames for `d`; then what stream `s` got.
    async fn settle(&mut self, d: Duration, s: u64) -> &Seen {
        self.wait(d, |_| false).await;
        self.seen.entry(s).or_default()
    }

    async fn ended(&mut self, streams: &[u64], limit: Duration) -> bool {
        self.wait(limit, |seen| {
            streams
                .iter()
                .all(|s| seen.get(s).is_some_and(|x| x.end.is_some()))
        })
        .await
    }
}

fn setup() -> (Arc<Containers>, Arc<StreamTable>, Host) {
    let (tx, rx) = std::sync::mpsc::channel::<Output>();
    let table = Arc::new(StreamTable::default());
    table.set_output(tx);
    let (ftx, frames) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut d = Decoder::new();
        while let Ok(out) = rx.recv() {
            if let Output::Bytes(b) = out {
                d.push(&b);
                while let Some(f) = d.next_frame() {
                    if ftx.send(f).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let root = std::env::temp_dir().join("frakti-agent-attach-tests");
    let host = Host {
        frames,
        seen: HashMap::new(),
    };
    (Containers::for_tests(&root), table, host)
}

fn pipe() -> (File, File) {
    let (r, w) = crate::capture::pipe().unwrap();
    (File::from(r), File::from(w))
}

/// Whether `fd` has something to read (data or EOF) within `limit`.
fn readable(fd: &File, limit: Duration) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0) > 0
}

/// Reads what arrives on `fd` within `limit`, off the runtime's thread
/// (which the agent's tasks need); whether it reached EOF.
async fn drain(fd: &File, limit: Duration) -> (Vec<u8>, bool) {
    let mut fd = fd.try_clone().unwrap();
    tokio::task::spawn_blocking(move || drain_blocking(&mut fd, limit))
        .await
        .unwrap()
}

fn drain_blocking(fd: &mut File, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !readable(fd, left) {
            break;
        }
        match fd.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A terminal's slave whose master is gone.
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Plays `cat`: copies stdin to stdout until EOF (or 5 s), then exits,
/// closing its outputs. Returns what it read and whether it saw EOF.
fn fake_cat(mut stdin: File, mut stdout: File, stderr: File) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !readable(&stdin, left) {
                break;
            }
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(n) => stdout.write_all(&buf[..n]).unwrap(),
            }
        }
        drop(stderr);
        false
    })
}

fn stdin(stream: u64, data: &[u8]) -> Frame {
    data_frame(stream, Channel::Stdin, data)
}

#[tokio::test]
async fn stdin_once_eof_lets_cat_exit_and_ends_the_attach() {
    let (c, table, mut host) = setup();
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let outputs = vec![
        (OwnedFd::from(out_r), Stream::Stdout),
        (OwnedFd::from(err_r), Stream::Stderr),
    ];
    c.insert_running("cat", Some(in_w), outputs, None, true);
    table
        .attach(&c, 1, "cat", (true, true, true))
        .await
        .unwrap();
    let cat = fake_cat(in_r, out_w, err_w);
    table.frame(&stdin(1, b"hello\n"));
    table.frame(&eof_frame(1, Channel::Stdin));
    let saw_eof = tokio::task::spawn_blocking(move || cat.join().unwrap())
        .await
        .unwrap();
    assert!(saw_eof, "the container's stdin never reached EOF");
    c.main_process_exited("cat", 0).await;
    assert!(
        host.ended(&[1], Duration::from_secs(5)).await,
        "attach did not end"
    );
    let s = &host.seen[&1];
    assert_eq!(s.stdout, b"hello\n");
    assert!(s.eof.contains(&Channel::Stdout) && s.eof.contains(&Channel::Stderr));
    assert_eq!(s.end, Some(StreamEnd::default()));
    assert_eq!(s.credit, 6, "credit for the stdin bytes comes back");
}

#[tokio::test]
async fn the_main_process_exit_ends_every_attach_even_with_output_held_open() {
    let (c, table, mut host) = setup();
    let (out_r, mut out_w) = pipe();
    let (err_r, mut err_w) = pipe();
    let outputs = vec![
        (OwnedFd::from(out_r), Stream::Stdout),
        (OwnedFd::from(err_r), Stream::Stderr),
    ];
    c.insert_running("two", None, outputs, None, false);
    table
        .attach(&c, 1, "two", (false, true, true))
        .await
        .unwrap();
    table
        .attach(&c, 2, "two", (false, true, false))
        .await
        .unwrap();
    out_w.write_all(b"to both\n").unwrap();
    err_w.write_all(b"err\n").unwrap();
    let both = host
        .wait(Duration::from_secs(5), |s| {
            [1, 2]
                .iter()
                .all(|id| s.get(id).is_some_and(|x| x.stdout == b"to both\n"))
                && s.get(&1).is_some_and(|x| x.stderr == b"err\n")
        })
        .await;
    assert!(both, "both sessions get the output: {:?}", host.seen);
    // The main process exits; something it started still holds the pipes.
    let start = Instant::now();
    c.main_process_exited("two", 0).await;
    assert!(
        host.ended(&[1, 2], Duration::from_secs(5)).await,
        "{:?}",
        host.seen
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let (one, two) = (&host.seen[&1], &host.seen[&2]);
    assert!(one.eof.contains(&Channel::Stdout) && one.eof.contains(&Channel::Stderr));
    assert_eq!(two.eof, [Channel::Stdout]);
    assert!(two.stderr.is_empty());
    assert_eq!(one.end, Some(StreamEnd::default()));
    assert_eq!(two.end, Some(StreamEnd::default()));
    drop((out_w, err_w));
}

#[tokio::test]
async fn without_stdin_once_eof_detaches_and_stdin_stays_open() {
    let (c, table, mut host) = setup();
    let (in_r, in_w) = pipe();
    let (out_r, _out_w) = pipe();
    let outputs = vec![(OwnedFd::from(out_r), Stream::Stdout)];
    c.insert_running("shared", Some(in_w), outputs, None, false);
    table
        .attach(&c, 1, "shared", (true, true, false))
        .await
        .unwrap();
    table.frame(&stdin(1, b"one\n"));
    table.frame(&eof_frame(1, Channel::Stdin));
    assert!(
        host.ended(&[1], Duration::from_secs(3)).await,
        "EOF detaches"
    );
    assert_eq!(host.seen[&1].eof, [Channel::Stdout]);
    let (got, eof) = drain(&in_r, Duration::from_millis(300)).await;
    assert_eq!(got, b"one\n");
    assert!(!eof, "the container's stdin must stay open");
    // Another client may still write.
    table
        .attach(&c, 2, "shared", (true, true, false))
        .await
        .unwrap();
    table.frame(&stdin(2, b"two\n"));
    let (got, eof) = drain(&in_r, Duration::from_millis(500)).await;
    assert_eq!((got.as_slice(), eof), (&b"two\n"[..], false));
    c.main_process_exited("shared", 0).await;
    assert!(host.ended(&[2], Duration::from_secs(5)).await);
}

#[tokio::test]
async fn after_stdin_once_closed_a_second_attach_gets_no_stdin() {
    let (c, table, mut host) = setup();
    let (in_r, in_w) = pipe();
    let (out_r, _out_w) = pipe();
    let outputs = vec![(OwnedFd::from(out_r), Stream::Stdout)];
    c.insert_running("once", Some(in_w), outputs, None, true);
    table
        .attach(&c, 1, "once", (true, true, false))
        .await
        .unwrap();
    table.frame(&stdin(1, b"first\n"));
    table.frame(&eof_frame(1, Channel::Stdin));
    let (got, eof) = drain(&in_r, Duration::from_secs(3)).await;
    assert_eq!((got.as_slice(), eof), (&b"first\n"[..], true));
    // The first session goes on: its output continues until the exit.
    assert!(
        host.settle(Duration::from_millis(300), 1)
            .await
            .end
            .is_none()
    );
    table
        .attach(&c, 2, "once", (true, true, false))
        .await
        .unwrap();
    table.frame(&stdin(2, b"late"));
    table.frame(&eof_frame(2, Channel::Stdin));
    let s2 = host.settle(Duration::from_millis(300), 2).await;
    assert_eq!(s2.credit, 4, "dropped input is still credited");
    assert!(
        s2.end.is_none(),
        "an attach without stdin is not ended by its EOF"
    );
    c.main_process_exited("once", 0).await;
    assert!(host.ended(&[1, 2], Duration::from_secs(5)).await);
}

#[tokio::test]
async fn attaching_to_an_exited_container_fails_clearly() {
    let (c, table, _host) = setup();
    let (out_r, out_w) = pipe();
    c.insert_running(
        "gone",
        None,
        vec![(OwnedFd::from(out_r), Stream::Stdout)],
        None,
        false,
    );
    drop(out_w);
    c.main_process_exited("gone", 1).await;
    let e = table
        .attach(&c, 1, "gone", (false, true, false))
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::FailedPrecondition);
    assert!(
        e.message.contains("gone") && e.message.contains("exited"),
        "{e:?}"
    );
    let e = table
        .attach(&c, 2, "nope", (false, true, false))
        .await
        .unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::NotFound);
}

#[tokio::test]
async fn a_terminal_attach_writes_resizes_and_detaches_on_eof() {
    let (c, table, mut host) = setup();
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut raw = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &raw).unwrap();
    let dup = |fd: &OwnedFd| File::from(fd.try_clone().unwrap());
    let (input, terminal) = (dup(&pty.master), dup(&pty.master));
    let outputs = vec![(pty.master, Stream::Stdout)];
    c.insert_running("tty", Some(input), outputs, Some(terminal), true);
    let slave = File::from(pty.slave);
    table
        .attach(&c, 1, "tty", (true, true, false))
        .await
        .unwrap();
    (&slave).write_all(b"prompt$ ").unwrap();
    let prompt = host
        .wait(Duration::from_secs(5), |s| {
            s.get(&1).is_some_and(|x| x.stdout == b"prompt$ ")
        })
        .await;
    assert!(prompt, "{:?}", host.seen);
    table.frame(&stdin(1, b"x"));
    let (got, _) = drain(&slave, Duration::from_millis(500)).await;
    assert_eq!(got, b"x");
    table.resize(1, 100, 40).unwrap();
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through the valid pointer; the
    // descriptor is an open terminal.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&slave),
            libc::TIOCGWINSZ,
            &mut size,
        )
    };
    assert_eq!((rc, size.ws_col, size.ws_row), (0, 100, 40));
    // A terminal client's EOF detaches it; with stdin_once the process gets
    // the terminal's end of input (^D) and later clients no stdin.
    table.frame(&eof_frame(1, Channel::Stdin));
    assert!(
        host.ended(&[1], Duration::from_secs(3)).await,
        "EOF detaches a terminal client"
    );
    assert_eq!(host.seen[&1].eof, [Channel::Stdout]);
    let (got, _) = drain(&slave, Duration::from_millis(500)).await;
    assert_eq!(got, [4]);
    table
        .attach(&c, 2, "tty", (true, true, false))
        .await
        .unwrap();
    table.frame(&stdin(2, b"y"));
    let (got, _) = drain(&slave, Duration::from_millis(300)).await;
    assert!(got.is_empty(), "{got:?}");
    drop(slave);
    c.main_process_exited("tty", 0).await;
    assert!(
        host.ended(&[2], Duration::from_secs(5)).await,
        "{:?}",
        host.seen
    );
}
