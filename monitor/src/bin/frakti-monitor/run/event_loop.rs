//! The monitor's loop: one thread, one `poll(2)` over the signal descriptor,
//! the listening socket, the container's outputs and stdin, and the clients.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use monitor::exitfile;
use monitor::protocol::{Exit, FrameKind, Reply, encode_frame};
use nix::errno::Errno;

use super::clients::{Client, Got, MAX_CLIENTS, Phase};
use super::{Monitor, Stdin};
use crate::sys;

/// Bytes read from an output or a client at a time.
const READ_CHUNK: usize = 32 * 1024;

/// How long outputs are still read after the init exited (processes outside
/// a PID namespace may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(1);

/// How long the monitor lingers after the exit to deliver it to clients.
const LINGER: Duration = Duration::from_secs(1);

/// Most client input held for the container's stdin; attached clients with
/// stdin are not read while it is full.
const STDIN_BUFFER: usize = 256 * 1024;

/// Most connections accepted per wakeup.
const ACCEPTS: usize = 16;

/// What a polled descriptor is.
#[derive(Debug, Clone, Copy)]
enum Token {
    Signals,
    Listener,
    Output(usize),
    Stdin,
    Client(u64),
}

impl Stdin {
    /// Whether client input can be taken now (dropped input counts).
    fn has_room(&self) -> bool {
        self.fd.is_none() || self.closing || self.pending.len() < STDIN_BUFFER
    }

    /// Queues input for the container.
    pub(super) fn push(&mut self, data: &[u8]) {
        if self.fd.is_some() && !self.closing {
            self.pending.extend_from_slice(data);
        }
    }

