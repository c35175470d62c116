//! End-to-end sessions against the streaming server with host processes:
//! our SPDY and WebSocket clients, every remotecommand version, port forward.

mod common;

use std::time::Duration;

use common::{POD, exec_req, http_server, server};
use futures_util::{SinkExt, StreamExt};
use streaming::client::{ClientError, CommandIo, PortForwarder, exec_spdy, exec_websocket};
use streaming::protocol::{self, Status};
use streaming::{AttachRequest, PortForwardRequest, RequestError, TerminalSize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, SimplexStream, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A writer for the client's stdout/stderr and a task collecting what it got.
fn capture() -> (Box<WriteHalf<SimplexStream>>, JoinHandle<Vec<u8>>) {
    let (mut rd, wr) = tokio::io::simplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut out = Vec::new();
        rd.read_to_end(&mut out).await.unwrap();
        out
    });
    (Box::new(wr), task)
}

struct Run {
    status: Status,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

async fn run(
    url: &str,
    websocket: bool,
    protocols: &[&str],
    stdin: Option<Vec<u8>>,
    tty: bool,
    resize: Option<mpsc::Receiver<TerminalSize>>,
) -> Result<Run, ClientError> {
    let (out, out_task) = capture();
    let (err, err_task) = capture();
    let io = CommandIo {
        stdin: stdin.map(|d| Box::new(std::io::Cursor::new(d)) as streaming::BoxRead),
        stdout: Some(out),
        stderr: Some(err),
        resize,
        tty,
    };
    let status = if websocket {
        exec_websocket(url, protocols, io).await?
    } else {
        exec_spdy(url, protocols, io).await?
    };
    Ok(Run {
        status,
        stdout: out_task.await.unwrap(),
        stderr: err_task.await.unwrap(),
    })
}

const SCRIPT: &[&str] = &["sh", "-c", "echo out; echo err >&2; exit 3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_reports_output_and_exit_code_in_every_version() {
    let srv = server().await;
    for protocol in protocol::SPDY_REMOTECOMMAND {
        let url = srv.get_exec(exec_req(SCRIPT, false, false)).unwrap();
        let r = run(&url, false, &[protocol], None, false, None)
            .await
            .unwrap();
        assert_eq!(r.stdout, b"out\n", "{protocol}");
        assert_eq!(r.stderr, b"err\n", "{protocol}");
        assert_eq!(r.status.status, "Failure", "{protocol}");
        if protocol::remotecommand_version(protocol) >= 4 {
            assert_eq!(r.status.exit_code_of(), Some(3), "{protocol}");
            assert_eq!(r.status.reason, "NonZeroExitCode");
        } else {
            assert!(
                r.status.message.contains("exit code"),
                "{protocol}: {:?}",
                r.status
            );
        }
        let url = srv.get_exec(exec_req(&["true"], false, false)).unwrap();
        let r = run(&url, false, &[protocol], None, false, None)
            .await
            .unwrap();
        assert_eq!(r.status.exit_code_of(), Some(0), "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_pipes_stdin_and_propagates_its_eof() {
    let srv = server().await;
    let input: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let url = srv.get_exec(exec_req(&["cat"], true, false)).unwrap();
    let r = run(
        &url,
        false,
        &[protocol::REMOTECOMMAND_V4],
        Some(input.clone()),
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status.exit_code_of(), Some(0));
    assert_eq!(r.stdout.len(), input.len());
    assert!(r.stdout == input);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_delivers_20_mb_intact_and_in_order() {
    let srv = server().await;
    let url = srv
        .get_exec(exec_req(&["seq", "1", "2800000"], false, false))
        .unwrap();
    let r = run(
        &url,
        false,
        &[protocol::REMOTECOMMAND_V5],
        None,
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status.exit_code_of(), Some(0));
    let mut expected = String::new();
    for i in 1..=2_800_000u32 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }
    assert!(expected.len() > 20_000_000);
    assert_eq!(r.stdout.len(), expected.len());
    assert!(r.stdout == expected.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_exec_on_a_tty_applies_resizes() {
    let srv = server().await;
    let url = srv
        .get_exec(exec_req(
            &[
                "sh",
                "-c",
                "test -t 0 && echo on-a-tty; read go; stty size; exit 4",
            ],
            true,
            true,
        ))
        .unwrap();
    let (size_tx, size_rx) = mpsc::channel(4);
    size_tx
        .send(TerminalSize {
            width: 123,
            height: 45,
        })
        .await
        .unwrap();
    // stdin: "go" only after the resize had time to land.
    let (stdin_rd, mut stdin_wr) = tokio::io::simplex(1024);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stdin_wr.write_all(b"go\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(size_tx);
    });
    let (out, out_task) = capture();
    let io = CommandIo {
        stdin: Some(Box::new(stdin_rd)),
        stdout: Some(out),
        stderr: None,
        resize: Some(size_rx),
        tty: true,
    };
    let status = exec_spdy(&url, &[protocol::REMOTECOMMAND_V4], io)
        .await
        .unwrap();
    let out = String::from_utf8(out_task.await.unwrap()).unwrap();
    assert!(out.contains("on-a-tty"), "{out:?}");
    assert!(out.contains("45 123"), "{out:?}");
    // A terminal turns \n into \r\n.
    assert!(out.contains("\r\n"), "{out:?}");
    assert_eq!(status.exit_code_of(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_attach_streams_until_the_process_ends() {
    let srv = server().await;
    let url = srv
        .get_attach(AttachRequest {
            container_id: common::CONTAINER.into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let (out, out_task) = capture();
    let io = CommandIo {
        stdin: Some(Box::new(&b"attached input"[..])),
        stdout: Some(out),
        ..Default::default()
    };
    let status = exec_spdy(&url, &[protocol::REMOTECOMMAND_V4], io)
        .await
        .unwrap();
    assert_eq!(status.exit_code_of(), Some(0));
    assert_eq!(out_task.await.unwrap(), b"attached input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_container_is_an_internal_error_status() {
    let srv = server().await;
    let mut req = exec_req(&["true"], false, false);
    req.container_id = "missing".into();
    let url = srv.get_exec(req).unwrap();
    let r = run(
        &url,
        false,
        &[protocol::REMOTECOMMAND_V4],
        None,
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status.reason, "InternalError");
    assert!(r.status.message.contains("missing"), "{:?}", r.status);
    assert_eq!(r.status.exit_code_of(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_in_every_subprotocol() {
    let srv = server().await;
    for protocol in protocol::WS_REMOTECOMMAND {
        let url = srv.get_exec(exec_req(SCRIPT, false, false)).unwrap();
        let r = run(&url, true, &[protocol], None, false, None)
            .await
            .unwrap();
        assert_eq!(r.stdout, b"out\n", "{protocol}");
        assert_eq!(r.stderr, b"err\n", "{protocol}");
        if protocol::remotecommand_version(protocol) >= 4 {
            assert_eq!(r.status.exit_code_of(), Some(3), "{protocol}");
        } else {
            assert_eq!(r.status.status, "Failure", "{protocol}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v5_close_signal_ends_stdin() {
    let srv = server().await;
    let url = srv.get_exec(exec_req(&["wc", "-c"], true, false)).unwrap();
    let input = vec![b'x'; 300_000];
    let r = run(
        &url,
        true,
        &[protocol::REMOTECOMMAND_V5],
        Some(input),
        false,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status.exit_code_of(), Some(0));
    assert_eq!(String::from_utf8(r.stdout).unwrap().trim(), "300000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exec_delivers_20_mb_intact() {
    let srv = server().await;
    let url = srv
        .get_exec(exec_req(
            &["head", "-c", "20971520", "/dev/zero"],
            false,
            false,
        ))
        .unwrap();
    let r = run(&url, true, &[protocol::REMOTECOMMAND_V4], None, false, None)
        .await
        .unwrap();
    assert_eq!(r.status.exit_code_of(), Some(0));
    assert_eq!(r.stdout.len(), 20 * 1024 * 1024);
    assert!(r.stdout.iter().all(|&b| b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_holds_the_process_back() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done");
    let script = format!("head -c 30000000 /dev/zero; touch {}", marker.display());
    let mut req = exec_req(&["sh", "-c", &script], false, false);
    req.stderr = false;
    let url = srv.get_exec(req).unwrap();
    // The client's stdout is a small pipe nobody reads for a while.
    let (mut rd, wr) = tokio::io::simplex(64 * 1024);
    let io = CommandIo {
        stdout: Some(Box::new(wr)),
        ..Default::default()
    };
    let session =
        tokio::spawn(async move { exec_spdy(&url, &[protocol::REMOTECOMMAND_V4], io).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !marker.exists(),
        "30 MB were buffered somewhere instead of blocking the process"
    );
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 30_000_000);
    assert_eq!(session.await.unwrap().unwrap().exit_code_of(), Some(0));
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_validated_and_tokens_are_single_use() {
    let srv = server().await;
    let mut bad = exec_req(&["true"], false, true);
    bad.stderr = true;
    assert!(matches!(srv.get_exec(bad), Err(RequestError::Invalid(_))));
    let mut none = exec_req(&["true"], false, false);
    none.stdout = false;
    none.stderr = false;
    assert!(matches!(srv.get_exec(none), Err(RequestError::Invalid(_))));
    assert!(matches!(
        srv.get_port_forward(PortForwardRequest::default()),
        Err(RequestError::Invalid(_))
    ));
    let url = srv.get_exec(exec_req(&["true"], false, false)).unwrap();
    assert!(url.starts_with(&format!("http://{}/exec/", srv.local_addr())));
    run(
        &url,
        false,
        &[protocol::REMOTECOMMAND_V4],
        None,
        false,
        None,
    )
    .await
    .unwrap();
    match run(
        &url,
        false,
        &[protocol::REMOTECOMMAND_V4],
        None,
        false,
        None,
    )
    .await
    {
        Err(ClientError::Refused { status: 404, .. }) => {}
        other => panic!("reused token: {:?}", other.map(|r| r.status)),
    }
    // A protocol the server does not speak is refused with 403.
    let url = srv.get_exec(exec_req(&["true"], false, false)).unwrap();
    match run(&url, false, &["v9.channel.k8s.io"], None, false, None).await {
        Err(ClientError::Refused { status: 403, body }) => assert!(body.contains("negotiate")),
        other => panic!("bad protocol: {:?}", other.map(|r| r.status)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_to_an_http_server_two_connections_at_once() {
    let srv = server().await;
    let port = http_server("hello from the pod").await;
    let url = srv
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: POD.into(),
            ports: vec![port],
        })
        .unwrap();
    let pf = PortForwarder::connect(&url).await.unwrap();
    let a = pf.open(port).await.unwrap();
    let b = pf.open(port).await.unwrap();
    b.writer().write(b"GET /b HTTP/1.0\r\n\r\n").await.unwrap();
    a.writer().write(b"GET /a HTTP/1.0\r\n\r\n").await.unwrap();
    for (conn, path) in [(&a, "/a"), (&b, "/b")] {
        let mut resp = String::new();
        conn.reader().read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.0 200 OK"), "{resp}");
        assert!(
            resp.ends_with(&format!("hello from the pod GET {path} HTTP/1.0")),
            "{resp}"
        );
        assert_eq!(conn.error_message().await.unwrap(), "");
    }
    // A third connection after the first two finished still works.
    let c = pf.open(port).await.unwrap();
    c.writer().write(b"GET /c HTTP/1.0\r\n\r\n").await.unwrap();
    let mut resp = String::new();
    c.reader().read_to_string(&mut resp).await.unwrap();
    assert!(resp.ends_with("GET /c HTTP/1.0"), "{resp}");
    pf.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_port_forward_reports_dial_errors_on_the_error_stream() {
    let srv = server().await;
    // A port with no listener: bind, note the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = srv
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: POD.into(),
            ports: vec![],
        })
        .unwrap();
    let pf = PortForwarder::connect(&url).await.unwrap();
    let c = pf.open(port).await.unwrap();
    let msg = c.error_message().await.unwrap();
    assert!(
        msg.contains(&format!("error forwarding port {port}")),
        "{msg}"
    );
    let mut rest = Vec::new();
    c.reader().read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward_uses_channel_pairs_per_port() {
    let srv = server().await;
    let p1 = http_server("one").await;
    let p2 = http_server("two").await;
    let url = srv
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: POD.into(),
            ports: vec![],
        })
        .unwrap();
    let ws_url = format!(
        "{}?port={p1}&port={p2}",
        url.replacen("http://", "ws://", 1)
    );
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol::REMOTECOMMAND_V4.parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
        protocol::REMOTECOMMAND_V4
    );
    // First message of each of the four channels: the port, little-endian.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let Some(Ok(Message::Binary(m))) = ws.next().await else {
            panic!("expected a binary message")
        };
        seen.push((m[0], u16::from_le_bytes([m[1], m[2]])));
    }
    seen.sort();
    assert_eq!(seen, [(0, p1), (1, p1), (2, p2), (3, p2)]);
    ws.send(Message::Binary(
        [&[2u8][..], b"GET /x HTTP/1.0\r\n\r\n"].concat().into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(
        [&[0u8][..], b"GET /y HTTP/1.0\r\n\r\n"].concat().into(),
    ))
    .await
    .unwrap();
    let mut got = [String::new(), String::new()];
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(m) if m[0] == 0 || m[0] == 2 => {
                got[usize::from(m[0] / 2)].push_str(&String::from_utf8_lossy(&m[1..]));
            }
            Message::Close(_) => break,
            _ => {}
        }
        if got[0].ends_with("HTTP/1.0") && got[1].ends_with("HTTP/1.0") {
            break;
        }
    }
    assert!(got[0].ends_with("one GET /y HTTP/1.0"), "{got:?}");
    assert!(got[1].ends_with("two GET /x HTTP/1.0"), "{got:?}");
}

fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has exited too.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_command() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut req = exec_req(&["sh", "-c", &script], false, false);
    req.stderr = false;
    let url = srv.get_exec(req).unwrap();
    let (conn, negotiated) = streaming::client::connect_spdy(&url, &[protocol::REMOTECOMMAND_V4])
        .await
        .unwrap();
    assert_eq!(negotiated, protocol::REMOTECOMMAND_V4);
    for ty in ["error", "stdout"] {
        let s = conn
            .open_stream(streaming::spdy::Headers::new().with("streamType", ty), true)
            .unwrap();
        s.wait_reply().await.unwrap();
    }
    let mut pid = String::new();
    for _ in 0..100 {
        pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
        if !pid.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.trim().to_owned();
    assert!(!pid.is_empty(), "the command never started");
    assert!(!process_gone(&pid));
    drop(conn);
    for _ in 0..100 {
        if process_gone(&pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} outlived its client");
}
