//! Exec, attach and port-forward sessions of host containers: an exec is a
//! `frakti-monitor exec` helper wired to the session; an attach is a
//! connection to the container's monitor carrying framed stdio; a
//! forwarded port is a TCP connection made inside the pod's network
//! namespace (or on the node's loopback for a host-network pod).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use monitor::protocol::{FrameDecoder, FrameKind, Request, encode_frame, encode_resize};
use runtime_api::streams::{AttachRequest, Duplex, ExecRequest, StreamIo};
use runtime_api::{ContainerRecord, ContainerStreams, SandboxRecord, SessionError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::{self, HostContainer, HostSandbox};
use crate::exec;
use crate::runtime::HostRuntime;

/// How long a terminal exec may take to hand over its terminal.
const TERMINAL_WAIT: Duration = Duration::from_secs(30);
/// Largest answer line a monitor may send before attach frames start.
const REPLY_LIMIT: usize = 4096;

fn failed(e: impl std::fmt::Display) -> SessionError {
    SessionError::Failed(e.to_string())
}

fn container_state(container: &ContainerRecord) -> Result<HostContainer, SessionError> {
    config::parse("container", &container.runtime_state).map_err(failed)
}

/// Copies `src` into `dst` until EOF (or until `dst` fails), then shuts
/// `dst` down; nothing when either end is missing.
async fn copy_then_close(
    src: Option<impl tokio::io::AsyncRead + Unpin>,
    dst: Option<impl tokio::io::AsyncWrite + Unpin>,
) {
    let (Some(mut src), Some(mut dst)) = (src, dst) else {
        return;
    };
    let _ = tokio::io::copy(&mut src, &mut dst).await;
    let _ = dst.shutdown().await;
}

fn dup(fd: &OwnedFd) -> Result<std::fs::File, SessionError> {
    fd.try_clone().map(std::fs::File::from).map_err(failed)
}

/// Runs a terminal exec: the helper sends the terminal's master to a
/// console socket; the session talks to the master.
async fn exec_on_terminal(
    runtime: &HostRuntime,
    c: &HostContainer,
    req: &ExecRequest,
    io: StreamIo,
) -> Result<i32, SessionError> {
    let path = exec::console_socket_path(c);
    let socket = container::console::ConsoleSocket::bind(path.clone()).map_err(failed)?;
    let exec = exec::spawn(
        &runtime.config,
        c,
        &req.cmd,
        Some(&path),
        [false, false, false],
    )
    .map_err(|e| SessionError::Failed(runtime_api::report(&e)))?;
    let master = match exec::receive_terminal(socket, TERMINAL_WAIT).await {
        Ok(m) => m,
        Err(e) => {
            exec.terminate();
            // The helper's report says best why it did not start.
            return match exec.finish().await {
                Err(report) => Err(session_error(report)),
                Ok(_) => Err(SessionError::Failed(runtime_api::report(&e))),
            };
        }
    };
    let reader = tokio::fs::File::from_std(dup(&master)?);
    let writer = tokio::fs::File::from_std(dup(&master)?);
    let resize = io.resize.map(|mut sizes| {
        let master = master.try_clone();
        tokio::spawn(async move {
            let Ok(master) = master else { return };
            while let Some(size) = sizes.recv().await {
                let _ = container::console::set_size(master.as_fd(), size.width, size.height);
            }
        })
    });
    let input = tokio::spawn(copy_then_close(io.stdin, Some(writer)));
    let output = tokio::spawn(copy_then_close(Some(reader), io.stdout));
    let code = exec.finish().await;
    // The terminal reports EIO to the reader once the process is gone.
    let _ = output.await;
    input.abort();
    if let Some(r) = resize {
        r.abort();
    }
    drop(master);
    code.map_err(session_error)
}

fn session_error(e: runtime_api::RuntimeError) -> SessionError {
    if e.kind == runtime_api::RuntimeErrorKind::NotFound {
        SessionError::NotFound(e.message)
    } else {
        SessionError::Failed(runtime_api::report(&e))
    }
}

#[async_trait::async_trait]
impl ContainerStreams for HostRuntime {
    async fn exec(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
        req: &ExecRequest,
        io: StreamIo,
    ) -> Result<i32, SessionError> {
        let c = container_state(container)?;
        if req.tty {
            return exec_on_terminal(self, &c, req, io).await;
        }
        let mut exec = exec::spawn(
            &self.config,
            &c,
            &req.cmd,
            None,
            [io.stdin.is_some(), io.stdout.is_some(), io.stderr.is_some()],
        )
        .map_err(session_error)?;
        let input = exec
            .child
            .stdin
            .take()
            .map(|w| tokio::spawn(copy_then_close(io.stdin, Some(w))));
        let stdout = exec
            .child
            .stdout
            .take()
            .map(|r| tokio::spawn(copy_then_close(Some(r), io.stdout)));
        let stderr = exec
            .child
            .stderr
            .take()
            .map(|r| tokio::spawn(copy_then_close(Some(r), io.stderr)));
        let code = exec.finish().await;
        for out in [stdout, stderr].into_iter().flatten() {
            let _ = out.await;
        }
        if let Some(input) = input {
            input.abort();
        }
        code.map_err(session_error)
    }

    async fn attach(
        &self,
        _sandbox: &SandboxRecord,
        container: &ContainerRecord,
        _req: &AttachRequest,
        io: StreamIo,
    ) -> Result<(), SessionError> {
        let c = container_state(container)?;
        let stream = tokio::net::UnixStream::connect(c.socket())
            .await
            .map_err(|e| {
                SessionError::NotFound(format!("running container {}: {e}", container.id))
            })?;
        let (rd, mut wr) = stream.into_split();
        let request = Request::Attach {
            stdin: io.stdin.is_some(),
            stdout: io.stdout.is_some(),
            stderr: io.stderr.is_some(),
        };
        let mut line = serde_json::to_vec(&request).map_err(failed)?;
        line.push(b'\n');
        wr.write_all(&line).await.map_err(failed)?;
        let mut rd = BufReader::new(rd);
        let mut answer = Vec::new();
        (&mut rd)
            .take(REPLY_LIMIT as u64)
            .read_until(b'\n', &mut answer)
            .await
            .map_err(failed)?;
        let reply: monitor::protocol::Reply = serde_json::from_slice(&answer)
            .map_err(|e| failed(format!("unreadable answer from the monitor: {e}")))?;
        if !reply.ok {
            return Err(SessionError::Failed(format!(
                "attach: {}",
                reply.error.unwrap_or_default()
            )));
        }
        let (mut stdout, mut stderr) = (io.stdout, io.stderr);
        let upstream = tokio::spawn(async move {
            let resize = io.resize;
            let mut stdin = io.stdin;
            let mut resize = resize;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                tokio::select! {
                    read = async {
                        match stdin.as_mut() {
                            Some(s) => s.read(&mut buf).await,
                            None => std::future::pending().await,
                        }
                    } => match read {
                        Ok(0) | Err(_) => {
                            stdin = None;
                            if wr.write_all(&encode_frame(FrameKind::CloseStdin, &[])).await.is_err() {
                                return;
                            }
                        }
                        Ok(n) => {
                            if wr.write_all(&encode_frame(FrameKind::Stdin, &buf[..n])).await.is_err() {
                                return;
                            }
                        }
                    },
                    size = async {
                        match resize.as_mut() {
                            Some(r) => r.recv().await,
                            None => std::future::pending().await,
                        }
                    } => match size {
                        None => resize = None,
                        Some(size) => {
                            if wr.write_all(&encode_resize(size.width, size.height)).await.is_err() {
                                return;
                            }
                        }
                    },
                }
            }
        });
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let result = 'session: loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(failed(e)),
            };
            decoder.push(&buf[..n]);
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => break 'session Err(failed(e)),
                };
                let out = match frame.kind {
                    FrameKind::Stdout => &mut stdout,
                    FrameKind::Stderr => &mut stderr,
                    FrameKind::Exit => break 'session Ok(()),
                    _ => continue,
                };
                if let Some(w) = out
                    && w.write_all(&frame.data).await.is_err()
                {
                    *out = None;
                }
            }
        };
        upstream.abort();
        for w in [stdout.take(), stderr.take()].into_iter().flatten() {
            let mut w = w;
            let _ = w.shutdown().await;
        }
        result
    }

    async fn port_forward(
        &self,
        sandbox: &SandboxRecord,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        let pod: HostSandbox = config::parse("sandbox", &sandbox.runtime_state).map_err(failed)?;
        let netns = pod.netns.clone();
        let stream = tokio::task::spawn_blocking(move || connect_in(netns, port))
            .await
            .map_err(failed)??;
        stream.set_nonblocking(true).map_err(failed)?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(failed)?;
        Ok(Box::new(stream))
    }
}

/// Connects to `port` on the loopback of the network namespace at `netns`
/// (`None`: the node's own), on a thread of its own that enters it.
fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<std::net::TcpStream, SessionError> {
    let connect = move || -> Result<std::net::TcpStream, SessionError> {
        if let Some(path) = &netns {
            let ns = std::fs::File::open(path)
                .map_err(|e| SessionError::NotFound(format!("pod network namespace: {e}")))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| failed(format!("enter the pod's network namespace: {e}")))?;
        }
        let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(10))
            .or_else(|_| std::net::TcpStream::connect_timeout(&v6, Duration::from_secs(10)))
            .map_err(|e| failed(format!("connect to port {port} in the pod: {e}")))
    };
    // setns moves only the calling thread, which must not go back to a pool.
    std::thread::spawn(connect)
        .join()
        .unwrap_or_else(|_| Err(failed("the port-forward thread panicked")))
}
