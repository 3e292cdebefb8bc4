//! The trial of a new agent binary: recorded as staged before the binary
//! is renamed over the executable, turned into a trial once it is there,
//! committed by the new agent once it is healthy, rolled back by the
//! guard (or by the next start) when its time runs out first. The
//! decisions are pure; [`TrialFile`] keeps the record.
//!
//! Time (review M3): the wall clock can be stepped (the time feature,
//! NTP), so the trial does not end by it while the machine stays up. The
//! record keeps the trial's end on `CLOCK_BOOTTIME`, which is never
//! stepped and counts time suspended, with the kernel's boot id, since
//! that clock starts again at every boot. In the same boot the trial ends
//! by that clock alone; across a reboot only the wall clock spans the
//! gap, and then the time left is capped at the trial's length, so a
//! clock set back (or still in 1970 on a device without RTC) never
//! stretches the trial beyond one more full length. The start in a new
//! boot records the end again on that boot's clock ([`Trial::rebased`]).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// The trial's file in [`super::DIR`].
pub const TRIAL_FILE: &str = "trial.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Recorded (and synced) before the new binary is renamed over the
    /// executable: a crash right after the rename still leaves a record
    /// that puts the new binary on trial (review M2). Whether the rename
    /// happened is told by the executable's SHA-256.
    Staged,
    /// The new binary is in place and must prove itself in time.
    Trial,
    /// The new agent connected and reported: it stays.
    Committed,
    /// The time ran out: the previous binary is back.
    RolledBack,
}