    /// Writes what the container takes without blocking.
    fn flush(&mut self) {
        let Some(fd) = &self.fd else {
            self.pending.clear();
            return;
        };
        let mut written = 0;
        while written < self.pending.len() {
            match nix::unistd::write(fd, &self.pending[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => {
                    // The container closed its stdin.
                    self.close_now();
                    return;
                }
            }
        }
        self.pending.drain(..written);
        if self.closing && self.pending.is_empty() {
            self.fd = None;
        }
    }

    /// Closes it once what is queued is written.
    pub(super) fn close(&mut self) {
        self.closing = true;
        self.flush();
    }

    /// Closes it now, dropping what is queued.
    fn close_now(&mut self) {
        self.fd = None;
        self.pending = Vec::new();
    }
}

impl Monitor {
    /// Runs until the container has exited and clients were told.
    pub(super) fn serve(mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        self.reap();
        loop {
            let now = Instant::now();
            let drained = self.outputs.iter().all(|o| o.fd.is_none())
                || self.drain_until.is_some_and(|d| now >= d);
            if self.exit.is_some() && self.closing_until.is_none() && drained {
                self.finish(now);
            }
            if let Some(until) = self.closing_until
                && (self.clients.is_empty() || now >= until)
            {
                break;
            }
            for c in self.clients.values_mut() {
                if matches!(c.phase, Phase::Request) && c.deadline.is_some_and(|d| now >= d) {
                    c.dead = true;
                }
            }
            self.bury();
            let (mut fds, tokens) = self.poll_set();
            if sys::poll(&mut fds, self.timeout(now)).is_err() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            for (pfd, token) in fds.iter().zip(tokens) {
                if pfd.revents != 0 {
                    self.dispatch(token, pfd.revents, &mut buf);
                }
            }
            self.bury();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Token>) {
        let mut fds = vec![
            sys::pollfd(self.signals.as_fd(), libc::POLLIN),
            sys::pollfd(self.listener.as_fd(), libc::POLLIN),
        ];
        let mut tokens = vec![Token::Signals, Token::Listener];
        for (i, o) in self.outputs.iter().enumerate() {
            if let Some(fd) = &o.fd {
                fds.push(sys::pollfd(fd.as_fd(), libc::POLLIN));
                tokens.push(Token::Output(i));
            }
        }
        if let Some(Stdin {
            fd: Some(fd),
            pending,
            ..
        }) = &self.stdin
            && !pending.is_empty()
        {
            fds.push(sys::pollfd(fd.as_fd(), libc::POLLOUT));
            tokens.push(Token::Stdin);
        }
        let stdin_room = self.stdin.as_ref().is_none_or(Stdin::has_room);
        for (id, c) in &self.clients {
            let input = match &c.phase {
                Phase::Attached(a) => stdin_room || !(a.stdin && a.input_open),
                Phase::Done => false,
                Phase::Request | Phase::Waiting => true,
            };
            let events = c.events(input);
            if events != 0 {
                fds.push(sys::pollfd(c.stream.as_fd(), events));
                tokens.push(Token::Client(*id));
            }
        }
        (fds, tokens)
    }

    /// Milliseconds until the next deadline (at most a second).
    fn timeout(&self, now: Instant) -> i32 {
        let deadlines = self
            .clients
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.drain_until)
            .chain(self.closing_until);
        let next = deadlines
            .map(|d| d.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        // Round up so the deadline has passed when poll returns.
        next.as_millis() as i32 + 1
    }

    fn dispatch(&mut self, token: Token, revents: libc::c_short, buf: &mut [u8]) {
        match token {
            Token::Signals => {
                sys::drain_signals(&self.signals);
                self.reap();
            }
            Token::Listener => self.accept(),
            Token::Output(i) => self.read_output(i, buf),
            Token::Stdin => {
                if let Some(s) = &mut self.stdin {
                    s.flush();
                }
            }
            Token::Client(id) => self.client_event(id, revents, buf),
        }
    }

    /// Reaps every exited child; the init's exit is recorded.
    fn reap(&mut self) {
        while let Some((pid, code)) = sys::reap_one() {
            if pid == self.pid && self.exit.is_none() {
                self.exit = Some(Exit {
                    exit_code: code,
                    finished_at_ns: sys::now_ns(),
                    oom_killed: self.cgroup.oom_killed(),
                });
                if let Some(s) = &mut self.stdin {
                    s.close_now();
                }
                self.drain_until = Instant::now().checked_add(DRAIN);
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS {
            let Ok((stream, _)) = self.listener.accept() else {
                return;
            };
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_client;
            self.next_client += 1;
            self.clients.insert(id, Client::new(stream, Instant::now()));
        }
    }

    /// Copies what output `i` has into the log and to attached clients.
    fn read_output(&mut self, i: usize, buf: &mut [u8]) {
        let Some(out) = self.outputs.get_mut(i) else {
            return;
        };
        let Some(fd) = &out.fd else {
            return;
        };
        match nix::unistd::read(fd, buf) {
            Ok(n) if n > 0 => {
                let data = &buf[..n];
                if let Some(log) = &self.log {
                    out.splitter.push(data, log);
                }
                for c in self.clients.values_mut() {
                    c.output(out.kind, data);
                    c.flush();
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // End of file; a terminal whose other side is closed says EIO.
            _ => {
                if let Some(log) = &self.log {
                    out.splitter.finish(log);
                }
                out.fd = None;
            }
        }
    }

    fn client_event(&mut self, id: u64, revents: libc::c_short, buf: &mut [u8]) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if revents & libc::POLLOUT != 0 {
            c.flush();
        }
        if revents & libc::POLLERR != 0 {
            c.dead = true;
        }
        if c.dead || c.read_closed || revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            return;
        }
        match c.read(buf) {
            Got::Nothing => {}
            Got::Data(n) => match &c.phase {
                Phase::Request => {
                    c.line.extend_from_slice(&buf[..n]);
                    if let Some((request, rest)) = c.take_request() {
                        self.handle_request(id, request, rest);
                    }
                }
                Phase::Attached(_) => self.client_input(id, &buf[..n]),
                Phase::Waiting | Phase::Done => {}
            },
            Got::Eof => {
                let ended = match &mut c.phase {
                    Phase::Attached(a) => {
                        // Half-closed: it may still read output. Gone for good:
                        // drop it.
                        if revents & libc::POLLHUP != 0 {
                            c.dead = true;
                        }
                        std::mem::replace(&mut a.input_open, false) && a.stdin
                    }
                    _ => {
                        c.dead = true;
                        false
                    }
                };
                if ended {
                    self.input_ended(id);
                }
            }
        }
    }

    /// Drops dead clients; an attached one with open input ends it.
    fn bury(&mut self) {
        let dead: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.dead)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            if let Some(c) = self.clients.remove(&id)
                && let Phase::Attached(a) = &c.phase
                && a.stdin
                && a.input_open
            {
                self.input_ended(id);
            }
        }
    }

    /// The init has exited and outputs are drained (or have had their time):
    /// writes the exit file and tells waiters and attached clients.
    fn finish(&mut self, now: Instant) {
        let Some(exit) = self.exit else {
            return;
        };
        for out in &mut self.outputs {
            if out.fd.take().is_some()
                && let Some(log) = &self.log
            {
                out.splitter.finish(log);
            }
        }
        self.terminal = None;
        if exitfile::write(&self.exit_file, &exit).is_err() {
            // One retry; there is nobody to tell about a failure.
            let _ = exitfile::write(&self.exit_file, &exit);
        }
        let frame = encode_frame(FrameKind::Exit, &exit.to_json());
        for c in self.clients.values_mut() {
            match c.phase {
                Phase::Waiting => c.answer(&Reply::exit(exit)),
                Phase::Attached(_) => {
                    c.queue(&frame);
                    c.close_when_flushed = true;
                    c.read_closed = true;
                }
                Phase::Request | Phase::Done => {}
            }
            c.flush();
        }
        self.closing_until = Some(now.checked_add(LINGER).unwrap_or(now));
    }
}
