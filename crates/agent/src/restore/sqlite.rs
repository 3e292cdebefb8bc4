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
}

impl SqliteError {
    pub fn status_code(&self) -> u16 {
        match self {
            SqliteError::Backup { .. } => 500,
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