/// A moment on `CLOCK_BOOTTIME` of one boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootInstant {
    /// The kernel's boot id ([`crate::host::boot::KERNEL_BOOT_ID`]).
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`, in milliseconds.
    pub since_boot_ms: u64,
}

impl BootInstant {
    /// Now, on this boot's clock; `None` without a readable boot id.
    ///
    /// Always the kernel's boot id, never the agent's `--boot-id-file`:
    /// it pairs with `CLOCK_BOOTTIME`, which no test can fake either.
    pub fn read() -> Option<Self> {
        let boot_id = std::fs::read_to_string(crate::host::boot::KERNEL_BOOT_ID).ok()?;
        let boot_id = boot_id.trim();
        if boot_id.is_empty() {
            return None;
        }
        Some(Self {
            boot_id: boot_id.to_owned(),
            since_boot_ms: millis(since_boot()),
        })
    }

    fn after(&self, duration: Duration) -> Self {
        Self {
            boot_id: self.boot_id.clone(),
            since_boot_ms: self.since_boot_ms.saturating_add(millis(duration)),
        }
    }
}

/// `CLOCK_BOOTTIME`: monotonic, counting time suspended.
pub fn since_boot() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The time as the trial reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    pub wall: DateTime<Utc>,
    pub boot: Option<BootInstant>,
}

impl Now {
    pub fn read() -> Self {
        Self {
            wall: Utc::now(),
            boot: BootInstant::read(),
        }
    }
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
    /// On the wall clock: shown, and the trial's length is the span
    /// between them; they decide only across a reboot.
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// The deadline on the clock of the boot the trial runs in; absent in
    /// records of agents before review M3, or without a boot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<BootInstant>,
    pub phase: Phase,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Trial {
    /// A swap about to happen: `to` (whose binary has `sha256`) in place
    /// of `from` at `exe`, given `length` from `now` to prove itself.
    pub fn staged(
        from: &str,
        to: &str,
        sha256: &str,
        exe: &Path,
        length: Duration,
        now: &Now,
    ) -> Self {
        Self {
            from: from.to_owned(),
            to: to.to_owned(),
            sha256: sha256.to_owned(),
            exe: exe.to_owned(),
            started_at: now.wall,
            deadline: chrono::TimeDelta::from_std(length)
                .ok()
                .and_then(|length| now.wall.checked_add_signed(length))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            ends: now.boot.as_ref().map(|boot| boot.after(length)),
            phase: Phase::Staged,
            reason: None,
        }
    }

    /// How long the new binary has, in all.
    /// Not yet kept nor rolled back: a staged record counts, since its
    /// binary may already be in place (a save after the rename failed).
    pub fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Trial | Phase::Staged)
    }

    pub fn length(&self) -> Duration {
        (self.deadline - self.started_at)
            .to_std()
            .unwrap_or_default()
    }

    /// How long it has left at `now` (see the module's note on time).
    pub fn remaining(&self, now: &Now) -> Duration {
        if let (Some(ends), Some(boot)) = (&self.ends, &now.boot)
            && ends.boot_id == boot.boot_id
        {
            return Duration::from_millis(ends.since_boot_ms.saturating_sub(boot.since_boot_ms));
        }
        (self.deadline - now.wall)
            .to_std()
            .unwrap_or_default()
            .min(self.length())
    }

    /// The same trial with its end on the clock of `now`'s boot (after a
    /// reboot), the time left kept; unchanged when it is there already or
    /// no boot clock is known.
    pub fn rebased(&self, now: &Now) -> Self {
        let ends = match &now.boot {
            Some(boot) if self.ends.as_ref().map(|e| &e.boot_id) != Some(&boot.boot_id) => {
                Some(boot.after(self.remaining(now)))
            }
            _ => self.ends.clone(),
        };
        Self {
            ends,
            ..self.clone()
        }
    }

    /// The record on trial: a staged one whose rename happened, in the
    /// boot of `now`.
    pub fn on_trial(&self, now: &Now) -> Self {
        Self {
            phase: Phase::Trial,
            ..self.rebased(now)
        }
    }

    /// What the restored agent reports, and records as the release's failure.
    pub fn rollback_reason(&self) -> String {
        let seconds = self.length().as_secs();
        format!(
            "{} did not report healthy within {seconds} s; rolled back to {}",
            self.to, self.from
        )
    }

    /// The same trial, rolled back.
    pub fn rolled_back(&self) -> Self {
        self.rolled_back_because(self.rollback_reason())
    }

    /// The same trial, rolled back for `reason`.
    pub fn rolled_back_because(&self, reason: String) -> Self {
        Self {
            phase: Phase::RolledBack,
            reason: Some(reason),
            ..self.clone()
        }
    }

    /// Why the service's next start rolls back (see
    /// [`super::guard::before_start`]).
    pub fn stopped_reason(&self) -> String {
        format!(
            "{} stopped during its trial (it crashed, was stopped or the device restarted) before it reported healthy; rolled back to {}",
            self.to, self.from
        )
    }
}

/// What the service's start, run by the previous binary, does with the
/// trial it finds (see [`super::guard::before_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeStart {
    /// Nothing pending, or a staged record whose rename never happened
    /// (the agent's own start drops it): start the executable as it is.
    Start,
    /// The binary on trial stopped before it was kept: put the previous
    /// one back first.
    RollBack,
}

/// Decides [`BeforeStart`]. `exe_is_new` tells whether the executable is
/// the binary the trial swapped in (its SHA-256), read only for a staged
/// record.
pub fn before_start(trial: Option<&Trial>, exe_is_new: impl FnOnce() -> bool) -> BeforeStart {
    match trial.map(|trial| trial.phase) {
        Some(Phase::Trial) => BeforeStart::RollBack,
        Some(Phase::Staged) if exe_is_new() => BeforeStart::RollBack,
        _ => BeforeStart::Start,
    }
}

/// What an agent does with the trial it finds at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// No trial going on.
    Nothing,
    /// Staged, but the executable is not the new binary: the rename never
    /// happened (a crash before it). Drop the record; nothing ran.
    Discard,
    /// This is the new binary on trial: commit once healthy.
    OnTrial,
    /// The trial's time ran out while nobody watched (a reboot, the guard
    /// killed): restore the previous binary and run it.
    RollBack,
    /// The previous version runs again but the record says trial (it was
    /// restored by hand, or the guard died before writing): record the
    /// rollback.
    ///
    /// Any other version is the binary on trial, whatever it reports.
    RecordRollBack,
}

