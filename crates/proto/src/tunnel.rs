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
    /// A file written on the device at `path`: its bytes on [`STDIN`],
    /// exactly `size` of them, then [`CLOSE`].
    Upload,
    /// A file read on the device at `path`: a [`Control::File`], its bytes
    /// on [`STDOUT`], then [`CLOSE`] and [`Control::Exit`].
    Download,
    /// A command (the login shell by default) in a terminal: its output on
    /// [`STDOUT`], keystrokes on [`STDIN`], [`Control::Resize`] for the size.
    Shell,
    /// One HTTP request to the device's Kubernetes API server, sent by
    /// tetherd's proxy (ADR 0022): its bytes on [`STDIN`], the answer's
    /// on [`STDOUT`].
    Kube,
    /// An SSH connection to the agent's embedded SSH server, the
    /// management shell (ADR 0023): one `tether-agent-shell` per tunnel.
    Ssh,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Forward => "forward",
            Kind::Upload => "upload",
            Kind::Download => "download",
            Kind::Shell => "shell",
            Kind::Kube => "kube",
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
    /// `exec`: the argv; `shell`: the argv, or none for the login shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `forward`: `HOST:PORT` as the device resolves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `upload`, `download`: the file on the device, an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `upload`: the file's length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `upload`: the file's permission bits (default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `shell`: the terminal the command starts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<Terminal>,
    /// `ssh`: the OpenSSH public keys that may log in, the requesting
    /// user's registered keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
    /// `ssh`: the device's shell password as [`crate::password`] hashes
    /// it, when password login is on; redacted in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// The most columns or rows a terminal may have: more is a mistake, and
/// a size is what a screen's buffer is made of.
pub const MAX_TERMINAL_SIDE: u16 = 1000;
/// The longest `TERM` accepted (terminfo names are short).
pub const MAX_TERM_LEN: usize = 64;

/// A shell's terminal: its type (`TERM`) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Terminal {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// A terminal parameter out of bounds; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTerminal {
    #[error("{name} {value} is out of range: a terminal has 1 to {MAX_TERMINAL_SIDE} {name}")]
    Side { name: &'static str, value: u64 },
    #[error(
        "term {0:?} is not a terminal type: use a name of 1 to {MAX_TERM_LEN} letters, digits, '-', '+', '.' or '_' (such as xterm-256color)"
    )]
    Term(String),
}

impl Terminal {
    /// A terminal of type `term` and `cols` x `rows`, each checked.
    pub fn new(term: &str, cols: u64, rows: u64) -> Result<Self, InvalidTerminal> {
        let term_ok = !term.is_empty()
            && term.len() <= MAX_TERM_LEN
            && term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-+._".contains(&b));
        if !term_ok {
            return Err(InvalidTerminal::Term(term.to_owned()));
        }
        Ok(Terminal {
            term: term.to_owned(),
            cols: side("cols", cols)?,
            rows: side("rows", rows)?,
        })
    }

    /// Checks one that arrived whole (deserialized).
    pub fn validate(&self) -> Result<(), InvalidTerminal> {
        Terminal::new(&self.term, self.cols.into(), self.rows.into()).map(|_| ())
    }
}

/// `value` as a terminal's columns or rows (`name`), if in range.
pub fn side(name: &'static str, value: u64) -> Result<u16, InvalidTerminal> {
    u16::try_from(value)
        .ok()
        .filter(|side| (1..=MAX_TERMINAL_SIDE).contains(side))
        .ok_or(InvalidTerminal::Side { name, value })
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
    /// A `download`'s file, before its bytes: its length and permission
    /// bits.
    File { size: u64, mode: u32 },
    /// From the client of a `shell` tunnel: its terminal's new size.
    Resize { cols: u16, rows: u16 },
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

    #[test]
    fn a_shell_names_its_terminal_and_maybe_a_command() {
        let input: OpenTunnel = serde_json::from_value(serde_json::json!({
            "url": "wss://h:1/api/v1/tunnels/t", "token": "x", "kind": "shell",
            "terminal": {"term": "xterm-256color", "cols": 120, "rows": 40}}))
        .expect("valid");
        assert_eq!(input.kind, Kind::Shell);
        assert!(input.command.is_empty(), "the login shell");
        let terminal = input.terminal.expect("a terminal");
        assert_eq!(
            terminal,
            Terminal::new("xterm-256color", 120, 40).expect("valid")
        );
        assert_eq!(terminal.validate(), Ok(()));
        // A size that does not fit is refused as it is read.
        assert!(
            serde_json::from_value::<Terminal>(serde_json::json!({
                "term": "xterm", "cols": 70000, "rows": 40}))
            .is_err()
        );
        let zero = Terminal {
            term: "xterm".into(),
            cols: 0,
            rows: 24,
        };
        assert_eq!(
            zero.validate(),
            Err(InvalidTerminal::Side {
                name: "cols",
                value: 0
            })
        );
    }

    #[test]
    fn terminal_sizes_and_types_are_bounded() {
        assert_eq!(side("rows", 1), Ok(1));
        assert_eq!(side("rows", 1000), Ok(1000));
        for bad in [0, 1001, 65_536, u64::MAX] {
            let error = side("rows", bad).expect_err("out of range");
            assert!(
                error.to_string().starts_with(&format!("rows {bad} ")),
                "{error}"
            );
        }
        for good in [
            "xterm",
            "xterm-256color",
            "screen.xterm-new",
            "rxvt+x",
            "dumb",
        ] {
            assert!(Terminal::new(good, 80, 24).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_TERM_LEN + 1);
        for bad in [
            "",
            "xterm 256",
            "vt100\n",
            "\u{1b}[0m",
            "caf\u{e9}",
            long.as_str(),
        ] {
            let error = Terminal::new(bad, 80, 24).expect_err("refused");
            assert!(error.to_string().starts_with("term "), "{error}");
        }
    }

    #[test]
    fn a_resize_is_a_control_message() {
        let resize = control(&Control::Resize {
            cols: 100,
            rows: 30,
        });
        let (channel, payload) = split(&resize).expect("a frame");
        assert_eq!(channel, CONTROL);
        assert_eq!(payload, br#"{"type":"resize","cols":100,"rows":30}"#);
    }
}
