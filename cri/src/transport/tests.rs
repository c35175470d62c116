use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SOCKET_PATH: &[u8] = b"/run/frakti/frakti.sock";

fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
    vec![
        (b":method", b"POST".to_vec()),
        (b":scheme", b"http".to_vec()),
        (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
        (b":authority", authority.to_vec()),
        (b"content-type", b"application/grpc".to_vec()),
        (b"te", b"trailers".to_vec()),
    ]
}

fn encode(encoder: &mut Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
    encoder.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(kind, flags, stream_id, payload, &mut out);
    out
}

/// Splits frames from the server-bound output: (type, flags, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(bytes.starts_with(PREFACE), "the preface goes first");
    bytes = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let id = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        out.push((bytes[3], bytes[4], id, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

fn decoded(decoder: &mut Decoder<'_>, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    decoder.decode(block).expect("the rewritten block decodes")
}

fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    headers
        .iter()
        .find(|(n, _)| n == b":authority")
        .map(|(_, v)| v.clone())
        .expect(":authority kept")
}

#[test]
fn a_socket_path_authority_becomes_localhost_and_the_rest_stays() {
    let mut encoder = Encoder::new();
    let first = encode(&mut encoder, &request(SOCKET_PATH));
    // The second block refers to the first one's dynamic table entries.
    let second = encode(&mut encoder, &request(b"localhost:1234"));
    let data = frame(0x0, 0x1, 3, b"\0\0\0\0\x04\x0a\x02v1");
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    input.extend(frame(HEADERS, END_HEADERS, 1, &first));
    input.extend(frame(HEADERS, END_HEADERS, 3, &second));
    input.extend(&data);

    let mut rewriter = Rewriter::default();
    // One byte at a time: framing must not depend on how reads split.
    for byte in &input {
        rewriter.feed(std::slice::from_ref(byte)).unwrap();
    }
    let out = frames(rewriter.output());
    assert_eq!(out.len(), 4);
    assert_eq!((out[0].0, out[0].3.len()), (0x4, 0), "SETTINGS untouched");
    let mut decoder = Decoder::new();
    let one = decoded(&mut decoder, &out[1].3);
    assert_eq!((out[1].0, out[1].1, out[1].2), (HEADERS, END_HEADERS, 1));
    assert_eq!(authority_of(&one), b"localhost");
    let expected: Vec<_> = request(b"localhost")
        .into_iter()
        .map(|(n, v)| (n.to_vec(), v))
        .collect();
    assert_eq!(one, expected, "every other header as sent, in order");
    let two = decoded(&mut decoder, &out[2].3);
    assert_eq!(
        authority_of(&two),
        b"localhost:1234",
        "a valid authority is kept"
    );
    assert_eq!(two[2].1, b"/runtime.v1.RuntimeService/Version");
    assert_eq!(
        frame(out[3].0, out[3].1, out[3].2, &out[3].3),
        data,
        "DATA untouched"
    );
}

#[test]
fn continuation_padding_and_priority_are_reassembled() {
    let mut encoder = Encoder::new();
    let block = encode(&mut encoder, &request(SOCKET_PATH));
    let (head, tail) = block.split_at(7);
    let mut headers = vec![3u8]; // pad length
    headers.extend([0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight 200
    headers.extend(head);
    headers.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, tail));
    let mut rewriter = Rewriter::default();
    rewriter.feed(&input).unwrap();
    let out = frames(rewriter.output());
    assert_eq!(out.len(), 1);
    let (kind, flags, id, payload) = &out[0];
    assert_eq!(
        (*kind, *flags, *id),
        (HEADERS, END_STREAM | END_HEADERS | PRIORITY, 5)
    );
    assert_eq!(&payload[..5], &[0x80, 0, 0, 1, 200]);
    let headers = decoded(&mut Decoder::new(), &payload[5..]);
    assert_eq!(authority_of(&headers), b"localhost");
}

#[test]
fn a_large_block_is_split_into_continuations() {
    let big = vec![b'x'; 40_000];
    let mut headers = request(SOCKET_PATH);
    headers.push((b"x-big", big.clone()));
    let block = encode(&mut Encoder::new(), &headers);
    let mut input = PREFACE.to_vec();
    let (a, b) = block.split_at(16_000);
    input.extend(frame(HEADERS, 0, 1, a));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    let mut rewriter = Rewriter::default();
    rewriter.feed(&input).unwrap();
    let out = frames(rewriter.output());
    assert!(out.len() >= 3, "40 kB does not fit one 16 kB frame");
    assert!(out.iter().all(|f| f.3.len() <= MAX_FRAME));
    assert_eq!(out[0].0, HEADERS);
    assert!(out[1..].iter().all(|f| f.0 == CONTINUATION && f.2 == 1));
    assert!(out[..out.len() - 1].iter().all(|f| f.1 & END_HEADERS == 0));
    assert_eq!(out.last().unwrap().1, END_HEADERS);
    let joined: Vec<u8> = out.iter().flat_map(|f| f.3.clone()).collect();
    let decoded = decoded(&mut Decoder::new(), &joined);
    assert_eq!(decoded.last().unwrap().1, big);
}

#[test]
fn broken_framing_is_an_error_not_a_panic() {
    let block = encode(&mut Encoder::new(), &request(b"localhost"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (frame(CONTINUATION, END_HEADERS, 1, &block), "CONTINUATION"),
        (
            [frame(HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"x")].concat(),
            "middle of a header block",
        ),
        (
            [
                frame(HEADERS, 0, 1, &block),
                frame(CONTINUATION, END_HEADERS, 3, b""),
            ]
            .concat(),
            "CONTINUATION",
        ),
        (
            frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2]),
            "padding",
        ),
        (
            frame(HEADERS, PRIORITY | END_HEADERS, 1, &[1, 2]),
            "padding",
        ),
        (frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff]), "decode"),
        (
            frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xff, 0xff, 0x03]),
            "decode",
        ),
    ];
    for (frames, what) in cases {
        let mut rewriter = Rewriter::default();
        let input = [PREFACE, &frames].concat();
        let err = rewriter.feed(&input).expect_err(what);
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    let mut rewriter = Rewriter::default();
    let mut huge = PREFACE.to_vec();
    huge.extend([0x20, 0, 0, HEADERS, 0, 0, 0, 0, 1]);
    assert!(matches!(rewriter.feed(&huge), Err(FrameError::TooLarge)));
}

