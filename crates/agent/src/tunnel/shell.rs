//! A `shell` tunnel: the login shell (or a given command) in a terminal
//! of its own ([`crate::terminal`]); the terminal's output on STDOUT,
//! keystrokes from STDIN, resizes on CONTROL and the exit status last.

use futures::{SinkExt as _, StreamExt as _};
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{Socket, binary, failed, incoming};
use crate::terminal::{self, Command, Size};

/// Runs the command in a terminal of `size` and type `term` until it
/// exits and its output has been sent; hangs it up (and whatever it
/// started) if the client goes away first.
pub async fn serve(socket: Socket, command: Vec<String>, term: String, size: Size) {
    let (mut sender, receiver) = socket.split();
    let command = match command.split_first() {
        None => Command::login_shell(size),
        Some((program, arguments)) => Command::new(program, arguments.to_vec(), size),
    }
    .env("TERM", term);
    let program = command.program.display().to_string();
    let terminal = match terminal::spawn(command) {
        Ok(terminal) => terminal,
        Err(error) => {
            let status = if error.is_not_found() { 404 } else { 500 };
            let _ = sender
                .send(failed(status, crate::actions::chain(&error)))
                .await;
            let _ = sender.close().await;
            return;
        }
    };
    tracing::info!(%program, "tunnel runs a shell");
    let terminal::Terminal {
        mut reader,
        mut writer,
        mut child,
    } = terminal;
    // One message at a time: a client that does not read stops the
    // terminal's output, and the command blocks on its next write.
    let output = tokio::spawn(async move {
        let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return Some(sender),
                Ok(read) => {
                    let frame = tunnel::frame(tunnel::STDOUT, &buffer[..read]);
                    if sender.send(binary(frame)).await.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    // The client's side: keystrokes and resizes; the socket ending
    // before the command means the client is gone.
    let input = async {
        let mut frames = incoming(receiver);
        while let Some((channel, bytes)) = frames.next().await {
            match channel {
                // The terminal is gone: the command exits, or has.
                tunnel::STDIN if writer.write_all(&bytes).await.is_err() => {
                    std::future::pending::<()>().await;
                }
                tunnel::CONTROL => {
                    if let Ok(Control::Resize { cols, rows }) = serde_json::from_slice(&bytes)
                        && tunnel::side("cols", cols.into()).is_ok()
                        && tunnel::side("rows", rows.into()).is_ok()
                    {
                        let _ = writer.resize(Size { cols, rows });
                    }
                }
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        () = input => {
            tracing::info!(%program, "the tunnel's client went away: hanging up the shell");
            let _ = child.hang_up().await;
            output.abort();
            return;
        }
        status = child.wait() => status,
    };
    // Its jobs go with it, as when a terminal closes; then the output
    // ends, once no process holds the terminal.
    let _ = child.hang_up().await;
    let Ok(Some(mut sender)) = output.await else {
        return;
    };
    let exit = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            Control::Exit {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(error) => Control::Error {
            status: 500,
            message: format!("cannot wait for {program}: {error}"),
        },
    };
    let _ = sender.send(binary(tunnel::control(&exit))).await;
    let _ = sender.close().await;
}
