//! Answering requests, and the frames of attached clients.

use std::os::fd::AsFd;

use monitor::protocol::{
    ContainerState, Frame, FrameDecoder, FrameKind, Reply, Request, Status, decode_resize,
    encode_frame,
};
use nix::sys::signal::Signal;

use super::Monitor;
use super::clients::{Attach, Phase};

/// What a request leads to.
enum Outcome {
    /// An answer, after which the connection closes.
    Reply(Reply),
    /// The answer comes with the exit.
    Wait,
    /// The connection becomes an attached one.
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
}

impl Monitor {
    fn state(&self) -> ContainerState {
        match (self.exit.is_some(), self.started) {
            (true, _) => ContainerState::Exited,
            (false, true) => ContainerState::Running,
            (false, false) => ContainerState::Created,
        }
    }

    fn decide(&mut self, request: Request) -> Outcome {
        let reply = match request {
            Request::Start if self.exit.is_some() => Reply::error("the container has exited"),
            Request::Start if self.started => Reply::error("the container is already started"),
            Request::Start => match self.runner.start(&self.id) {
                Ok(()) => {
                    self.started = true;
                    Reply::ok()
                }
                Err(e) => Reply::error(e.to_string()),
            },
            Request::Status => Reply::status(Status {
                pid: self.pid,
                state: self.state(),
                tty: self.tty,
            }),
            Request::Kill { signal, all } => match Signal::try_from(signal) {
                Err(_) => Reply::error(format!("invalid signal {signal}")),
                // Its init is reaped: its pid may be someone else's now.
                Ok(_) if self.exit.is_some() && !all => Reply::error("the container has exited"),
                Ok(s) => match self.runner.kill(&self.id, s, all) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(e.to_string()),
                },
            },
            Request::ReopenLog => match &self.log {
                None => Reply::error("the container has no log file"),
                Some(log) => match log.reopen() {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(format!("reopen the log: {e}")),
                },
            },
            Request::Resize { width, height } => match &self.terminal {
                None => Reply::error("the container has no terminal"),
                Some(t) => match container::console::set_size(t.as_fd(), width, height) {
                    Ok(()) => Reply::ok(),
                    Err(e) => Reply::error(format!("resize the terminal: {e}")),
                },
            },
            Request::Wait => match (self.closing_until, self.exit) {
                (Some(_), Some(exit)) => Reply::exit(exit),
                _ => return Outcome::Wait,
            },
            Request::Attach { stdin, .. } if stdin && self.stdin.is_none() => {
                Reply::error("the container has no stdin")
            }
            Request::Attach {
                stdin,
                stdout,
                stderr,
            } => {
                return Outcome::Attach {
                    stdin,
                    stdout,
                    stderr,
                };
            }
        };
        Outcome::Reply(reply)
    }

    /// Handles client `id`'s request line; `rest` is what followed it.
    pub(super) fn handle_request(
        &mut self,
        id: u64,
        request: Result<Request, String>,
        rest: Vec<u8>,
    ) {
        let outcome = match request {
            Ok(r) => self.decide(r),
            Err(e) => Outcome::Reply(Reply::error(e)),
        };
        let finished = self.closing_until.is_some();
        let exit = self.exit;
        let tty = self.tty;
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        client.deadline = None;
        match outcome {
            Outcome::Reply(reply) => client.answer(&reply),
            Outcome::Wait => client.phase = Phase::Waiting,
            Outcome::Attach {
                stdin,
                stdout,
                stderr,
            } => {
                client.queue(&Reply::attached(tty).to_line());
                client.phase = Phase::Attached(Attach {
                    stdin,
                    stdout,
                    stderr,
                    decoder: FrameDecoder::new(),
                    input_open: stdin,
                });
                if let (true, Some(exit)) = (finished, exit) {
                    client.queue(&encode_frame(FrameKind::Exit, &exit.to_json()));
                    client.close_when_flushed = true;
                    client.read_closed = true;
                }
                if stdin && self.stdin_owner.is_none() {
                    self.stdin_owner = Some(id);
                }
                if !rest.is_empty() {
                    self.client_input(id, &rest);
                }
            }
        }
    }

    /// Takes frames that attached client `id` sent.
    pub(super) fn client_input(&mut self, id: u64, data: &[u8]) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let Phase::Attached(attach) = &mut client.phase else {
            return;
        };
        attach.decoder.push(data);
        let mut frames: Vec<Frame> = Vec::new();
        loop {
            match attach.decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    client.dead = true;
                    break;
                }
            }
        }
        for frame in frames {
            self.client_frame(id, frame);
        }
    }

    fn client_frame(&mut self, id: u64, frame: Frame) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let Phase::Attached(attach) = &mut client.phase else {
            return;
        };
        if client.dead {
            return;
        }
        match frame.kind {
            FrameKind::Stdin => {
                if attach.stdin
                    && attach.input_open
                    && let Some(stdin) = &mut self.stdin
                {
                    stdin.push(&frame.data);
                }
            }
            FrameKind::CloseStdin => {
                if attach.input_open {
                    attach.input_open = false;
                    self.input_ended(id);
                }
            }
            FrameKind::Resize => match decode_resize(&frame.data) {
                Some((width, height)) => {
                    if let Some(t) = &self.terminal {
                        let _ = container::console::set_size(t.as_fd(), width, height);
                    }
                }
                None => client.dead = true,
            },
            FrameKind::Stdout | FrameKind::Stderr | FrameKind::Exit => client.dead = true,
        }
    }

    /// Client `id`'s input ended (close-stdin, end of file, or it went away):
    /// with `--stdin-once`, the first client that attached with stdin takes
    /// the container's stdin with it.
    pub(super) fn input_ended(&mut self, id: u64) {
        if self.stdin_once
            && self.stdin_owner == Some(id)
            && let Some(stdin) = &mut self.stdin
        {
            stdin.close();
        }
    }
}
