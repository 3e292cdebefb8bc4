//! An `ssh` tunnel (ADR 0023): the tunnel's bytes are one SSH connection
//! to the management shell, served by a `tether-agent-shell` process of
//! its own whose stdin and stdout are one end of a socket pair.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use super::forward::carry;
use super::{Socket, failed};
use crate::management_shell::{HELPER_NAME, Settings, ShellConfig};

/// How long the helper has to end its SSH session once the tunnel ended.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Runs the helper for this connection and carries the tunnel to it until
/// either ends; the helper is killed if it outlives the tunnel.
pub async fn serve(socket: Socket, config: ShellConfig, settings: Settings) {
    let (mut sender, receiver) = socket.split();
    let started = start(&config, &settings).await;
    let (mut child, stream) = match started {
        Ok(started) => started,
        Err((status, message)) => {
            tracing::warn!("{message}");
            let _ = sender.send(failed(status, message)).await;
            let _ = sender.close().await;
            return;
        }
    };
    tracing::info!(%settings, "management shell tunnel");
    let (from_helper, to_helper) = stream.into_split();
    carry(sender, receiver, from_helper, to_helper).await;
    if tokio::time::timeout(EXIT_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The helper, started with the settings written to it; or the status and
/// message the tunnel fails with.
async fn start(
    config: &ShellConfig,
    settings: &Settings,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), (u16, String)> {
    let internal = |e: std::io::Error| (500, format!("cannot start the management shell: {e}"));
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(internal)?;
    let theirs_out = theirs.try_clone().map_err(internal)?;
    let child = tokio::process::Command::new(&config.helper)
        // The agent's environment may hold its enrollment token; the
        // shell's commands get PATH and what a login sets.
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        // Its errors land in the agent's log.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                (
                    501,
                    format!(
                        "the management shell helper {} does not exist: install {HELPER_NAME} beside tether-agent or name it with --shell-helper PATH",
                        config.helper.display()
                    ),
                )
            } else {
                internal(e)
            }
        })?;
    ours.set_nonblocking(true).map_err(internal)?;
    let mut stream = tokio::net::UnixStream::from_std(ours).map_err(internal)?;
    let mut line = serde_json::to_vec(settings).map_err(|e| internal(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(internal)?;
    Ok((child, stream))
}
