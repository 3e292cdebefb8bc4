//! The trial of a new agent binary: recorded in the state directory when
//! the binary is swapped in, committed by the new agent once it is
//! healthy, rolled back by the guard (or by the next start) when the
//! deadline passes first. The decisions are pure; [`TrialFile`] keeps the
//! record.

use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// The trial's file in [`super::DIR`].
pub const TRIAL_FILE: &str = "trial.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The new binary is in place and must prove itself by the deadline.
    Trial,
    /// The new agent connected and reported: it stays.
    Committed,
    /// The deadline passed: the previous binary is back.
    RolledBack,
}

/// One swap and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trial {
    /// The version that ran before.
    pub from: String,
    /// The version swapped in.
    pub to: String,
    /// The new binary's SHA-256.
    pub sha256: String,
    /// The executable swapped; the previous binary is beside it
    /// ([`super::swap::previous_path`]).
    pub exe: PathBuf,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub phase: Phase,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Trial {
    /// What the restored agent reports, and records as the release's failure.
    pub fn rollback_reason(&self) -> String {
        let seconds = (self.deadline - self.started_at).num_seconds();
        format!(
            "{} did not report healthy within {seconds} s; rolled back to {}",
            self.to, self.from
        )
    }

    /// The same trial, rolled back.
    pub fn rolled_back(&self) -> Self {
        Self {
            phase: Phase::RolledBack,
            reason: Some(self.rollback_reason()),
            ..self.clone()
        }
    }
}

/// What an agent does with the trial it finds at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// No trial going on.
    Nothing,
    /// This is the new binary on trial: commit once healthy.
    OnTrial,
    /// The trial's deadline passed while nobody watched (a reboot, the
    /// guard killed): restore the previous binary and run it.
    RollBack,
    /// The previous version runs again but the record says trial (it was
    /// restored by hand, or the guard died before writing): record the
    /// rollback.
    ///
    /// Any other version is the binary on trial, whatever it reports.
    RecordRollBack,
}

/// Decides [`AtStart`] for the agent running `running` at `now`.
pub fn at_start(trial: Option<&Trial>, running: &str, now: DateTime<Utc>) -> AtStart {
    match trial {
        Some(trial) if trial.phase == Phase::Trial => {
            // Only the previous binary means the swap was undone: a binary
            // on trial that reports another version than its release's
            // name is still the one on trial (review M1).
            if running == trial.from && running != trial.to {
                AtStart::RecordRollBack
            } else if now >= trial.deadline {
                AtStart::RollBack
            } else {
                AtStart::OnTrial
            }
        }
        _ => AtStart::Nothing,
    }
}

/// What the guard does on each look at the trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardStep {
    /// Still on trial, the deadline ahead.
    Wait,
    /// Committed, rolled back, or gone: nothing left to guard.
    Done,
    /// The deadline passed on trial.
    RollBack,
}

pub fn guard_step(trial: Option<&Trial>, now: DateTime<Utc>) -> GuardStep {
    match trial {
        Some(trial) if trial.phase == Phase::Trial => {
            if now >= trial.deadline {
                GuardStep::RollBack
            } else {
                GuardStep::Wait
            }
        }
        _ => GuardStep::Done,
    }
}

/// The trial record in the state directory.
#[derive(Debug, Clone)]
pub struct TrialFile {
    path: PathBuf,
}

impl TrialFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(super::DIR).join(TRIAL_FILE),
        }
    }

    /// The trial recorded, if any; a file that does not parse is logged
    /// and read as none.
    pub fn load(&self) -> io::Result<Option<Trial>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(trial) => Ok(Some(trial)),
                Err(error) => {
                    tracing::warn!(%error, "ignoring {}: not a trial record", self.path.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, trial: &Trial) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(trial).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes, 0o600)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn trial(now: DateTime<Utc>) -> Trial {
        Trial {
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            sha256: "ab".repeat(32),
            exe: "/usr/bin/tether-agent".into(),
            started_at: now,
            deadline: now + TimeDelta::seconds(10),
            phase: Phase::Trial,
            reason: None,
        }
    }

    #[test]
    fn a_start_on_trial_commits_later_and_a_late_or_old_one_rolls_back() {
        let now = Utc::now();
        let on_trial = trial(now);
        assert_eq!(at_start(None, "0.2.0", now), AtStart::Nothing);
        assert_eq!(at_start(Some(&on_trial), "0.2.0", now), AtStart::OnTrial);
        assert_eq!(
            at_start(Some(&on_trial), "0.2.0", now + TimeDelta::seconds(10)),
            AtStart::RollBack,
            "a reboot during the trial, past its deadline"
        );
        assert_eq!(
            at_start(Some(&on_trial), "0.1.0", now),
            AtStart::RecordRollBack
        );
        assert_eq!(
            at_start(Some(&on_trial), "0.1.0-dev", now),
            AtStart::OnTrial,
            "a binary stamped otherwise is still the one on trial"
        );
        let committed = Trial {
            phase: Phase::Committed,
            ..on_trial.clone()
        };
        assert_eq!(
            at_start(Some(&committed), "0.2.0", now + TimeDelta::days(1)),
            AtStart::Nothing
        );
    }

    #[test]
    fn the_guard_waits_for_the_deadline_unless_committed() {
        let now = Utc::now();
        let on_trial = trial(now);
        assert_eq!(guard_step(Some(&on_trial), now), GuardStep::Wait);
        assert_eq!(
            guard_step(Some(&on_trial), now + TimeDelta::seconds(11)),
            GuardStep::RollBack
        );
        let committed = Trial {
            phase: Phase::Committed,
            ..on_trial.clone()
        };
        assert_eq!(
            guard_step(Some(&committed), now + TimeDelta::seconds(11)),
            GuardStep::Done
        );
        assert_eq!(guard_step(None, now), GuardStep::Done);
        let back = on_trial.rolled_back();
        assert_eq!(back.phase, Phase::RolledBack);
        assert_eq!(
            back.reason.as_deref(),
            Some("0.2.0 did not report healthy within 10 s; rolled back to 0.1.0")
        );
    }

    #[test]
    fn the_record_round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let file = TrialFile::new(dir.path());
        assert_eq!(file.load().expect("readable"), None);
        let recorded = trial(Utc::now());
        file.save(&recorded).expect("saved");
        assert_eq!(file.load().expect("readable"), Some(recorded));
    }
}
