//! The config files the agent wrote, recorded in the state directory so
//! that a restarted agent still knows them: when a deployment or one of
//! its config files leaves the spec, the supervisor removes its file
//! ([`Written::sweep`]) once no process that used it runs.
//!
//! Only what is still the agent's own is removed; everything else is left
//! where it is, and forgotten:
//! - a path that held something before the agent first wrote it (an
//!   operator's `/etc/app.conf` a deployment took over) is the operator's:
//!   left, with the content the agent last wrote;
//! - a file replaced since the agent wrote it (another inode at the path:
//!   an editor saving, a package manager, `cp`) is whoever replaced it's.
//!   A file edited in place keeps its inode and is still the agent's: the
//!   agent cannot tell that edit from its own write, and the spec, which
//!   owned the file, no longer wants it;
//! - nothing is followed: a path that became a symbolic link is left (the
//!   link and what it points at), and so is a file whose directory is no
//!   longer the one the agent wrote into (a directory swapped for a link
//!   elsewhere). The check and the removal work on the directory opened
//!   once (`statat`, `unlinkat`), so the name removed is the one checked.
//!
//! Files an agent from before this record wrote are not in it; the next
//! write of each (at every start) finds it there already and records it
//! as not created by the agent, so those are left too. Directories the
//! agent made for files stay.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// Where the record is kept, in the state directory.
pub const WRITTEN_FILE: &str = "written-config-files.json";

/// A file as the filesystem knows it: which device, which inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    fn of(stat: &Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }
}

/// What [`write_file`] wrote: the identities of the file and of its
/// directory as the agent held them, never looked up again by path (a
/// directory swapped for a link between the write and a lookup would
/// otherwise make someone else's file look like the agent's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenFile {
    /// Whether something was at the path before.
    pub existed: bool,
    pub dir: FileId,
    pub file: FileId,
}

/// Writes `bytes` to `path` with exactly `mode` (not narrowed by the
/// umask): a new file beside it in the directory opened once, renamed over
/// the name. Nothing is followed below the directory.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<WrittenFile> {
    use std::io::Write as _;
    let (dir, name) = split(path)?;
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let existed = rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
    let temp = format!(".{}.{}.tmp", name.to_string_lossy(), rand::random::<u64>());
    let file_fd = rustix::fs::openat(
        &dir_fd,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let result = (|| {
        rustix::fs::fchmod(&file_fd, Mode::from_raw_mode(mode))?;
        let file_id = FileId::of(&rustix::fs::fstat(&file_fd)?);
        let mut file = std::fs::File::from(file_fd);
        file.write_all(bytes)?;
        file.sync_all()?;
        rustix::fs::renameat(&dir_fd, temp.as_str(), &dir_fd, name)?;
        rustix::fs::fsync(&dir_fd)?;
        Ok(WrittenFile {
            existed,
            dir: FileId::of(&rustix::fs::fstat(&dir_fd)?),
            file: file_id,
        })
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(&dir_fd, temp.as_str(), AtFlags::empty());
    }
    result
}

/// The regular file at `path` with its mode, if it is one and at most
/// `limit` bytes: a link, a FIFO or a device there is not read.
pub fn read_regular(path: &Path, limit: usize) -> Option<(Vec<u8>, u32)> {
    use std::io::Read as _;
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let stat = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() <= limit).then_some((bytes, stat.st_mode & 0o7777))
}

fn split(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("the path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path has no file name"))?;
    Ok((dir, name))
}

/// One file the agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The deployment and config file that last wrote it (for the log).
    pub deployment: String,
    pub file: String,
    /// Nothing was at the path when the agent first wrote it.
    pub created: bool,
    /// The directory it was written in.
    pub dir: FileId,
    /// The file as the agent last wrote it.
    pub written: FileId,
}

/// What is at a recorded path now, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    Symlink,
    /// A directory, a socket, a device…
    NotAFile,
    File(FileId),
}

