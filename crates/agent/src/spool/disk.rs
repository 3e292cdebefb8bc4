//! One stream's spool on disk: a directory of segment files and `meta.json`.
//!
//! A segment is named by the sequence number of its first record
//! (`00000000000000000042.seg`) and holds one record per line, as JSON
//! (JSON escapes newlines, so a line is a record). Records are appended in
//! batches, one `write` and one `fsync` per flush. Only the newest segment
//! is ever appended to; a crash can tear only its tail, and opening the
//! spool cuts a torn or unreadable tail off instead of failing.
//!
//! `meta.json` (replaced atomically) keeps the spool id, the acknowledged
//! position (every record before it reached tetherd) and the exact totals
//! of records dropped for lack of space. The position is saved lazily: a
//! crash replays what was acknowledged since, which tetherd recognises by
//! sequence number and stores once. The totals are saved before the
//! segment they count is deleted, so they are never lost. The stream's
//! budget counts of the day ride along: written with the position, at
//! least every [`BUDGET_SAVE_EVERY`] while only they change (a spool
//! offline: flash wears by writes), and at a clean stop.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether_proto::telemetry::{Dropped, Stream};

use super::budget::BudgetDay;
use crate::state::write_atomic;

const META_FILE: &str = "meta.json";
const SEGMENT_SUFFIX: &str = ".seg";
const FILE_MODE: u32 = 0o600;
/// Budget counts that changed alone are saved at most this often: a crash
/// forgets at most this long's spending.
pub const BUDGET_SAVE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot use the spool directory {path}: check that it is writable")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a spool's metadata: remove the spool directory to start a new spool")]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    spool_id: String,
    acked: u64,
    dropped: Dropped,
    /// The stream's budget counts of the day (absent before any budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<BudgetDay>,
}

fn add(sum: &mut u64, sums: &mut [u64; 8], total: u64, by_priority: [u64; 8]) {
    *sum += total;
    for (sum, n) in sums.iter_mut().zip(by_priority) {
        *sum += n;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first_seq: u64,
    records: u64,
    bytes: u64,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.records
    }
}

/// Records read from the spool for a batch: `lines[i]` has sequence number
/// `first_seq + i`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    pub first_seq: u64,
    pub lines: Vec<Vec<u8>>,
}

/// Where the last read stopped, so the next one does not scan its segment
/// from the start.
#[derive(Debug, Clone, Copy)]
struct ReadHint {
    seq: u64,
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    stream: Stream,
    max_bytes: u64,
    segment_bytes: u64,
    meta: Meta,
    /// `meta.acked` as last saved.
    saved_acked: u64,
    /// `meta.budget` changed since last saved.
    budget_changed: bool,
    /// `meta.dropped` counts that could not be saved when they changed (a
    /// full disk): saved by the next [`Disk::save`].
    dropped_unsaved: bool,
    /// A write failed since the newest segment was started (a full disk):
    /// once all of it is acknowledged the segment is let go at once
    /// rather than when it fills, which a full disk would never let it do.
    write_failed: bool,
    saved_at: Instant,
    /// Oldest first; never empty: the last is the one appended to.
    segments: Vec<Segment>,
    hint: Option<ReadHint>,
    /// End of the batch sent and not yet answered: its records may reach
    /// tetherd, so the bound does not drop (and count) them meanwhile.
    in_flight_end: u64,
}

