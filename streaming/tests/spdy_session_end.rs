//! How a SPDY exec session ends, seen by a hand-driven client: the server
//! must not end the TCP connection while the client may still be processing
//! the last frames, only once the client answered the PING that follows the
//! GOAWAY (or closed). Node's spdy-transport is such a client: it inflates
//! header blocks asynchronously and destroys every open stream when its
//! socket ends, so a SYN_REPLY still in its parser was lost and the client
//! waited forever for it.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{exec_req, server};
use streaming::protocol;
use streaming::spdy::Frame;
use streaming::spdy::Headers;
use streaming::spdy::frame::{FLAG_FIN, HeaderCompressor, HeaderDecompressor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upgrades to SPDY by hand; returns the socket and any bytes past the
/// response head.
async fn upgrade(url: &str) -> (TcpStream, BytesMut) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut tcp = TcpStream::connect(host).await.unwrap();
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {}\r\nContent-Length: 0\r\n\r\n",
        protocol::REMOTECOMMAND_V4
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(tcp.read_buf(&mut buf).await.unwrap() > 0, "no response");
    };
    let head = buf.split_to(end);
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (tcp, buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lets_the_client_end_an_exec_session() {
    let srv = server().await;
    let script = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let url = srv.get_exec(exec_req(&script, false, false)).unwrap();
    let (mut tcp, mut buf) = upgrade(&url).await;
    let mut z = HeaderCompressor::new().unwrap();
    let mut out = BytesMut::new();
    for (id, ty) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
        Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: FLAG_FIN,
            headers: Headers::new().with("streamtype", ty),
        }
        .encode(&mut z, &mut out)
        .unwrap();
    }
    tcp.write_all(&out).await.unwrap();
    // Read everything up to the server's GOAWAY and the PING after it.
    let mut unz = HeaderDecompressor::new();
    let mut replies = Vec::new();
    let mut data: [Vec<u8>; 6] = Default::default();
    let mut fins = Vec::new();
    let mut goaway = false;
    let read_all = async {
        loop {
            while let Some(f) = Frame::decode(&mut buf, &mut unz).unwrap() {
                match f {
                    Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                    Frame::Data {
                        stream_id,
                        flags,
                        data: d,
                    } => {
                        data[stream_id as usize].extend_from_slice(&d);
                        if flags & FLAG_FIN != 0 {
                            fins.push(stream_id);
                        }
                    }
                    Frame::GoAway { .. } => goaway = true,
                    Frame::Ping { id } if goaway => return id,
                    _ => {}
                }
            }
            let n = tcp.read_buf(&mut buf).await.unwrap();
            assert!(n > 0, "connection ended before GOAWAY and PING");
        }
    };
    let ping = tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the session ends with GOAWAY and PING");
    assert_eq!(replies, [1, 3, 5]);
    assert_eq!(data[3], b"out\n");
    assert_eq!(data[5], b"err\n");
    let status = String::from_utf8_lossy(&data[1]);
    assert!(status.contains("NonZeroExitCode"), "{status}");
    fins.sort_unstable();
    assert_eq!(fins, [1, 3, 5]);
    // A client still busy with those frames (it has not answered the PING)
    // must not see the connection end under it.
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await;
    assert!(r.is_err(), "the server ended the connection first: {r:?}");
    // The client has caught up: it answers, and the server closes promptly.
    out.clear();
    Frame::Ping { id: ping }.encode(&mut z, &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut rest))
        .await
        .expect("the server closes once the PING is answered")
        .unwrap();
}
