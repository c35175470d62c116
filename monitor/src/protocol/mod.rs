//! The monitor's socket protocol.
//!
//! Each connection carries one request: a JSON line of at most
//! [`MAX_REQUEST`] bytes (without its newline), answered by one JSON line,
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. After the `ok` reply
//! to an [`Request::Attach`], the connection carries frames both ways (see
//! [`frame`]).

mod frame;

pub use frame::{
    Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAX_FRAME, decode_resize, encode_frame,
    encode_resize,
};

use serde::{Deserialize, Serialize};

/// Longest request line the monitor reads (the newline not counted).
pub const MAX_REQUEST: usize = 4096;

/// Longest reply line a client reads (the newline not counted).
pub const MAX_REPLY: usize = 64 * 1024;

/// A request to the monitor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Starts the created container (once).
    Start,
    /// Reports the container's pid and state ([`Reply::status`]).
    Status,
    /// Sends `signal` to the container's init, or to all its processes.
    Kill {
        /// The signal's number.
        signal: i32,
        /// Every process of the container, not just its init.
        #[serde(default)]
        all: bool,
    },
    /// Reopens the CRI log file (after the kubelet rotated it).
    ReopenLog,
    /// Sets the size of the container's terminal.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Answered once the container has exited, with the exit ([`Reply::exit`]).
    Wait,
    /// Attaches to the container's streams: after the `ok` reply (whose
    /// [`Reply::tty`] says whether there is a terminal) the connection
    /// carries frames.
    Attach {
        /// Send input to the container.
        #[serde(default)]
        stdin: bool,
        /// Receive its standard output (its terminal, with a tty).
        #[serde(default)]
        stdout: bool,
        /// Receive its standard error (nothing with a tty).
        #[serde(default)]
        stderr: bool,
    },
}

/// A request or reply line is not valid.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line is longer than allowed
    #[error("the line is longer than {0} bytes")]
    TooLong(usize),
    /// The line is not the expected JSON
    #[error("malformed line: {0}")]
    Json(#[from] serde_json::Error),
}

/// Serializes `value` as one line, newline included.
fn to_line<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys, no foreign Serialize impls); fall back to an empty object anyway.
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parses one line (with or without its newline) of at most `max` bytes.
fn from_line<T: for<'de> Deserialize<'de>>(line: &[u8], max: usize) -> Result<T, LineError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > max {
        return Err(LineError::TooLong(max));
    }
    Ok(serde_json::from_slice(line)?)
}

impl Request {
    /// The request as a line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }

    /// Parses a request line (with or without its newline).
    pub fn from_line(line: &[u8]) -> Result<Self, LineError> {
        from_line(line, MAX_REQUEST)
    }
}

/// The state of a container as its monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Started and its init has not exited.
    Running,
    /// Its init has exited; the monitor is finishing (outputs, exit file).
    Exited,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The container's init pid (on the host).
    pub pid: i32,
    /// Its state.
    pub state: ContainerState,
    /// Whether it runs on a terminal.
    pub tty: bool,
}

/// How a container's init ended: the exit file's content, the `wait` reply
/// and the data of an exit frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit code; 128 + the signal's number when a signal killed it.
    pub exit_code: i32,
    /// When the monitor saw it exit, in nanoseconds since the Unix epoch.
    pub finished_at_ns: i64,
    /// Whether the kernel's OOM killer killed a process of its memory cgroup.
    pub oom_killed: bool,
}

impl Exit {
    /// The exit as JSON (no newline): the data of an exit frame.
    pub fn to_json(&self) -> Vec<u8> {
        let mut line = to_line(self);
        line.pop();
        line
    }

    /// Parses the JSON of an exit (at most [`MAX_FRAME`] bytes).
    pub fn from_json(data: &[u8]) -> Result<Self, LineError> {
        from_line(data, MAX_FRAME)
    }
}

/// The monitor's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// The answer to `wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// The answer to `attach`: whether the container runs on a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
}

