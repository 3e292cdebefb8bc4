//! Recent correlation ids on disk, so an action delivered twice (MQTT QoS 1 is
//! at least once) is answered twice but executed once, even across restarts.
//!
//! One small JSON file per id in `state_dir/actions/`, each written atomically
//! (temp file, fsync, rename, fsync of the directory). A file is named
//! `{seq:016x}-{stem}.json`: `stem` is a hash of the id (ids come from the
//! network and must not choose file names) and `seq` a sequence number, so
//! start-up learns every record's age from its name and its size from its
//! metadata, without reading what it holds. Rewriting an id's record (started,
//! then done) writes the file with the next number, then removes the previous
//! one; if the agent dies in between, the next start keeps the newer file.
//!
//! Records are pruned oldest first until both limits hold: at most `capacity`
//! records, and at most [`MAX_RECORD_BYTES_TOTAL`] bytes of them. The newest
//! record and the records of actions still running are never pruned.
//!
//! Earlier versions named the files `{stem}.json`, with `seq` only inside.
//! `open` migrates them: it reads the few bytes that hold `seq` (the whole record
//! only if they do not parse), renames the file to the current name, and
//! prunes as usual; a record it cannot parse keeps counting as interrupted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tether_proto::ActionEvent;

use crate::state::write_atomic;

/// How many correlation ids are remembered.
pub const DEFAULT_CAPACITY: usize = 1000;

/// How many bytes of records are kept, at most (apart from the newest and
/// the running ones, which are never pruned).
///
/// The records exist for redeliveries: tetherd redelivers an action whose
/// answer it did not receive, after a reconnect, so what must be kept is the
/// answers sent in the last moments before a connection dropped. 64 MiB holds
/// 21 answers of the largest size (`MAX_EVENT_BYTES`, 3 MiB) and the
/// [`DEFAULT_CAPACITY`] most recent answers when they are a typical few KiB,
/// while bounding a small device's storage (1,000 full-size answers were
/// ~3 GB) and what start-up lists. As with the count, the guarantee is
/// bounded: an action whose record was pruned is run again if redelivered,
/// which here takes more than 21 full-size answers sent after it while its
/// own answer is still unacknowledged.
pub const MAX_RECORD_BYTES_TOTAL: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DedupeError {
    #[error("cannot create the action record directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot list the action record directory {path}")]
    List { path: PathBuf, source: io::Error },
    #[error("cannot record action {correlation_id:?} in {path}")]
    Write {
        correlation_id: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// What is known about a correlation id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never seen: run it.
    New,
    /// Started but no result was recorded: the agent died while running it.
    Started,
    /// Already answered with this event.
    Done(Box<ActionEvent>),
}

/// A record's content. `seq` is also in the file name, which is what counts;
/// it stays in the content because files of the earlier format carried it
/// only there.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    seq: u64,
    correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<ActionEvent>,
}

/// Where an id's record is, and how much it weighs.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    /// The file's name in the directory.
    name: String,
    bytes: u64,
}

#[derive(Debug)]
pub struct Dedupe {
    dir: PathBuf,
    capacity: usize,
    max_bytes: u64,
    /// By stem.
    records: HashMap<String, Entry>,
    /// (seq, stem) of every record, oldest first.
    order: BTreeSet<(u64, String)>,
    total_bytes: u64,
    /// Stems of actions started, and not yet done, by this process.
    running: HashSet<String>,
    next_seq: u64,
}

impl Dedupe {
    /// Opens (creating if needed) the record directory and lists what it
    /// holds, with the default byte budget ([`MAX_RECORD_BYTES_TOTAL`]).
    pub fn open(dir: impl Into<PathBuf>, capacity: usize) -> Result<Self, DedupeError> {
        Self::open_with_byte_budget(dir, capacity, MAX_RECORD_BYTES_TOTAL)
    }

