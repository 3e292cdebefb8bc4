//! The agent's side of `tether-agent-restore` (ADR 0020): restore-command's
//! SFTP and SQLite work runs in that helper binary, so russh, rusqlite and
//! SQLite stay out of the agent's own binary and its idle memory (issue 14's
//! budget); the agent runs the helper only while a step works.
//!
//! One [`Step`] as JSON on the helper's stdin, the password with it: never
//! in argv or the environment, which other users can read in /proc. The
//! helper answers one JSON line on stdout: [`Done`], or a [`StepFailure`]
//! with the status code the step's error has, and exit status 1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::restore::sftp::Server;

/// The helper's file name, beside the agent's own executable by default.
pub const HELPER_NAME: &str = "tether-agent-restore";

/// How long one step may run before the helper is killed (504): a large
/// database over a slow link, well past the SFTP connect timeout (20 s).
const STEP_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// One piece of restore-command's work, as the helper reads it on stdin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "step",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Step {
    /// Connects to `server`, takes an online backup of `database` into
    /// `copy` (in the agent's private temporary directory) and uploads it
    /// to `remote_path`.
    Backup {
        server: Server,
        database: PathBuf,
        copy: PathBuf,
        remote_path: String,
    },
    /// Downloads `remote_path` into `target` and checks its integrity.
    Fetch {
        server: Server,
        remote_path: String,
        target: PathBuf,
    },
    /// Replaces the stopped application's database `live` with `restored`
    /// (checked again first).
    Replace { restored: PathBuf, live: PathBuf },
}

/// A step's result: the bytes moved (or, for `replace`, the restored
/// database's size).
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    pub bytes: u64,
}

/// A step's failure as the action answers it.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StepFailure {
    pub status: u16,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(
        "the restore helper {path} does not exist: install {HELPER_NAME} beside tether-agent or name it with --restore-helper PATH (TETHER_AGENT_RESTORE_HELPER)"
    )]
    Missing { path: String },
    #[error("cannot run the restore helper {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Failed(#[from] StepFailure),
    #[error("the restore helper {path} did not finish within {STEP_DEADLINE:?}; it was stopped")]
    Deadline { path: String },
    #[error("the restore helper {path} gave no answer ({status}): {output:?}")]
    NoAnswer {
        path: String,
        status: String,
        output: String,
    },
}

impl HelperError {
    pub fn status_code(&self) -> u16 {
        match self {
            // This device cannot do restore-command as installed.
            HelperError::Missing { .. } => 501,
            HelperError::Spawn { .. } | HelperError::NoAnswer { .. } => 500,
            HelperError::Failed(failure) => failure.status,
            HelperError::Deadline { .. } => 504,
        }
    }
}

/// Runs `step` in the helper `program`: the bytes it moved, or its error.
/// The helper is killed when the deadline passes or the action is dropped.
pub async fn run(program: &Path, step: &Step) -> Result<u64, HelperError> {
    let path = program.display().to_string();
    let request = serde_json::to_vec(step).map_err(|e| HelperError::Spawn {
        path: path.clone(),
        source: e.into(),
    })?;
    let mut child = tokio::process::Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // Its panics, if any, land in the agent's own log.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => HelperError::Missing { path: path.clone() },
            _ => HelperError::Spawn {
                path: path.clone(),
                source,
            },
        })?;
    let mut stdin = child.stdin.take().ok_or_else(|| HelperError::Spawn {
        path: path.clone(),
        source: std::io::Error::other("no stdin"),
    })?;
    let finished = async move {
        stdin.write_all(&request).await?;
        // End of input: the helper reads its request to the end.
        drop(stdin);
        child.wait_with_output().await
    };
    let output = tokio::time::timeout(STEP_DEADLINE, finished)
        .await
        .map_err(|_| HelperError::Deadline { path: path.clone() })?
        .map_err(|source| HelperError::Spawn {
            path: path.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = stdout.lines().rev().find(|line| !line.trim().is_empty());
    let no_answer = || HelperError::NoAnswer {
        path: path.clone(),
        status: output.status.to_string(),
        output: stdout.chars().take(500).collect(),
    };
    let answer = answer.ok_or_else(no_answer)?;
    if output.status.success() {
        let done: Done = serde_json::from_str(answer).map_err(|_| no_answer())?;
        Ok(done.bytes)
    } else {
        let failure: StepFailure = serde_json::from_str(answer).map_err(|_| no_answer())?;
        Err(failure.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_as_one_json_object_naming_it() -> Result<(), serde_json::Error> {
        let step = Step::Replace {
            restored: "/s/restore.db".into(),
            live: "/d/app.db".into(),
        };
        assert_eq!(
            serde_json::to_value(&step)?,
            serde_json::json!({"step": "replace", "restored": "/s/restore.db", "live": "/d/app.db"})
        );
        let fetch: Step = serde_json::from_value(serde_json::json!({"step": "fetch",
            "server": {"host": "h", "port": 22, "user": "u", "password": "p",
                       "hostKeyFingerprint": "SHA256:x"},
            "remotePath": "/b.db", "target": "/t/restore.db"}))?;
        assert!(matches!(fetch, Step::Fetch { .. }), "{fetch:?}");
        assert!(!format!("{fetch:?}").contains("\"p\""), "{fetch:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_helper_is_named_with_the_flag() {
        let error = run(
            Path::new("/nonexistent/tether-agent-restore"),
            &Step::Replace {
                restored: "/a".into(),
                live: "/b".into(),
            },
        )
        .await
        .expect_err("ran nothing");
        assert_eq!(error.status_code(), 501);
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/tether-agent-restore")
                && message.contains("--restore-helper"),
            "{message}"
        );
    }
}
