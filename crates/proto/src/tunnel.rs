//! Tunnels (ADR 0021): the `open-tunnel` action's input and the frames
//! both WebSockets of a tunnel carry.
//!
//! Every WebSocket message is binary: one channel byte, then the payload.
//! The channels are Kubernetes' exec channels (`v5.channel.k8s.io`) plus an
//! end-of-stream one, so the same frames carry a command's streams, a
//! shell's terminal and a forwarded TCP connection.

use serde::{Deserialize, Serialize};

/// The action tetherd sends to have the agent dial a tunnel back.
pub const OPEN_TUNNEL: &str = "open-tunnel";
/// How long a tunnel waits for its device to dial back.
pub const DIAL_SECONDS: u64 = 30;
/// The most payload one message carries.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Bytes towards the device: a command's stdin, a forwarded connection's
/// client bytes.
pub const STDIN: u8 = 0;
/// Bytes from the device: a command's stdout, a terminal's output, a
/// forwarded connection's target bytes.
pub const STDOUT: u8 = 1;
/// A command's stderr.
pub const STDERR: u8 = 2;
/// A [`Control`] message as JSON.
pub const CONTROL: u8 = 3;
/// The sender's side of the stream named by the one payload byte
/// ([`STDIN`], [`STDOUT`] or [`STDERR`]) has ended.
pub const CLOSE: u8 = 4;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One command without a terminal: stdin, stdout and stderr apart.
    Exec,
    /// A TCP connection from the device to `target`.
    Forward,
    /// An SSH connection to the agent's embedded SSH server, the
    /// management shell (ADR 0023): one `tether-agent-shell` per tunnel.
    Ssh,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Forward => "forward",
            Kind::Ssh => "ssh",
        }
    }
}

/// The `open-tunnel` action's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenTunnel {
    /// Where to dial: `wss://HOST:PORT/api/v1/tunnels/{id}` on the replica
    /// holding the client.
    pub url: String,
    /// Presented once as `Authorization: Bearer`; redacted in records.
    pub token: String,
    pub kind: Kind,
    /// `exec`: the argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `forward`: `HOST:PORT` as the device resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ssh`: the OpenSSH public keys that may log in, the requesting
    /// user's registered keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
    /// `ssh`: the device's shell password as [`crate::password`] hashes
    /// it, when password login is on; redacted in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// Out-of-band messages on [`CONTROL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Control {
    /// The command ended: its exit code, or the signal that killed it.
    Exit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    /// The tunnel could not do what it was opened for; `status` as HTTP's.
    Error { status: u16, message: String },
}

/// One message: `channel` then `payload`.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(payload.len() + 1);
    message.push(channel);
    message.extend_from_slice(payload);
    message
}

/// A control message.
pub fn control(message: &Control) -> Vec<u8> {
    frame(
        CONTROL,
        &serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// A received message's channel and payload; `None` for an empty message.
pub fn split(message: &[u8]) -> Option<(u8, &[u8])> {
    message
        .split_first()
        .map(|(channel, payload)| (*channel, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_channel_first() {
        let message = frame(STDERR, b"oops");
        assert_eq!(split(&message), Some((STDERR, &b"oops"[..])));
        assert_eq!(split(&[]), None);
        let exit = control(&Control::Exit {
            code: Some(3),
            signal: None,
        });
        let (channel, payload) = split(&exit).expect("a frame");
        assert_eq!(channel, CONTROL);
        assert_eq!(payload, br#"{"type":"exit","code":3}"#);
        let back: Control = serde_json::from_slice(payload).expect("control");
        assert_eq!(
            back,
            Control::Exit {
                code: Some(3),
                signal: None
            }
        );
    }

    #[test]
    fn the_input_names_what_to_dial_and_what_to_run() {
        let input: OpenTunnel = serde_json::from_value(serde_json::json!({
            "url": "wss://h:1/api/v1/tunnels/t", "token": "x", "kind": "exec",
            "command": ["ls", "-l"]}))
        .expect("valid");
        assert_eq!(input.kind, Kind::Exec);
        assert_eq!(input.command, ["ls", "-l"]);
        assert!(
            serde_json::from_value::<OpenTunnel>(serde_json::json!({
                "url": "u", "token": "x", "kind": "shell!"}))
            .is_err()
        );
    }
}