    /// Opens the record directory keeping at most `capacity` records and
    /// `max_bytes` bytes of them.
    pub fn open_with_byte_budget(
        dir: impl Into<PathBuf>,
        capacity: usize,
        max_bytes: u64,
    ) -> Result<Self, DedupeError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| DedupeError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        let entries = fs::read_dir(&dir).map_err(|source| DedupeError::List {
            path: dir.clone(),
            source,
        })?;
        let mut found: Vec<(String, Entry)> = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!("cannot list an entry of {}: {e}", dir.display());
                    continue;
                }
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // Left by a write the agent did not live to finish.
                remove(&path, "a leftover temporary file");
                continue;
            }
            let (seq, stem) = if let Some((seq, stem)) = parse_name(&name) {
                (seq, stem.to_owned())
            } else if let Some(stem) = parse_legacy_name(&name) {
                // A record that cannot be read sorts first and is pruned first.
                (read_legacy_seq(&path).unwrap_or(0), stem.to_owned())
            } else {
                continue;
            };
            let bytes = entry.metadata().map_or_else(
                |e| {
                    tracing::warn!("cannot stat action record {}: {e}", path.display());
                    0
                },
                |m| m.len(),
            );
            found.push((stem, Entry { seq, name, bytes }));
        }
        // Newest first, so the first file seen for a stem is the one kept.
        found.sort_by(|(a_stem, a), (b_stem, b)| (b.seq, b_stem).cmp(&(a.seq, a_stem)));
        let next_seq = found
            .first()
            .map_or(1, |(_, entry)| entry.seq.saturating_add(1));
        let mut dedupe = Self {
            dir,
            capacity: capacity.max(1),
            max_bytes,
            records: HashMap::new(),
            order: BTreeSet::new(),
            total_bytes: 0,
            running: HashSet::new(),
            next_seq,
        };
        let mut migrated = 0usize;
        for (stem, mut entry) in found {
            if dedupe.records.contains_key(&stem) {
                // Superseded: the agent died between writing the newer
                // record and removing this one.
                remove(&dedupe.dir.join(&entry.name), "a superseded action record");
                continue;
            }
            if parse_legacy_name(&entry.name).is_some() && dedupe.migrate(&stem, &mut entry) {
                migrated += 1;
            }
            dedupe.insert(stem, entry);
        }
        if migrated > 0 {
            if let Err(e) = fs::File::open(&dedupe.dir).and_then(|d| d.sync_all()) {
                tracing::warn!("cannot sync {}: {e}", dedupe.dir.display());
            }
            tracing::info!(
                "migrated {migrated} action records in {} to the current file names",
                dedupe.dir.display()
            );
        }
        dedupe.prune();
        Ok(dedupe)
    }

    pub fn lookup(&self, correlation_id: &str) -> Seen {
        let Some(entry) = self.records.get(&stem(correlation_id)) else {
            return Seen::New;
        };
        let path = self.dir.join(&entry.name);
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Seen::New,
            Err(e) => {
                // Unknown is not safe to run: it may have run already.
                tracing::warn!(
                    "cannot read action record {}: {e}; treating {correlation_id:?} as interrupted",
                    path.display()
                );
                Seen::Started
            }
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(Record {
                    event: Some(event), ..
                }) => Seen::Done(Box::new(event)),
                Ok(_) => Seen::Started,
                Err(e) => {
                    tracing::warn!(
                        "action record {} is corrupt: {e}; treating {correlation_id:?} as interrupted",
                        path.display()
                    );
                    Seen::Started
                }
            },
        }
    }

    /// Records, durably, that the action is about to run. Its record is not
    /// pruned until [`Dedupe::record_done`] is called for it.
    pub fn record_started(&mut self, correlation_id: &str) -> Result<(), DedupeError> {
        self.write(correlation_id, None)?;
        self.running.insert(stem(correlation_id));
        Ok(())
    }

    /// Records the event that answered the action.
    pub fn record_done(&mut self, event: &ActionEvent) -> Result<(), DedupeError> {
        // Even if the write fails, the action is no longer running; its
        // `started` record ages like any other.
        self.running.remove(&stem(&event.correlation_id));
        self.write(&event.correlation_id, Some(event.clone()))
    }

    fn write(
        &mut self,
        correlation_id: &str,
        event: Option<ActionEvent>,
    ) -> Result<(), DedupeError> {
        let stem = stem(correlation_id);
        let seq = self.next_seq;
        let name = file_name(seq, &stem);
        let path = self.dir.join(&name);
        let record = Record {
            seq,
            correlation_id: correlation_id.to_owned(),
            event,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| DedupeError::Write {
            correlation_id: correlation_id.to_owned(),
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(|source| DedupeError::Write {
            correlation_id: correlation_id.to_owned(),
            path,
            source,
        })?;
        self.next_seq = self.next_seq.saturating_add(1);
        // The new record is durable: the previous one can go.
        if let Some(previous) = self.forget(&stem) {
            remove(&self.dir.join(&previous.name), "a superseded action record");
        }
        let bytes = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.insert(stem, Entry { seq, name, bytes });
        self.prune();
        Ok(())
    }

    /// Removes the oldest records until at most `capacity` are left and they
    /// weigh at most `max_bytes`, sparing the newest and the running ones.
    fn prune(&mut self) {
        let newest = self.order.last().cloned();
        let mut count = self.order.len();
        let mut bytes = self.total_bytes;
        let mut victims = Vec::new();
        for key in &self.order {
            if count <= self.capacity && bytes <= self.max_bytes {
                break;
            }
            let (_, stem) = key;
            if Some(key) == newest.as_ref() || self.running.contains(stem) {
                continue;
            }
            count -= 1;
            bytes = bytes.saturating_sub(self.records.get(stem).map_or(0, |e| e.bytes));
            victims.push(stem.clone());
        }
        for stem in victims {
            if let Some(entry) = self.forget(&stem) {
                remove(&self.dir.join(&entry.name), "an old action record");
            }
        }
    }

    fn insert(&mut self, stem: String, entry: Entry) {
        self.total_bytes = self.total_bytes.saturating_add(entry.bytes);
        self.order.insert((entry.seq, stem.clone()));
        self.records.insert(stem, entry);
    }

    /// Drops `stem` from the index (not from the disk).
    fn forget(&mut self, stem: &str) -> Option<Entry> {
        let entry = self.records.remove(stem)?;
        self.order.remove(&(entry.seq, stem.to_owned()));
        self.total_bytes = self.total_bytes.saturating_sub(entry.bytes);
        Some(entry)
    }

    /// Renames a record of the earlier format to the current name; if that
    /// fails it is used where it is, and the next start tries again.
    fn migrate(&self, stem: &str, entry: &mut Entry) -> bool {
        let name = file_name(entry.seq, stem);
        let from = self.dir.join(&entry.name);
        match fs::rename(&from, self.dir.join(&name)) {
            Ok(()) => {
                entry.name = name;
                true
            }
            Err(e) => {
                tracing::warn!("cannot rename action record {}: {e}", from.display());
                false
            }
        }
    }
}

fn remove(path: &Path, what: &str) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {what} {}: {e}", path.display());
    }
}

