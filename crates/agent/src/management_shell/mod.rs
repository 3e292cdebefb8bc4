//! The management shell (ADR 0023, seed 001): an SSH server embedded in
//! the agent's helper binary `tether-agent-shell`, reached through `ssh`
//! tunnels and, when configured, an in-cluster TCP [`listener`]. One
//! helper process serves one SSH connection on its stdin (a socket), so
//! the agent's idle memory does not grow with russh's server: the agent
//! only spawns it ([`start_helper`]).
//!
//! The agent writes the connection's [`Settings`] as one JSON line on that
//! socket before the SSH bytes: who may log in (the requesting user's keys
//! from tetherd, the device's password hash, or the listener's files),
//! where sessions start, and the cluster's kubeconfig in cluster mode.
//! Nothing secret goes into argv or the environment.

pub mod handoff;
pub mod host_key;
pub mod listener;
pub mod server;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

/// The helper's file name, beside the agent's own executable by default.
pub const HELPER_NAME: &str = "tether-agent-shell";
/// Where sessions start unless `--shell-work-dir` says otherwise.
pub const DEFAULT_WORK_DIR: &str = "/work";
/// The host key's file in the agent's state directory.
pub const HOST_KEY_FILE: &str = "shell_host_key";
/// The longest settings line the helper reads (100 keys of a few hundred
/// bytes fit many times over).
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;
/// How long a connection may take to log in unless
/// `--shell-login-timeout-seconds` says otherwise (OpenSSH's
/// `LoginGraceTime`, shorter: logins here are a key or a pasted password).
/// Until then it holds a process and, on the listener, one of its slots.
pub const LOGIN_TIMEOUT_SECONDS: u64 = 30;

/// How the agent runs management shells; from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellConfig {
    /// The `tether-agent-shell` binary.
    pub helper: PathBuf,
    /// Where a `tether-agent-shell serve` of another user listens
    /// (`--shell-socket`, the cluster's shell container, [`handoff`]): each
    /// connection goes there instead of to a helper the agent starts.
    pub socket: Option<PathBuf>,
    /// Where sessions start, `HOME` of their commands; kept across restarts.
    pub work_dir: PathBuf,
    /// The ed25519 host key (OpenSSH format, 0600), created on first use.
    pub host_key: PathBuf,
    /// How long a connection may take to log in before it is closed.
    pub login_timeout: Duration,
}

/// One SSH connection's settings: the first line on the helper's socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// OpenSSH public keys (`type base64`) that may log in.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// [`tether_proto::password`]'s hash of the password that may log in;
    /// none: password login is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// An `authorized_keys` file whose keys may log in too, read by the
    /// helper when the connection starts (the listener's
    /// `--shell-authorized-keys`); a missing file adds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys_file: Option<PathBuf>,
    /// A file holding the password that may log in, in clear (a mounted
    /// Secret's key, as seed 001 keeps it), read by the helper when the
    /// connection starts (`--shell-password-file`); a missing or empty
    /// file turns password login off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// In cluster mode: the kubeconfig (JSON) of the `tether-operator`
    /// account, written to `WORKDIR/.kube/config` (0600) for the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    pub work_dir: PathBuf,
    pub host_key: PathBuf,
    /// Seconds the client has to log in; then the helper closes the
    /// connection and exits ([`ShellConfig::login_timeout`]).
    pub login_timeout_seconds: u64,
}

impl Settings {
    /// The settings of a connection run with `config`, before who may log
    /// in and the kubeconfig are filled in.
    pub fn for_shell(config: &ShellConfig) -> Self {
        Self {
            authorized_keys: Vec::new(),
            password_hash: None,
            authorized_keys_file: None,
            password_file: None,
            kubeconfig: None,
            work_dir: config.work_dir.clone(),
            host_key: config.host_key.clone(),
            login_timeout_seconds: config.login_timeout.as_secs(),
        }
    }
}

impl std::fmt::Display for Settings {
    /// What the log may show: no hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key(s)", self.authorized_keys.len())?;
        if let Some(file) = &self.authorized_keys_file {
            write!(f, " and those of {}", file.display())?;
        }
        match (&self.password_hash, &self.password_file) {
            (Some(_), _) => write!(f, ", password login on")?,
            (None, Some(file)) => write!(f, ", the password in {}", file.display())?,
            (None, None) => write!(f, ", password login off")?,
        }
        if self.kubeconfig.is_some() {
            write!(f, ", the cluster's kubeconfig")?;
        }
        write!(f, ", work dir {}", self.work_dir.display())
    }
}