/// What becomes of a recorded file that is no longer wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swept {
    Removed,
    /// Nothing was there any more.
    Gone,
    /// Left in place: not the agent's (any more), or it could not be
    /// removed; says why.
    Left(String),
}

/// Whether `entry`'s file may be removed, found in the directory `dir`
/// as `found`: the rules of the module's comment, without IO.
pub fn verdict(entry: &Entry, dir: FileId, found: Found) -> Result<(), Swept> {
    match found {
        Found::Nothing => Err(Swept::Gone),
        Found::Symlink => Err(Swept::Left(
            "it is a symbolic link now, which the agent does not follow".into(),
        )),
        Found::NotAFile => Err(Swept::Left("it is not a regular file now".into())),
        Found::File(_) if dir != entry.dir => Err(Swept::Left(
            "its directory is not the one the agent wrote into (replaced or linked elsewhere)"
                .into(),
        )),
        Found::File(_) if !entry.created => Err(Swept::Left(
            "it was there before the agent first wrote it".into(),
        )),
        Found::File(id) if id != entry.written => Err(Swept::Left(
            "it was replaced since the agent wrote it".into(),
        )),
        Found::File(_) => Ok(()),
    }
}

/// The record, as loaded and as changed since.
#[derive(Debug)]
pub struct Written {
    path: PathBuf,
    entries: BTreeMap<PathBuf, Entry>,
    /// Changed since last saved.
    dirty: bool,
}

impl Written {
    /// The record at `path`; an unreadable one is logged and read as
    /// empty, which leaves the files it named in place (never removes
    /// what the agent cannot tell it wrote).
    pub fn load(path: PathBuf) -> Self {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "the record of written config files is not valid; the files it named stay on the device");
                BTreeMap::new()
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the record of written config files; the files it named stay on the device");
                BTreeMap::new()
            }
        };
        Self {
            path,
            entries,
            dirty: false,
        }
    }

    pub fn entries(&self) -> &BTreeMap<PathBuf, Entry> {
        &self.entries
    }

    /// Records that config file `file` of `deployment` was just written at
    /// `path`, as [`write_file`] reports it. A path recorded already keeps
    /// whether the agent created it.
    pub fn wrote(&mut self, deployment: &str, file: &str, path: &Path, written: &WrittenFile) {
        let created = self
            .entries
            .get(path)
            .map_or(!written.existed, |entry| entry.created);
        self.entries.insert(
            path.to_owned(),
            Entry {
                deployment: deployment.to_owned(),
                file: file.to_owned(),
                created,
                dir: written.dir,
                written: written.file,
            },
        );
        self.dirty = true;
    }

    /// Removes each recorded file `keep` does not keep, as far as it is
    /// still the agent's, and forgets it; what became of each.
    pub fn sweep(&mut self, keep: impl Fn(&Path) -> bool) -> Vec<(PathBuf, Entry, Swept)> {
        let unwanted: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|path| !keep(path))
            .cloned()
            .collect();
        let mut swept = Vec::new();
        for path in unwanted {
            let Some(entry) = self.entries.remove(&path) else {
                continue;
            };
            self.dirty = true;
            let outcome = remove(&path, &entry);
            swept.push((path, entry, outcome));
        }
        swept
    }

    /// Saves the record if it changed.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self.entries).map_err(io::Error::other)?;
        write_atomic(&self.path, &bytes, 0o600)?;
        self.dirty = false;
        Ok(())
    }
}

