//! A `StreamingRuntime` backed by real host processes and TCP, for the
//! protocol tests: exec runs the command on the host (on a pty for tty),
//! attach runs `cat`, port-forward dials 127.0.0.1.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use streaming::{
    AttachRequest, Duplex, ExecRequest, ServerConfig, SessionError, StreamIo, StreamingRuntime,
    StreamingServer, TerminalSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

pub const CONTAINER: &str = "c1";
pub const POD: &str = "p1";

#[derive(Debug, Default)]
pub struct HostRuntime;

fn failed(e: impl std::fmt::Display) -> SessionError {
    SessionError::Failed(e.to_string())
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn run_piped(cmd: &[String], io: StreamIo) -> Result<i32, SessionError> {
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(pipe(io.stdin.is_some()))
        .stdout(pipe(io.stdout.is_some()))
        .stderr(pipe(io.stderr.is_some()))
        .kill_on_drop(true)
        .spawn()
        .map_err(failed)?;
    let stdin_task = match (io.stdin, child.stdin.take()) {
        (Some(mut src), Some(mut dst)) => Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut dst).await;
            // Dropping the pipe gives the process EOF.
        })),
        _ => None,
    };
    let mut outputs = Vec::new();
    if let (Some(mut src), Some(mut dst)) = (child.stdout.take(), io.stdout) {
        outputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut dst).await;
            let _ = dst.shutdown().await;
        }));
    }
    if let (Some(mut src), Some(mut dst)) = (child.stderr.take(), io.stderr) {
        outputs.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut src, &mut dst).await;
            let _ = dst.shutdown().await;
        }));
    }
    let status = child.wait().await.map_err(failed)?;
    for o in outputs {
        let _ = o.await;
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(exit_code(status))
}

fn set_size(master: &File, size: TerminalSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for
    // the call; the fd is an open pty master.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

async fn run_tty(cmd: &[String], io: StreamIo) -> Result<i32, SessionError> {
    let pty = nix::pty::openpty(None, None).map_err(failed)?;
    let master = File::from(pty.master);
    let slave: OwnedFd = pty.slave;
    let mut command = Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .stdin(Stdio::from(slave.try_clone().map_err(failed)?))
        .stdout(Stdio::from(slave.try_clone().map_err(failed)?))
        .stderr(Stdio::from(slave))
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec: setsid and
    // an ioctl making stdin (the pty slave) the controlling terminal.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(failed)?;
    drop(command);
    let master = Arc::new(master);
    if let Some(mut sizes) = io.resize {
        let m = master.clone();
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                set_size(&m, size);
            }
        });
    }
    // Terminal output: a thread reads the master until the slave side closes.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(4);
    let reader = {
        let mut m = master.try_clone().map_err(failed)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 || out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        })
    };
    let out_task = io.stdout.map(|mut dst| {
        tokio::spawn(async move {
            while let Some(chunk) = out_rx.recv().await {
                if dst.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = dst.shutdown().await;
        })
    });
    let in_task = io.stdin.map(|mut src| {
        let mut m = master.try_clone().expect("dup pty master");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = src.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let chunk = buf[..n].to_vec();
                let r = tokio::task::block_in_place(|| m.write_all(&chunk));
                if r.is_err() {
                    break;
                }
            }
        })
    });
    let status = child.wait().await.map_err(failed)?;
    drop(master);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    if let Some(t) = out_task {
        let _ = t.await;
    }
    if let Some(t) = in_task {
        t.abort();
    }
    Ok(exit_code(status))
}

#[async_trait]
impl StreamingRuntime for HostRuntime {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, SessionError> {
        if req.container_id != CONTAINER {
            return Err(SessionError::NotFound(format!(
                "container {}",
                req.container_id
            )));
        }
        if io.tty {
            run_tty(&req.cmd, io).await
        } else {
            run_piped(&req.cmd, io).await
        }
    }

    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), SessionError> {
        if req.container_id != CONTAINER {
            return Err(SessionError::NotFound(format!(
                "container {}",
                req.container_id
            )));
        }
        let cmd = ["cat".to_owned()];
        let code = run_piped(&cmd, io).await?;
        if code == 0 {
            Ok(())
        } else {
            Err(SessionError::Failed(format!(
                "main process exited with {code}"
            )))
        }
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        if pod_sandbox_id != POD {
            return Err(SessionError::NotFound(format!(
                "pod sandbox {pod_sandbox_id}"
            )));
        }
        let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(failed)?;
        Ok(Box::new(conn))
    }
}

pub async fn server() -> StreamingServer {
    StreamingServer::bind(ServerConfig::default(), Arc::new(HostRuntime))
        .await
        .expect("bind streaming server")
}

/// A server that always enforces SPDY send windows: a client that does not
/// credit them stalls instead of being let through.
pub async fn strict_server() -> StreamingServer {
    let mut config = ServerConfig::default();
    config.spdy.legacy_flow_control_after = None;
    StreamingServer::bind(config, Arc::new(HostRuntime))
        .await
        .expect("bind streaming server")
}

pub fn exec_req(cmd: &[&str], stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: CONTAINER.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// A tiny HTTP/1.0 server on 127.0.0.1 answering every request with `body`
/// followed by the request line; returns its port.
pub async fn http_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let payload = format!("{body} {line}");
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{payload}",
                    payload.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}
