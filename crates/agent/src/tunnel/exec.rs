//! An `exec` tunnel: one command, no terminal, its stdin, stdout and
//! stderr on their own channels and its exit status last.

use std::process::Stdio;

use futures::{SinkExt as _, StreamExt as _};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tether_proto::tunnel::{self, Control};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::{Socket, binary, failed, incoming};

/// Messages queued for the socket: with two readers (stdout, stderr), a
/// few frames at most wait while the socket is slow.
const QUEUE: usize = 4;

/// Runs `command` with the tunnel as its stdio until it exits and the
/// client has read everything; kills it if the client goes away first.
pub async fn serve(socket: Socket, command: Vec<String>) {
    let (mut sender, receiver) = socket.split();
    let Some((program, arguments)) = command.split_first() else {
        let _ = sender.send(failed(400, "no command".to_owned())).await;
        return;
    };
    let mut command = tokio::process::Command::new(program);
    for name in super::agent_variables() {
        command.env_remove(name);
    }
    let spawned = command
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let status = if error.kind() == std::io::ErrorKind::NotFound {
                404
            } else {
                500
            };
            let _ = sender
                .send(failed(status, format!("cannot run {program}: {error}")))
                .await;
            let _ = sender.close().await;
            return;
        }
    };
    tracing::info!(%program, "tunnel runs a command");
    let (queue, mut queued) = mpsc::channel::<Vec<u8>>(QUEUE);
    let stdout = tokio::spawn(copy_out(child.stdout.take(), tunnel::STDOUT, queue.clone()));
    let stderr = tokio::spawn(copy_out(child.stderr.take(), tunnel::STDERR, queue.clone()));
    drop(queue);
    let writer = tokio::spawn(async move {
        while let Some(frame) = queued.recv().await {
            if sender.send(binary(frame)).await.is_err() {
                return None;
            }
        }
        Some(sender)
    });
    // The client's side: stdin until it closes it; the socket ending
    // before the command means the client is gone.
    let mut stdin = child.stdin.take();
    let input = async {
        let mut frames = incoming(receiver);
        while let Some((channel, bytes)) = frames.next().await {
            match (channel, &bytes[..]) {
                (tunnel::STDIN, bytes) => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(bytes).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // The command reads to its end; the socket is still
                // watched, for the client going away.
                (tunnel::CLOSE, [tunnel::STDIN]) => stdin = None,
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        () = input => {
            tracing::info!(%program, "the tunnel's client went away: killing the command");
            if let Some(pid) = child.id() {
                let _ = tokio::task::spawn_blocking(move || kill_tree(pid)).await;
            }
            // Killed already, unless /proc could not be read.
            let _ = child.kill().await;
            child.wait().await
        }
        status = child.wait() => status,
    };
    // Everything the command wrote is sent before its exit status.
    let _ = tokio::join!(stdout, stderr);
    let Ok(Some(mut sender)) = writer.await else {
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

/// Kills `root` and every process it started, and theirs: a shell's
/// commands would otherwise outlive it (reparented, so all are found
/// before any dies), running on and holding the output pipes open after
/// the client left. `root` goes first, so it cannot start more. Blocking:
/// reads /proc.
fn kill_tree(root: u32) {
    let mut system = System::new();
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    let processes = system.processes();
    let mut tree = vec![Pid::from_u32(root)];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            processes
                .iter()
                .filter(|(_, process)| process.parent() == Some(parent))
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    for pid in &tree {
        if let Some(process) = processes.get(pid) {
            process.kill();
        }
    }
}

/// Sends what `pipe` yields on `channel`, then that the stream ended.
async fn copy_out(pipe: Option<impl AsyncRead + Unpin>, channel: u8, queue: mpsc::Sender<Vec<u8>>) {
    if let Some(mut pipe) = pipe {
        let mut buffer = vec![0; tunnel::MAX_PAYLOAD];
        loop {
            match pipe.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if queue
                        .send(tunnel::frame(channel, &buffer[..read]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
    let _ = queue.send(tunnel::frame(tunnel::CLOSE, &[channel])).await;
}
