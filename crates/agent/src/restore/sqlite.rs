//! SQLite's online backup and integrity check (rusqlite, ADR 0020).
//!
//! The backup copies every page in one step, inside one read transaction,
//! so the copy is one consistent state of the database even while the
//! application writes: in WAL mode its writers go on, in rollback mode
//! they wait for the copy (the application's busy timeout).
//!
//! The live database is in a volume the application writes: it may have
//! put a symlink there (`db -> /var/lib/rancher/k3s/server/db`) to make the
//! agent, which runs as root, read or replace a file of the host. So no
//! symlink is followed anywhere on the live database's path: the volume's
//! directory on the node must be a real path, and the restore works
//! through a directory descriptor opened without following links, which
//! the application cannot swap under it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::time::Duration;

use rusqlite::backup::StepResult;
use rusqlite::{Connection, OpenFlags};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat, openat, statat, unlinkat};
use rustix::io::Errno;

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
    #[error(
        "{path} is refused: {reason}; a symlink in the volume could point out of it, so none is followed"
    )]
    Symlink { path: String, reason: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl SqliteError {
    pub fn status_code(&self) -> u16 {
        match self {
            SqliteError::Backup { .. } | SqliteError::Replace { .. } | SqliteError::Open { .. } => {
                500
            }
            // The backup itself is bad, not the agent: the request cannot
            // be carried out as it stands.
            SqliteError::Corrupt { .. } | SqliteError::Symlink { .. } => 422,
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
    // Refused with the link named; SQLite's NOFOLLOW checks again as it
    // opens (it opens by path, its -wal and -shm with O_NOFOLLOW).
    let (dir, name) = open_parent(source)?;
    regular_file(&dir, name, source)?;
    // Read-only and never created: a wrong path must not leave an empty
    // database behind for the application to find.
    let live = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|error| match error.sqlite_error() {
        Some(e) if e.extended_code == rusqlite::ffi::SQLITE_CANTOPEN_SYMLINK => {
            SqliteError::Symlink {
                path: source.display().to_string(),
                reason: "a symlink appeared on its path".to_owned(),
            }
        }
        _ => failed(error),
    })?;
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
/// apply the old write-ahead log to the restored file. Every step is
/// relative to `live`'s directory, opened without following links.
pub fn replace(restored: &Path, live: &Path) -> Result<(), SqliteError> {
    integrity_check(restored)?;
    let failed = |source| SqliteError::Replace {
        path: live.display().to_string(),
        source,
    };
    let (dir, name) = open_parent(live)?;
    let old = match regular_file(&dir, name, live) {
        Ok(old) => Some(old),
        Err(SqliteError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(error) => return Err(error),
    };
    let staged = sibling(name, ".tether-restore");
    // A leftover, or a link the application planted under this name.
    unlink(&dir, &staged).map_err(failed)?;
    let mut copy = File::from(
        openat(
            &dir,
            &staged,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(into_io)
        .map_err(failed)?,
    );
    std::io::copy(&mut File::open(restored).map_err(failed)?, &mut copy).map_err(failed)?;
    if let Some(old) = old {
        // Permissions only: no set-user-id bit on a file now root's copy.
        rustix::fs::fchmod(&copy, Mode::from_raw_mode(old.st_mode & 0o777))
            .and_then(|()| {
                rustix::fs::fchown(
                    &copy,
                    Some(rustix::fs::Uid::from_raw(old.st_uid)),
                    Some(rustix::fs::Gid::from_raw(old.st_gid)),
                )
            })
            .map_err(into_io)
            .map_err(failed)?;
    }
    copy.sync_all().map_err(failed)?;
    for suffix in ["-wal", "-shm"] {
        unlink(&dir, &sibling(name, suffix)).map_err(failed)?;
    }
    rustix::fs::renameat(&dir, &staged, &dir, name)
        .map_err(into_io)
        .map_err(failed)?;
    // The rename is durable once the directory is.
    rustix::fs::fsync(&dir).map_err(into_io).map_err(failed)?;
    Ok(())
}

/// Opens the directory holding `path` one component at a time from `/`,
/// following no symlink, and gives it with the file's name: what is done
/// through it stays in that directory even if a link appears later.
fn open_parent(path: &Path) -> Result<(OwnedFd, &OsStr), SqliteError> {
    let refused = |reason: String| SqliteError::Symlink {
        path: path.display().to_string(),
        reason,
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(refused("it names no file".to_owned()));
    };
    if !path.is_absolute() {
        return Err(refused("it is not an absolute path".to_owned()));
    }
    let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir =
        openat(CWD, "/", directory, Mode::empty()).map_err(|error| SqliteError::Open {
            path: "/".to_owned(),
            source: into_io(error),
        })?;
    let mut walked = std::path::PathBuf::from("/");
    for component in parent.components() {
        let step = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(step) => step,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(refused("it contains `..`".to_owned()));
            }
        };
        walked.push(step);
        dir = match openat(&dir, step, directory, Mode::empty()) {
            Ok(next) => next,
            // O_NOFOLLOW on a link: ELOOP; O_DIRECTORY on a link: ENOTDIR.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(refused(format!(
                    "{} is a symlink or not a directory",
                    walked.display()
                )));
            }
            Err(error) => {
                return Err(SqliteError::Open {
                    path: walked.display().to_string(),
                    source: into_io(error),
                });
            }
        };
    }
    Ok((dir, name))
}