/// What the starting agent knows of itself.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// Its version.
    pub version: &'a str,
    /// The SHA-256 of the trial's executable, read only for a staged
    /// record; `None` when it could not be read (or was not).
    pub exe_sha256: Option<&'a str>,
}

/// Decides [`AtStart`] for the agent `running` at `now`.
pub fn at_start(trial: Option<&Trial>, running: Running<'_>, now: &Now) -> AtStart {
    let Some(trial) = trial else {
        return AtStart::Nothing;
    };
    match trial.phase {
        Phase::Staged => {
            let renamed = match running.exe_sha256 {
                Some(sha256) => sha256 == trial.sha256,
                // The executable unreadable: its version is the best
                // guess (only the previous one's means not renamed).
                None => !(running.version == trial.from && running.version != trial.to),
            };
            if renamed {
                on_trial(trial, running.version, now)
            } else {
                AtStart::Discard
            }
        }
        Phase::Trial => on_trial(trial, running.version, now),
        Phase::Committed | Phase::RolledBack => AtStart::Nothing,
    }
}

fn on_trial(trial: &Trial, running: &str, now: &Now) -> AtStart {
    // Only the previous binary means the swap was undone: a binary on
    // trial that reports another version than its release's name is
    // still the one on trial (review M1).
    if running == trial.from && running != trial.to {
        AtStart::RecordRollBack
    } else if trial.remaining(now).is_zero() {
        AtStart::RollBack
    } else {
        AtStart::OnTrial
    }
}

/// What the guard does on each look at the trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardStep {
    /// Still on trial, time left.
    Wait,
    /// Committed, rolled back, or gone: nothing left to guard.
    Done,
    /// The time ran out on trial.
    RollBack,
}

