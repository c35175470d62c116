//! Exec, attach and port-forward sessions of the streaming server, carried to
//! the pod VM's agent as interactive streams.

use std::sync::Arc;
use std::time::Duration;

use agent_api::messages::{AgentErrorKind, ExecStart};
use agent_api::streams::Channel;
use agent_api::{AgentClient, AgentStream, CallError, Request, StreamEvent, calls};
use runtime_api::streams::{AttachRequest, BoxWrite, Duplex, ExecRequest, StreamIo};
use runtime_api::{ContainerRecord, ContainerStreams, SandboxRecord, SessionError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::VmRuntime;

/// How long the agent gets to start an exec or open a connection.
const OPEN_CALL: Duration = Duration::from_secs(30);
/// Buffer of the in-memory pipe handed to the server for a forwarded port.
const FORWARD_BUFFER: usize = 64 * 1024;

fn open_error(what: &str, e: CallError) -> SessionError {
    match e {
        CallError::Agent(a) if a.kind == AgentErrorKind::NotFound => {
            SessionError::NotFound(a.message)
        }
        other => SessionError::Failed(format!("{what}: {other}")),
    }
}

impl VmRuntime {
    fn stream_agent(&self, sandbox: &SandboxRecord) -> Result<Arc<AgentClient>, SessionError> {
        self.vm(&sandbox.id)
            .map(|vm| vm.agent.clone())
            .ok_or_else(|| SessionError::NotFound(format!("running pod sandbox {}", sandbox.id)))
    }
}

/// Carries a session's streams to and from an agent stream until it ends;
/// returns the exit code the agent reported, if any.
async fn pump(
    agent: Arc<AgentClient>,
    mut stream: AgentStream,
    io: StreamIo,
) -> Result<Option<i32>, SessionError> {
    let sender = stream.sender();
    let stdin_task = io.stdin.map(|mut src| {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; agent_api::streams::MAX_CHUNK];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sender.eof().await;
        })
    });
    let resize_task = io.resize.map(|mut sizes| {
        let (agent, id) = (agent.clone(), stream.id());
        tokio::spawn(async move {
            while let Some(size) = sizes.recv().await {
                let request = calls::Resize {
                    stream: id,
                    width: size.width,
                    height: size.height,
                };
                if let Err(e) = agent.request(request, OPEN_CALL).await {
                    tracing::debug!(stream = id, "resize failed: {e}");
                }
            }
        })
    });
    let mut stdout: Option<BoxWrite> = io.stdout;
    let mut stderr: Option<BoxWrite> = io.stderr;
    let result = loop {
        let event = match stream.recv().await {
            Ok(e) => e,
            Err(e) => break Err(SessionError::Failed(e.to_string())),
        };
        match event {
            StreamEvent::Data(channel, data) => {
                let out = match channel {
                    Channel::Stdout => &mut stdout,
                    Channel::Stderr => &mut stderr,
                    Channel::Stdin => continue,
                };
                if let Some(w) = out
                    && w.write_all(&data).await.is_err()
                {
                    // The client stopped reading this stream; keep the others.
                    *out = None;
                }
            }
            StreamEvent::Eof(channel) => {
                let out = match channel {
                    Channel::Stdout => stdout.take(),
                    Channel::Stderr => stderr.take(),
                    Channel::Stdin => None,
                };
                if let Some(mut w) = out {
                    let _ = w.shutdown().await;
                }
            }
            StreamEvent::End(end) => match end.error {
                Some(e) => break Err(SessionError::Failed(e)),
                None => break Ok(end.exit_code),
            },
        }
    };
    for w in [stdout.take(), stderr.take()].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    result
}

#[async_trait::async_trait]
impl ContainerStreams for VmRuntime {
    async fn exec(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        req: &ExecRequest,
        io: StreamIo,
    ) -> Result<i32, SessionError> {
        let agent = self.stream_agent(sandbox)?;
        let start = ExecStart {
            stream: 0,
            id: container.id.clone(),
            args: req.cmd.clone(),
            tty: req.tty,
            stdin: io.stdin.is_some(),
            stdout: io.stdout.is_some(),
            stderr: io.stderr.is_some() && !req.tty,
        };
        let stream = agent
            .open_stream(
                |stream| Request::ExecStart(ExecStart { stream, ..start }),
                OPEN_CALL,
            )
            .await
            .map_err(|e| open_error("start the command", e))?;
        let code = pump(agent, stream, io).await?;
        code.ok_or_else(|| SessionError::Failed("the agent reported no exit code".into()))
    }

    async fn attach(
        &self,
        sandbox: &SandboxRecord,
        container: &ContainerRecord,
        req: &AttachRequest,
        io: StreamIo,
    ) -> Result<(), SessionError> {
        let agent = self.stream_agent(sandbox)?;
        let (id, stdin, stdout, stderr) = (
            container.id.clone(),
            io.stdin.is_some(),
            io.stdout.is_some(),
            io.stderr.is_some() && !req.tty,
        );
        let stream = agent
            .open_stream(
                |stream| Request::Attach {
                    stream,
                    id,
                    stdin,
                    stdout,
                    stderr,
                },
                OPEN_CALL,
            )
            .await
            .map_err(|e| open_error("attach to the container", e))?;
        pump(agent, stream, io).await.map(drop)
    }

    async fn port_forward(
        &self,
        sandbox: &SandboxRecord,
        port: u16,
    ) -> Result<Box<dyn Duplex>, SessionError> {
        let agent = self.stream_agent(sandbox)?;
        let mut stream = agent
            .open_stream(|stream| Request::PortForward { stream, port }, OPEN_CALL)
            .await
            .map_err(|e| open_error(&format!("connect to port {port}"), e))?;
        let (ours, theirs) = tokio::io::duplex(FORWARD_BUFFER);
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(ours);
            let sender = stream.sender();
            let mut up = tokio::spawn(async move {
                let mut buf = vec![0u8; agent_api::streams::MAX_CHUNK];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sender.send(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sender.eof().await;
            });
            let (mut writing, mut up_done) = (true, false);
            loop {
                tokio::select! {
                    event = stream.recv() => match event {
                        Ok(StreamEvent::Data(_, data)) => {
                            if writing && wr.write_all(&data).await.is_err() {
                                writing = false;
                            }
                        }
                        Ok(StreamEvent::Eof(_)) => {
                            let _ = wr.shutdown().await;
                            writing = false;
                        }
                        Ok(StreamEvent::End(_)) | Err(_) => break,
                    },
                    _ = &mut up, if !up_done => {
                        up_done = true;
                    }
                }
                // The server dropped its end: nothing more will be read or
                // written, so the agent's connection can go.
                if up_done && !writing {
                    break;
                }
            }
            up.abort();
            // Dropping `stream` cancels it at the agent if it is still open.
        });
        Ok(Box::new(theirs))
    }
}