impl Reply {
    /// A plain success.
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
            exit: None,
            tty: None,
        }
    }

    /// A refusal saying why.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::ok()
        }
    }

    /// The reply to `status`.
    pub fn status(status: Status) -> Self {
        Self {
            status: Some(status),
            ..Self::ok()
        }
    }

    /// The reply to `wait`.
    pub fn exit(exit: Exit) -> Self {
        Self {
            exit: Some(exit),
            ..Self::ok()
        }
    }

    /// The reply to `attach`.
    pub fn attached(tty: bool) -> Self {
        Self {
            tty: Some(tty),
            ..Self::ok()
        }
    }

    /// The reply as a line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self)
    }

    /// Parses a reply line (with or without its newline).
    pub fn from_line(line: &[u8]) -> Result<Self, LineError> {
        from_line(line, MAX_REPLY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        let cases = [
            (Request::Start, r#"{"op":"start"}"#),
            (Request::Status, r#"{"op":"status"}"#),
            (
                Request::Kill {
                    signal: 9,
                    all: true,
                },
                r#"{"op":"kill","signal":9,"all":true}"#,
            ),
            (Request::ReopenLog, r#"{"op":"reopen_log"}"#),
            (
                Request::Resize {
                    width: 80,
                    height: 24,
                },
                r#"{"op":"resize","width":80,"height":24}"#,
            ),
            (Request::Wait, r#"{"op":"wait"}"#),
            (
                Request::Attach {
                    stdin: true,
                    stdout: true,
                    stderr: false,
                },
                r#"{"op":"attach","stdin":true,"stdout":true,"stderr":false}"#,
            ),
        ];
        for (request, wire) in cases {
            let line = request.to_line();
            assert_eq!(line, format!("{wire}\n").into_bytes());
            assert_eq!(Request::from_line(&line).unwrap(), request);
            assert_eq!(Request::from_line(wire.as_bytes()).unwrap(), request);
        }
        assert_eq!(
            Request::from_line(br#"{"op":"kill","signal":15}"#).unwrap(),
            Request::Kill {
                signal: 15,
                all: false
            }
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        for bad in [
            &b"{"[..],
            b"",
            b"null",
            br#"{"op":"explode"}"#,
            br#"{"op":"kill"}"#,
            br#"{"op":"resize","width":-1,"height":2}"#,
            br#"{"op":"resize","width":70000,"height":2}"#,
            b"\xff\xfe",
        ] {
            assert!(Request::from_line(bad).is_err(), "{bad:?}");
        }
        let long = format!(r#"{{"op":"status","x":"{}"}}"#, "a".repeat(MAX_REQUEST));
        assert!(matches!(
            Request::from_line(long.as_bytes()),
            Err(LineError::TooLong(_))
        ));
    }

    #[test]
    fn replies_round_trip_and_omit_what_they_lack() {
        let exit = Exit {
            exit_code: 137,
            finished_at_ns: 1_700_000_000_123_456_789,
            oom_killed: false,
        };
        let status = Status {
            pid: 42,
            state: ContainerState::Created,
            tty: false,
        };
        assert_eq!(Reply::ok().to_line(), b"{\"ok\":true}\n");
        assert_eq!(
            Reply::error("no").to_line(),
            b"{\"ok\":false,\"error\":\"no\"}\n"
        );
        assert_eq!(
            Reply::status(status.clone()).to_line(),
            b"{\"ok\":true,\"status\":{\"pid\":42,\"state\":\"created\",\"tty\":false}}\n"
        );
        for reply in [
            Reply::ok(),
            Reply::error("x"),
            Reply::status(status),
            Reply::exit(exit),
            Reply::attached(true),
        ] {
            assert_eq!(Reply::from_line(&reply.to_line()).unwrap(), reply);
        }
        assert_eq!(
            exit.to_json(),
            br#"{"exit_code":137,"finished_at_ns":1700000000123456789,"oom_killed":false}"#
        );
        assert_eq!(Exit::from_json(&exit.to_json()).unwrap(), exit);
        assert!(Exit::from_json(b"{}").is_err());
    }
}
