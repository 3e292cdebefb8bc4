//! The CLI's end of a tunnel (ADR 0021): what every tunnel command sends
//! and how it reads what comes back.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, Stream, StreamExt as _, future};
use tether_proto::tunnel;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::client::TunnelSocket;
use crate::commands::Outcome;

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
