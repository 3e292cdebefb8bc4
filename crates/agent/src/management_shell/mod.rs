//! The management shell (ADR 0023, seed 001): an SSH server embedded in
//! the agent's helper binary `tether-agent-shell`, reached through `ssh`
//! tunnels. One helper process serves one SSH connection on its stdin
//! (a socket), so the agent's idle memory does not grow with russh's
//! server: the agent only spawns it ([`crate::tunnel::ssh`]).
//!
//! The agent writes the connection's [`Settings`] as one JSON line on that
//! socket before the SSH bytes: who may log in (the requesting user's keys
//! from tetherd, the device's password hash) and where sessions start.
//! Nothing secret goes into argv or the environment.

pub mod host_key;
pub mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The helper's file name, beside the agent's own executable by default.
pub const HELPER_NAME: &str = "tether-agent-shell";
/// Where sessions start unless `--shell-work-dir` says otherwise.
pub const DEFAULT_WORK_DIR: &str = "/work";
/// The host key's file in the agent's state directory.
pub const HOST_KEY_FILE: &str = "shell_host_key";
/// The longest settings line the helper reads (100 keys of a few hundred
/// bytes fit many times over).
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// How the agent runs management shells; from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellConfig {
    /// The `tether-agent-shell` binary.
    pub helper: PathBuf,
    /// Where sessions start, `HOME` of their commands; kept across restarts.
    pub work_dir: PathBuf,
    /// The ed25519 host key (OpenSSH format, 0600), created on first use.
    pub host_key: PathBuf,
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
    pub work_dir: PathBuf,
    pub host_key: PathBuf,
}

impl std::fmt::Display for Settings {
    /// What the log may show: no hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} key(s), password login {}, work dir {}",
            self.authorized_keys.len(),
            if self.password_hash.is_some() {
                "on"
            } else {
                "off"
            },
            self.work_dir.display()
        )
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
            work_dir: "/work".into(),
            host_key: "/state/shell_host_key".into(),
        };
        let line = serde_json::to_string(&settings).expect("serialized");
        assert_eq!(
            serde_json::from_str::<Settings>(&line).ok(),
            Some(settings.clone())
        );
        let shown = settings.to_string();
        assert_eq!(shown, "1 key(s), password login on, work dir /work");
        assert!(
            serde_json::from_str::<Settings>(r#"{"workDir":"/w","hostKey":"/k","extra":1}"#)
                .is_err()
        );
    }
}
