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
/// back: a forwarded connection, or the SSH server's socket
/// ([`super::ssh`]). The client's [`tunnel::CLOSE`] ends only what goes to
/// the target (a client may half-close and still read the answer); the
/// tunnel itself ending (the client left, or its side failed) ends both
/// directions at once, also when the target neither reads nor writes.
pub(super) async fn carry(
    mut sender: SplitSink<Socket, Message>,
    receiver: SplitStream<Socket>,
    from_target: impl AsyncRead + Unpin,
    mut to_target: impl AsyncWrite + Unpin,
) {
    let upstream = async {
        let mut frames = incoming(receiver);
        // One frame read ahead while a write waits for a target that does
        // not read, so the tunnel's end is seen; no more, so a slow target
        // still holds the client back.
        let mut ahead = None;
        let mut writing = true;
        loop {
            let next = match ahead.take() {
                Some(frame) => Some(frame),
                None => frames.next().await,
            };
            let Some((channel, bytes)) = next else {
                return;
            };
            match channel {
                tunnel::STDIN if writing => {
                    let write = to_target.write_all(&bytes);
                    tokio::pin!(write);
                    let written = loop {
                        tokio::select! {
                            written = &mut write => break written.is_ok(),
                            frame = frames.next(), if ahead.is_none() => match frame {
                                Some(frame) => ahead = Some(frame),
                                None => return,
                            },
                        }
                    };
                    if !written {
                        writing = false;
                    }
                }
                tunnel::CLOSE if writing => {
                    writing = false;
                    let _ = to_target.shutdown().await;
                }
                _ => {}
            }
        }
    };
    let downstream = send_stdout(from_target, &mut sender);
    tokio::pin!(upstream, downstream);
    tokio::select! {
        // Nobody is left to read the target's answers.
        () = &mut upstream => {}
        // The target is done sending; what the client still sends goes to
        // it until the client's CLOSE or the tunnel's end (tetherd lingers
        // a few seconds only once one direction has ended).
        () = &mut downstream => upstream.await,
    }
}
