//! The spec's NTP servers, as a systemd-timesyncd drop-in
//! (`/etc/systemd/timesyncd.conf.d/tether.conf`), then timesyncd restarted
//! so it reads it. The drop-in first clears the list (`NTP=` empty), so the
//! spec's servers replace the ones the image configured instead of adding
//! to them; without servers in the spec the drop-in is removed and the
//! image's configuration is back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::state::write_atomic;

/// timesyncd's files are world-readable, as the package installs them.
const DROP_IN_MODE: u32 = 0o644;
/// Longest the reload command may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The reload command unless configured.
pub const DEFAULT_RELOAD_COMMAND: &str = "systemctl try-restart systemd-timesyncd";
/// Where the drop-in goes unless configured.
pub const DEFAULT_DROP_IN: &str = "/etc/systemd/timesyncd.conf.d/tether.conf";

/// Where the drop-in goes and how timesyncd is made to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtpConfig {
    pub drop_in: PathBuf,
    /// An argv, never a shell.
    pub reload: Vec<String>,
}

impl Default for NtpConfig {
    fn default() -> Self {
        Self {
            drop_in: DEFAULT_DROP_IN.into(),
            reload: DEFAULT_RELOAD_COMMAND
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NtpError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run the reload command `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the reload command `{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("the reload command `{command}` did not finish within {}s", RELOAD_TIMEOUT.as_secs())]
    TimedOut { command: String },
}

/// The drop-in for `servers`; none without servers.
pub fn render(servers: &[String]) -> Option<String> {
    (!servers.is_empty()).then(|| {
        format!(
            "# Written by tether-agent from the device's spec (time.ntpServers); changes here are overwritten.\n[Time]\nNTP=\nNTP={}\n",
            servers.join(" ")
        )
    })
}

/// Makes the drop-in say `servers` (removes it without servers) and runs
/// the reload command if the file changed, or if `reload_pending` (the
/// last reload failed). Returns whether it reloaded.
pub async fn apply(
    config: &NtpConfig,
    servers: &[String],
    reload_pending: bool,
) -> Result<bool, NtpError> {
    let wanted = render(servers);
    let current = std::fs::read_to_string(&config.drop_in).ok();
    if current == wanted && !reload_pending {
        return Ok(false);
    }
    match &wanted {
        _ if current == wanted => {}
        Some(text) => write(&config.drop_in, text)?,
        None => match std::fs::remove_file(&config.drop_in) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NtpError::Remove {
                    path: config.drop_in.clone(),
                    source,
                });
            }
        },
    }
    reload(&config.reload).await?;
    Ok(true)
}

fn write(path: &Path, text: &str) -> Result<(), NtpError> {
    let failed = |source| NtpError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    write_atomic(path, text.as_bytes(), DROP_IN_MODE).map_err(failed)
}

async fn reload(argv: &[String]) -> Result<(), NtpError> {
    let command = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RELOAD_TIMEOUT, run)
        .await
        .map_err(|_| NtpError::TimedOut {
            command: command.clone(),
        })?
        .map_err(|source| NtpError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        tracing::info!(%command, "timesyncd reloaded with the spec's NTP servers");
        return Ok(());
    }
    // The end of what it said: where the reason usually is.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let tail = stderr
        .char_indices()
        .rev()
        .nth(299)
        .map_or(stderr, |(at, _)| &stderr[at..]);
    Err(NtpError::Failed {
        command,
        status: out.status,
        stderr: tail.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn servers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A reload command that appends a line to `log`.
    fn config(dir: &Path, log: &Path) -> NtpConfig {
        NtpConfig {
            drop_in: dir.join("timesyncd.conf.d/tether.conf"),
            reload: vec![
                "sh".into(),
                "-c".into(),
                format!("echo reloaded >> {}", log.display()),
            ],
        }
    }

    #[test]
    fn the_drop_in_clears_the_list_then_names_the_servers() {
        assert_eq!(
            render(&servers(&["a.example", "192.0.2.1"])).as_deref(),
            Some(
                "# Written by tether-agent from the device's spec (time.ntpServers); changes here are overwritten.\n[Time]\nNTP=\nNTP=a.example 192.0.2.1\n"
            )
        );
        assert_eq!(render(&[]), None);
    }

    #[tokio::test]
    async fn the_drop_in_is_written_reloaded_once_and_removed_without_servers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("reloads");
        let config = config(dir.path(), &log);
        let reloads = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert!(
            apply(&config, &servers(&["a.example"]), false)
                .await
                .expect("applies")
        );
        let text = std::fs::read_to_string(&config.drop_in).expect("written");
        assert!(text.ends_with("NTP=a.example\n"), "{text}");
        let mode = std::fs::metadata(&config.drop_in)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644 & !umask());
        assert_eq!(reloads(), 1);
        // The same servers: nothing to do.
        assert!(
            !apply(&config, &servers(&["a.example"]), false)
                .await
                .expect("applies")
        );
        assert_eq!(reloads(), 1);
        assert!(apply(&config, &[], false).await.expect("applies"));
        assert!(!config.drop_in.exists());
        assert_eq!(reloads(), 2);
        assert!(!apply(&config, &[], false).await.expect("applies"));
        assert_eq!(reloads(), 2);
        // After a failed reload it is tried again, the file unchanged.
        assert!(apply(&config, &[], true).await.expect("applies"));
        assert_eq!(reloads(), 3);
    }

    fn umask() -> u32 {
        let dir = tempfile::tempdir().expect("temp dir");
        let probe = dir.path().join("probe");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .expect("probe");
        0o666
            & !std::fs::metadata(&probe)
                .expect("metadata")
                .permissions()
                .mode()
    }

    #[tokio::test]
    async fn a_failing_reload_command_is_an_error_naming_it_and_its_output() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = NtpConfig {
            drop_in: dir.path().join("tether.conf"),
            reload: servers(&["sh", "-c", "echo no timesyncd here >&2; exit 5"]),
        };
        let error = apply(&config, &servers(&["a.example"]), false)
            .await
            .expect_err("fails");
        let message = error.to_string();
        assert!(
            message.contains("`sh -c echo no timesyncd here >&2; exit 5` failed")
                && message.contains("no timesyncd here"),
            "{message}"
        );
        let missing = NtpConfig {
            drop_in: dir.path().join("other.conf"),
            reload: servers(&["/nonexistent/systemctl"]),
        };
        let error = apply(&missing, &servers(&["a.example"]), false)
            .await
            .expect_err("fails");
        assert!(matches!(error, NtpError::Spawn { .. }), "{error:?}");
    }
}
