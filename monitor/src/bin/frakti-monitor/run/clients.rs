//! Connections to the monitor's socket: buffers, reading, writing.
//!
//! Everything a client sends is untrusted: requests are bounded
//! ([`MAX_REQUEST`]), frames are bounded by the decoder, and what the
//! monitor queues for a slow client is bounded ([`OUTPUT_BUFFER`]): output
//! that does not fit is dropped for that client alone.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use monitor::protocol::{FrameDecoder, FrameKind, MAX_REQUEST, Reply, Request, encode_frame};

/// Most connections served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 128;

/// Most bytes of container output queued for one client.
pub const OUTPUT_BUFFER: usize = 1 << 20;

/// How long a client has to send its request line.
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// What a connection is doing.
#[derive(Debug)]
pub enum Phase {
    /// Sending its request line.
    Request,
    /// Waiting for the exit (`wait`).
    Waiting,
    /// Attached: frames both ways.
    Attached(Attach),
    /// Answered; closed once the answer is written.
    Done,
}

/// An attached client's choices and input state.
#[derive(Debug)]
pub struct Attach {
    /// It may send input.
    pub stdin: bool,
    /// It receives standard output (the terminal).
    pub stdout: bool,
    /// It receives standard error.
    pub stderr: bool,
    /// Its incoming frames.
    pub decoder: FrameDecoder,
    /// Its input has not ended (no close-stdin, no end of file yet).
    pub input_open: bool,
}

/// The outcome of one read.
#[derive(Debug)]
pub enum Got {
    /// Bytes arrived.
    Data(usize),
    /// Nothing to read now.
    Nothing,
    /// The peer closed its side.
    Eof,
}

/// One connection.
#[derive(Debug)]
pub struct Client {
    /// The connection (non-blocking).
    pub stream: UnixStream,
    /// What it is doing.
    pub phase: Phase,
    /// The request line so far.
    pub line: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// When the request line must have arrived.
    pub deadline: Option<Instant>,
    /// Close once everything queued is written.
    pub close_when_flushed: bool,
    /// The peer will send nothing more.
    pub read_closed: bool,
    /// To be dropped.
    pub dead: bool,
}

impl Client {
    /// A new connection, expected to send a request line.
    pub fn new(stream: UnixStream, now: Instant) -> Self {
        Self {
            stream,
            phase: Phase::Request,
            line: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            deadline: now.checked_add(REQUEST_WAIT),
            close_when_flushed: false,
            read_closed: false,
            dead: false,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queues bytes whatever the limit (replies and exit frames are small).
    pub fn queue(&mut self, bytes: &[u8]) {
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Queues the reply and closes once it is written.
    pub fn answer(&mut self, reply: &Reply) {
        self.queue(&reply.to_line());
        self.phase = Phase::Done;
        self.close_when_flushed = true;
    }

    /// Queues container output for an attached client that asked for
    /// `kind`; drops it when the client's buffer is full.
    pub fn output(&mut self, kind: FrameKind, data: &[u8]) {
        let wanted = match &self.phase {
            Phase::Attached(a) => match kind {
                FrameKind::Stdout => a.stdout,
                FrameKind::Stderr => a.stderr,
                _ => false,
            },
            _ => false,
        };
        if wanted && !self.close_when_flushed && self.queued() + data.len() <= OUTPUT_BUFFER {
            self.queue(&encode_frame(kind, data));
        }
    }

    /// Writes what it can without blocking; a write error kills the client.
    pub fn flush(&mut self) {
        while self.queued() > 0 {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
        if self.close_when_flushed {
            self.dead = true;
        }
    }

    /// Reads once into `buf`; a read error counts as end of file.
    pub fn read(&mut self, buf: &mut [u8]) -> Got {
        loop {
            match self.stream.read(buf) {
                Ok(0) => break,
                Ok(n) => return Got::Data(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Got::Nothing,
                Err(_) => break,
            }
        }
        self.read_closed = true;
        Got::Eof
    }

    /// Takes the request line once it is complete: the request (or why it is
    /// refused) and the bytes that followed it. `None` while incomplete.
    pub fn take_request(&mut self) -> Option<(Result<Request, String>, Vec<u8>)> {
        match self.line.iter().position(|b| *b == b'\n') {
            Some(nl) => {
                let rest = self.line.split_off(nl + 1);
                let line = std::mem::take(&mut self.line);
                let request = Request::from_line(&line).map_err(|e| e.to_string());
                Some((request, rest))
            }
            None if self.line.len() > MAX_REQUEST => {
                self.line = Vec::new();
                let refusal = format!("request line longer than {MAX_REQUEST} bytes");
                Some((Err(refusal), Vec::new()))
            }
            None => None,
        }
    }

    /// The poll events it waits for; `input` says whether its input may be
    /// taken now (an attached client's stdin waits while the container's is
    /// full).
    pub fn events(&self, input: bool) -> libc::c_short {
        let mut events = 0;
        if !self.read_closed && input {
            events |= libc::POLLIN;
        }
        if self.queued() > 0 {
            events |= libc::POLLOUT;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(stdout: bool) -> (Client, UnixStream) {
        let (ours, peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Client::new(ours, Instant::now());
        c.phase = Phase::Attached(Attach {
            stdin: false,
            stdout,
            stderr: false,
            decoder: FrameDecoder::new(),
            input_open: false,
        });
        (c, peer)
    }

    #[test]
    fn a_client_that_does_not_read_loses_output_not_the_monitor() {
        let (mut c, _peer) = attached(true);
        let chunk = vec![b'x'; 32 * 1024];
        for _ in 0..200 {
            c.output(FrameKind::Stdout, &chunk);
            c.flush();
            assert!(c.queued() <= OUTPUT_BUFFER);
        }
        assert!(!c.dead);
        assert!(c.queued() > 0, "the socket buffer filled up");
    }

    #[test]
    fn output_goes_only_to_who_asked_for_it() {
        let (mut c, _peer) = attached(false);
        c.output(FrameKind::Stdout, b"x");
        c.output(FrameKind::Stderr, b"x");
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn request_lines_are_bounded() {
        let (ours, _peer) = UnixStream::pair().unwrap();
        let mut c = Client::new(ours, Instant::now());
        c.line = vec![b'x'; MAX_REQUEST];
        assert!(c.take_request().is_none());
        c.line.push(b'x');
        let (request, rest) = c.take_request().unwrap();
        assert!(request.is_err() && rest.is_empty());
        c.line = b"{\"op\":\"status\"}\nrest".to_vec();
        let (request, rest) = c.take_request().unwrap();
        assert_eq!(request, Ok(Request::Status));
        assert_eq!(rest, b"rest");
    }
}
