//! A small blocking client of the monitor's socket (run it on a blocking
//! thread).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{LineError, MAX_REPLY, Reply, Request};

/// A call to the monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The monitor's socket cannot be reached (the monitor is gone or not ready)
    #[error("cannot connect to the monitor at {0}: {1}")]
    Connect(PathBuf, std::io::Error),
    /// The connection failed
    #[error("monitor connection: {0}")]
    Io(#[from] std::io::Error),
    /// No reply came in time
    #[error("the monitor did not answer within {0:?}")]
    TimedOut(Duration),
    /// The monitor closed the connection without a reply
    #[error("the monitor closed the connection without a reply")]
    Closed,
    /// The reply is not valid
    #[error("bad reply from the monitor: {0}")]
    BadReply(#[from] LineError),
    /// The monitor refused the request
    #[error("the monitor refused: {0}")]
    Refused(String),
}

/// An attached connection, after the monitor's `ok`.
#[derive(Debug)]
pub struct Attached {
    /// The connection, carrying frames from here on (blocking, no timeouts).
    pub stream: UnixStream,
    /// Whether the container runs on a terminal.
    pub tty: bool,
    /// Bytes that arrived after the reply line: the start of the first frames.
    pub leftover: Vec<u8>,
}

/// Sends `request` and returns the monitor's reply; a refusal
/// (`"ok": false`) is [`ClientError::Refused`]. The whole call takes at most
/// `timeout` (a `wait` needs as long as the container runs).
///
/// Do not use it for [`Request::Attach`], which keeps the connection: see
/// [`attach`].
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let (_, reply, _) = exchange(socket, request, timeout)?;
    Ok(reply)
}

/// Attaches to the container's streams (see [`Request::Attach`]); the
/// handshake takes at most `timeout`.
pub fn attach(
    socket: &Path,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    timeout: Duration,
) -> Result<Attached, ClientError> {
    let request = Request::Attach {
        stdin,
        stdout,
        stderr,
    };
    let (stream, reply, leftover) = exchange(socket, &request, timeout)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(Attached {
        stream,
        tty: reply.tty.unwrap_or(false),
        leftover,
    })
}

/// Connects, sends the request, reads the reply line: returns the stream,
/// the reply and what followed it.
fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(UnixStream, Reply, Vec<u8>), ClientError> {
    let deadline = Instant::now().checked_add(timeout);
    let left = || match deadline {
        // A zero timeout would mean "none" to the socket: keep a minimum.
        Some(d) => d
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
        None => Duration::MAX,
    };
    let mut stream =
        UnixStream::connect(socket).map_err(|e| ClientError::Connect(socket.to_owned(), e))?;
    stream.set_write_timeout(Some(left()))?;
    stream
        .write_all(&request.to_line())
        .map_err(|e| timed_out(e, timeout))?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(nl) = got.iter().position(|b| *b == b'\n') {
            let leftover = got.split_off(nl + 1);
            let reply = Reply::from_line(&got)?;
            if !reply.ok {
                return Err(ClientError::Refused(
                    reply.error.unwrap_or_else(|| "no reason given".into()),
                ));
            }
            return Ok((stream, reply, leftover));
        }
        if got.len() > MAX_REPLY {
            return Err(LineError::TooLong(MAX_REPLY).into());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ClientError::TimedOut(timeout));
        }
        stream.set_read_timeout(Some(left()))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(timed_out(e, timeout)),
        }
    }
}

fn timed_out(e: std::io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::TimedOut(timeout)
        }
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::protocol::{FrameKind, encode_frame};

    /// Serves one connection with `answer` (raw bytes) after reading a line.
    fn serve(listener: UnixListener, answer: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn);
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).unwrap();
            reader.get_mut().write_all(&answer).unwrap();
            line
        })
    }

    #[test]
    fn replies_refusals_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = serve(listener.try_clone().unwrap(), Reply::ok().to_line());
        let reply = call(&path, &Request::Start, Duration::from_secs(5)).unwrap();
        assert!(reply.ok);
        assert_eq!(t.join().unwrap(), b"{\"op\":\"start\"}\n");

        let t = serve(
            listener.try_clone().unwrap(),
            Reply::error("nope").to_line(),
        );
        let err = call(&path, &Request::Wait, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ClientError::Refused(m) if m == "nope"));
        t.join().unwrap();

        let mut answer = Reply::attached(true).to_line();
        answer.extend(encode_frame(FrameKind::Stdout, b"x"));
        let t = serve(listener.try_clone().unwrap(), answer);
        let attached = attach(&path, true, true, false, Duration::from_secs(5)).unwrap();
        assert!(attached.tty);
        t.join().unwrap();
        // The frame may arrive with the reply or after it.
        let mut rest = attached.leftover.clone();
        let mut s = attached.stream;
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, encode_frame(FrameKind::Stdout, b"x"));

        let t = serve(listener.try_clone().unwrap(), b"garbage\n".to_vec());
        let err = call(&path, &Request::Status, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ClientError::BadReply(_)));
        t.join().unwrap();

        let t = serve(listener.try_clone().unwrap(), Vec::new());
        let err = call(&path, &Request::Status, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, ClientError::Closed));
        t.join().unwrap();
    }

    #[test]
    fn silence_times_out_and_a_missing_socket_fails_to_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let err = call(&path, &Request::Wait, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::TimedOut(_)), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        let err = call(
            &dir.path().join("none.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Connect(..)));
    }
}
