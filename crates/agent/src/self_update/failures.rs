//! Releases that failed on this device, kept in the state directory: a
//! release that failed (a bad download, a rollback) is not tried again for
//! the same version and binary, and its deployment reports the reason
//! until the spec moves on.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// The failures' file in [`super::DIR`].
pub const FAILURES_FILE: &str = "failed.json";
/// The failures kept: the newest.
pub const MAX_FAILURES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub version: String,
    /// The binary's SHA-256 (empty: the release had none for this platform).
    pub sha256: String,
    pub reason: String,
}

/// The failures, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures(pub Vec<Failure>);

impl Failures {
    pub fn find(&self, version: &str, sha256: &str) -> Option<&Failure> {
        self.0
            .iter()
            .find(|f| f.version == version && f.sha256 == sha256)
    }

    /// Records `failure`, replacing an earlier one of the same binary and
    /// keeping the newest [`MAX_FAILURES`].
    pub fn add(&mut self, failure: Failure) {
        self.0
            .retain(|f| !(f.version == failure.version && f.sha256 == failure.sha256));
        self.0.push(failure);
        let excess = self.0.len().saturating_sub(MAX_FAILURES);
        self.0.drain(..excess);
    }
}

#[derive(Debug, Clone)]
pub struct FailuresFile {
    path: PathBuf,
}

impl FailuresFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(super::DIR).join(FAILURES_FILE),
        }
    }

    /// The failures recorded; an unreadable file is logged and read as
    /// none (the worst outcome: a failed release is tried once more).
    pub fn load(&self) -> Failures {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%error, "ignoring {}: not a failures record", self.path.display());
                Failures::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Failures::default(),
            Err(error) => {
                tracing::warn!(%error, "cannot read {}", self.path.display());
                Failures::default()
            }
        }
    }

    /// Adds `failure` to the file.
    pub fn record(&self, failure: Failure) -> io::Result<Failures> {
        let mut failures = self.load();
        failures.add(failure);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(&failures).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes, 0o600)?;
        Ok(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(version: &str, reason: &str) -> Failure {
        Failure {
            version: version.into(),
            sha256: "aa".into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn the_newest_failure_of_a_binary_wins_and_old_ones_go() {
        let mut failures = Failures::default();
        failures.add(failure("0.2.0", "bad signature"));
        failures.add(failure("0.2.0", "rolled back"));
        assert_eq!(failures.0.len(), 1);
        assert_eq!(
            failures.find("0.2.0", "aa").expect("there").reason,
            "rolled back"
        );
        assert_eq!(failures.find("0.2.0", "bb"), None);
        for i in 0..MAX_FAILURES + 3 {
            failures.add(failure(&format!("1.{i}"), "x"));
        }
        assert_eq!(failures.0.len(), MAX_FAILURES);
        assert!(failures.find("0.2.0", "aa").is_none());
    }

    #[test]
    fn failures_survive_in_the_state_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let file = FailuresFile::new(dir.path());
        file.record(failure("0.2.0", "hash mismatch"))
            .expect("recorded");
        assert!(file.load().find("0.2.0", "aa").is_some());
    }
}
