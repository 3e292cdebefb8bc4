//! The shell container's side of the management shell in a cluster
//! (ADR 0028): `tether-agent-shell serve` listens on a Unix socket in a
//! directory the pod's two containers share, and starts one helper per
//! connection from the agent, exactly as the agent starts one itself (the
//! socket as its stdin and stdout, the settings line first). So sessions
//! run in another container, as another user, with neither the agent's
//! ServiceAccount token nor its state directory mounted, and the session
//! protocol is unchanged.
//!
//! Only the agent may start sessions: each connection's peer credentials
//! (`SO_PEERCRED`, set by the kernel) must name the agent's user, which
//! must not be the user sessions run as; other connections are closed at
//! once and logged. The socket file is 0666 so the agent's user may
//! connect whatever the directory's owner: the credential check, not the
//! file's mode, is what keeps others out.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixListener;

/// What `tether-agent-shell serve` was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffConfig {
    /// The socket to listen on; a socket left there by an earlier run is
    /// replaced.
    pub socket: PathBuf,
    /// The only user whose connections start sessions: the agent's.
    pub agent_uid: u32,
    /// The helper run for each connection (this executable).
    pub helper: PathBuf,
}

/// Why `tether-agent-shell serve` cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(
        "--agent-uid {uid} is the user sessions would run as: run the shell container as another user than the agent, so its sessions cannot start sessions or reach the agent's files"
    )]
    SameUser { uid: u32 },
    #[error(
        "{path} exists and is not a socket: remove it or choose another --socket in a directory of the shell's own"
    )]
    NotASocket { path: String },
    #[error("cannot listen on {path}")]
    Listen {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket (replacing a stale one) and serves connections until
/// the process ends.
pub async fn serve(config: HandoffConfig) -> Result<(), HandoffError> {
    let own = rustix::process::geteuid().as_raw();
    if own == config.agent_uid {
        return Err(HandoffError::SameUser { uid: own });
    }
    let listener = bind(&config.socket)?;
    tracing::info!(
        "the management shell takes connections from uid {} on {}",
        config.agent_uid,
        config.socket.display()
    );
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, most likely: give them time back.
                tracing::warn!(%error, "cannot accept a management shell connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(peer) if peer.uid() == config.agent_uid => {}
            Ok(peer) => {
                tracing::warn!(
                    uid = peer.uid(),
                    pid = ?peer.pid(),
                    "management shell connection refused: only the agent's user ({}) may start sessions",
                    config.agent_uid
                );
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "management shell connection refused: cannot tell who connected");
                continue;
            }
        }
        if let Err(error) = start(&config.helper, stream) {
            tracing::warn!(%error, "cannot start the management shell for a connection");
        }
    }
}

/// The listening socket at `path`, 0666 (see the module's doc).
fn bind(path: &Path) -> Result<UnixListener, HandoffError> {
    let failed = |source| HandoffError::Listen {
        path: path.display().to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(failed)?;
        }
        Ok(_) => {
            return Err(HandoffError::NotASocket {
                path: path.display().to_string(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(failed(error)),
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(failed)?;
    Ok(listener)
}

/// Starts the helper for one accepted connection and reaps it when it
/// exits; the connection is its own from then on.
fn start(helper: &Path, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let socket = stream.into_std()?;
    // The helper's stdin as the agent hands it over: a blocking socket.
    socket.set_nonblocking(false)?;
    let mut child = super::spawn_helper(helper, socket)?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_agents_user_must_not_be_the_sessions_user() {
        let dir = tempfile::tempdir().expect("a dir");
        let uid = rustix::process::geteuid().as_raw();
        let error = serve(HandoffConfig {
            socket: dir.path().join("shell.sock"),
            agent_uid: uid,
            helper: "/bin/false".into(),
        })
        .await
        .expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("run the shell container as another user"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let dir = tempfile::tempdir().expect("a dir");
        let path = dir.path().join("shell.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("an old socket"));
        bind(&path).expect("the stale socket replaced");
        let mode = std::fs::metadata(&path)
            .expect("there")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
        let file = dir.path().join("file");
        std::fs::write(&file, "not a socket").expect("a file");
        let error = bind(&file).expect_err("refused");
        assert!(error.to_string().contains("is not a socket"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&file).expect("kept"),
            "not a socket"
        );
    }
}