/// Why the helper could not be started for a connection.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(
        "the management shell helper {path} does not exist: install {HELPER_NAME} beside tether-agent or name it with --shell-helper PATH"
    )]
    Missing { path: String },
    #[error("cannot start the management shell")]
    Start(#[from] std::io::Error),
    #[error(
        "cannot reach the management shell at {socket} (--shell-socket): is its container running `tether-agent-shell serve`?"
    )]
    Unreachable {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

impl HelperError {
    /// The status a tunnel fails with.
    pub fn status_code(&self) -> u16 {
        match self {
            HelperError::Missing { .. } => 501,
            HelperError::Start(_) => 500,
            HelperError::Unreachable { .. } => 502,
        }
    }
}

/// The helper serving one connection: a process of the agent's, or (with
/// `--shell-socket`) one in the shell container, out of the agent's reach,
/// whose end of the socket closing is all the agent sees of it.
#[derive(Debug)]
pub struct Helper(Option<tokio::process::Child>);

impl Helper {
    /// Resolves when the agent's own helper exits; never for one in the
    /// shell container.
    pub async fn exited(&mut self) {
        match &mut self.0 {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Gives the agent's own helper `grace` to end its SSH session, then
    /// kills it. One in the shell container ends by itself once its socket
    /// is closed.
    pub async fn finish(self, grace: Duration) {
        if let Some(mut child) = self.0
            && tokio::time::timeout(grace, child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Starts the helper for one connection with `settings` written first on
/// its socket; the returned end carries the connection's SSH bytes. With
/// [`ShellConfig::socket`] the helper is started by the shell container's
/// `tether-agent-shell serve` for this connection to its socket; else the
/// agent starts it, and kills it when the [`Helper`] is dropped.
pub async fn start_helper(
    config: &ShellConfig,
    settings: &Settings,
) -> Result<(Helper, tokio::net::UnixStream), HelperError> {
    let (helper, mut stream) = match &config.socket {
        Some(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|source| HelperError::Unreachable {
                    socket: socket.display().to_string(),
                    source,
                })?;
            (Helper(None), stream)
        }
        None => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let child = spawn_helper(&config.helper, theirs).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    HelperError::Missing {
                        path: config.helper.display().to_string(),
                    }
                } else {
                    HelperError::Start(e)
                }
            })?;
            ours.set_nonblocking(true)?;
            (Helper(Some(child)), tokio::net::UnixStream::from_std(ours)?)
        }
    };
    let mut line = serde_json::to_vec(settings).map_err(std::io::Error::from)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok((helper, stream))
}

/// Runs the helper `program` for one connection, `socket` its stdin and
/// stdout, killed when the child is dropped.
pub(crate) fn spawn_helper(
    program: &std::path::Path,
    socket: std::os::unix::net::UnixStream,
) -> std::io::Result<tokio::process::Child> {
    let out = socket.try_clone()?;
    tokio::process::Command::new(program)
        // The agent's environment may hold its enrollment token; the
        // shell's commands get PATH and what a login sets.
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .stdin(Stdio::from(OwnedFd::from(socket)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        // Its errors land in the agent's log.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

/// In cluster mode, a kubeconfig (JSON) for the sessions: the cluster with
/// the rights of the `tether-operator` account the default cluster actions
/// use (its token requested now, or the one the agent holds); none in host
/// mode or without a cluster, and none (logged) when no token can be had.
pub async fn cluster_kubeconfig(kubernetes: &crate::actions::Kubernetes) -> Option<String> {
    kubernetes
        .config
        .as_ref()
        .filter(|config| config.mode == crate::kubernetes::Mode::Cluster)?;
    match kubernetes.operator_access().await {
        Ok(access) => serde_json::to_string(&access.kubeconfig()).ok(),
        Err(error) => {
            tracing::warn!(
                "the management shell gets no kubeconfig: {}",
                tether_proto::error_chain(&error)
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_line_round_trips_and_logs_no_hash() {
        let settings = Settings {
            authorized_keys: vec!["ssh-ed25519 AAAA".to_owned()],
            password_hash: Some("pbkdf2-sha256$100000$00$00".to_owned()),
            authorized_keys_file: None,
            password_file: None,
            kubeconfig: Some(r#"{"users":[{"user":{"token":"secret"}}]}"#.to_owned()),
            work_dir: "/work".into(),
            host_key: "/state/shell_host_key".into(),
            login_timeout_seconds: 30,
        };
        let line = serde_json::to_string(&settings).expect("serialized");
        assert_eq!(
            serde_json::from_str::<Settings>(&line).ok(),
            Some(settings.clone())
        );
        let shown = settings.to_string();
        assert_eq!(
            shown,
            "1 key(s), password login on, the cluster's kubeconfig, work dir /work"
        );
        let from_files = Settings {
            authorized_keys: Vec::new(),
            password_hash: None,
            authorized_keys_file: Some("/login/authorized_keys".into()),
            password_file: Some("/login/password".into()),
            kubeconfig: None,
            ..settings
        };
        assert_eq!(
            from_files.to_string(),
            "0 key(s) and those of /login/authorized_keys, the password in /login/password, work dir /work"
        );
        assert!(
            serde_json::from_str::<Settings>(
                r#"{"workDir":"/w","hostKey":"/k","loginTimeoutSeconds":30,"extra":1}"#
            )
            .is_err()
        );
    }
}
