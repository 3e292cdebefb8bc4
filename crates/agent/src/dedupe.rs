//! Recent correlation ids on disk, so an action delivered twice (MQTT QoS 1 is
//! at least once) is answered twice but executed once, even across restarts.
//!
//! One small JSON file per id in `state_dir/actions/`, named by a hash of the
//! id (ids come from the network and must not choose file names), each
//! replaced atomically. Records carry a sequence number so pruning keeps the
//! most recent ids regardless of file-system timestamp granularity.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tether_proto::ActionEvent;

use crate::state::write_atomic;

/// How many correlation ids are remembered.
pub const DEFAULT_CAPACITY: usize = 1000;

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

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    seq: u64,
    correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<ActionEvent>,
}

#[derive(Debug)]
pub struct Dedupe {
    dir: PathBuf,
    capacity: usize,
    /// File stems, oldest first.
    order: VecDeque<String>,
    next_seq: u64,
}

impl Dedupe {
    /// Opens (creating if needed) the record directory and reads what it holds.
    pub fn open(dir: impl Into<PathBuf>, capacity: usize) -> Result<Self, DedupeError> {
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
        let mut existing: Vec<(u64, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".json")?.to_owned();
                // A record that cannot be read sorts first and is pruned first.
                let seq = read_record(&entry.path()).map_or(0, |r| r.seq);
                Some((seq, stem))
            })
            .collect();
        existing.sort();
        let next_seq = existing.last().map_or(1, |(seq, _)| seq + 1);
        let mut dedupe = Self {
            dir,
            capacity: capacity.max(1),
            order: existing.into_iter().map(|(_, stem)| stem).collect(),
            next_seq,
        };
        dedupe.prune();
        Ok(dedupe)
    }

    pub fn lookup(&self, correlation_id: &str) -> Seen {
        let path = self.path(&stem(correlation_id));
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

    /// Records, durably, that the action is about to run.
    pub fn record_started(&mut self, correlation_id: &str) -> Result<(), DedupeError> {
        self.write(correlation_id, None)
    }

    /// Records the event that answered the action.
    pub fn record_done(&mut self, event: &ActionEvent) -> Result<(), DedupeError> {
        self.write(&event.correlation_id, Some(event.clone()))
    }

    fn write(
        &mut self,
        correlation_id: &str,
        event: Option<ActionEvent>,
    ) -> Result<(), DedupeError> {
        let stem = stem(correlation_id);
        let path = self.path(&stem);
        let record = Record {
            seq: self.next_seq,
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
        self.next_seq += 1;
        self.order.retain(|s| s != &stem);
        self.order.push_back(stem);
        self.prune();
        Ok(())
    }

    fn prune(&mut self) {
        while self.order.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            let path = self.path(&oldest);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!("cannot prune action record {}: {e}", path.display());
            }
        }
    }

    fn path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.json"))
    }
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// 128 bits of SHA-256: collisions are out of reach, names stay short.
fn stem(correlation_id: &str) -> String {
    hex::encode(&Sha256::digest(correlation_id.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> ActionEvent {
        ActionEvent {
            correlation_id: id.into(),
            event: "get-node-ip".into(),
            status_code: 200,
            status_message: "OK".into(),
            response: serde_json::json!({"n": id}),
        }
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
            dedupe.record_started(id).expect("records");
        }
        // Finishing "b" makes it recent again, so "c" goes before it.
        dedupe.record_done(&event("b")).expect("records");
        dedupe.record_started("e").expect("records");
        assert_eq!(dedupe.lookup("a"), Seen::New);
        assert_eq!(dedupe.lookup("c"), Seen::New);
        assert!(matches!(dedupe.lookup("b"), Seen::Done(_)));
        assert_eq!(dedupe.lookup("d"), Seen::Started);
        assert_eq!(dedupe.lookup("e"), Seen::Started);
        let files = fs::read_dir(temp.path()).expect("lists").count();
        assert_eq!(files, 3);

        let reopened = Dedupe::open(temp.path(), 2).expect("reopens smaller");
        assert_eq!(reopened.lookup("d"), Seen::New);
        assert_eq!(reopened.lookup("e"), Seen::Started);
    }

    #[test]
    fn a_corrupt_record_is_never_run_again() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dedupe = Dedupe::open(temp.path(), 10).expect("opens");
        fs::write(dedupe.path(&stem("c1")), b"{not json").expect("writes");
        assert_eq!(dedupe.lookup("c1"), Seen::Started);
        let reopened = Dedupe::open(temp.path(), 10).expect("reopens");
        assert_eq!(reopened.lookup("c1"), Seen::Started);
    }

    #[test]
    fn ids_never_choose_file_names() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut dedupe = Dedupe::open(temp.path().join("actions"), 10).expect("opens");
        dedupe.record_started("../../etc/passwd").expect("records");
        let names: Vec<String> = fs::read_dir(temp.path().join("actions"))
            .expect("lists")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].len() == 32 + ".json".len(), "{names:?}");
    }
}