/// Removes `path` if [`verdict`] allows, checking and removing the name
/// in the one directory opened.
fn remove(path: &Path, entry: &Entry) -> Swept {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Swept::Left("it is not a file's path".into());
    };
    let failed = |what: &str, error: rustix::io::Errno| {
        Swept::Left(format!("{what}: {}", io::Error::from(error)))
    };
    let dir_fd = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Swept::Gone,
        Err(error) => return failed("cannot open its directory", error),
    };
    let dir_id = match rustix::fs::fstat(&dir_fd) {
        Ok(stat) => FileId::of(&stat),
        Err(error) => return failed("cannot read its directory", error),
    };
    let found = match rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Found::File(FileId::of(&stat)),
            FileType::Symlink => Found::Symlink,
            _ => Found::NotAFile,
        },
        Err(rustix::io::Errno::NOENT) => Found::Nothing,
        Err(error) => return failed("cannot look at it", error),
    };
    if let Err(left) = verdict(entry, dir_id, found) {
        return left;
    }
    match rustix::fs::unlinkat(&dir_fd, name, AtFlags::empty()) {
        Ok(()) => Swept::Removed,
        Err(rustix::io::Errno::NOENT) => Swept::Gone,
        Err(error) => failed("cannot remove it", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `content` at `path` as the supervisor does, and records it.
    fn write(written: &mut Written, path: &Path, content: &str) {
        let outcome = write_file(path, content.as_bytes(), 0o644).expect("writes");
        written.wrote("app", "conf", path, &outcome);
    }

    #[test]
    fn a_file_is_written_with_its_exact_mode_and_its_own_identity() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.conf");
        // Bits a usual umask takes away are kept.
        let outcome = write_file(&path, b"a=1\n", 0o666).expect("writes");
        let meta = std::fs::symlink_metadata(&path).expect("there");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o666);
        assert!(!outcome.existed);
        assert_eq!(
            (outcome.file.dev, outcome.file.ino),
            (meta.dev(), meta.ino())
        );
        let dir_meta = std::fs::metadata(dir.path()).expect("dir");
        assert_eq!(
            (outcome.dir.dev, outcome.dir.ino),
            (dir_meta.dev(), dir_meta.ino())
        );
        let again = write_file(&path, b"a=2\n", 0o640).expect("writes");
        assert!(again.existed);
        assert_ne!(again.file, outcome.file, "a new inode each write");
        assert_eq!(read_regular(&path, 16), Some((b"a=2\n".to_vec(), 0o640)));
        // Leftover temp files: none.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn only_a_regular_file_within_the_limit_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"12345").expect("written");
        assert_eq!(
            read_regular(&file, 5).map(|(bytes, _)| bytes),
            Some(b"12345".to_vec())
        );
        assert_eq!(read_regular(&file, 4), None, "longer than the limit");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("link");
        assert_eq!(read_regular(&link, 100), None, "a link is not followed");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        assert_eq!(
            read_regular(&fifo, 100),
            None,
            "a FIFO is not read (nor waited on)"
        );
        assert_eq!(read_regular(&dir.path().join("none"), 100), None);
    }

    fn left(swept: &[(PathBuf, Entry, Swept)], path: &Path, says: &str) {
        let outcome = swept
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, _, outcome)| outcome);
        match outcome {
            Some(Swept::Left(reason)) => assert!(reason.contains(says), "{reason}"),
            other => panic!("{} should be left ({says}): {other:?}", path.display()),
        }
    }

    #[test]
    fn a_file_the_agent_created_is_removed_once_unwanted_also_after_a_restart() {
        let dir = tempfile::tempdir().expect("temp");
        let record = dir.path().join(WRITTEN_FILE);
        let (a, b) = (dir.path().join("etc/a.conf"), dir.path().join("b.conf"));
        std::fs::create_dir(dir.path().join("etc")).expect("dir");
        let mut written = Written::load(record.clone());
        write(&mut written, &a, "one");
        write(&mut written, &a, "two");
        write(&mut written, &b, "b");
        written.save().expect("saves");

        assert!(written.sweep(|_| true).is_empty(), "all wanted");
        let mut restarted = Written::load(record.clone());
        assert_eq!(restarted.entries(), written.entries());
        let swept = restarted.sweep(|path| path == b);
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].0, a);
        assert_eq!(swept[0].2, Swept::Removed);
        assert!(!a.exists() && b.exists());
        restarted.save().expect("saves");
        assert_eq!(
            Written::load(record).entries().keys().collect::<Vec<_>>(),
            [&b],
            "forgotten"
        );

        // Gone already: nothing to do, and forgotten.
        std::fs::remove_file(&b).expect("removes");
        assert_eq!(restarted.sweep(|_| false)[0].2, Swept::Gone);
        assert!(restarted.entries().is_empty());
    }

    #[test]
    fn what_is_not_the_agents_file_any_more_is_left_and_forgotten() {
        let dir = tempfile::tempdir().expect("temp");
        let path = |name: &str| dir.path().join(name);
        let mut written = Written::load(path(WRITTEN_FILE));

        // An operator's file a deployment took over.
        std::fs::write(path("theirs.conf"), "the operator's").expect("writes");
        write(&mut written, &path("theirs.conf"), "rendered");
        write(&mut written, &path("theirs.conf"), "rendered again");
        // A file replaced by hand: another inode.
        write(&mut written, &path("replaced.conf"), "rendered");
        std::fs::write(path("new"), "by hand").expect("writes");
        std::fs::rename(path("new"), path("replaced.conf")).expect("replaces");
        // Edited in place: the same inode, still the agent's.
        write(&mut written, &path("edited.conf"), "rendered");
        std::fs::write(path("edited.conf"), "edited").expect("edits");
        // Now a symbolic link to a file the agent never wrote.
        write(&mut written, &path("linked.conf"), "rendered");
        std::fs::write(path("precious"), "keep me").expect("writes");
        std::fs::remove_file(path("linked.conf")).expect("removes");
        std::os::unix::fs::symlink(path("precious"), path("linked.conf")).expect("links");
        // Now a directory.
        write(&mut written, &path("dir.conf"), "rendered");
        std::fs::remove_file(path("dir.conf")).expect("removes");
        std::fs::create_dir(path("dir.conf")).expect("dir");
        // Its directory swapped for a link to another holding a file of
        // that name.
        std::fs::create_dir(path("sub")).expect("dir");
        write(&mut written, &path("sub/app.conf"), "rendered");
        std::fs::create_dir(path("elsewhere")).expect("dir");
        std::fs::write(path("elsewhere/app.conf"), "not the agent's").expect("writes");
        std::fs::remove_dir_all(path("sub")).expect("removes");
        std::os::unix::fs::symlink(path("elsewhere"), path("sub")).expect("links");

        let swept = written.sweep(|_| false);
        left(&swept, &path("theirs.conf"), "there before");
        left(&swept, &path("replaced.conf"), "replaced");
        left(&swept, &path("linked.conf"), "symbolic link");
        left(&swept, &path("dir.conf"), "not a regular file");
        left(&swept, &path("sub/app.conf"), "directory");
        assert!(
            swept
                .iter()
                .any(|(p, _, s)| *p == path("edited.conf") && *s == Swept::Removed),
            "{swept:?}"
        );
        assert_eq!(
            std::fs::read_to_string(path("theirs.conf")).expect("left"),
            "rendered again"
        );
        assert_eq!(
            std::fs::read_to_string(path("replaced.conf")).expect("left"),
            "by hand"
        );
        assert!(
            std::fs::symlink_metadata(path("linked.conf"))
                .expect("left")
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(path("precious")).expect("left"),
            "keep me"
        );
        assert!(path("dir.conf").is_dir());
        assert_eq!(
            std::fs::read_to_string(path("elsewhere/app.conf")).expect("left"),
            "not the agent's"
        );
        assert!(written.entries().is_empty(), "all forgotten");
    }

    #[test]
    fn an_unreadable_record_is_read_as_empty_and_removes_nothing() {
        let dir = tempfile::tempdir().expect("temp");
        let record = dir.path().join(WRITTEN_FILE);
        std::fs::write(&record, "not json").expect("writes");
        let mut written = Written::load(record);
        assert!(written.sweep(|_| false).is_empty());
    }
}