const STEM_LEN: usize = 32;
const SEQ_LEN: usize = 16;

fn file_name(seq: u64, stem: &str) -> String {
    format!("{seq:016x}-{stem}.json")
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `{seq:016x}-{stem}.json` → (seq, stem).
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (seq, stem) = name.strip_suffix(".json")?.split_once('-')?;
    if seq.len() != SEQ_LEN || stem.len() != STEM_LEN || !is_lower_hex(seq) || !is_lower_hex(stem) {
        return None;
    }
    Some((u64::from_str_radix(seq, 16).ok()?, stem))
}

/// `{stem}.json`, the earlier format → stem.
fn parse_legacy_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".json")?;
    (stem.len() == STEM_LEN && is_lower_hex(stem)).then_some(stem)
}

/// The `seq` of a record of the earlier format. Records were written by
/// serde_json with `seq` first, `{"seq":123,...`, so the first bytes say it;
/// otherwise the whole record is read, once, during the migration.
fn read_legacy_seq(path: &Path) -> Option<u64> {
    let mut head = Vec::with_capacity(32);
    fs::File::open(path)
        .ok()?
        .take(32)
        .read_to_end(&mut head)
        .ok()?;
    let from_head = head.strip_prefix(b"{\"seq\":").and_then(|rest| {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if rest.get(digits) != Some(&b',') {
            return None;
        }
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    });
    from_head.or_else(|| {
        let record: Record = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        Some(record.seq)
    })
}

