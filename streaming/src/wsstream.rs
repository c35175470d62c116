//! Channel framing of the Kubernetes WebSocket protocols: each message starts
//! with its channel number, as a byte (binary protocols) or as an ASCII digit
//! followed by base64 text (the `base64.` protocols).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

/// How channel messages are framed on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Binary messages, first byte the channel.
    Binary,
    /// Text messages, first character `'0' + channel`, then base64.
    Base64,
}

impl Framing {
    /// The framing a negotiated subprotocol uses.
    pub fn for_protocol(protocol: &str) -> Self {
        if protocol.contains("base64") {
            Framing::Base64
        } else {
            Framing::Binary
        }
    }

    /// A message carrying `data` on `channel`.
    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Framing::Binary => {
                let mut v = Vec::with_capacity(data.len() + 1);
                v.push(channel);
                v.extend_from_slice(data);
                Message::Binary(Bytes::from(v))
            }
            Framing::Base64 => {
                let mut s = String::with_capacity(data.len() * 4 / 3 + 4);
                s.push(char::from(b'0'.wrapping_add(channel)));
                STANDARD.encode_string(data, &mut s);
                Message::Text(s.into())
            }
        }
    }

    /// The channel and payload of a received message; `None` for messages
    /// without a channel (control frames, empty or undecodable ones).
    pub fn decode(self, msg: &Message) -> Option<(u8, Bytes)> {
        match (self, msg) {
            (_, Message::Binary(b)) if !b.is_empty() => Some((b[0], b.slice(1..))),
            (Framing::Base64, Message::Text(t)) if !t.is_empty() => {
                let bytes = t.as_bytes();
                let channel = bytes[0].wrapping_sub(b'0');
                STANDARD
                    .decode(&bytes[1..])
                    .ok()
                    .map(|d| (channel, Bytes::from(d)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_roundtrip() {
        for framing in [Framing::Binary, Framing::Base64] {
            let m = framing.encode(2, b"hello\0world");
            assert_eq!(
                framing.decode(&m),
                Some((2, Bytes::from_static(b"hello\0world")))
            );
        }
        assert_eq!(
            Framing::Base64.encode(1, b"hi"),
            Message::Text("1aGk=".into())
        );
        assert_eq!(
            Framing::Binary.encode(3, b""),
            Message::Binary(Bytes::from_static(&[3]))
        );
        assert_eq!(Framing::Binary.decode(&Message::Text("1aGk=".into())), None);
    }
}
