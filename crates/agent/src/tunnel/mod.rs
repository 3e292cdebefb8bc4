//! Tunnels (ADR 0021): the agent dials the WebSocket tetherd names in
//! `open-tunnel`, with tetherd's CA pinned and the one-time token as a
//! bearer token, and carries a command ([`exec`]), a TCP connection
//! ([`forward`]), a terminal ([`shell`]), a file ([`copy`]), a request to
//! the cluster's API server ([`kube`]) or an SSH connection to the
//! management shell ([`ssh`]) over it, as far as this device's
//! [`TunnelPolicy`] allows.
//!
//! Everything moves one message at a time: a side that does not read
//! stops the other, so a tunnel holds at most a few messages in memory.

pub mod copy;
pub mod exec;
pub mod forward;
pub mod kube;
pub mod shell;
pub mod ssh;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::SplitStream;
use futures::{Stream, StreamExt as _, future};
use tether_proto::tunnel::{self, Control, Kind};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The tunnel's socket.
pub type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// Connecting and the WebSocket handshake, together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0:?} is not a wss:// URL of a tunnel")]
    BadUrl(String),
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the WebSocket handshake with {url} failed")]
    Handshake {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("{url} did not answer within {} s", DIAL_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("this device refuses {kind} tunnels (tether-agent {flag} false)")]
    Forbidden {
        kind: &'static str,
        flag: &'static str,
    },
    #[error(
        "this device has as many tunnels open as it allows ({max}, tether-agent --max-tunnels); close one or try again later"
    )]
    TooMany { max: usize },
}

impl TunnelError {
    pub fn status_code(&self) -> u16 {
        match self {
            TunnelError::Forbidden { .. } => 403,
            TunnelError::TooMany { .. } => 429,
            TunnelError::BadUrl(_) => 400,
            TunnelError::Timeout { .. } => 504,
            TunnelError::Connect { .. } | TunnelError::Handshake { .. } => 502,
        }
    }
}

/// What this device lets tunnels do, whatever tetherd asks: the device's
/// owner has the last word (ADR 0021).
#[derive(Debug, Clone)]
pub struct TunnelPolicy {
    /// Commands, shells, files and the cluster's API as its admin: each
    /// can do anything the agent can.
    pub allow_remote_shell: bool,
    /// TCP connections from the device to its network.
    pub allow_port_forward: bool,
    /// The largest file an upload or download may carry.
    pub max_copy_bytes: u64,
    /// Tunnels open at once: each holds a task, sockets and maybe a
    /// process on the device, and tetherd's users are many.
    pub slots: TunnelSlots,
}

impl Default for TunnelPolicy {
    fn default() -> Self {
        Self {
            allow_remote_shell: true,
            allow_port_forward: true,
            max_copy_bytes: 1 << 30,
            slots: TunnelSlots::new(usize::from(DEFAULT_MAX_TUNNELS)),
        }
    }
}

/// `--max-tunnels` unless given: more than a forward of 50 connections
/// at once (issue 15) with shells beside it.
pub const DEFAULT_MAX_TUNNELS: u16 = 128;