/// What the HTTP/2 server did with one request whose authority is `authority`.
async fn serve_one(authority: &[u8], tolerant: bool) -> Result<String, String> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let seen = tokio::spawn(async move {
        let io: Pin<Box<dyn Io>> = if tolerant {
            Box::pin(AuthorityTolerant::new(server))
        } else {
            Box::pin(server)
        };
        let mut conn = h2::server::handshake(io).await.unwrap();
        let mut seen = None;
        if let Some(Ok((request, mut respond))) = conn.accept().await {
            seen = request.uri().authority().map(|a| a.to_string());
            let _ = respond.send_response(http::Response::new(()), true);
        }
        // Keep the connection driven until the client hangs up.
        while conn.accept().await.is_some() {}
        seen
    });
    let block = encode(&mut Encoder::new(), &request(authority));
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    client.write_all(&input).await.unwrap();
    let outcome = loop {
        let mut header = [0u8; 9];
        client.read_exact(&mut header).await.unwrap();
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.unwrap();
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        match (header[3], id) {
            (HEADERS, 1) => break Ok(()),
            (0x3, 1) => break Err(format!("RST_STREAM {payload:?}")),
            _ => {}
        }
    };
    drop(client);
    let seen = seen.await.unwrap();
    outcome.map(|()| seen.unwrap_or_default())
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

#[tokio::test]
async fn the_http2_server_answers_a_client_that_sends_the_socket_path() {
    let refused = serve_one(SOCKET_PATH, false).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("RST_STREAM")),
        "without the filter the server resets the stream: {refused:?}"
    );
    assert_eq!(serve_one(SOCKET_PATH, true).await.unwrap(), "localhost");
    assert_eq!(serve_one(b"localhost", true).await.unwrap(), "localhost");
}