/// The status of `name` in `dir`, which must be a regular file, not a link.
fn regular_file(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<Stat, SqliteError> {
    let stat = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|error| SqliteError::Open {
        path: path.display().to_string(),
        source: into_io(error),
    })?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(SqliteError::Symlink {
            path: path.display().to_string(),
            reason: "it is a symlink or not a regular file".to_owned(),
        });
    }
    Ok(stat)
}

/// Removes `name` from `dir` (a link itself, never its target); gone is fine.
fn unlink(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(error) => Err(into_io(error)),
    }
}

fn into_io(error: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(error.raw_os_error())
}

/// `name` with `suffix` appended (`app.db` → `app.db-wal`).
fn sibling(name: &OsStr, suffix: &str) -> OsString {
    let mut name = name.to_owned();
    name.push(suffix);
    name
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    fn database(path: &Path, value: i64) -> Result {
        let connection = Connection::open(path)?;
        connection.execute_batch(&format!(
            "CREATE TABLE t (v); INSERT INTO t VALUES ({value});"
        ))?;
        Ok(())
    }

    fn value(path: &Path) -> std::result::Result<i64, rusqlite::Error> {
        Connection::open(path)?.query_row("SELECT v FROM t", [], |row| row.get(0))
    }

    /// A host file outside the volume, a volume and a backup to restore.
    struct Node {
        _root: tempfile::TempDir,
        host: std::path::PathBuf,
        volume: std::path::PathBuf,
        restored: std::path::PathBuf,
    }

    fn node() -> std::result::Result<Node, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let host = root.path().join("host");
        let volume = root.path().join("volume");
        std::fs::create_dir_all(&host)?;
        std::fs::create_dir_all(&volume)?;
        database(&host.join("state.db"), 1)?;
        let restored = root.path().join("restored.db");
        database(&restored, 2)?;
        Ok(Node {
            _root: root,
            host,
            volume,
            restored,
        })
    }

    #[test]
    fn a_symlinked_directory_in_the_volume_is_neither_read_nor_written() -> Result {
        let node = node()?;
        // The application links a directory of its volume to the host's.
        symlink(&node.host, node.volume.join("db"))?;
        let live = node.volume.join("db/state.db");
        let copy = node.volume.parent().ok_or("parent")?.join("copy.db");

        let error = backup(&live, &copy).expect_err("refused");
        assert!(matches!(error, SqliteError::Symlink { .. }), "{error}");
        assert!(error.to_string().contains("db is a symlink"), "{error}");
        assert_eq!(error.status_code(), 422);
        assert!(!copy.exists());

        let error = replace(&node.restored, &live).expect_err("refused");
        assert!(matches!(error, SqliteError::Symlink { .. }), "{error}");
        assert_eq!(
            value(&node.host.join("state.db"))?,
            1,
            "host file untouched"
        );
        Ok(())
    }

    #[test]
    fn a_symlinked_file_in_the_volume_is_neither_read_nor_written() -> Result {
        let node = node()?;
        let live = node.volume.join("app.db");
        symlink(node.host.join("state.db"), &live)?;
        let copy = node.volume.parent().ok_or("parent")?.join("copy.db");

        let error = backup(&live, &copy).expect_err("refused");
        assert!(error.to_string().contains("symlink"), "{error}");
        assert_eq!(error.status_code(), 422);

        let error = replace(&node.restored, &live).expect_err("refused");
        assert!(error.to_string().contains("symlink"), "{error}");
        assert_eq!(
            value(&node.host.join("state.db"))?,
            1,
            "host file untouched"
        );
        Ok(())
    }

    #[test]
    fn planted_links_next_to_the_database_are_not_followed_by_a_restore() -> Result {
        let node = node()?;
        let live = node.volume.join("app.db");
        database(&live, 0)?;
        // The staging name and the journal names, linked to host files.
        std::fs::write(node.host.join("wal-target"), b"host")?;
        std::fs::write(node.host.join("shm-target"), b"host")?;
        for (name, target) in [
            ("app.db.tether-restore", "state.db"),
            ("app.db-wal", "wal-target"),
            ("app.db-shm", "shm-target"),
        ] {
            symlink(node.host.join(target), node.volume.join(name))?;
        }

        replace(&node.restored, &live)?;
        assert_eq!(value(&live)?, 2);
        assert_eq!(
            value(&node.host.join("state.db"))?,
            1,
            "host file untouched"
        );
        assert_eq!(std::fs::read(node.host.join("wal-target"))?, b"host");
        assert_eq!(std::fs::read(node.host.join("shm-target"))?, b"host");
        Ok(())
    }
}
