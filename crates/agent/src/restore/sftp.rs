//! An SFTP client (russh + russh-sftp on ring, ADR 0020), run in the
//! `tether-agent-restore` helper: the agent's image has no OpenSSH client,
//! and OpenSSH's `sftp` takes a password only through `SSH_ASKPASS`.
//!
//! The server's host key must match the `SHA256:…` fingerprint the request
//! names: there is no trust on first use. The password is only ever handed
//! to the SSH session; it is in no error, log line or [`Server`]'s `Debug`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use tokio::io::AsyncWriteExt;

/// How long reaching the server and logging in may take, before 504.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a backup goes and how to log in there; the agent hands it to the
/// helper on its stdin (`helper::Step`).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// The host key's fingerprint as `ssh-keygen -l` prints it.
    pub host_key_fingerprint: String,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("host_key_fingerprint", &self.host_key_fingerprint)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("cannot reach the SFTP server {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the SFTP server {address} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout { address: String },
    #[error(
        "the SFTP server {address} presented host key {presented}, not the expected {expected}; nothing was sent"
    )]
    HostKeyMismatch {
        address: String,
        presented: String,
        expected: String,
    },
    #[error("the SFTP server {address} refused the password for user {user}")]
    AuthenticationFailed { address: String, user: String },
    #[error("SFTP session with {address} failed: {reason}")]
    Session { address: String, reason: String },
    #[error("SFTP {operation} of {path} failed: {reason}")]
    Transfer {
        operation: &'static str,
        path: String,
        reason: String,
    },
    #[error("local file {path}: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

impl SftpError {
    pub fn status_code(&self) -> u16 {
        match self {
            SftpError::Unreachable { .. } => 502,
            SftpError::Timeout { .. } => 504,
            // The server is not the one named: like an untrusted
            // certificate, the request's pin is wrong or the server is.
            SftpError::HostKeyMismatch { .. } => 502,
            SftpError::AuthenticationFailed { .. } => 401,
            SftpError::Session { .. } | SftpError::Transfer { .. } => 502,
            SftpError::Local { .. } => 500,
        }
    }
}

/// Checks the host key during the key exchange and remembers what was
/// presented, so a mismatch can name it.
struct PinnedHostKey {
    expected: String,
    presented: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Host certificates are not supported: only a pinned plain key.
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let matches = fingerprint == self.expected;
        *self.presented.lock().expect("host key slot") = Some(fingerprint);
        Ok(matches)
    }
}

/// A logged-in SFTP session.
pub struct Connection {
    sftp: SftpSession,
    // Keeps the SSH connection open for the SFTP channel.
    _ssh: client::Handle<PinnedHostKey>,
}

impl Server {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects, checks the host key, logs in with the password and opens
    /// the `sftp` subsystem.
    pub async fn connect(&self) -> Result<Connection, SftpError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now())
            .await
            .map_err(|_| SftpError::Timeout {
                address: self.address(),
            })?
    }

    async fn connect_now(&self) -> Result<Connection, SftpError> {
        let address = self.address();
        let presented = Arc::new(std::sync::Mutex::new(None));
        let handler = PinnedHostKey {
            expected: self.host_key_fingerprint.clone(),
            presented: presented.clone(),
        };
        let config = Arc::new(client::Config::default());
        let mut ssh = client::connect(config, (self.host.as_str(), self.port), handler)
            .await
            .map_err(|error| match error {
                russh::Error::UnknownKey => SftpError::HostKeyMismatch {
                    address: address.clone(),
                    presented: presented
                        .lock()
                        .expect("host key slot")
                        .clone()
                        .unwrap_or_else(|| "a host certificate".to_owned()),
                    expected: self.host_key_fingerprint.clone(),
                },
                russh::Error::IO(io) => SftpError::Unreachable {
                    address: address.clone(),
                    reason: io.to_string(),
                },
                other => SftpError::Session {
                    address: address.clone(),
                    reason: other.to_string(),
                },
            })?;
        let session_error = |error: russh::Error| SftpError::Session {
            address: address.clone(),
            reason: error.to_string(),
        };
        let auth = ssh
            .authenticate_password(self.user.as_str(), self.password.as_str())
            .await
            .map_err(session_error)?;
        if !auth.success() {
            return Err(SftpError::AuthenticationFailed {
                address,
                user: self.user.clone(),
            });
        }
        let channel = ssh.channel_open_session().await.map_err(session_error)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(session_error)?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|error| SftpError::Session {
                address: address.clone(),
                reason: error.to_string(),
            })?;
        Ok(Connection { sftp, _ssh: ssh })
    }
}

impl Connection {
    /// Uploads `local` to `remote` through a temporary name and a rename,
    /// so a failed upload leaves an earlier backup at `remote` whole.
    pub async fn upload(&self, local: &Path, remote: &str) -> Result<u64, SftpError> {
        let partial = format!("{remote}.partial");
        let transfer = |operation: &'static str, path: &str| {
            let path = path.to_owned();
            move |error: russh_sftp::client::error::Error| SftpError::Transfer {
                operation,
                path,
                reason: error.to_string(),
            }
        };
        let mut source = tokio::fs::File::open(local)
            .await
            .map_err(|source| local_error(local, source))?;
        let mut target = self
            .sftp
            .create(partial.as_str())
            .await
            .map_err(transfer("create", &partial))?;
        let written = tokio::io::copy(&mut source, &mut target)
            .await
            .map_err(|error| SftpError::Transfer {
                operation: "write",
                path: partial.clone(),
                reason: error.to_string(),
            })?;
        target
            .shutdown()
            .await
            .map_err(|error| SftpError::Transfer {
                operation: "close",
                path: partial.clone(),
                reason: error.to_string(),
            })?;
        // SFTP's rename fails when the target exists (OpenSSH's server
        // follows the draft); an earlier backup goes first.
        if self.sftp.try_exists(remote).await.unwrap_or(false) {
            self.sftp
                .remove_file(remote)
                .await
                .map_err(transfer("remove", remote))?;
        }
        self.sftp
            .rename(partial.as_str(), remote)
            .await
            .map_err(transfer("rename", remote))?;
        Ok(written)
    }

    /// Downloads `remote` into `local`.
    pub async fn download(&self, remote: &str, local: &Path) -> Result<u64, SftpError> {
        let mut source = self
            .sftp
            .open(remote)
            .await
            .map_err(|error| SftpError::Transfer {
                operation: "open",
                path: remote.to_owned(),
                reason: error.to_string(),
            })?;
        let mut target = tokio::fs::File::create(local)
            .await
            .map_err(|source| local_error(local, source))?;
        let read = tokio::io::copy(&mut source, &mut target)
            .await
            .map_err(|error| SftpError::Transfer {
                operation: "read",
                path: remote.to_owned(),
                reason: error.to_string(),
            })?;
        target
            .sync_all()
            .await
            .map_err(|source| local_error(local, source))?;
        Ok(read)
    }
}

fn local_error(path: &Path, source: std::io::Error) -> SftpError {
    SftpError::Local {
        path: path.display().to_string(),
        source,
    }
}
