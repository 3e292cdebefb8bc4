//! Tails a file through rotation: rename and create (logrotate's default:
//! the old file is read to its end, then the new one from its start) and
//! copytruncate (the file shrinks under the agent: read again from its
//! start). The position, the file's identity (device and inode) and the
//! offset after the last whole line spooled, is kept in
//! [`super::Positions`], so a restart neither loses nor repeats lines; if
//! the file was rotated while the agent was stopped, the rest of the old
//! one is read first if it is still beside it. A partial last line waits
//! for its newline; a file that does not exist yet is waited for.
//!
//! The decisions ([`next_step`], [`LineBuffer`]) are pure; the loop around
//! them polls the file (every [`POLL`], or [`FAST_POLL`] while an operator
//! follows the logs).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::telemetry::LogRecord;
use tokio::sync::watch;

use super::filter::Origin;
use super::{Positions, Sink, syslog, truncate};

/// How often a file is looked at for new lines …
pub const POLL: Duration = Duration::from_millis(250);
/// … and while an operator follows the device's logs.
pub const FAST_POLL: Duration = Duration::from_millis(20);
/// Longest line kept; the rest of a longer one is read and discarded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most bytes read from a file before the other sources get a turn.
const READ_CHUNK: usize = 64 * 1024;

/// A file, whatever name it has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub inode: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }
}

/// How far a file has been spooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    #[serde(flatten)]
    pub identity: Identity,
    pub offset: u64,
}

/// What to do next, given the file being read and what is at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read on from the offset.
    Read,
    /// Same file, shorter than the offset: copytruncate; from its start.
    Truncated,
    /// Another file at the path: finish the open one, then open that one
    /// from its start.
    Rotated,
    /// Nothing at the path: finish the open one and wait.
    Gone,
}

/// `open`: the file being read (with the offset read to); `at_path`: the
/// identity and length of what the path names now.
pub fn next_step(open: FilePosition, at_path: Option<(Identity, u64)>) -> Step {
    match at_path {
        None => Step::Gone,
        Some((identity, _)) if identity != open.identity => Step::Rotated,
        Some((_, len)) if len < open.offset => Step::Truncated,
        Some(_) => Step::Read,
    }
}

/// Splits bytes into lines, holding a partial last line; a line longer
/// than the bound keeps its first [`MAX_LINE_BYTES`] and its length.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
    /// Bytes of the partial line, kept or not.
    partial_len: u64,
}

/// A whole line and how many bytes it had (newline excluded).
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub text: Vec<u8>,
    pub len: u64,
}

impl LineBuffer {
    /// Takes `bytes`; returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.keep(&bytes[..end]);
            lines.push(self.take());
            bytes = &bytes[end + 1..];
        }
        self.keep(bytes);
        lines
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.partial_len += bytes.len() as u64;
    }

    fn take(&mut self) -> Line {
        let len = std::mem::take(&mut self.partial_len);
        let mut text = std::mem::take(&mut self.partial);
        if text.last() == Some(&b'\r') {
            text.pop();
        }
        Line { text, len }
    }

    /// Bytes of a partial line waiting for its newline.
    pub fn pending(&self) -> u64 {
        self.partial_len
    }

    /// The partial line as a line (its file ended for good), if any.
    pub fn finish(&mut self) -> Option<Line> {
        (self.partial_len > 0).then(|| self.take())
    }

    pub fn clear(&mut self) {
        self.partial.clear();
        self.partial_len = 0;
    }
}

/// How a line of `path` becomes a record: as it is, or read as syslog
/// (`/var/log/syslog`: `Mmm dd hh:mm:ss host tag[pid]: message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Plain,
    Syslog,
}

pub fn record(path: &Path, line: &Line, format: LineFormat) -> LogRecord {
    let received = chrono::Utc::now();
    let mut cut = line.len > line.text.len() as u64;
    let mut record = match format {
        LineFormat::Syslog => syslog::parse(&line.text, received, &chrono::Local),
        LineFormat::Plain => {
            let (message, shortened) = truncate(String::from_utf8_lossy(&line.text).into_owned());
            cut |= shortened.is_some();
            LogRecord {
                at: received,
                priority: 6,
                unit: path.display().to_string(),
                message,
                fields: Default::default(),
            }
        }
    };
    record
        .fields
        .insert("file".into(), path.display().to_string());
    if cut {
        record
            .fields
            .insert("truncated".into(), line.len.to_string());
    }
    record
}

