//! A hostile agent against the host's client: it ignores flow control,
//! sends garbage instead of frames, or never answers. The host takes a
//! bounded amount from it, disconnects it, and the misbehaving agent costs
//! only its own connection: another agent's calls go on.

use std::sync::Arc;
use std::time::Duration;

use agent_api::fake::{self, ConnWriter, FakeAgent};
use agent_api::frame::{HEADER_LEN, MAGIC, MAX_PAYLOAD};
use agent_api::messages::{ExecStart, Response};
use agent_api::streams::{Channel, MAX_CHUNK, WINDOW, data_frame};
use agent_api::{AgentClient, CallError, FrameKind, Request, StreamError, StreamEvent};

/// What a hostile agent tries to push at the host in each test.
const FLOOD: usize = 64 << 20;
/// The most the host may take from it: the window, the decoder's read
/// buffer and the pipe's own buffer (1 MiB), with room to spare.
const BOUND: usize = 8 << 20;

/// Writes `chunk` until `FLOOD` bytes went out or a write blocks for a
/// second (the host stopped reading); returns the bytes written.
async fn flood(writer: ConnWriter, chunk: Vec<u8>) -> usize {
    let mut sent = 0;
    while sent < FLOOD {
        match tokio::time::timeout(Duration::from_secs(1), writer.send_raw(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    sent
}

fn exec(stream: u64) -> Request {
    Request::ExecStart(ExecStart {
        stream,
        id: "c".into(),
        args: vec!["yes".into()],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
    })
}

/// A well-behaved agent's client, used while a hostile one floods.
fn bystander() -> AgentClient {
    FakeAgent::new(|_| Ok(Response::Pong)).client()
}

#[tokio::test]
async fn an_agent_that_ignores_flow_control_is_disconnected_not_buffered() {
    // Full data frames, then empty ones (each an event with no bytes).
    for payload in [vec![7u8; MAX_CHUNK], Vec::new()] {
        let (transport, mut rx) = fake::pipe();
        let client = AgentClient::new(Arc::new(transport));
        let agent = tokio::spawn(async move {
            let mut conn = rx.recv().await.unwrap();
            let frame = conn.recv().await.unwrap();
            let Request::ExecStart(ExecStart { stream, .. }) = frame.parse().unwrap() else {
                panic!("expected ExecStart");
            };
            conn.answer(frame.id, &Ok(Response::Done)).await.unwrap();
            let bytes = data_frame(stream, Channel::Stdout, &payload).encode();
            let chunk = bytes.repeat((MAX_CHUNK / bytes.len()).max(1));
            flood(conn.writer(), chunk).await
        });
        let mut stream = client
            .open_stream(exec, Duration::from_secs(5))
            .await
            .unwrap();
        // The host reads nothing from the stream while the agent floods; another pod's agent is served meanwhile.
        let other = bystander();
        let sent = loop {
            if agent.is_finished() {
                break agent.await.unwrap();
            }
            let pong = other.call(&Request::Ping, Duration::from_secs(5)).await;
            assert!(matches!(pong, Ok(Response::Pong)), "{pong:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(sent < BOUND, "the host took {sent} bytes beyond the window");
        // What arrived within the window is there; then the stream is lost.
        let mut got = 0;
        let end = loop {
            match stream.recv().await {
                Ok(StreamEvent::Data(_, data)) => got += data.len(),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(matches!(end, StreamError::Disconnected), "{end}");
        assert!(got <= WINDOW as usize, "{got} bytes queued");
    }
}

#[tokio::test]
async fn an_agent_that_sends_garbage_is_disconnected() {
    let zeros = vec![0u8; 64 << 10];
    // A header that checks out but a payload whose checksum does not.
    let mut bad_crc = MAGIC.to_vec();
    bad_crc.extend_from_slice(&[FrameKind::Response as u8, 0, 0, 0]);
    bad_crc.extend_from_slice(&1u64.to_le_bytes());
    bad_crc.extend_from_slice(&1000u32.to_le_bytes());
    bad_crc.extend_from_slice(&0u32.to_le_bytes());
    bad_crc.resize(HEADER_LEN + 1000, b'x');
    // Headers that claim more than a frame may hold.
    let mut oversized = MAGIC.to_vec();
    oversized.extend_from_slice(&[FrameKind::Response as u8, 0, 0, 0]);
    oversized.extend_from_slice(&1u64.to_le_bytes());
    oversized.extend_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    oversized.extend_from_slice(&0u32.to_le_bytes());
    for (what, garbage) in [
        ("zeros", zeros),
        ("bad checksums", bad_crc.repeat(64)),
        ("oversized lengths", oversized.repeat(1024)),
    ] {
        let (transport, mut rx) = fake::pipe();
        let client = AgentClient::new(Arc::new(transport));
        let agent = tokio::spawn(async move {
            let mut conn = rx.recv().await.unwrap();
            // The request is left unanswered; garbage comes instead.
            let _request = conn.recv().await.unwrap();
            flood(conn.writer(), garbage).await
        });
        let answer = client.call(&Request::Ping, Duration::from_secs(30)).await;
        assert!(
            matches!(answer, Err(CallError::Disconnected)),
            "{what}: {answer:?}"
        );
        let sent = agent.await.unwrap();
        assert!(
            sent < BOUND,
            "{what}: the host took {sent} bytes of garbage"
        );
    }
}

#[tokio::test]
async fn an_agent_that_never_answers_times_the_call_out() {
    let (transport, mut rx) = fake::pipe();
    let client = AgentClient::new(Arc::new(transport));
    let agent = tokio::spawn(async move {
        let mut conn = rx.recv().await.unwrap();
        let request = conn.recv().await;
        // Hold the connection open, silent.
        tokio::time::sleep(Duration::from_secs(3)).await;
        request
    });
    let begin = std::time::Instant::now();
    let answer = client
        .call(&Request::Ping, Duration::from_millis(300))
        .await;
    assert!(matches!(answer, Err(CallError::Timeout(_))), "{answer:?}");
    assert!(begin.elapsed() < Duration::from_secs(2));
    assert!(
        agent.await.unwrap().is_some(),
        "the request reached the agent"
    );
}