/// 128 bits of SHA-256: collisions are out of reach, names stay short.
fn stem(correlation_id: &str) -> String {
    hex::encode(&Sha256::digest(correlation_id.as_bytes())[..STEM_LEN / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> ActionEvent {
        event_of_size(id, 0)
    }

    /// An answer whose response carries `padding` bytes.
    fn event_of_size(id: &str, padding: usize) -> ActionEvent {
        ActionEvent {
            correlation_id: id.into(),
            event: "get-node-ip".into(),
            status_code: 200,
            status_message: "OK".into(),
            response: serde_json::json!({"n": id, "pad": "x".repeat(padding)}),
        }
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("lists")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn bytes_on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .expect("lists")
            .filter_map(Result::ok)
            .map(|e| e.metadata().expect("stats").len())
            .sum()
    }

    #[test]
    fn an_id_goes_from_new_to_started_to_done() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open(temp.path(), 10).expect("opens");
        assert_eq!(dedupe.lookup("c1"), Seen::New);
        dedupe.record_started("c1").expect("records");
        assert_eq!(dedupe.lookup("c1"), Seen::Started);
        dedupe.record_done(&event("c1")).expect("records");
        assert_eq!(dedupe.lookup("c1"), Seen::Done(Box::new(event("c1"))));
        assert_eq!(dedupe.lookup("c2"), Seen::New);
        // One file per id: the `started` record was replaced.
        assert_eq!(file_names(temp.path()).len(), 1);
    }

    #[test]
    fn records_survive_a_restart() {
        let temp = tempfile::tempdir().expect("temp dir");
        {
            let mut dedupe = Dedupe::open(temp.path(), 10).expect("opens");
            dedupe.record_started("killed-mid-action").expect("records");
            dedupe.record_started("finished").expect("records");
            dedupe.record_done(&event("finished")).expect("records");
        }
        let dedupe = Dedupe::open(temp.path(), 10).expect("reopens");
        assert_eq!(dedupe.lookup("killed-mid-action"), Seen::Started);
        assert!(matches!(dedupe.lookup("finished"), Seen::Done(_)));
    }

    #[test]
    fn only_the_most_recent_ids_are_kept() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open(temp.path(), 3).expect("opens");
        for id in ["a", "b", "c", "d"] {
            dedupe.record_done(&event(id)).expect("records");
        }
        // Answering "b" again makes it recent again, so "c" goes before it.
        dedupe.record_done(&event("b")).expect("records");
        dedupe.record_started("e").expect("records");
        assert_eq!(dedupe.lookup("a"), Seen::New);
        assert_eq!(dedupe.lookup("c"), Seen::New);
        assert!(matches!(dedupe.lookup("b"), Seen::Done(_)));
        assert!(matches!(dedupe.lookup("d"), Seen::Done(_)));
        assert_eq!(dedupe.lookup("e"), Seen::Started);
        assert_eq!(file_names(temp.path()).len(), 3);
        drop(dedupe);

        let reopened = Dedupe::open(temp.path(), 2).expect("reopens smaller");
        assert_eq!(reopened.lookup("d"), Seen::New);
        assert_eq!(reopened.lookup("e"), Seen::Started);
    }

    #[test]
    fn the_byte_budget_prunes_the_oldest_first_and_keeps_the_newest() {
        let temp = tempfile::tempdir().expect("temp dir");
        let size = |id: &str| {
            serde_json::to_vec(&event_of_size(id, 1000))
                .expect("json")
                .len()
        };
        let one = u64::try_from(size("a")).expect("fits");
        // Room for three records, not four; the count limit is far away.
        let mut dedupe =
            Dedupe::open_with_byte_budget(temp.path(), 100, 3 * one + one / 2).expect("opens");
        for id in ["a", "b", "c", "d", "e"] {
            dedupe
                .record_done(&event_of_size(id, 1000))
                .expect("records");
        }
        assert_eq!(dedupe.lookup("a"), Seen::New);
        assert_eq!(dedupe.lookup("b"), Seen::New);
        for id in ["c", "d", "e"] {
            assert_eq!(
                dedupe.lookup(id),
                Seen::Done(Box::new(event_of_size(id, 1000))),
                "{id}"
            );
        }
        assert!(bytes_on_disk(temp.path()) <= 3 * one + one / 2);

        // A record larger than the whole budget is the newest: it is kept,
        // everything else goes.
        dedupe
            .record_done(&event_of_size("huge", 10_000))
            .expect("records");
        assert!(matches!(dedupe.lookup("huge"), Seen::Done(_)));
        for id in ["c", "d", "e"] {
            assert_eq!(dedupe.lookup(id), Seen::New, "{id}");
        }
        assert_eq!(file_names(temp.path()).len(), 1);
    }

    #[test]
    fn a_running_action_is_never_pruned() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open_with_byte_budget(temp.path(), 3, 4000).expect("opens");
        dedupe
            .record_done(&event("answered-before"))
            .expect("records");
        dedupe.record_started("running").expect("records");
        // Answers recorded meanwhile (for instance a redelivered one whose
        // stored answer was replaced) push past both limits.
        for n in 0..10 {
            dedupe
                .record_done(&event_of_size(&format!("other-{n}"), 1500))
                .expect("records");
        }
        assert_eq!(dedupe.lookup("running"), Seen::Started);
        assert_eq!(dedupe.lookup("answered-before"), Seen::New);
        assert_eq!(dedupe.lookup("other-0"), Seen::New);
        assert!(matches!(dedupe.lookup("other-9"), Seen::Done(_)));

        // Once answered it is an ordinary record again, newest for now...
        dedupe.record_done(&event("running")).expect("records");
        assert!(matches!(dedupe.lookup("running"), Seen::Done(_)));
        // ...and it ages out like any other.
        for n in 10..13 {
            dedupe
                .record_done(&event(&format!("other-{n}")))
                .expect("records");
        }
        assert_eq!(dedupe.lookup("running"), Seen::New);
    }

    #[test]
    fn a_restart_restores_order_and_sizes_from_names_and_metadata() {
        let temp = tempfile::tempdir().expect("temp dir");
        // Written so that the oldest record has the greatest hash and the
        // newest the smallest: ordering by file stem would prune wrongly.
        let mut ids = ["r1", "r2", "r3"];
        ids.sort_by_key(|id| std::cmp::Reverse(stem(id)));
        let [big, small_1, small_2] = ids;
        {
            let mut dedupe = Dedupe::open(temp.path(), 10).expect("opens");
            dedupe
                .record_done(&event_of_size(big, 3000))
                .expect("records");
            dedupe.record_done(&event(small_1)).expect("records");
            dedupe.record_done(&event(small_2)).expect("records");
        }
        // Overwrite every record with the same number of bytes of garbage:
        // what open learns, it learns without parsing the records.
        for name in file_names(temp.path()) {
            let path = temp.path().join(name);
            let len = fs::metadata(&path).expect("stats").len();
            fs::write(&path, vec![b'#'; usize::try_from(len).expect("fits")]).expect("writes");
        }
        let total = bytes_on_disk(temp.path());
        let mut dedupe =
            Dedupe::open_with_byte_budget(temp.path(), 10, total + 100).expect("reopens");
        // Within both limits: nothing was pruned at open.
        assert_eq!(file_names(temp.path()).len(), 3);
        // One more small record tips the budget; only the big, oldest one
        // needs to go, and the new one is the newest.
        dedupe.record_done(&event("next")).expect("records");
        assert_eq!(dedupe.lookup(big), Seen::New);
        // The garbage reads as interrupted: present, never run again.
        assert_eq!(dedupe.lookup(small_1), Seen::Started);
        assert_eq!(dedupe.lookup(small_2), Seen::Started);
        assert!(matches!(dedupe.lookup("next"), Seen::Done(_)));
        assert_eq!(file_names(temp.path()).len(), 3);
    }

    #[test]
    fn records_of_the_earlier_format_are_migrated_in_their_order() {
        let temp = tempfile::tempdir().expect("temp dir");
        let legacy = |id: &str, seq: u64, event: Option<ActionEvent>| {
            let record = Record {
                seq,
                correlation_id: id.into(),
                event,
            };
            let path = temp.path().join(format!("{}.json", stem(id)));
            fs::write(path, serde_json::to_vec(&record).expect("json")).expect("writes");
        };
        legacy("old-done", 9, Some(event("old-done")));
        legacy("old-started", 5, None);
        legacy("older-done", 2, Some(event("older-done")));
        fs::write(
            temp.path().join(format!("{}.json", stem("old-corrupt"))),
            b"{not json",
        )
        .expect("writes");

        let mut dedupe = Dedupe::open(temp.path(), 4).expect("opens");
        let names = file_names(temp.path());
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| parse_name(n).is_some()), "{names:?}");
        assert!(
            names.contains(&file_name(9, &stem("old-done"))),
            "{names:?}"
        );
        assert_eq!(
            dedupe.lookup("old-done"),
            Seen::Done(Box::new(event("old-done")))
        );
        assert_eq!(dedupe.lookup("old-started"), Seen::Started);
        assert_eq!(dedupe.lookup("old-corrupt"), Seen::Started);

        // New records come after the old ones, which leave in their order:
        // the unreadable one first, then seq 2, then seq 5.
        dedupe.record_done(&event("new-1")).expect("records");
        assert_eq!(dedupe.lookup("old-corrupt"), Seen::New);
        assert!(matches!(dedupe.lookup("older-done"), Seen::Done(_)));
        dedupe.record_done(&event("new-2")).expect("records");
        assert_eq!(dedupe.lookup("older-done"), Seen::New);
        assert_eq!(dedupe.lookup("old-started"), Seen::Started);
        dedupe.record_done(&event("new-3")).expect("records");
        assert_eq!(dedupe.lookup("old-started"), Seen::New);
        assert!(matches!(dedupe.lookup("old-done"), Seen::Done(_)));
    }

    #[test]
    fn a_write_interrupted_by_a_crash_leaves_the_newer_record() {
        let temp = tempfile::tempdir().expect("temp dir");
        {
            let mut dedupe = Dedupe::open(temp.path(), 10).expect("opens");
            dedupe.record_started("c1").expect("records");
            let started = fs::read(temp.path().join(file_name(1, &stem("c1")))).expect("reads");
            dedupe.record_done(&event("c1")).expect("records");
            // As if the agent died before removing the `started` record, and
            // in the middle of writing another one.
            fs::write(temp.path().join(file_name(1, &stem("c1"))), started).expect("writes");
            fs::write(temp.path().join(".x.json.123.tmp"), b"{").expect("writes");
        }
        let dedupe = Dedupe::open(temp.path(), 10).expect("reopens");
        assert_eq!(dedupe.lookup("c1"), Seen::Done(Box::new(event("c1"))));
        assert_eq!(file_names(temp.path()), vec![file_name(2, &stem("c1"))]);
    }

    #[test]
    fn a_corrupt_record_is_never_run_again() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open(temp.path(), 10).expect("opens");
        dedupe.record_started("c1").expect("records");
        fs::write(temp.path().join(file_name(1, &stem("c1"))), b"{not json").expect("writes");
        assert_eq!(dedupe.lookup("c1"), Seen::Started);
        drop(dedupe);
        let reopened = Dedupe::open(temp.path(), 10).expect("reopens");
        assert_eq!(reopened.lookup("c1"), Seen::Started);
    }

    #[test]
    fn ids_never_choose_file_names() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open(temp.path().join("actions"), 10).expect("opens");
        dedupe.record_started("../../etc/passwd").expect("records");
        let names = file_names(&temp.path().join("actions"));
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].len(), 16 + 1 + 32 + ".json".len(), "{names:?}");
        assert!(parse_name(&names[0]).is_some(), "{names:?}");
    }

    #[test]
    fn only_names_of_the_two_formats_are_taken_for_records() {
        let stem = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_name(&format!("000000000000002a-{stem}.json")),
            Some((42, stem))
        );
        assert_eq!(parse_legacy_name(&format!("{stem}.json")), Some(stem));
        for name in [
            format!("2a-{stem}.json"),
            format!("000000000000002A-{stem}.json"),
            format!("000000000000002a-{stem}.tmp"),
            format!(".000000000000002a-{stem}.json.1.tmp"),
            "notes.json".to_owned(),
        ] {
            assert_eq!(parse_name(&name), None, "{name}");
            assert_eq!(parse_legacy_name(&name), None, "{name}");
        }
    }
}
