//! Names and messages of the Kubernetes streaming protocols.

use serde::{Deserialize, Serialize};

/// Header carrying the stream protocol versions on the upgrade request and
/// the chosen one on the response.
pub const HEADER_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// Response header listing what the server accepts when negotiation fails.
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// The SPDY upgrade token.
pub const SPDY_31: &str = "SPDY/3.1";

/// remotecommand v1: SPDY streams, errors as plain text.
pub const REMOTECOMMAND_V1: &str = "channel.k8s.io";
/// remotecommand v2: like v1, the server waits for its stream replies.
pub const REMOTECOMMAND_V2: &str = "v2.channel.k8s.io";
/// remotecommand v3: adds the resize stream.
pub const REMOTECOMMAND_V3: &str = "v3.channel.k8s.io";
/// remotecommand v4: the error stream carries a `metav1.Status` with the exit code.
pub const REMOTECOMMAND_V4: &str = "v4.channel.k8s.io";
/// remotecommand v5: adds the WebSocket close signal.
pub const REMOTECOMMAND_V5: &str = "v5.channel.k8s.io";
/// WebSocket v1 with base64 text frames.
pub const WS_BASE64_V1: &str = "base64.channel.k8s.io";
/// WebSocket v4 with base64 text frames.
pub const WS_BASE64_V4: &str = "v4.base64.channel.k8s.io";
/// Port forwarding over SPDY.
pub const PORTFORWARD_V1: &str = "portforward.k8s.io";

/// remotecommand versions served over SPDY, most preferred first.
pub const SPDY_REMOTECOMMAND: &[&str] = &[
    REMOTECOMMAND_V5,
    REMOTECOMMAND_V4,
    REMOTECOMMAND_V3,
    REMOTECOMMAND_V2,
    REMOTECOMMAND_V1,
];
/// remotecommand subprotocols served over WebSocket.
pub const WS_REMOTECOMMAND: &[&str] = &[
    REMOTECOMMAND_V5,
    REMOTECOMMAND_V4,
    WS_BASE64_V4,
    REMOTECOMMAND_V1,
    WS_BASE64_V1,
];
/// Port-forward subprotocols served over WebSocket.
pub const WS_PORTFORWARD: &[&str] = &[
    REMOTECOMMAND_V4,
    WS_BASE64_V4,
    REMOTECOMMAND_V1,
    WS_BASE64_V1,
];

/// The `streamType` header naming a SPDY stream's role.
pub const STREAM_TYPE: &str = "streamType";
/// The `port` header of a port-forward stream.
pub const PORT: &str = "port";
/// The `requestID` header pairing port-forward data and error streams.
pub const REQUEST_ID: &str = "requestID";

/// WebSocket channel numbers of remotecommand.
pub mod channel {
    /// Client to process.
    pub const STDIN: u8 = 0;
    /// Process stdout.
    pub const STDOUT: u8 = 1;
    /// Process stderr.
    pub const STDERR: u8 = 2;
    /// Exit status.
    pub const ERROR: u8 = 3;
    /// Terminal size changes.
    pub const RESIZE: u8 = 4;
    /// v5 close signal: the next byte names the channel the client closes.
    pub const CLOSE: u8 = 255;
}

/// A remotecommand protocol version as a number (1..=5).
pub fn remotecommand_version(protocol: &str) -> u8 {
    match protocol {
        REMOTECOMMAND_V5 => 5,
        REMOTECOMMAND_V4 | WS_BASE64_V4 => 4,
        REMOTECOMMAND_V3 => 3,
        REMOTECOMMAND_V2 => 2,
        _ => 1,
    }
}

/// Picks the first protocol the client offers that the server supports.
/// Each offer may itself be a comma-separated list.
pub fn negotiate<'a, S: AsRef<str>>(offered: &[S], supported: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .flat_map(|o| o.as_ref().split(','))
        .map(str::trim)
        .find_map(|o| supported.iter().copied().find(|s| *s == o))
}

/// A `metav1.Status`, as far as remotecommand uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Status {
    /// Always `{}` on this path.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// "Success" or "Failure".
    pub status: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Extra detail, such as the exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// HTTP-like code of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// `metav1.StatusDetails` (only its causes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusDetails {
    /// The causes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusCause {
    /// Machine-readable cause ("ExitCode").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its value (the exit code in decimal).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Reason of a failure status that carries an exit code.
pub const NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
/// Cause reason holding the exit code.
pub const EXIT_CODE_CAUSE: &str = "ExitCode";

impl Status {
    /// The command succeeded.
    pub fn success() -> Self {
        Self {
            status: "Success".into(),
            ..Default::default()
        }
    }

    /// The command exited with `code` (non-zero).
    pub fn exit_code(code: i32) -> Self {
        Self {
            status: "Failure".into(),
            message: format!("command terminated with non-zero exit code: exit status {code}"),
            reason: NON_ZERO_EXIT_CODE.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: EXIT_CODE_CAUSE.into(),
                    message: code.to_string(),
                }],
            }),
            code: None,
            metadata: Default::default(),
        }
    }

    /// The session failed for another reason.
    pub fn internal_error(message: &str) -> Self {
        Self {
            status: "Failure".into(),
            message: format!("Internal error occurred: {message}"),
            reason: "InternalError".into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: String::new(),
                    message: message.into(),
                }],
            }),
            code: Some(500),
            metadata: Default::default(),
        }
    }

    /// The exit code this status reports: 0 on success, the cause's code on
    /// a non-zero exit, `None` for other failures.
    pub fn exit_code_of(&self) -> Option<i32> {
        if self.status == "Success" {
            return Some(0);
        }
        if self.reason != NON_ZERO_EXIT_CODE {
            return None;
        }
        self.details
            .as_ref()?
            .causes
            .iter()
            .find(|c| c.reason == EXIT_CODE_CAUSE)?
            .message
            .parse()
            .ok()
    }

    /// The bytes a server writes on the error stream for `version`:
    /// JSON from v4 on, plain text of failures before (nothing on success).
    pub fn encode_for(&self, version: u8) -> Vec<u8> {
        if version >= 4 {
            serde_json::to_vec(self).unwrap_or_default()
        } else if self.status == "Success" {
            Vec::new()
        } else {
            self.message.clone().into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_order() {
        let offered = ["v4.channel.k8s.io", "v5.channel.k8s.io"];
        assert_eq!(
            negotiate(&offered, SPDY_REMOTECOMMAND),
            Some(REMOTECOMMAND_V4)
        );
        assert_eq!(
            negotiate(&["x, channel.k8s.io"], SPDY_REMOTECOMMAND),
            Some(REMOTECOMMAND_V1)
        );
        assert_eq!(negotiate(&["v9.channel.k8s.io"], SPDY_REMOTECOMMAND), None);
    }

    #[test]
    fn status_json_matches_the_kubernetes_shape() {
        assert_eq!(
            String::from_utf8(Status::success().encode_for(4)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let s = Status::exit_code(3);
        let json = String::from_utf8(s.encode_for(5)).unwrap();
        assert_eq!(
            json,
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back.exit_code_of(), Some(3));
        assert_eq!(Status::internal_error("boom").exit_code_of(), None);
        assert!(Status::success().encode_for(2).is_empty());
        assert_eq!(
            Status::exit_code(1).encode_for(1),
            s.message.replace('3', "1").into_bytes()
        );
    }
}
