//! Swapping the agent's executable: the new binary is written beside the
//! running one (same directory, so the final rename is atomic), fsync'd
//! and made 0755; the running one is kept as `<exe>.previous`; then the
//! new one is renamed over the executable. At every moment the
//! executable's path holds a whole binary, old or new.
//!
//! [`install_on_trial`] records the trial around the rename: staged (and
//! synced) before it, on trial after it (review M2), so a crash between
//! the two leaves a staged record, which the next start
//! ([`super::at_start`]) reads as a trial if the executable is the new
//! binary and drops otherwise.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::trial::{Phase, Trial, TrialFile};

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("cannot record the trial in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot swap agent {version} in at {exe}")]
    Install {
        version: String,
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Swaps `binary` in at the `staged` trial's executable, the trial
/// recorded before and after. On an error the executable is untouched.
pub fn install_on_trial(
    trials: &TrialFile,
    staged: &Trial,
    binary: &Path,
) -> Result<(), SwapError> {
    trials.save(staged).map_err(|source| SwapError::Record {
        path: trials.path().to_owned(),
        source,
    })?;
    if let Err(source) = install(&staged.exe, binary) {
        if let Err(error) = trials.remove() {
            // Dropped at the next start: the executable is not its binary.
            tracing::warn!(%error, "cannot drop the staged trial record");
        }
        return Err(SwapError::Install {
            version: staged.to.clone(),
            exe: staged.exe.clone(),
            source,
        });
    }
    let on_trial = Trial {
        phase: Phase::Trial,
        ..staged.clone()
    };
    if let Err(error) = trials.save(&on_trial) {
        // The staged record stays, and reads as the trial: the guard and
        // the next start take it so.
        tracing::warn!(%error, "cannot record agent {} as on trial; its staged record stands for it", staged.to);
    }
    Ok(())
}

/// Where the previous binary is kept: `<exe>.previous`.
pub fn previous_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    exe.with_file_name(name)
}

fn directory(exe: &Path) -> io::Result<&Path> {
    exe.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", exe.display())))
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The copies of new binaries beside `exe` start with this.
fn staged_prefix(exe: &Path) -> String {
    format!(
        ".{}.new.",
        exe.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Removes copies of new binaries a stop during [`install`] left beside
/// `exe` (review L7).
pub fn remove_staged_copies(exe: &Path) {
    let prefix = staged_prefix(exe);
    let Some(entries) = directory(exe).ok().and_then(|dir| fs::read_dir(dir).ok()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("removed {}, left by an unfinished swap", path.display()),
                Err(error) => tracing::warn!(%error, "cannot remove {}", path.display()),
            }
        }
    }
}

/// Puts `new_binary` in place of `exe`, keeping the binary that was there
/// as [`previous_path`] (replacing an older one).
pub fn install(exe: &Path, new_binary: &Path) -> io::Result<()> {
    let dir = directory(exe)?;
    let staged = dir.join(format!("{}{}", staged_prefix(exe), rand::random::<u64>()));
    let result = (|| {
        let mut from = File::open(new_binary)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&staged)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        keep_previous(exe)?;
        fs::rename(&staged, exe)?;
        sync_directory(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}

/// Keeps the current `exe` as `<exe>.previous`: a hard link (the same
/// file, no copy), or a copy where the file system has no links.
fn keep_previous(exe: &Path) -> io::Result<()> {
    let previous = previous_path(exe);
    match fs::remove_file(&previous) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if fs::hard_link(exe, &previous).is_err() {
        let mut from = File::open(exe)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&previous)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    Ok(())
}

/// Puts the previous binary back over `exe`, atomically. An error if there
/// is none (restored already, or never kept).
pub fn restore(exe: &Path) -> io::Result<()> {
    let previous = previous_path(exe);
    fs::rename(&previous, exe).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot put {} back: {e}", previous.display()),
        )
    })?;
    sync_directory(directory(exe)?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_swap_keeps_the_previous_binary_and_a_restore_puts_it_back() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        let download = dir.path().join("download");
        fs::write(&download, b"new agent").expect("new");

        install(&exe, &download).expect("swapped");
        assert_eq!(fs::read(&exe).expect("exe"), b"new agent");
        assert_eq!(
            fs::metadata(&exe).expect("meta").permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read(previous_path(&exe)).expect("previous"),
            b"old agent"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        restore(&exe).expect("restored");
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
        assert!(!previous_path(&exe).exists());
        let error = restore(&exe).expect_err("nothing to restore");
        assert!(error.to_string().contains(".previous"), "{error}");
    }

    fn staged(exe: &Path) -> Trial {
        let now = super::super::trial::Now {
            wall: chrono::Utc::now(),
            boot: None,
        };
        Trial::staged(
            "0.1.0",
            "0.2.0",
            &"ab".repeat(32),
            exe,
            std::time::Duration::from_secs(60),
            &now,
        )
    }

    #[test]
    fn the_trial_is_recorded_before_the_rename_and_no_record_means_no_swap() {
        // Review M2: the executable never holds the new binary without a
        // record saying so.
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        let download = dir.path().join("download");
        fs::write(&download, b"new agent").expect("new");

        let unwritable = dir.path().join("state-is-a-file");
        fs::write(&unwritable, b"").expect("file");
        let error = install_on_trial(&TrialFile::new(&unwritable), &staged(&exe), &download)
            .expect_err("no record");
        assert!(matches!(error, SwapError::Record { .. }), "{error}");
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
        assert!(!previous_path(&exe).exists(), "not even begun");

        let trials = TrialFile::new(&dir.path().join("state"));
        let error = install_on_trial(&trials, &staged(&dir.path().join("none/x")), &download)
            .expect_err("no such directory");
        assert!(
            error.to_string().contains("cannot swap agent 0.2.0 in"),
            "{error}"
        );
        assert_eq!(
            trials.load().expect("read"),
            None,
            "the staged record is dropped"
        );

        install_on_trial(&trials, &staged(&exe), &download).expect("swapped");
        assert_eq!(fs::read(&exe).expect("exe"), b"new agent");
        let recorded = trials.load().expect("read").expect("a record");
        assert_eq!(recorded.phase, Phase::Trial);
        assert_eq!(recorded.to, "0.2.0");
    }

    #[test]
    fn copies_left_by_an_unfinished_swap_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        let left = dir.path().join(".tether-agent.new.123");
        fs::write(&left, b"half a new agent").expect("left");
        let other = dir.path().join(".other.new.123");
        fs::write(&other, b"not ours").expect("other");
        remove_staged_copies(&exe);
        assert!(!left.exists());
        assert!(other.exists());
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
    }

    #[test]
    fn a_failed_swap_leaves_the_executable_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("tether-agent");
        fs::write(&exe, b"old agent").expect("old");
        assert!(install(&exe, &dir.path().join("missing")).is_err());
        assert_eq!(fs::read(&exe).expect("exe"), b"old agent");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }
}