/// The tunnels this device may have open at once, shared by every
/// `open-tunnel`; a slot is held until its tunnel ends.
#[derive(Debug, Clone)]
pub struct TunnelSlots {
    free: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl TunnelSlots {
    pub fn new(max: usize) -> Self {
        Self {
            free: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// A slot for one more tunnel, or why there is none.
    pub fn take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, TunnelError> {
        self.free
            .clone()
            .try_acquire_owned()
            .map_err(|_| TunnelError::TooMany { max: self.max })
    }
}

impl TunnelPolicy {
    /// Whether a tunnel of `kind` may open.
    pub fn permits(&self, kind: Kind) -> Result<(), TunnelError> {
        let (allowed, flag) = match kind {
            Kind::Forward => (self.allow_port_forward, "--allow-port-forward"),
            // A kube tunnel acts as the cluster's admin account.
            Kind::Exec | Kind::Shell | Kind::Ssh | Kind::Upload | Kind::Download | Kind::Kube => {
                (self.allow_remote_shell, "--allow-remote-shell")
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(TunnelError::Forbidden {
                kind: kind.as_str(),
                flag,
            })
        }
    }
}

/// Dials `url` (a `wss://` URL) presenting `token`.
pub async fn dial(
    url: &str,
    token: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Socket, TunnelError> {
    let bad_url = || TunnelError::BadUrl(url.to_owned());
    let parsed = reqwest::Url::parse(url).map_err(|_| bad_url())?;
    if parsed.scheme() != "wss" {
        return Err(bad_url());
    }
    let host = parsed.host_str().ok_or_else(bad_url)?.to_owned();
    let port = parsed.port().unwrap_or(443);
    let server_name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|_| bad_url())?;
    let mut request = url.into_client_request().map_err(|_| bad_url())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| bad_url())?,
    );
    let connect = async {
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|source| TunnelError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|source| TunnelError::Connect {
                url: url.to_owned(),
                source,
            })?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(tunnel::MAX_PAYLOAD + 1))
            .max_frame_size(Some(tunnel::MAX_PAYLOAD + 1));
        let (socket, _) = tokio_tungstenite::client_async_with_config(request, tls, Some(config))
            .await
            .map_err(|source| TunnelError::Handshake {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        Ok(socket)
    };
    tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .map_err(|_| TunnelError::Timeout {
            url: url.to_owned(),
        })?
}

/// The agent's own environment variables (`TETHER_*`, its enrollment
/// token among them), kept from the commands and shells tunnels run.
pub(crate) fn agent_variables() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.as_encoded_bytes().starts_with(b"TETHER_"))
}

/// A binary WebSocket message of `frame`.
fn binary(frame: Vec<u8>) -> Message {
    Message::Binary(frame.into())
}

/// The client's frames as channel and payload, in order, until its socket
/// closes or fails (the client went away); pings and empty messages are
/// skipped.
fn incoming(receiver: SplitStream<Socket>) -> impl Stream<Item = (u8, Bytes)> + Unpin {
    receiver
        .take_while(|message| future::ready(matches!(message, Ok(message) if !message.is_close())))
        .filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(data)) if !data.is_empty() => Some((data[0], data.slice(1..))),
                _ => None,
            })
        })
}

/// Sends what `from` yields on the stdout channel, then its end, and
/// closes the sending half; stops at once if the client is gone.
async fn send_stdout(
    mut from: impl tokio::io::AsyncRead + Unpin,
    sender: &mut futures::stream::SplitSink<Socket, Message>,
) {
    use futures::SinkExt as _;
    use tokio::io::AsyncReadExt as _;
    let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let frame = tunnel::frame(tunnel::STDOUT, &buffer[..read]);
                if sender.send(binary(frame)).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sender
        .send(binary(tunnel::frame(tunnel::CLOSE, &[tunnel::STDOUT])))
        .await;
    let _ = sender.close().await;
}

/// The control message saying the tunnel failed, and why.
fn failed(status: u16, message: impl Into<String>) -> Message {
    let message = message.into();
    binary(tunnel::control(&Control::Error { status, message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_run_out_at_the_limit_and_come_back_when_a_tunnel_ends() {
        let slots = TunnelSlots::new(2);
        let first = slots.take().expect("one");
        let _second = slots.clone().take().expect("two, from a clone");
        let refused = slots.take().expect_err("a third");
        assert_eq!(refused.status_code(), 429);
        assert!(refused.to_string().contains("--max-tunnels"), "{refused}");
        drop(first);
        assert!(slots.take().is_ok(), "a slot back");
    }

    #[test]
    fn the_devices_policy_refuses_what_its_owner_turned_off() {
        let policy = TunnelPolicy {
            allow_remote_shell: false,
            ..TunnelPolicy::default()
        };
        assert!(policy.permits(Kind::Forward).is_ok());
        for kind in [Kind::Exec, Kind::Upload, Kind::Download] {
            let refused = policy.permits(kind).expect_err("refused");
            assert_eq!(refused.status_code(), 403);
            assert!(
                refused.to_string().contains("--allow-remote-shell false"),
                "{refused}"
            );
        }
        let policy = TunnelPolicy {
            allow_port_forward: false,
            ..TunnelPolicy::default()
        };
        assert!(policy.permits(Kind::Exec).is_ok());
        assert_eq!(
            policy
                .permits(Kind::Forward)
                .expect_err("refused")
                .to_string(),
            "this device refuses forward tunnels (tether-agent --allow-port-forward false)"
        );
    }
}
