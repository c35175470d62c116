//! A small QMP client: JSON lines over the QEMU monitor's unix socket.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// A QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Cannot reach the monitor socket
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    /// The monitor did not answer in time
    #[error("QMP: no answer within {0:?}")]
    Timeout(Duration),
    /// The connection closed
    #[error("QMP connection closed")]
    Closed,
    /// QEMU refused the command
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command sent.
        command: String,
        /// QMP error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected QMP session (capabilities negotiated).
#[derive(Debug)]
pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Value>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path, limit: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(limit, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout(limit))??;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(64);
        let (greeting_tx, greeting_rx) = oneshot::channel();
        let reader = tokio::spawn(read_loop(
            read,
            pending.clone(),
            events.clone(),
            greeting_tx,
        ));
        let client = Self {
            writer: tokio::sync::Mutex::new(write),
            pending,
            events,
            next_id: AtomicU64::new(1),
            reader,
        };
        tokio::time::timeout(limit, greeting_rx)
            .await
            .map_err(|_| QmpError::Timeout(limit))?
            .map_err(|_| QmpError::Closed)?;
        client.execute("qmp_capabilities", None, limit).await?;
        Ok(client)
    }

    /// Subscribes to QMP events sent from now on.
    pub fn events(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_with_fds(command, arguments, &[], limit).await
    }

    /// Runs `command`, handing `fds` to QEMU with it (`SCM_RIGHTS`), as
    /// `getfd` and `add-fd` expect; returns its `return` value.
    pub async fn execute_with_fds(
        &self,
        command: &str,
        arguments: Option<Value>,
        fds: &[BorrowedFd<'_>],
        limit: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let sent = {
            let mut writer = self.writer.lock().await;
            send(&mut writer, line.as_bytes(), fds).await
        };
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(e.into());
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
            Ok(Err(_)) => Err(QmpError::Closed),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout(limit))
            }
        }
    }
}

/// Writes `bytes`, the descriptors `fds` riding on the first of them.
async fn send(
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let mut done = 0;
    if !fds.is_empty() {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let stream: &UnixStream = writer.as_ref();
        done = loop {
            stream.writable().await?;
            let attempt = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let iov = [std::io::IoSlice::new(bytes)];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
    }
    writer.write_all(&bytes[done..]).await
}

/// One line from the monitor, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The greeting QEMU sends first.
    Greeting,
    /// An asynchronous event (the whole message).
    Event(Value),
    /// The answer to command `id`: its `return`, or the error's class and description.
    Reply {
        /// The id the command was sent with.
        id: u64,
        /// `return`, or `(class, desc)` of `error`.
        answer: Result<Value, (String, String)>,
    },
    /// Valid JSON that is none of these (ignored).
    Other,
}

impl Incoming {
    /// Classifies `line`; `None` if it is not JSON.
    pub fn parse(line: &str) -> Option<Self> {
        let msg = serde_json::from_str::<Value>(line).ok()?;
        Some(if msg.get("QMP").is_some() {
            Self::Greeting
        } else if msg.get("event").is_some() {
            Self::Event(msg)
        } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let answer = match (msg.get("return"), msg.get("error")) {
                (Some(ret), _) => Ok(ret.clone()),
                (None, Some(err)) => Err((
                    err["class"].as_str().unwrap_or("GenericError").to_owned(),
                    err["desc"].as_str().unwrap_or("").to_owned(),
                )),
                (None, None) => Ok(Value::Null),
            };
            Self::Reply { id, answer }
        } else {
            Self::Other
        })
    }
}

async fn read_loop(
    read: tokio::net::unix::OwnedReadHalf,
    pending: Pending,
    events: broadcast::Sender<Value>,
    greeting: oneshot::Sender<()>,
) {
    let mut greeting = Some(greeting);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match Incoming::parse(&line) {
            None => tracing::debug!("QMP: unparsable line {line:?}"),
            Some(Incoming::Greeting) => {
                if let Some(tx) = greeting.take() {
                    let _ = tx.send(());
                }
            }
            Some(Incoming::Event(event)) => {
                let _ = events.send(event);
            }
            Some(Incoming::Reply { id, answer }) => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(answer);
                }
            }
            Some(Incoming::Other) => {}
        }
    }
    lock(&pending).clear();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A scripted QMP monitor for tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// Greets each connection on `listener` and answers `qmp_capabilities`;
    /// for every other command writes the lines `answer(command, arguments,
    /// id)` returns (replies and events, in order).
    pub(crate) async fn scripted_monitor(
        listener: UnixListener,
        mut answer: impl FnMut(&str, &Value, &Value) -> Vec<Value>,
    ) {
        while let Ok((stream, _)) = listener.accept().await {
            let (read, mut write) = stream.into_split();
            write
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).unwrap();
                let id = msg["id"].clone();
                let command = msg["execute"].as_str().unwrap();
                let out = match command {
                    "qmp_capabilities" => vec![json!({"return": {}, "id": id})],
                    _ => answer(command, &msg["arguments"], &id),
                };
                for line in out {
                    write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .unwrap();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// Answers `query-status` with a `STOP` event first; anything else is unknown.
    fn answer(command: &str, _args: &Value, id: &Value) -> Vec<Value> {
        match command {
            "query-status" => vec![
                json!({"event": "STOP", "data": {}}),
                json!({"return": {"status": "running", "running": true}, "id": id}),
            ],
            _ => vec![json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id})],
        }
    }

    #[tokio::test]
    async fn commands_errors_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(testing::scripted_monitor(listener, answer));
        let limit = Duration::from_secs(5);
        let qmp = QmpClient::connect(&path, limit).await.unwrap();
        let mut events = qmp.events();
        let status = qmp.execute("query-status", None, limit).await.unwrap();
        assert_eq!(status["status"], "running");
        assert_eq!(events.recv().await.unwrap()["event"], "STOP");
        let err = qmp
            .execute("bogus", Some(json!({"a": 1})), limit)
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
    }

    #[test]
    fn lines_are_classified() {
        assert_eq!(
            Incoming::parse(r#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Some(Incoming::Greeting)
        );
        assert_eq!(
            Incoming::parse(r#"{"return": {"fd": 3}, "id": 4}"#),
            Some(Incoming::Reply {
                id: 4,
                answer: Ok(json!({"fd": 3}))
            })
        );
        assert_eq!(
            Incoming::parse(r#"{"error": {"class": "DeviceNotFound", "desc": "no"}, "id": 5}"#),
            Some(Incoming::Reply {
                id: 5,
                answer: Err(("DeviceNotFound".into(), "no".into()))
            })
        );
        // An error without its fields still answers the command.
        assert_eq!(
            Incoming::parse(r#"{"error": 7, "id": 6}"#),
            Some(Incoming::Reply {
                id: 6,
                answer: Err(("GenericError".into(), String::new()))
            })
        );
        let event = r#"{"event": "DEVICE_DELETED", "data": {"device": "d"}}"#;
        assert!(matches!(Incoming::parse(event), Some(Incoming::Event(_))));
        assert_eq!(Incoming::parse(r#"{"id": -1}"#), Some(Incoming::Other));
        assert_eq!(Incoming::parse("[1, 2]"), Some(Incoming::Other));
        assert_eq!(Incoming::parse("not json"), None);
    }
}