impl Disk {
    /// Opens the spool in `dir`, creating it with a new spool id if absent.
    pub fn open(dir: &Path, stream: Stream, max_bytes: u64) -> Result<Self, DiskError> {
        let io = |source| DiskError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let meta_path = dir.join(META_FILE);
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DiskError::Meta {
                path: meta_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta {
                spool_id: uuid::Uuid::new_v4().simple().to_string(),
                acked: 0,
                dropped: Dropped::default(),
                budget: None,
            },
            Err(e) => return Err(io(e)),
        };
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut disk = Self {
            dir: dir.to_owned(),
            stream,
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4 * 1024, 4 * 1024 * 1024),
            saved_acked: meta.acked,
            budget_changed: false,
            dropped_unsaved: false,
            write_failed: false,
            saved_at: Instant::now(),
            meta,
            segments: Vec::new(),
            hint: None,
            in_flight_end: 0,
        };
        let last = firsts.len().saturating_sub(1);
        for (i, first_seq) in firsts.into_iter().enumerate() {
            let segment = disk.scan(first_seq, i == last).map_err(io)?;
            disk.segments.push(segment);
        }
        if disk.segments.is_empty() {
            let first = disk.meta.acked;
            disk.create_segment(first).map_err(io)?;
        }
        // Segments fully acknowledged, or counted as dropped, before a crash.
        while disk.segments.len() > 1 && disk.segments[0].end_seq() <= disk.meta.acked {
            let gone = disk.segments.remove(0);
            disk.remove_segment(gone.first_seq).map_err(io)?;
        }
        disk.meta.acked = disk.meta.acked.max(disk.segments[0].first_seq);
        disk.save_meta().map_err(io)?;
        Ok(disk)
    }

    pub fn spool_id(&self) -> &str {
        &self.meta.spool_id
    }

    pub fn acked(&self) -> u64 {
        self.meta.acked
    }

    /// Sequence number the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end_seq)
    }

    pub fn dropped(&self) -> &Dropped {
        &self.meta.dropped
    }

    /// The stream's budget counts as last kept.
    pub fn budget(&self) -> Option<&BudgetDay> {
        self.meta.budget.as_ref()
    }

    /// Keeps the stream's budget counts, saved by the next [`Disk::save`]
    /// that is due.
    pub fn set_budget(&mut self, budget: Option<BudgetDay>) {
        if self.meta.budget != budget {
            self.meta.budget = budget;
            self.budget_changed = true;
        }
    }

    /// Counts records that never reached the disk (a failed write), and
    /// saves the count at once.
    fn lost(&mut self, total: u64, by_priority: [u64; 8]) -> io::Result<()> {
        let dropped = &mut self.meta.dropped;
        add(
            &mut dropped.total,
            &mut dropped.by_priority,
            total,
            by_priority,
        );
        self.save_dropped()
    }

    /// Saves changed drop counts now, or marks them for the next save.
    fn save_dropped(&mut self) -> io::Result<()> {
        let saved = self.save_meta();
        self.dropped_unsaved = saved.is_err();
        saved
    }

    /// Counts records the spec's budget did not let through, apart from
    /// those a full spool dropped, and saves the count at once.
    pub fn over_budget(&mut self, total: u64, by_priority: [u64; 8]) -> io::Result<()> {
        let dropped = &mut self.meta.dropped;
        add(
            &mut dropped.over_budget,
            &mut dropped.over_budget_by_priority,
            total,
            by_priority,
        );
        self.save_dropped()
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
    }

    /// Counts a segment's records; the newest is also checked line by line
    /// and cut after its last whole record.
    fn scan(&self, first_seq: u64, newest: bool) -> io::Result<Segment> {
        let path = self.segment_path(first_seq);
        let bytes = fs::read(&path)?;
        let mut records = 0;
        let mut good = 0;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let whole = line.last() == Some(&b'\n');
            if !whole
                || (newest
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&line[..line.len() - 1])
                        .is_err())
            {
                break;
            }
            records += 1;
            good += line.len();
        }
        if good < bytes.len() {
            tracing::warn!(
                stream = %self.stream,
                segment = %path.display(),
                cut_bytes = bytes.len() - good,
                "cut the torn end of a spool segment (the agent stopped while writing it)"
            );
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        Ok(Segment {
            first_seq,
            records,
            bytes: good as u64,
        })
    }

    fn create_segment(&mut self, first_seq: u64) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(self.segment_path(first_seq))?
            .sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.segments.push(Segment {
            first_seq,
            records: 0,
            bytes: 0,
        });
        Ok(())
    }

    fn remove_segment(&mut self, first_seq: u64) -> io::Result<()> {
        if self.hint.is_some_and(|h| h.segment == first_seq) {
            self.hint = None;
        }
        match fs::remove_file(self.segment_path(first_seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn save_meta(&mut self) -> io::Result<()> {
        let json = serde_json::to_vec(&self.meta).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(META_FILE), &json, FILE_MODE)?;
        self.saved_acked = self.meta.acked;
        self.budget_changed = false;
        self.dropped_unsaved = false;
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Appends `lines` (each a record's JSON followed by `\n`, `count`
    /// records) with one write and one fsync, then keeps the spool within
    /// its bound by dropping its oldest segments. Records a failed write
    /// (a full disk) left out are counted as dropped; those written before
    /// it stay.
    pub fn append(&mut self, lines: &[u8], count: u64) -> io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let mut rest = lines;
        if let Err(error) = self.write_lines(&mut rest) {
            self.write_failed = true;
            let (total, by_priority) = self.count_lines(rest.split(|&b| b == b'\n'))?;
            // Kept in memory if the disk cannot take the count either; a
            // later save writes it.
            let _ = self.lost(total, by_priority);
            return Err(error);
        }
        self.enforce_bound()
    }

    /// Writes whole lines from the start of `rest` on, which keeps what is
    /// not written yet.
    fn write_lines(&mut self, rest: &mut &[u8]) -> io::Result<()> {
        // A flush larger than a segment fills it and goes on in the next,
        // so that the bound can drop part of it rather than all of it.
        while !rest.is_empty() {
            let used = self.segments.last().map_or(0, |s| s.bytes);
            let room = self.segment_bytes.saturating_sub(used) as usize;
            let mut end = 0;
            for line in rest.split_inclusive(|&b| b == b'\n') {
                // An empty segment takes a line however long.
                if end + line.len() > room && (end > 0 || used > 0) {
                    break;
                }
                end += line.len();
            }
            if end == 0 {
                self.create_segment(self.next_seq())?;
                continue;
            }
            let (part, next) = rest.split_at(end);
            self.write_to_newest(part)?;
            *rest = next;
            if self
                .segments
                .last()
                .is_some_and(|s| s.bytes >= self.segment_bytes)
            {
                self.create_segment(self.next_seq())?;
            }
        }
        Ok(())
    }

    /// Appends whole lines to the newest segment: one write, one fsync. A
    /// write that fails (a full disk writes part of it) is cut off again:
    /// records are numbered by their line in the segment, so a torn part
    /// left there would shift every later record's number.
    fn write_to_newest(&mut self, part: &[u8]) -> io::Result<()> {
        let Some(newest) = self.segments.last_mut() else {
            return Err(io::Error::other("the spool has no segment"));
        };
        let mut file = OpenOptions::new().append(true).open(
            self.dir
                .join(format!("{:020}{SEGMENT_SUFFIX}", newest.first_seq)),
        )?;
        if let Err(error) = file.write_all(part).and_then(|()| file.sync_data()) {
            if let Err(cut) = file.set_len(newest.bytes) {
                tracing::error!(stream = %self.stream, error = %cut, "could not cut a failed write off the spool segment");
            }
            return Err(error);
        }
        newest.records += part.iter().filter(|&&b| b == b'\n').count() as u64;
        newest.bytes += part.len() as u64;
        Ok(())
    }

    /// Drops the oldest segments while the spool is over its bound, counting
    /// each record not yet acknowledged.
    fn enforce_bound(&mut self) -> io::Result<()> {
        let mut bytes = self.bytes();
        if bytes <= self.max_bytes {
            return Ok(());
        }
        if self.segments.len() == 1 {
            self.create_segment(self.next_seq())?;
        }
        let mut gone = 0;
        while bytes > self.max_bytes && gone < self.segments.len() - 1 {
            let oldest = self.segments[gone];
            if oldest.first_seq < self.in_flight_end && oldest.end_seq() > self.meta.acked {
                break;
            }
            bytes -= oldest.bytes;
            gone += 1;
        }
        if gone == 0 {
            return Ok(());
        }
        let mut total = 0;
        for i in 0..gone {
            let segment = self.segments[i];
            let (count, by_priority) = self.count_unacked(&segment)?;
            total += count;
            for (sum, n) in self.meta.dropped.by_priority.iter_mut().zip(by_priority) {
                *sum += n;
            }
            self.meta.acked = self.meta.acked.max(segment.end_seq());
        }
        self.meta.dropped.total += total;
        if total > 0 {
            tracing::warn!(
                stream = %self.stream,
                dropped = total,
                dropped_total = self.meta.dropped.total,
                "the spool is full ({} bytes): dropped its oldest records",
                self.max_bytes
            );
        }
        // Counted before deleted, in one save: a crash in between leaves
        // segments that the next start sees as consumed.
        self.save_meta()?;
        for segment in self.segments.drain(..gone).collect::<Vec<_>>() {
            self.remove_segment(segment.first_seq)?;
        }
        Ok(())
    }

    /// Records of `segment` at or after the acknowledged position, and for
    /// logs how many of each priority.
    fn count_unacked(&self, segment: &Segment) -> io::Result<(u64, [u64; 8])> {
        let skip = self.meta.acked.saturating_sub(segment.first_seq);
        let total = segment.records.saturating_sub(skip);
        if total == 0 {
            return Ok((0, [0; 8]));
        }
        let file = BufReader::new(File::open(self.segment_path(segment.first_seq))?);
        let lines = file
            .split(b'\n')
            .skip(skip as usize)
            .collect::<io::Result<Vec<_>>>()?;
        let (_, by_priority) = self.count_lines(lines.iter().map(Vec::as_slice))?;
        Ok((total, by_priority))
    }

    /// How many of `lines` are records (empty ones are not), and for logs
    /// how many of each priority.
    fn count_lines<'a>(
        &self,
        lines: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<(u64, [u64; 8])> {
        #[derive(Deserialize)]
        struct Priority {
            priority: u8,
        }
        let mut total = 0;
        let mut by_priority = [0; 8];
        for line in lines.filter(|line| !line.is_empty()) {
            total += 1;
            if self.stream == Stream::Logs {
                let priority =
                    serde_json::from_slice::<Priority>(line).map_or(7, |p| p.priority.min(7));
                by_priority[usize::from(priority)] += 1;
            }
        }
        Ok((total, by_priority))
    }

    /// Moves the acknowledged position to `seq` and deletes the segments
    /// wholly before it. Saved with a deleted segment, or by [`Disk::save`].
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        if seq >= self.in_flight_end {
            self.in_flight_end = 0;
        }
        if seq <= self.meta.acked {
            return Ok(());
        }
        self.meta.acked = seq.min(self.next_seq());
        if self.write_failed && self.meta.acked == self.next_seq() {
            // An empty file takes no blocks: it can be made on a full disk.
            self.create_segment(self.next_seq())?;
            self.write_failed = false;
        }
        let done = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|s| s.end_seq() <= self.meta.acked)
            .count();
        if done > 0 {
            // Deleted before the position is saved: on a full disk the save
            // needs the room they free, and saved first it would fail and
            // keep them, and the disk full, for good. A crash in between
            // costs nothing: opening the spool moves the position up to its
            // oldest segment.
            for gone in self.segments.drain(..done).collect::<Vec<_>>() {
                self.remove_segment(gone.first_seq)?;
            }
            self.save_meta()?;
        }
        Ok(())
    }

    /// The records before `end_seq` went to tetherd: kept until answered.
    pub fn sent(&mut self, end_seq: u64) {
        self.in_flight_end = end_seq;
    }

    /// The batch sent will not be answered (the connection went): its
    /// records may be dropped again, and are then counted.
    pub fn unsent(&mut self) -> io::Result<()> {
        self.in_flight_end = 0;
        self.enforce_bound()
    }

    /// Saves the acknowledged position if it moved, drop counts a full
    /// disk kept from being saved, and the budget counts if they changed
    /// and this is a clean stop (`stopping`) or they waited
    /// [`BUDGET_SAVE_EVERY`].
    pub fn save(&mut self, stopping: bool) -> io::Result<()> {
        let budget_due =
            self.budget_changed && (stopping || self.saved_at.elapsed() >= BUDGET_SAVE_EVERY);
        if self.saved_acked != self.meta.acked || budget_due || self.dropped_unsaved {
            self.save_meta()?;
        }
        Ok(())
    }

    /// Reads up to `max_records` records, and no more than `max_bytes` of
    /// them unless the first alone is larger, from `from_seq` on (or from
    /// the oldest kept, if the ones at `from_seq` were dropped).
    pub fn read(
        &mut self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Read> {
        let from_seq = from_seq.max(self.segments[0].first_seq);
        let mut read = Read {
            first_seq: from_seq,
            lines: Vec::new(),
        };
        let mut bytes = 0;
        let mut seq = from_seq;
        for segment in self.segments.clone() {
            if segment.end_seq() <= seq {
                continue;
            }
            let mut file = BufReader::new(File::open(self.segment_path(segment.first_seq))?);
            let mut offset = 0;
            let mut at = segment.first_seq;
            if let Some(hint) = self
                .hint
                .filter(|h| h.segment == segment.first_seq && h.seq <= seq)
            {
                file.seek(SeekFrom::Start(hint.offset))?;
                offset = hint.offset;
                at = hint.seq;
            }
            let mut line = Vec::new();
            while at < segment.end_seq() {
                line.clear();
                let n = file.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                at += 1;
                if at <= seq {
                    continue;
                }
                if !read.lines.is_empty()
                    && (read.lines.len() >= max_records || bytes + n > max_bytes)
                {
                    return Ok(read);
                }
                bytes += n;
                read.lines.push(line[..n - 1].to_vec());
                seq = at;
                self.hint = Some(ReadHint {
                    seq: at,
                    segment: segment.first_seq,
                    offset,
                });
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn lines(from: u64, to: u64) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        for i in from..to {
            out.extend(format!("{{\"priority\":{},\"message\":\"line {i:05}\"}}\n", i % 8).bytes());
        }
        (out, to - from)
    }

    fn messages(read: &Read) -> Vec<String> {
        read.lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_slice(l).expect("json");
                v["message"].as_str().expect("message").to_owned()
            })
            .collect()
    }

    fn append(disk: &mut Disk, from: u64, to: u64) {
        let (bytes, count) = lines(from, to);
        disk.append(&bytes, count).expect("appends");
    }

    /// A tmpfs of `kib` KiB mounted on a temporary directory (the tests
    /// run as root here), unmounted when dropped.
    /// A tmpfs of a few KiB, to fill (mounting needs root).
    pub(crate) struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        pub(crate) fn mount(kib: u64) -> Self {
            let dir = tempfile::tempdir().expect("temp");
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("runs mount");
            assert!(status.success(), "mounting a tmpfs needs root: {status}");
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// A full file system under the spool: a write that does not fit
    /// leaves no part of itself in the segment and its records are counted
    /// as dropped, by priority; once space returns the spool goes on, and
    /// what it holds reads back whole and numbered right, before and after
    /// a restart.
    #[test]
    fn a_full_disk_drops_and_counts_a_flush_without_tearing_the_segment() {
        let fs = SmallFs::mount(64);
        let filler = fs.path().join("filler");
        std::fs::write(&filler, vec![0u8; 32 * 1024]).expect("filler");
        let dir = fs.path().join("spool");
        let mut disk = Disk::open(&dir, Stream::Logs, 1 << 20).expect("opens");
        let long = |from: u64, to: u64| {
            let mut out = Vec::new();
            for i in from..to {
                let pad = "p".repeat(200);
                out.extend(
                    format!(
                        "{{\"priority\":{},\"message\":\"line {i:05} {pad}\"}}\n",
                        i % 8
                    )
                    .bytes(),
                );
            }
            out
        };
        let mut written = 0;
        let mut lost = 0;
        let mut lost_by_priority = [0u64; 8];
        let mut next = 0;
        while lost == 0 {
            let bytes = long(next, next + 10);
            match disk.append(&bytes, 10) {
                Ok(()) => written = next + 10,
                Err(error) => {
                    assert_eq!(error.raw_os_error(), Some(28), "ENOSPC: {error}");
                    lost = 10;
                    for i in next..next + 10 {
                        lost_by_priority[(i % 8) as usize] += 1;
                    }
                }
            }
            next += 10;
        }
        assert!(written > 0, "some fitted");
        assert_eq!(disk.dropped().total, lost);
        assert_eq!(disk.dropped().by_priority, lost_by_priority);
        assert_eq!(disk.next_seq(), written);

        // Space returns: the spool goes on after what it wrote.
        std::fs::remove_file(&filler).expect("frees space");
        let bytes = long(next, next + 5);
        disk.append(&bytes, 5).expect("appends again");
        // As a flush does after it appends.
        disk.save(false).expect("saves");
        let expected: Vec<String> = (0..written)
            .chain(next..next + 5)
            .map(|i| format!("line {i:05} {}", "p".repeat(200)))
            .collect();
        let read = disk.read(0, 10_000, 1 << 20).expect("reads");
        assert_eq!((read.first_seq, messages(&read)), (0, expected.clone()));
        drop(disk);
        let mut disk = Disk::open(&dir, Stream::Logs, 1 << 20).expect("reopens");
        let read = disk.read(0, 10_000, 1 << 20).expect("reads");
        assert_eq!((read.first_seq, messages(&read)), (0, expected));
        assert_eq!(disk.dropped().total, lost, "the count survives a restart");

        // Full again, with everything in one segment far from its size:
        // once tetherd has it all, the segment goes and the room returns.
        let mut next = next + 5;
        while disk.append(&long(next, next + 10), 10).is_ok() {
            next += 10;
        }
        next += 10;
        disk.ack(disk.next_seq()).expect("acks");
        disk.append(&long(next, next + 10), 10)
            .expect("room again once all was acknowledged");
        let read = disk.read(0, 10_000, 1 << 20).expect("reads");
        assert_eq!(read.first_seq, disk.next_seq() - 10);
        assert_eq!(read.lines.len(), 10);
    }

    #[test]
    fn records_are_read_in_order_from_the_acknowledged_position_after_a_restart() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("opens");
        let id = disk.spool_id().to_owned();
        append(&mut disk, 0, 10);
        append(&mut disk, 10, 25);
        let read = disk.read(0, 10, 1 << 20).expect("reads");
        assert_eq!(read.first_seq, 0);
        assert_eq!(messages(&read)[9], "line 00009");
        disk.ack(10).expect("acks");
        disk.save(false).expect("saves");
        drop(disk);

        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("reopens");
        assert_eq!(disk.spool_id(), id, "the spool id survives a restart");
        assert_eq!((disk.acked(), disk.next_seq()), (10, 25));
        let read = disk.read(disk.acked(), 100, 1 << 20).expect("reads");
        assert_eq!(read.first_seq, 10);
        assert_eq!(read.lines.len(), 15);
        assert_eq!(messages(&read)[0], "line 00010");
        append(&mut disk, 25, 26);
        let read = disk.read(25, 100, 1 << 20).expect("reads");
        assert_eq!(messages(&read), ["line 00025"]);
    }

    #[test]
    fn reads_stop_at_the_record_and_byte_limits() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("opens");
        append(&mut disk, 0, 100);
        let read = disk.read(5, 7, 1 << 20).expect("reads");
        assert_eq!((read.first_seq, read.lines.len()), (5, 7));
        let one = lines(0, 1).0.len();
        let read = disk.read(12, 100, one * 3).expect("reads");
        assert_eq!(read.lines.len(), 3);
        assert_eq!(messages(&read)[0], "line 00012");
        let read = disk.read(0, 100, 1).expect("reads");
        assert_eq!(
            read.lines.len(),
            1,
            "a record larger than the limit still goes"
        );
    }

    #[test]
    fn a_full_spool_drops_its_oldest_records_and_counts_them_exactly_across_restarts() {
        let temp = tempfile::tempdir().expect("temp");
        let max = 16 * 1024;
        let mut disk = Disk::open(temp.path(), Stream::Logs, max).expect("opens");
        for batch in 0..100 {
            append(&mut disk, batch * 20, batch * 20 + 20);
        }
        assert!(disk.bytes() <= max, "{} bytes kept", disk.bytes());
        let kept_from = disk.segments[0].first_seq;
        assert!(kept_from > 0);
        assert_eq!(
            disk.dropped().total,
            kept_from,
            "every record before the kept ones"
        );
        let by_priority: u64 = disk.dropped().by_priority.iter().sum();
        assert_eq!(by_priority, kept_from);
        assert_eq!(
            disk.dropped().by_priority[3],
            (0..kept_from).filter(|i| i % 8 == 3).count() as u64
        );
        let read = disk.read(0, 10_000, 1 << 20).expect("reads");
        assert_eq!(read.first_seq, kept_from);
        assert_eq!(read.first_seq + read.lines.len() as u64, 2000);
        let dropped = disk.dropped().clone();
        drop(disk);
        let disk = Disk::open(temp.path(), Stream::Logs, max).expect("reopens");
        assert_eq!(disk.dropped(), &dropped, "the count survives a restart");
    }

    #[test]
    fn a_flush_larger_than_the_bound_keeps_its_newest_records() {
        let temp = tempfile::tempdir().expect("temp");
        let max = 16 * 1024;
        let mut disk = Disk::open(temp.path(), Stream::Logs, max).expect("opens");
        append(&mut disk, 0, 2000);
        assert!(disk.bytes() <= max, "{} bytes kept", disk.bytes());
        let read = disk.read(0, 10_000, 1 << 20).expect("reads");
        assert!(read.lines.len() > 100, "only {} kept", read.lines.len());
        assert_eq!(read.first_seq + read.lines.len() as u64, 2000);
        assert_eq!(disk.dropped().total, read.first_seq);
    }

    #[test]
    fn records_keep_their_numbers_through_many_flushes_larger_than_a_segment() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Logs, 32 * 1024).expect("opens");
        let mut next = 0;
        for size in [512, 512, 300, 1, 512, 700, 512, 512, 20, 512] {
            append(&mut disk, next, next + size);
            next += size;
            let read = disk.read(0, 100_000, 1 << 30).expect("reads");
            let want: Vec<String> = (read.first_seq..next)
                .map(|i| format!("line {i:05}"))
                .collect();
            assert_eq!(messages(&read), want, "after {next} records");
            assert_eq!(disk.dropped().total, read.first_seq);
        }
    }

    #[test]
    fn records_in_flight_are_neither_dropped_nor_counted_until_answered() {
        let temp = tempfile::tempdir().expect("temp");
        let max = 16 * 1024;
        let mut disk = Disk::open(temp.path(), Stream::Logs, max).expect("opens");
        append(&mut disk, 0, 200);
        let read = disk.read(disk.acked(), 50, 1 << 20).expect("reads");
        let end = read.first_seq + read.lines.len() as u64;
        disk.sent(end);
        append(&mut disk, 200, 2000);
        assert_eq!(
            disk.segments[0].first_seq.min(read.first_seq),
            read.first_seq,
            "the batch in flight stays"
        );
        assert_eq!(disk.dropped().total, 0);
        disk.ack(end).expect("answered");
        append(&mut disk, 2000, 2001);
        assert!(disk.bytes() <= max);
        let kept = disk.read(disk.acked(), 10_000, 1 << 30).expect("reads");
        assert_eq!(
            disk.dropped().total + kept.lines.len() as u64 + (end - read.first_seq),
            2001,
            "every record stored or dropped, none both"
        );
        // Unanswered, the batch's records go like any others.
        let read = disk.read(disk.acked(), 50, 1 << 20).expect("reads");
        disk.sent(read.first_seq + read.lines.len() as u64);
        append(&mut disk, 2001, 4000);
        disk.unsent().expect("unsent");
        assert!(disk.bytes() <= max);
        let kept = disk.read(disk.acked(), 10_000, 1 << 30).expect("reads");
        assert_eq!(disk.dropped().total + kept.lines.len() as u64 + end, 4000);
    }

    #[test]
    fn acknowledged_records_are_not_counted_as_dropped() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Metrics, 16 * 1024).expect("opens");
        append(&mut disk, 0, 100);
        disk.ack(100).expect("acks");
        for batch in 1..20 {
            append(&mut disk, batch * 100, batch * 100 + 100);
        }
        let kept_from = disk.segments[0].first_seq;
        assert_eq!(disk.dropped().total, kept_from - 100);
        assert_eq!(
            disk.dropped().by_priority,
            [0; 8],
            "no priorities for metrics"
        );
    }

    #[test]
    fn a_torn_last_write_is_cut_not_fatal() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("opens");
        append(&mut disk, 0, 5);
        let path = disk.segment_path(0);
        drop(disk);
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(b"{\"priority\":1,\"mess")
            .expect("torn write");
        drop(file);
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("reopens");
        assert_eq!(disk.next_seq(), 5);
        append(&mut disk, 5, 6);
        let read = disk.read(0, 100, 1 << 20).expect("reads");
        assert_eq!(
            messages(&read).last().map(String::as_str),
            Some("line 00005")
        );
        assert_eq!(read.lines.len(), 6);

        // A block of zeros, as some file systems leave after a power cut.
        drop(disk);
        let mut file = OpenOptions::new().append(true).open(&path).expect("opens");
        file.write_all(&[0; 100]).expect("zeros");
        file.write_all(b"\n").expect("newline");
        drop(file);
        let disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("reopens");
        assert_eq!(disk.next_seq(), 6);
    }

    #[test]
    fn a_crash_after_counting_a_drop_and_before_deleting_the_segment_counts_it_once() {
        let temp = tempfile::tempdir().expect("temp");
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("opens");
        append(&mut disk, 0, 10);
        disk.create_segment(10).expect("rolls");
        append(&mut disk, 10, 20);
        // As if the meta was saved by the drop and the agent died then.
        disk.meta.dropped.total = 10;
        disk.meta.acked = 10;
        disk.save_meta().expect("saves");
        drop(disk);
        let mut disk = Disk::open(temp.path(), Stream::Logs, 1 << 20).expect("reopens");
        assert_eq!(disk.dropped().total, 10);
        assert!(!disk.segment_path(0).exists());
        let read = disk.read(0, 100, 1 << 20).expect("reads");
        assert_eq!(read.first_seq, 10);
    }
}