/// Where a tail starts when nothing is saved for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStart {
    /// From its first line (a configured file: nothing is missed).
    Beginning,
    /// From its end now (the system log while an operator follows).
    End,
}

/// One tailed file.
pub struct Tail {
    pub path: PathBuf,
    pub format: LineFormat,
    pub start: FileStart,
    /// Saved positions; `None` for a tail that is not resumed.
    pub positions: Option<Arc<Positions>>,
}

struct Open {
    file: File,
    position: FilePosition,
    /// Where the next read starts: past the partial line.
    read_to: u64,
}

impl Tail {
    /// Follows the file until dropped. `fast`: whether an operator follows
    /// the logs now (polls more often).
    pub async fn run(self, sink: Arc<Sink>, fast: watch::Receiver<bool>) {
        let key = self.path.display().to_string();
        let mut lines = LineBuffer::default();
        let mut open: Option<Open> = None;
        let mut first = true;
        let mut warned = false;
        loop {
            let step = self.step(&mut open, &mut lines, &sink, &key, first);
            first = false;
            match step {
                Ok(more) if more => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(_) => warned = false,
                Err(error) if !warned => {
                    tracing::warn!(file = %self.path.display(), %error, "cannot read the log file; trying again");
                    warned = true;
                }
                Err(_) => {}
            }
            let pause = if *fast.borrow() { FAST_POLL } else { POLL };
            tokio::time::sleep(pause).await;
        }
    }

