//! The host side of interactive streams against a scripted fake agent:
//! credit-based flow control, exit codes, and loss on reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_api::fake::{self, AgentConn};
use agent_api::messages::{ExecStart, Response};
use agent_api::streams::{
    Channel, StreamEnd, WINDOW, close_frame, data_frame, eof_frame, split_payload, window_credit,
};
use agent_api::{AgentClient, FrameKind, Request, StreamError, StreamEvent};

/// One fake agent connection: answers an `ExecStart` by sending `output`
/// within the host's credit, echoing stdin, then exit 7.
async fn fake_agent(mut conn: AgentConn, output: Vec<u8>, max_in_flight: Arc<AtomicUsize>) {
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
                conn.send(&frame).await.unwrap();
                sent += n;
                credit -= n;
                let in_flight = WINDOW as usize - credit;
                max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
            }
        }
        let Some(frame) = conn.recv().await else {
            return;
        };
        match frame.kind {
            FrameKind::Request => {
                let Request::ExecStart(ExecStart { stream: id, .. }) = frame.parse().unwrap()
                else {
                    panic!("unexpected request");
                };
                stream = Some(id);
                conn.answer(frame.id, &Ok(Response::Done)).await.unwrap();
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
                conn.send(&data_frame(id, Channel::Stderr, &stdin))
                    .await
                    .unwrap();
                for c in [Channel::Stdout, Channel::Stderr] {
                    conn.send(&eof_frame(id, c)).await.unwrap();
                }
                let end = StreamEnd {
                    exit_code: Some(7),
                    error: None,
                };
                conn.send(&close_frame(id, &end)).await.unwrap();
            }
            _ => {}
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
    let (transport, mut rx) = fake::pipe();
    let client = AgentClient::new(Arc::new(transport));
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
    let (transport, mut rx) = fake::pipe();
    let client = AgentClient::new(Arc::new(transport));
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
