//! `tether forward-port DEVICE LOCAL_PORT tcp://HOST:PORT/` (seed 004):
//! the device as a jump box to its own network. Every connection to the
//! local port gets a tunnel of its own (ADR 0021), so connections never
//! wait on each other and a refused target fails only its connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures::StreamExt as _;
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{CommandError, Context, Outcome};
use crate::client::{ApiClient, TunnelSocket};
use crate::tunnel as tunnel_io;

/// Forward a local port to a host and port the device reaches.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Examples:\n  # localhost:8080 reaches 192.168.10.1:80 on the device's network\n  tether forward-port edge-1 8080 tcp://192.168.10.1:80/"
)]
pub struct ForwardPort {
    /// The device.
    pub device: String,
    /// The local port to listen on.
    pub local_port: u16,
    /// Where the device connects: tcp://HOST:PORT/.
    #[arg(value_parser = parse_target)]
    pub target: String,
    /// The local address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub listen: IpAddr,
}

/// `tcp://HOST:PORT/` → `HOST:PORT`.
fn parse_target(target: &str) -> Result<String, String> {
    let rest = target
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{target:?} is not tcp://HOST:PORT/"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !authority.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(authority.to_owned())
        }
        _ => Err(format!("{target:?} is not tcp://HOST:PORT/")),
    }
}

impl ForwardPort {
    pub fn description(&self) -> String {
        format!(
            "forward {}:{} to {} through {}",
            self.listen, self.local_port, self.target, self.device
        )
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        let address = SocketAddr::new(self.listen, self.local_port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| CommandError::Listen { address, source })?;
        eprintln!(
            "Forwarding {address} to {} through {}; Ctrl-C to stop.",
            self.target, self.device
        );
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((connection, peer)) = accepted else { continue };
                    let (client, device, target) =
                        (client.clone(), self.device.clone(), self.target.clone());
                    tokio::spawn(async move {
                        if let Err(reason) = forward(&client, &device, &target, connection).await {
                            eprintln!("connection from {peer}: {}", crate::output::printable(&reason.to_string()));
                        }
                    });
                }
                _ = tokio::signal::ctrl_c() => return Ok(Outcome::Success),
            }
        }
    }
}

/// One local connection through its own tunnel, until both sides ended.
async fn forward(
    client: &ApiClient,
    device: &str,
    target: &str,
    connection: TcpStream,
) -> Result<(), String> {
    let socket = client
        .tunnel(device, &[("kind", "forward"), ("target", target)])
        .await
        .map_err(|error| tether_proto::error_chain(&error))?;
    let _ = connection.set_nodelay(true);
    let (from_local, to_local) = connection.into_split();
    splice(from_local, to_local, socket).await
}

/// Carries `from_local` to the tunnel's target and its answer to
/// `to_local` until the target's side ends; an `error` frame (the target
/// refused, did not answer) is the error.
pub async fn splice(
    from_local: impl AsyncRead + Unpin + Send + 'static,
    mut to_local: impl AsyncWrite + Unpin,
    socket: TunnelSocket,
) -> Result<(), String> {
    let (sender, receiver) = socket.split();
    let downstream = async move {
        let mut frames = tunnel_io::incoming(receiver);
        while let Some((channel, bytes)) = frames.next().await {
            match channel {
                // Flushed at once: stdout (`proxy`) is line-buffered, and
                // an SSH stream has no lines.
                tunnel::STDOUT
                    if to_local.write_all(&bytes).await.is_err()
                        || to_local.flush().await.is_err() =>
                {
                    return Ok(());
                }
                tunnel::CLOSE => break,
                tunnel::CONTROL => {
                    if let Ok(Control::Error { status, message }) = serde_json::from_slice(&bytes) {
                        return Err(format!("{message} ({status})"));
                    }
                }
                _ => {}
            }
        }
        let _ = to_local.shutdown().await;
        Ok(())
    };
    // The sender is kept open until the target's side has ended too.
    let upstream = tokio::spawn(tunnel_io::send_input(from_local, sender));
    let ended = downstream.await;
    upstream.abort();
    ended
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_a_tcp_url_of_host_and_port() {
        assert_eq!(
            parse_target("tcp://192.168.10.1:80/").as_deref(),
            Ok("192.168.10.1:80")
        );
        assert_eq!(
            parse_target("tcp://db.local:5432").as_deref(),
            Ok("db.local:5432")
        );
        assert_eq!(
            parse_target("tcp://[fd00::1]:22/").as_deref(),
            Ok("[fd00::1]:22")
        );
        for bad in [
            "http://h:80/",
            "tcp://h/",
            "tcp://:80/",
            "tcp://h:port/",
            "tcp://h:80/x",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