    /// One look at the file; `Ok(true)`: there is more to read at once.
    fn step(
        &self,
        open: &mut Option<Open>,
        lines: &mut LineBuffer,
        sink: &Sink,
        key: &str,
        first: bool,
    ) -> io::Result<bool> {
        let at_path = match std::fs::metadata(&self.path) {
            Ok(meta) => Some((Identity::of(&meta), meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let Some(current) = open else {
            let Some((identity, len)) = at_path else {
                return Ok(false);
            };
            let saved = self.positions.as_ref().and_then(|p| p.file(key));
            if first
                && let Some(saved) = saved
                && saved.identity != identity
            {
                // Rotated while the agent was stopped: the rest of the old file first.
                if let Some(old) = find_by_identity(&self.path, saved.identity) {
                    *open = Some(open_at(&old, saved)?);
                    return Ok(true);
                }
            }
            let offset = match (saved, self.start) {
                (Some(saved), _) if saved.identity == identity && saved.offset <= len => {
                    saved.offset
                }
                (None, FileStart::End) if first => len,
                _ => 0,
            };
            let position = FilePosition { identity, offset };
            *open = Some(open_at(&self.path, position)?);
            lines.clear();
            self.save(key, position);
            return Ok(true);
        };
        let step = next_step(current.position, at_path);
        if step == Step::Truncated {
            tracing::info!(file = %self.path.display(), "the log file was truncated; reading it from its start");
            current.file.seek(SeekFrom::Start(0))?;
            current.position.offset = 0;
            current.read_to = 0;
            lines.clear();
            self.save(key, current.position);
        }
        let read = self.read(current, lines, sink, key)?;
        if read > 0 {
            return Ok(true);
        }
        if matches!(step, Step::Rotated | Step::Gone) {
            // The old file is read to its end: its last line is whole now.
            if let Some(line) = lines.finish() {
                sink.offer(record(&self.path, &line, self.format), Origin::File);
            }
            tracing::info!(file = %self.path.display(), "the log file was rotated; reading the new one");
            *open = None;
            if step == Step::Rotated {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads a chunk and spools its whole lines; returns the bytes read.
    fn read(
        &self,
        current: &mut Open,
        lines: &mut LineBuffer,
        sink: &Sink,
        key: &str,
    ) -> io::Result<usize> {
        let mut chunk = vec![0u8; READ_CHUNK];
        let n = current.file.read(&mut chunk)?;
        if n == 0 {
            return Ok(0);
        }
        current.read_to += n as u64;
        for line in lines.push(&chunk[..n]) {
            sink.offer(record(&self.path, &line, self.format), Origin::File);
        }
        current.position.offset = current.read_to - lines.pending();
        self.save(key, current.position);
        Ok(n)
    }

    fn save(&self, key: &str, position: FilePosition) {
        if let Some(positions) = &self.positions {
            positions.set_file(key, position);
        }
    }
}

/// Opens `path` only if it is a regular file. The agent runs on one
/// thread: opening or reading a FIFO (or a device) put at the path would
/// block it, and with it the session, the spool and the local API, until
/// a writer came. `O_NONBLOCK` makes the open return at once whatever is
/// there (it changes nothing for a regular file), and the check is of
/// what was opened, so a swap after a look at the path cannot get past.
fn open_at(path: &Path, position: FilePosition) -> io::Result<Open> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory): only regular files are tailed",
        ));
    }
    file.seek(SeekFrom::Start(position.offset))?;
    Ok(Open {
        file,
        position,
        read_to: position.offset,
    })
}

/// A file beside `path` whose name starts with its name (`app.log.1`) and
/// that is `identity`: where a rotated file went.
fn find_by_identity(path: &Path, identity: Identity) -> Option<PathBuf> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&name))
        .map(|entry| entry.path())
        .find(|candidate| {
            candidate != path
                && std::fs::metadata(candidate).is_ok_and(|m| Identity::of(&m) == identity)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Identity = Identity { dev: 1, inode: 10 };
    const B: Identity = Identity { dev: 1, inode: 11 };

    #[test]
    fn rotation_and_truncation_are_told_apart() {
        let open = FilePosition {
            identity: A,
            offset: 100,
        };
        assert_eq!(next_step(open, Some((A, 100))), Step::Read);
        assert_eq!(next_step(open, Some((A, 150))), Step::Read);
        assert_eq!(next_step(open, Some((A, 10))), Step::Truncated);
        assert_eq!(next_step(open, Some((B, 500))), Step::Rotated);
        assert_eq!(next_step(open, Some((B, 0))), Step::Rotated);
        assert_eq!(next_step(open, None), Step::Gone);
    }

    #[test]
    fn lines_wait_for_their_newline_and_long_ones_are_bounded() {
        let mut buffer = LineBuffer::default();
        assert!(buffer.push(b"par").is_empty());
        assert_eq!(buffer.pending(), 3);
        let lines = buffer.push(b"tial\r\nwhole\nnext");
        assert_eq!(
            lines,
            [
                Line {
                    text: b"partial".to_vec(),
                    len: 8
                },
                Line {
                    text: b"whole".to_vec(),
                    len: 5
                }
            ]
        );
        assert_eq!(buffer.pending(), 4);
        assert_eq!(buffer.finish().map(|l| l.text), Some(b"next".to_vec()));
        assert_eq!(buffer.finish(), None);

        let huge = vec![b'x'; 1 << 20];
        assert!(buffer.push(&huge).is_empty());
        let lines = buffer.push(b"x\nafter\n");
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[0].len, (1 << 20) + 1);
        assert_eq!(lines[1].text, b"after");
    }

    #[test]
    fn a_long_line_becomes_a_record_marked_truncated() {
        let line = Line {
            text: vec![b'y'; MAX_LINE_BYTES],
            len: 1 << 20,
        };
        let plain = record(Path::new("/var/log/app.log"), &line, LineFormat::Plain);
        assert_eq!(plain.fields["truncated"], (1u64 << 20).to_string());
        assert_eq!(plain.unit, "/var/log/app.log");
        assert_eq!(plain.priority, 6);
        let line = Line {
            text: b"Dec  2 06:20:21 vm sshd[7]: Accepted".to_vec(),
            len: 36,
        };
        let parsed = record(Path::new("/var/log/syslog"), &line, LineFormat::Syslog);
        assert_eq!(
            (parsed.unit.as_str(), parsed.message.as_str()),
            ("sshd", "Accepted")
        );
        assert_eq!(parsed.fields["file"], "/var/log/syslog");
        assert!(!parsed.fields.contains_key("truncated"));
    }
}
