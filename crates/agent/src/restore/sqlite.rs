//! SQLite's online backup and integrity check (rusqlite, ADR 0020).
//!
//! The backup copies every page in one step, inside one read transaction,
//! so the copy is one consistent state of the database even while the
//! application writes: in WAL mode its writers go on, in rollback mode
//! they wait for the copy (the application's busy timeout).

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::StepResult;
use rusqlite::{Connection, OpenFlags};

/// How long the backup waits for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot back up {path}: {source}")]
    Backup {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{path} is not a sound SQLite database: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("cannot replace {path}: {source}")]
    Replace {
        path: String,
        source: std::io::Error,
    },
}

impl SqliteError {
    pub fn status_code(&self) -> u16 {
        match self {
            SqliteError::Backup { .. } | SqliteError::Replace { .. } => 500,
            // The backup itself is bad, not the agent: the request cannot
            // be carried out as it stands.
            SqliteError::Corrupt { .. } => 422,
        }
    }
}

/// Writes a consistent copy of the live database `source` to `target`.
/// Blocking: call it from `spawn_blocking`.
pub fn backup(source: &Path, target: &Path) -> Result<(), SqliteError> {
    let failed = |error| SqliteError::Backup {
        path: source.display().to_string(),
        source: error,
    };
    // Read-only and never created: a wrong path must not leave an empty
    // database behind for the application to find.
    let live = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    live.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    let mut copy = Connection::open(target).map_err(failed)?;
    let backup = rusqlite::backup::Backup::new(&live, &mut copy).map_err(failed)?;
    // -1: all pages in one step, one read transaction, one consistent
    // state (rusqlite's run_to_completion takes only positive steps). A
    // writer's lock is waited for by the live connection's busy timeout.
    match backup.step(-1).map_err(failed)? {
        StepResult::Done => Ok(()),
        _ => Err(failed(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!(
                "the database stayed locked by a writer for {BUSY_TIMEOUT:?}"
            )),
        ))),
    }
}

/// Runs `PRAGMA integrity_check` on `path`: `Ok` only when SQLite answers
/// "ok". A file that is no database at all is corrupt too. Blocking.
pub fn integrity_check(path: &Path) -> Result<(), SqliteError> {
    let corrupt = |reason: String| SqliteError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|error| corrupt(error.to_string()))?;
    let mut statement = connection
        .prepare("PRAGMA integrity_check")
        .map_err(|error| corrupt(error.to_string()))?;
    let problems = statement
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|error| corrupt(error.to_string()))?;
    if problems == ["ok"] {
        Ok(())
    } else {
        Err(corrupt(problems.join("; ")))
    }
}

/// Replaces the database `live` with `restored` once `restored` passes
/// [`integrity_check`]; a corrupt file leaves `live` untouched. The
/// application must be stopped (scaled to 0). Blocking.
///
/// The copy lands next to `live` and is renamed over it, so `live` is
/// either the old or the new database, never half of one; it keeps the old
/// file's owner and mode, as the application may run as another user.
/// The old database's `-wal` and `-shm` go first: SQLite would otherwise
/// apply the old write-ahead log to the restored file.
pub fn replace(restored: &Path, live: &Path) -> Result<(), SqliteError> {
    integrity_check(restored)?;
    let failed = |source| SqliteError::Replace {
        path: live.display().to_string(),
        source,
    };
    let staged = sibling(live, ".tether-restore");
    std::fs::copy(restored, &staged).map_err(failed)?;
    std::fs::File::open(&staged)
        .and_then(|file| file.sync_all())
        .map_err(failed)?;
    if let Ok(old) = std::fs::metadata(live) {
        use std::os::unix::fs::MetadataExt;
        std::fs::set_permissions(&staged, old.permissions()).map_err(failed)?;
        std::os::unix::fs::chown(&staged, Some(old.uid()), Some(old.gid())).map_err(failed)?;
    }
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(sibling(live, suffix)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(failed(error));
            }
            _ => {}
        }
    }
    std::fs::rename(&staged, live).map_err(failed)?;
    // The rename is durable once the directory is.
    if let Some(dir) = live.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`app.db` → `app.db-wal`).
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}
