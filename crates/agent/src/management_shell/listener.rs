//! The management shell's own TCP listener (`--shell-listen`, ADR 0023):
//! how a cluster reaches it under the Service `management-pod`, with no
//! tetherd user behind the connection. Off unless configured; logins come
//! from the operator's files only (`--shell-authorized-keys`,
//! `--shell-password-file`, a mounted Secret in the join manifest).
//!
//! Each accepted connection gets a helper of its own, as an `ssh` tunnel
//! does, and the agent carries the bytes between the TCP connection and
//! the helper's socket: the settings line must come first on the helper's
//! stdin, which the client's bytes cannot share. At most
//! [`MAX_CONNECTIONS`] at once; more are closed at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Settings, ShellConfig, cluster_kubeconfig, start_helper};

/// Concurrent connections the listener serves; each is a process.
pub const MAX_CONNECTIONS: usize = 8;
/// How long the helper has to end its SSH session once the client left.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Where the listener listens and who may log in through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// An OpenSSH `authorized_keys` file, read at each connection.
    pub authorized_keys_file: Option<PathBuf>,
    /// A file holding the password in clear, read at each connection.
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for management shell connections on {address} (--shell-listen)")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The bound listener, serving once [`Listener::serve`] runs.
pub struct Listener {
    tcp: TcpListener,
    config: ListenerConfig,
}

impl Listener {
    /// Binds `config.address`; the address bound is logged (a port 0 is
    /// chosen by the system).
    pub async fn bind(config: ListenerConfig) -> Result<Self, ListenError> {
        let failed = |source| ListenError {
            address: config.address,
            source,
        };
        let tcp = TcpListener::bind(config.address).await.map_err(failed)?;
        let bound = tcp.local_addr().map_err(failed)?;
        tracing::info!("the management shell listens on {bound}");
        Ok(Self { tcp, config })
    }

    /// Accepts connections until the task is aborted, each served by a
    /// helper of its own.
    pub async fn serve(self, shell: ShellConfig, kubernetes: crate::actions::Kubernetes) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: give them time back.
                    tracing::warn!(%error, "cannot accept a management shell connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "management shell connection refused: {MAX_CONNECTIONS} are open already");
                continue;
            };
            let settings = Settings {
                authorized_keys: Vec::new(),
                password_hash: None,
                authorized_keys_file: self.config.authorized_keys_file.clone(),
                password_file: self.config.password_file.clone(),
                kubeconfig: None,
                work_dir: shell.work_dir.clone(),
                host_key: shell.host_key.clone(),
            };
            let (shell, kubernetes) = (shell.clone(), kubernetes.clone());
            tokio::spawn(async move {
                let settings = Settings {
                    kubeconfig: cluster_kubeconfig(&kubernetes).await,
                    ..settings
                };
                carry(tcp, peer, &shell, &settings).await;
                drop(slot);
            });
        }
    }
}

/// One connection: the helper started for it, the bytes carried both ways
/// until either side ends.
async fn carry(mut tcp: TcpStream, peer: SocketAddr, shell: &ShellConfig, settings: &Settings) {
    let _ = tcp.set_nodelay(true);
    let (mut child, mut helper) = match start_helper(shell, settings).await {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(%peer, "{}", tether_proto::error_chain(&error));
            return;
        }
    };
    tracing::info!(%peer, %settings, "management shell connection");
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut helper).await;
    drop(helper);
    if tokio::time::timeout(EXIT_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_in_use_is_an_error_naming_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let address = taken.local_addr().expect("bound");
        let error = Listener::bind(ListenerConfig {
            address,
            authorized_keys_file: None,
            password_file: Some("/p".into()),
        })
        .await
        .err()
        .expect("in use");
        assert_eq!(
            error.to_string(),
            format!("cannot listen for management shell connections on {address} (--shell-listen)")
        );
    }
}