/// The guard's look at the record, once its own clock says whether the
/// time is `over`. A staged record counts as on trial: a guard starts
/// only after the rename.
pub fn guard_step(trial: Option<&Trial>, over: bool) -> GuardStep {
    match trial {
        Some(trial) if matches!(trial.phase, Phase::Trial | Phase::Staged) => {
            if over {
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

    /// Drops the record; none is no error.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    const SHA: &str = "abababababababababababababababababababababababababababababababab";

    fn boot(id: &str, seconds: u64) -> Option<BootInstant> {
        Some(BootInstant {
            boot_id: id.into(),
            since_boot_ms: seconds * 1000,
        })
    }

    /// The wall clock at `wall`, boot `a` at 100 s.
    fn start() -> Now {
        Now {
            wall: DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            boot: boot("a", 100),
        }
    }

    /// `seconds` after [`start`] on both clocks, in boot `a`.
    fn later(seconds: u64) -> Now {
        let start = start();
        Now {
            wall: start.wall + TimeDelta::seconds(seconds as i64),
            boot: boot("a", 100 + seconds),
        }
    }

    fn trial() -> Trial {
        Trial::staged(
            "0.1.0",
            "0.2.0",
            SHA,
            Path::new("/usr/bin/tether-agent"),
            Duration::from_secs(10),
            &start(),
        )
        .on_trial(&start())
    }

    fn running(version: &str) -> Running<'_> {
        Running {
            version,
            exe_sha256: None,
        }
    }

    #[test]
    fn a_start_on_trial_commits_later_and_a_late_or_old_one_rolls_back() {
        let on_trial = trial();
        assert_eq!(at_start(None, running("0.2.0"), &start()), AtStart::Nothing);
        assert_eq!(
            at_start(Some(&on_trial), running("0.2.0"), &later(9)),
            AtStart::OnTrial
        );
        assert_eq!(
            at_start(Some(&on_trial), running("0.2.0"), &later(10)),
            AtStart::RollBack,
        );
        assert_eq!(
            at_start(Some(&on_trial), running("0.1.0"), &later(1)),
            AtStart::RecordRollBack
        );
        assert_eq!(
            at_start(Some(&on_trial), running("0.1.0-dev"), &later(1)),
            AtStart::OnTrial,
            "a binary stamped otherwise is still the one on trial"
        );
        let committed = Trial {
            phase: Phase::Committed,
            ..on_trial.clone()
        };
        assert_eq!(
            at_start(Some(&committed), running("0.2.0"), &later(86_400)),
            AtStart::Nothing
        );
    }

    #[test]
    fn a_staged_record_is_a_trial_once_the_rename_happened_and_dropped_otherwise() {
        // Review M2: the record comes before the rename; a crash between
        // them leaves it staged.
        let staged = Trial {
            phase: Phase::Staged,
            ..trial()
        };
        let exe = |sha256| Running {
            version: "0.2.0",
            exe_sha256: Some(sha256),
        };
        assert_eq!(
            at_start(Some(&staged), exe(SHA), &later(1)),
            AtStart::OnTrial,
            "renamed: the new binary runs, on trial"
        );
        assert_eq!(
            at_start(Some(&staged), exe(SHA), &later(10)),
            AtStart::RollBack,
            "renamed, and its time ran out"
        );
        let old = Running {
            version: "0.1.0",
            exe_sha256: Some("cd"),
        };
        assert_eq!(
            at_start(Some(&staged), old, &later(1)),
            AtStart::Discard,
            "not renamed: nothing ran, nothing to roll back"
        );
        assert_eq!(at_start(Some(&staged), old, &later(100)), AtStart::Discard);
        assert_eq!(
            at_start(Some(&staged), exe("cd"), &later(1)),
            AtStart::Discard,
            "the executable decides, not the version it reports"
        );
        // The executable unreadable: the version is the guess.
        assert_eq!(
            at_start(Some(&staged), running("0.2.0"), &later(1)),
            AtStart::OnTrial
        );
        assert_eq!(
            at_start(Some(&staged), running("0.1.0"), &later(1)),
            AtStart::Discard
        );
        let promoted = staged.on_trial(&later(1));
        assert_eq!(promoted.phase, Phase::Trial);
        assert_eq!(promoted.ends, staged.ends, "same boot: the same end");
        assert_eq!(
            promoted.rolled_back().reason.as_deref(),
            Some("0.2.0 did not report healthy within 10 s; rolled back to 0.1.0"),
            "the reason of a staged trial rolled back is the usual one"
        );
    }

    #[test]
    fn in_one_boot_the_trial_ends_by_the_boot_clock_whatever_the_wall_clock_does() {
        // Review M3: the time feature or NTP steps the wall clock.
        let on_trial = trial();
        let stepped_forward = Now {
            wall: start().wall + TimeDelta::days(365),
            boot: boot("a", 101),
        };
        assert_eq!(on_trial.remaining(&stepped_forward), Duration::from_secs(9));
        assert_eq!(
            at_start(Some(&on_trial), running("0.2.0"), &stepped_forward),
            AtStart::OnTrial,
            "a step forward does not roll a healthy update back"
        );
        let stepped_back = Now {
            wall: start().wall - TimeDelta::days(365),
            boot: boot("a", 111),
        };
        assert_eq!(on_trial.remaining(&stepped_back), Duration::ZERO);
        assert_eq!(
            at_start(Some(&on_trial), running("0.2.0"), &stepped_back),
            AtStart::RollBack,
            "a step back does not stretch the trial"
        );
    }

    #[test]
    fn across_a_reboot_the_wall_clock_decides_capped_at_the_trials_length() {
        let on_trial = trial();
        let rebooted = |wall_seconds: i64| Now {
            wall: start().wall + TimeDelta::seconds(wall_seconds),
            boot: boot("b", 5),
        };
        assert_eq!(on_trial.remaining(&rebooted(4)), Duration::from_secs(6));
        assert_eq!(on_trial.remaining(&rebooted(60)), Duration::ZERO);
        assert_eq!(
            at_start(Some(&on_trial), running("0.2.0"), &rebooted(60)),
            AtStart::RollBack
        );
        assert_eq!(
            on_trial.remaining(&rebooted(-1_000_000)),
            Duration::from_secs(10),
            "a clock set back (no RTC) gives at most one more full length"
        );
        // The new boot's start records the end on its own clock.
        let rebased = on_trial.rebased(&rebooted(4));
        assert_eq!(rebased.ends, boot("b", 11));
        let in_new_boot = Now {
            wall: start().wall + TimeDelta::days(9),
            boot: boot("b", 10),
        };
        assert_eq!(rebased.remaining(&in_new_boot), Duration::from_secs(1));
        // A record without a boot clock (an older agent's) goes by the
        // wall clock, capped likewise.
        let older = Trial {
            ends: None,
            ..on_trial.clone()
        };
        assert_eq!(older.remaining(&later(3)), Duration::from_secs(7));
        assert_eq!(
            older.remaining(&Now {
                wall: start().wall - TimeDelta::days(1),
                boot: None,
            }),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn the_guard_waits_for_its_clock_unless_committed() {
        let on_trial = trial();
        assert_eq!(guard_step(Some(&on_trial), false), GuardStep::Wait);
        assert_eq!(guard_step(Some(&on_trial), true), GuardStep::RollBack);
        let committed = Trial {
            phase: Phase::Committed,
            ..on_trial.clone()
        };
        assert_eq!(guard_step(Some(&committed), true), GuardStep::Done);
        assert_eq!(guard_step(None, false), GuardStep::Done);
        let back = on_trial.rolled_back();
        assert_eq!(back.phase, Phase::RolledBack);
        assert_eq!(
            back.reason.as_deref(),
            Some("0.2.0 did not report healthy within 10 s; rolled back to 0.1.0")
        );
    }

    #[test]
    fn the_boot_clock_reads_this_boot() {
        let now = BootInstant::read().expect("a Linux boot id");
        assert!(!now.boot_id.is_empty());
        assert!(now.since_boot_ms > 0);
    }

    #[test]
    fn a_service_start_during_a_trial_rolls_back_unless_nothing_was_swapped() {
        let mut record = trial();
        assert_eq!(before_start(None, || true), BeforeStart::Start);
        assert_eq!(before_start(Some(&record), || false), BeforeStart::RollBack);
        record.phase = Phase::Staged;
        assert_eq!(before_start(Some(&record), || true), BeforeStart::RollBack);
        assert_eq!(
            before_start(Some(&record), || false),
            BeforeStart::Start,
            "the rename never happened: the executable is the previous binary"
        );
        for ended in [Phase::Committed, Phase::RolledBack] {
            record.phase = ended;
            assert_eq!(before_start(Some(&record), || true), BeforeStart::Start);
        }
        assert_eq!(
            record
                .rolled_back_because(record.stopped_reason())
                .reason
                .as_deref(),
            Some(
                "0.2.0 stopped during its trial (it crashed, was stopped or the device restarted) before it reported healthy; rolled back to 0.1.0"
            )
        );
    }

    #[test]
    fn the_record_round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().expect("dir");
        let file = TrialFile::new(dir.path());
        assert_eq!(file.load().expect("readable"), None);
        let recorded = trial();
        file.save(&recorded).expect("saved");
        assert_eq!(file.load().expect("readable"), Some(recorded));
        file.remove().expect("removed");
        file.remove().expect("none is no error");
        assert_eq!(file.load().expect("readable"), None);
    }
}
