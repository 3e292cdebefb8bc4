//! A `forward` tunnel: one TCP connection from the device to a target on
//! its network, its bytes on the tunnel's data channels.

use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tether_proto::tunnel;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{Socket, failed, incoming, send_stdout};

/// How long the target may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `target` and copies both ways until both have ended; a
/// target that refuses or does not answer is reported on the tunnel.
pub async fn serve(socket: Socket, target: String) {
    let (mut sender, receiver) = socket.split();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
    let stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let _ = sender
                .send(failed(502, format!("cannot connect to {target}: {error}")))
                .await;
            let _ = sender.close().await;
            return;
        }
        Err(_) => {
            let _ = sender
                .send(failed(
                    504,
                    format!(
                        "{target} did not accept within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ))
                .await;
            let _ = sender.close().await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (from_target, to_target) = stream.into_split();
    carry(sender, receiver, from_target, to_target).await;
}

/// Copies the tunnel's data to `to_target` and what `from_target` yields
/// back, each direction until it ends: a forwarded connection, or the SSH
/// server's socket ([`super::ssh`]).
pub(super) async fn carry(
    mut sender: SplitSink<Socket, Message>,
    receiver: SplitStream<Socket>,
    from_target: impl AsyncRead + Unpin,
    mut to_target: impl AsyncWrite + Unpin,
) {
    let upstream = async {
        let mut frames = incoming(receiver);
        while let Some((channel, bytes)) = frames.next().await {
            match channel {
                tunnel::STDIN if to_target.write_all(&bytes).await.is_err() => break,
                tunnel::CLOSE => break,
                _ => {}
            }
        }
        let _ = to_target.shutdown().await;
    };
    let downstream = send_stdout(from_target, &mut sender);
    // Each direction ends on its own (a client may half-close and still
    // read the answer); tetherd ends the other soon after one has closed.
    tokio::join!(upstream, downstream);
}
