//! The CLI's end of a tunnel (ADR 0021): what every tunnel command sends
//! and how it reads what comes back.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, Stream, StreamExt as _, future};
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::client::TunnelSocket;
use crate::commands::{CommandError, Outcome};

/// The sending half of a tunnel.
pub type Sender = SplitSink<TunnelSocket, Message>;

/// Sends what `input` yields as the device's stdin, then that it ended.
/// Returns the sender still open: closing it would end the tunnel before
/// the device's side has been read.
pub async fn send_input(mut input: impl AsyncRead + Unpin, mut sender: Sender) -> Sender {
    let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
    loop {
        match input.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let frame = tunnel::frame(tunnel::STDIN, &buffer[..read]);
                if sender.send(Message::Binary(frame.into())).await.is_err() {
                    return sender;
                }
            }
        }
    }
    let close = tunnel::frame(tunnel::CLOSE, &[tunnel::STDIN]);
    let _ = sender.send(Message::Binary(close.into())).await;
    sender
}

/// The device's frames as channel and payload, in order, until the socket
/// closes or fails; pings and empty messages are skipped.
pub fn incoming(receiver: SplitStream<TunnelSocket>) -> impl Stream<Item = (u8, Bytes)> + Unpin {
    receiver
        .take_while(|message| future::ready(matches!(message, Ok(message) if !message.is_close())))
        .filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(data)) if !data.is_empty() => Some((data[0], data.slice(1..))),
                _ => None,
            })
        })
}

/// Writes the device's stdout and stderr to this process's as they come,
/// until the remote `program` ("command", "shell") ends: its exit status,
/// or why it could not run.
pub async fn print_until_exit(
    receiver: SplitStream<TunnelSocket>,
    program: &str,
) -> Result<Outcome, CommandError> {
    async fn write(out: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), CommandError> {
        out.write_all(bytes).await.map_err(CommandError::Write)?;
        out.flush().await.map_err(CommandError::Write)
    }
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut frames = incoming(receiver);
    while let Some((channel, bytes)) = frames.next().await {
        match channel {
            tunnel::STDOUT => write(&mut stdout, &bytes).await?,
            tunnel::STDERR => write(&mut stderr, &bytes).await?,
            tunnel::CONTROL => match serde_json::from_slice(&bytes) {
                Ok(Control::Exit { code, signal }) => return Ok(exit_outcome(code, signal)),
                Ok(Control::Error { status, message }) => {
                    return Ok(Outcome::Failed {
                        reason: format!("{message} ({status})"),
                    });
                }
                // Only a client sends a resize; only a download has a file.
                Ok(Control::Resize { .. } | Control::File { .. }) | Err(_) => {}
            },
            _ => {}
        }
    }
    Ok(Outcome::Failed {
        reason: format!("the tunnel closed before the {program} ended"),
    })
}

/// A remote command's exit as this process's: its code, or 128 + the
/// signal that killed it, as a shell reports it.
pub fn exit_outcome(code: Option<i32>, signal: Option<i32>) -> Outcome {
    match (code, signal) {
        (Some(0), _) => Outcome::Success,
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(signal)) => Outcome::Exited(128 + signal),
        (None, None) => Outcome::Exited(1),
    }
}
