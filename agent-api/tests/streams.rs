//! The host side of interactive streams against a scripted fake agent:
//! credit-based flow control, exit codes, and loss on reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_api::messages::{ExecStart, Response};
use agent_api::streams::{
    Channel, StreamEnd, WINDOW, close_frame, data_frame, eof_frame, split_payload, window_credit,
};
use agent_api::{
    AgentClient, Decoder, Frame, FrameKind, Hello, Request, StreamError, StreamEvent, Transport,
    Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

#[derive(Debug)]
struct FakeTransport(mpsc::UnboundedSender<DuplexStream>);

#[async_trait::async_trait]
impl Transport for FakeTransport {
    async fn connect(&self) -> std::io::Result<Box<dyn agent_api::client::Stream>> {
        let (host, agent) = tokio::io::duplex(1 << 20);
        self.0
            .send(agent)
            .map_err(|_| std::io::Error::other("agent gone"))?;
        Ok(Box::new(host))
    }
}

/// One fake agent connection: answers the handshake and an `ExecStart` by
/// sending `output` within the host's credit, echoing stdin, then exit 7.
async fn fake_agent(mut io: DuplexStream, output: Vec<u8>, max_in_flight: Arc<AtomicUsize>) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stream = None;
    let mut credit = WINDOW as usize;
    let mut sent = 0usize;
    let mut stdin = Vec::new();
    loop {
        // Send what the credit allows.
        if let Some(id) = stream {
            while sent < output.len() && credit > 0 {
                let n = (output.len() - sent).min(credit).min(32 * 1024);
                let frame = data_frame(id, Channel::Stdout, &output[sent..sent + n]);
                io.write_all(&frame.encode()).await.unwrap();
                sent += n;
                credit -= n;
                let in_flight = WINDOW as usize - credit;
                max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
            }
        }
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame() {
            match frame.kind {
                FrameKind::Hello => {
                    let hello: Hello = frame.parse().unwrap();
                    let welcome = Welcome {
                        session: hello.session,
                        protocol: agent_api::PROTOCOL_VERSION,
                        agent_version: "test".into(),
                        boot_id: "boot".into(),
                    };
                    let f = Frame::json(FrameKind::Welcome, hello.session, &welcome);
                    io.write_all(&f.encode()).await.unwrap();
                }
                FrameKind::Request => {
                    let Request::ExecStart(ExecStart { stream: id, .. }) = frame.parse().unwrap()
                    else {
                        panic!("unexpected request");
                    };
                    stream = Some(id);
                    let answer: Result<Response, agent_api::AgentError> = Ok(Response::Done);
                    let f = Frame::json(FrameKind::Response, frame.id, &answer);
                    io.write_all(&f.encode()).await.unwrap();
                }
                FrameKind::StreamWindow => {
                    credit += window_credit(&frame.payload).unwrap() as usize;
                }
                FrameKind::StreamData => {
                    let (_, data) = split_payload(&frame.payload).unwrap();
                    stdin.extend_from_slice(data);
                }
                FrameKind::StreamEof => {
                    let id = frame.id;
                    let f = data_frame(id, Channel::Stderr, &stdin);
                    io.write_all(&f.encode()).await.unwrap();
                    for c in [Channel::Stdout, Channel::Stderr] {
                        io.write_all(&eof_frame(id, c).encode()).await.unwrap();
                    }
                    let end = StreamEnd {
                        exit_code: Some(7),
                        error: None,
                    };
                    io.write_all(&close_frame(id, &end).encode()).await.unwrap();
                }
                _ => {}
            }
        }
    }
}

fn exec(stream: u64) -> Request {
    Request::ExecStart(ExecStart {
        stream,
        id: "c".into(),
        args: vec!["x".into()],
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    })
}

#[tokio::test]
async fn output_flows_within_credit_and_the_exit_code_arrives() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = AgentClient::new(Arc::new(FakeTransport(tx)));
    let output: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    {
        let (output, max) = (output.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            let io = rx.recv().await.unwrap();
            fake_agent(io, output, max).await;
        });
    }
    let mut stream = client
        .open_stream(exec, Duration::from_secs(5))
        .await
        .unwrap();
    let sender = stream.sender();
    let mut got = Vec::new();
    let mut stderr = Vec::new();
    let end = loop {
        // Read slowly at first: the agent must wait for credit, not flood.
        if got.len() < 600_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match stream.recv().await.unwrap() {
            StreamEvent::Data(Channel::Stdout, d) => {
                got.extend_from_slice(&d);
                if got.len() == output.len() {
                    sender.send(b"typed").await.unwrap();
                    sender.eof().await.unwrap();
                }
            }
            StreamEvent::Data(_, d) => stderr.extend_from_slice(&d),
            StreamEvent::Eof(_) => {}
            StreamEvent::End(end) => break end,
        }
    };
    assert!(got == output, "output corrupted");
    assert_eq!(stderr, b"typed");
    assert_eq!(end.exit_code, Some(7));
    assert!(max_in_flight.load(Ordering::SeqCst) <= WINDOW as usize);
    assert!(matches!(stream.recv().await, Err(StreamError::Ended)));
}

#[tokio::test]
async fn a_lost_connection_fails_the_stream_and_the_next_session_is_clean() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = AgentClient::new(Arc::new(FakeTransport(tx)));
    let agents = tokio::spawn(async move {
        // The first connection dies after the exec started.
        let first = rx.recv().await.unwrap();
        let task = tokio::spawn(fake_agent(first, vec![1; 1000], Arc::default()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        task.abort();
        let second = rx.recv().await.unwrap();
        fake_agent(second, vec![2; 10], Arc::default()).await;
    });
    let mut lost = client
        .open_stream(exec, Duration::from_secs(5))
        .await
        .unwrap();
    let mut first = Vec::new();
    let err = loop {
        match lost.recv().await {
            Ok(StreamEvent::Data(_, d)) => first.extend_from_slice(&d),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StreamError::Disconnected));
    assert_eq!(first, vec![1; 1000]);
    assert!(lost.sender().send(b"x").await.is_err());
    let mut fresh = client
        .open_stream(exec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(fresh.id(), lost.id());
    match fresh.recv().await.unwrap() {
        StreamEvent::Data(Channel::Stdout, d) => assert_eq!(d, vec![2; 10]),
        other => panic!("unexpected {other:?}"),
    }
    agents.abort();
}
