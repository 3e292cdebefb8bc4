//! The device's logs: sources that turn syslog messages ([`syslog`]),
//! journal entries ([`journal`]), file lines ([`file`]) and supervised
//! processes' output ([`process`]) into log records,
//! filtered by the spec's `loggingConfig` ([`filter`]) into the telemetry
//! spool, from where they reach tetherd (ADR 0013).
//!
//! Which sources run: the syslog listeners and files the agent's flags name
//! (from the start); the journal while the spec's `enableJournalExport` is
//! true; and the device's system log while an operator follows the logs
//! (`follow-logs`) and no configured source covers it. A new spec changes
//! the filter and starts or stops the journal at once, without a restart.
//!
//! Where the file and journal sources are is kept in
//! `STATE_DIR/logs/positions.json`, written every second when it moved and
//! when the agent stops; it moves only as records reach the spool, so a
//! clean restart neither loses nor repeats a line.

pub mod file;
pub mod filter;
pub mod journal;
pub mod process;
pub mod queue;
pub mod syslog;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_proto::telemetry::{LogRecord, MAX_LOG_MESSAGE_BYTES, Stream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::ServerClock;
use crate::spec::{AppliedSpec, SpecHandle};
use crate::spool::{AppendError, Record, Spools};
use crate::state::write_atomic;
use file::{FilePosition, FileStart, LineFormat, Tail};
use filter::{Filter, Origin};
pub use journal::JournalLocation;
use queue::{INLET_BYTES, Inlet};
pub use syslog::SyslogConfig;

/// Directory of the sources' positions in the state directory.
pub const LOGS_DIR: &str = "logs";
const POSITIONS_FILE: &str = "positions.json";
/// How often moved positions are written.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("cannot listen for {what}: pass another address or path, or free this one")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path} for the log sources' positions")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Cuts `message` to what tetherd takes, at a character boundary; the
/// original length in bytes if it was cut.
pub fn truncate(mut message: String) -> (String, Option<usize>) {
    let length = message.len();
    if length <= MAX_LOG_MESSAGE_BYTES {
        return (message, None);
    }
    let mut end = MAX_LOG_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    (message, Some(length))
}

/// The device's system log, where `follow-logs` reads when nothing
/// configured does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemLog {
    Journal,
    File(PathBuf),
    None,
}

impl SystemLog {
    /// Seed 004: the journal where journald runs (`/run/systemd/journal`
    /// exists under `root`), else `/var/log/syslog`, else `/var/log/messages`.
    pub fn detect(root: &Path) -> Self {
        if root.join("run/systemd/journal").exists() {
            return SystemLog::Journal;
        }
        for file in ["var/log/syslog", "var/log/messages"] {
            if root.join(file).exists() {
                return SystemLog::File(Path::new("/").join(file));
            }
        }
        SystemLog::None
    }

    /// `auto`, `journal`, `none` or a file's path.
    pub fn from_setting(setting: &str) -> Self {
        match setting {
            "auto" => Self::detect(Path::new("/")),
            "journal" => SystemLog::Journal,
            "none" => SystemLog::None,
            path => SystemLog::File(PathBuf::from(path)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SystemLog::Journal => "journal".into(),
            SystemLog::File(path) => path.display().to_string(),
            SystemLog::None => "none".into(),
        }
    }
}

/// The log sources the agent's flags set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsConfig {
    pub syslog: SyslogConfig,
    pub files: Vec<PathBuf>,
    pub journal: JournalLocation,
    pub system_log: SystemLog,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            syslog: SyslogConfig::default(),
            files: Vec::new(),
            journal: JournalLocation::System,
            system_log: SystemLog::None,
        }
    }
}

/// Where records go: the filter, then the spool, dated by tetherd's clock.
pub struct Sink {
    spools: Arc<Spools>,
    clock: Arc<ServerClock>,
    filter: Mutex<Filter>,
}

impl Sink {
    pub fn new(spools: Arc<Spools>, clock: Arc<ServerClock>) -> Self {
        Self {
            spools,
            clock,
            filter: Mutex::default(),
        }
    }

    fn set_filter(&self, filter: Filter) {
        *self.filter.lock().unwrap_or_else(PoisonError::into_inner) = filter;
    }

    /// Spools `record` if the filter admits it; whether it was spooled.
    pub fn offer(&self, record: LogRecord, origin: Origin) -> bool {
        let admitted = self
            .filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admits(&record, origin);
        admitted && self.spool(record)
    }

    /// Spools `record` whatever the filter says (the agent's own warnings).
    /// A record too large as JSON (escapes, many fields) is shortened until
    /// it fits, and says so.
    pub fn spool(&self, mut record: LogRecord) -> bool {
        record.at = self.clock.at(record.at);
        loop {
            let error = match self.spools.append(Record::Log(record.clone())) {
                Ok(()) => return true,
                Err(error) => error,
            };
            let original = record.message.len();
            if matches!(error, AppendError::TooLarge(_)) && original > 64 {
                let (message, _) = cut_to(record.message, original / 2);
                record.message = message;
                record
                    .fields
                    .entry("truncated".into())
                    .or_insert_with(|| original.to_string());
            } else if matches!(error, AppendError::TooLarge(_))
                && record.fields.get("truncated").map(String::as_str) != Some(FIELDS_LEFT_OUT)
            {
                record.fields =
                    BTreeMap::from([("truncated".to_owned(), FIELDS_LEFT_OUT.to_owned())]);
            } else if matches!(error, AppendError::TooLarge(_)) && record.unit.len() > 255 {
                record.unit = cut_to(record.unit, 255).0;
            } else {
                tracing::warn!(%error, unit = record.unit, "log record not spooled");
                return false;
            }
        }
    }
}

const FIELDS_LEFT_OUT: &str = "fields left out: too large";

fn cut_to(mut message: String, bytes: usize) -> (String, usize) {
    let length = message.len();
    let mut end = bytes.min(length);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    (message, length)
}

/// Where the journal starts reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JournalStart {
    /// Never read: from the start of the journal (the system journal: of
    /// this boot).
    Beginning,
    /// From now: export was turned off, and what was logged meanwhile is
    /// not exported when it is turned on again.
    Now,
    /// After the last entry spooled.
    After(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Saved {
    #[serde(default)]
    files: BTreeMap<String, FilePosition>,
    /// By journal location ([`JournalLocation::key`]).
    #[serde(default)]
    journals: BTreeMap<String, JournalStart>,
}

/// The positions of the file and journal sources, in memory and in the
/// state directory.
pub struct Positions {
    path: PathBuf,
    saved: Mutex<(Saved, bool)>,
}

impl Positions {
    pub fn open(state_dir: &Path) -> Result<Arc<Self>, LogsError> {
        let dir = state_dir.join(LOGS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| LogsError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(POSITIONS_FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(file = %path.display(), %error, "ignoring unreadable log positions; files are read from their start");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        Ok(Arc::new(Self {
            path,
            saved: Mutex::new((saved, false)),
        }))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Saved, &mut bool) -> T) -> T {
        let mut guard = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        let (saved, dirty) = &mut *guard;
        f(saved, dirty)
    }

    pub fn file(&self, key: &str) -> Option<FilePosition> {
        self.with(|saved, _| saved.files.get(key).copied())
    }

    pub fn set_file(&self, key: &str, position: FilePosition) {
        self.with(|saved, dirty| {
            if saved.files.get(key) != Some(&position) {
                saved.files.insert(key.to_owned(), position);
                *dirty = true;
            }
        });
    }

    pub fn journal(&self, key: &str) -> Option<JournalStart> {
        self.with(|saved, _| saved.journals.get(key).cloned())
    }

    pub fn set_journal(&self, key: &str, cursor: &str) {
        self.set_journal_start(key, JournalStart::After(cursor.to_owned()));
    }

    fn set_journal_start(&self, key: &str, start: JournalStart) {
        self.with(|saved, dirty| {
            saved.journals.insert(key.to_owned(), start);
            *dirty = true;
        });
    }

    /// Writes the positions if they moved since the last write.
    pub fn persist(&self) {
        let bytes = self.with(|saved, dirty| {
            std::mem::take(dirty).then(|| serde_json::to_vec_pretty(saved).unwrap_or_default())
        });
        if let Some(bytes) = bytes
            && let Err(error) = write_atomic(&self.path, &bytes, 0o600)
        {
            tracing::error!(file = %self.path.display(), %error, "cannot save the log sources' positions; a restart may repeat lines");
            self.with(|_, dirty| *dirty = true);
        }
    }
}

/// `follow-logs`' end: while it is ahead, an operator follows the logs.
#[derive(Clone)]
pub struct FollowHandle {
    until: Arc<watch::Sender<Option<Instant>>>,
    system_log: Arc<str>,
}

impl FollowHandle {
    pub fn new(system_log: &SystemLog) -> Self {
        Self {
            until: Arc::new(watch::channel(None).0),
            system_log: system_log.describe().into(),
        }
    }

    /// Follows for `seconds` from now (never shortening a later end).
    pub fn follow_for(&self, seconds: u64) -> Instant {
        let until = Instant::now() + Duration::from_secs(seconds);
        self.until.send_modify(|current| {
            *current = Some(current.map_or(until, |c| c.max(until)));
        });
        self.until.borrow().unwrap_or(until)
    }

    /// The system log followed: `journal`, a file, or `none`.
    pub fn system_log(&self) -> &str {
        &self.system_log
    }

    fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.until.subscribe()
    }
}

/// Ends a task with its owner, or when stopped.
struct Running(Option<tokio::task::JoinHandle<()>>);

impl Running {
    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(task)))
    }

    /// Ends the task and waits until it has ended: it spools nothing after.
    async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// The log sources, bound and ready to run.
pub struct Logs {
    config: LogsConfig,
    sink: Arc<Sink>,
    spools: Arc<Spools>,
    positions: Arc<Positions>,
    spec: watch::Receiver<AppliedSpec>,
    follow: FollowHandle,
    listeners: syslog::Listeners,
}

impl Logs {
    /// Binds the syslog listeners (an error names which) and loads the
    /// sources' positions.
    pub async fn bind(
        config: LogsConfig,
        state_dir: &Path,
        spools: Arc<Spools>,
        clock: Arc<ServerClock>,
        spec: &SpecHandle,
    ) -> Result<Self, LogsError> {
        let listeners = syslog::Listeners::bind(&config.syslog).await?;
        let positions = Positions::open(state_dir)?;
        let follow = FollowHandle::new(&config.system_log);
        Ok(Self {
            sink: Arc::new(Sink::new(spools.clone(), clock)),
            spools,
            positions,
            spec: spec.subscribe(),
            follow,
            listeners,
            config,
        })
    }

    pub fn follow(&self) -> FollowHandle {
        self.follow.clone()
    }

    pub fn positions(&self) -> Arc<Positions> {
        self.positions.clone()
    }

    /// Where other parts of the agent put log records (supervised
    /// processes' output), through the spec's filter like the sources'.
    pub fn sink(&self) -> Arc<Sink> {
        self.sink.clone()
    }

    /// Runs the sources until `stop` resolves; then ends them, spools what
    /// the listeners took in, and returns. Nothing is spooled after that,
    /// so the positions saved then match the spool.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Logs {
            config,
            sink,
            spools,
            positions,
            mut spec,
            follow,
            listeners,
        } = self;
        let mut fixed = JoinSet::new();
        let mut inlets: Vec<Arc<Inlet>> = Vec::new();
        listeners.spawn(
            |name| {
                let inlet = Inlet::new(name, INLET_BYTES);
                inlets.push(inlet.clone());
                inlet
            },
            &mut fixed,
        );
        for inlet in &inlets {
            fixed.spawn(drain(inlet.clone(), sink.clone()));
        }
        let (fast_tx, fast) = watch::channel(false);
        for path in &config.files {
            let tail = Tail {
                path: path.clone(),
                format: LineFormat::Plain,
                start: FileStart::Beginning,
                positions: Some(positions.clone()),
            };
            fixed.spawn(tail.run(sink.clone(), fast.clone()));
        }
        let mut follow_until = follow.subscribe();
        let mut journal: Option<Running> = None;
        let mut system_log: Option<Running> = None;
        tokio::pin!(stop);
        let mut persist = tokio::time::interval(PERSIST_EVERY);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let logging = spec.borrow_and_update().logging.clone();
            sink.set_filter(Filter::new(&logging));
            let export = logging.enable_journal_export;
            if export && journal.is_none() {
                tracing::info!(journal = config.journal.key(), "exporting the journal");
                journal = Some(Running::spawn(journal::run(
                    config.journal.clone(),
                    JournalStart::Beginning,
                    sink.clone(),
                    Some(positions.clone()),
                )));
            } else if !export && let Some(running) = journal.take() {
                running.stop().await;
                tracing::info!("journal export turned off");
                // What is logged from now until it is on again is not exported.
                positions.set_journal_start(&config.journal.key(), JournalStart::Now);
            }
            let until = *follow_until.borrow_and_update();
            let following = until.filter(|until| Instant::now() < *until);
            spools
                .spool(Stream::Logs)
                .hasten(following.map(Instant::into_std));
            fast_tx.send_if_modified(|fast| {
                let changed = *fast != following.is_some();
                *fast = following.is_some();
                changed
            });
            let covered = match &config.system_log {
                SystemLog::Journal => export,
                SystemLog::File(path) => config.files.contains(path),
                SystemLog::None => true,
            };
            if following.is_some() && !covered {
                if system_log.is_none() {
                    tracing::info!(
                        source = config.system_log.describe(),
                        "an operator follows the logs: reading the system log from now"
                    );
                    system_log = Some(Running::spawn(follow_system_log(
                        config.system_log.clone(),
                        config.journal.clone(),
                        sink.clone(),
                        fast.clone(),
                    )));
                }
            } else if let Some(running) = system_log.take() {
                running.stop().await;
                tracing::info!("nobody follows the logs any more: system log source stopped");
            }
            let deadline = following.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                () = &mut stop => break,
                changed = spec.changed() => if changed.is_err() { break },
                changed = follow_until.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline), if following.is_some() => {}
                _ = persist.tick() => {
                    let positions = positions.clone();
                    let _ = tokio::task::spawn_blocking(move || positions.persist()).await;
                }
            }
        }
        fixed.shutdown().await;
        for inlet in &inlets {
            for (received, frame) in inlet.take() {
                sink.offer(
                    syslog::parse(&frame, received, &chrono::Local),
                    Origin::Syslog,
                );
            }
        }
        for running in [journal, system_log].into_iter().flatten() {
            running.stop().await;
        }
    }
}

/// The system log from now, for as long as it is followed.
async fn follow_system_log(
    system_log: SystemLog,
    location: JournalLocation,
    sink: Arc<Sink>,
    fast: watch::Receiver<bool>,
) {
    match system_log {
        SystemLog::Journal => journal::run(location, JournalStart::Now, sink, None).await,
        SystemLog::File(path) => {
            let tail = Tail {
                path,
                format: LineFormat::Syslog,
                start: FileStart::End,
                positions: None,
            };
            tail.run(sink, fast).await;
        }
        SystemLog::None => {}
    }
}

/// Parses what a syslog listener received into the sink, and reports what
/// its inlet dropped.
async fn drain(inlet: Arc<Inlet>, sink: Arc<Sink>) {
    let mut reported = 0;
    loop {
        inlet.ready().await;
        loop {
            let frames = inlet.take();
            if frames.is_empty() {
                break;
            }
            for (received, frame) in frames {
                sink.offer(
                    syslog::parse(&frame, received, &chrono::Local),
                    Origin::Syslog,
                );
            }
            tokio::task::yield_now().await;
        }
        let dropped = inlet.dropped();
        if dropped > reported {
            tracing::warn!(
                source = inlet.name(),
                dropped = dropped - reported,
                "syslog messages dropped: they arrived faster than the agent could take them"
            );
            sink.spool(queue::dropped_record(
                inlet.name(),
                dropped - reported,
                dropped,
                chrono::Utc::now(),
            ));
            reported = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;
    use tether_proto::telemetry::Records;

    #[test]
    fn the_system_log_is_the_journal_where_journald_runs_else_a_file() {
        let root = tempfile::tempdir().expect("temp");
        assert_eq!(SystemLog::detect(root.path()), SystemLog::None);
        std::fs::create_dir_all(root.path().join("var/log")).expect("mkdir");
        std::fs::write(root.path().join("var/log/messages"), "").expect("write");
        assert_eq!(
            SystemLog::detect(root.path()),
            SystemLog::File("/var/log/messages".into())
        );
        std::fs::write(root.path().join("var/log/syslog"), "").expect("write");
        assert_eq!(
            SystemLog::detect(root.path()),
            SystemLog::File("/var/log/syslog".into())
        );
        std::fs::create_dir_all(root.path().join("run/systemd/journal")).expect("mkdir");
        assert_eq!(SystemLog::detect(root.path()), SystemLog::Journal);
        assert_eq!(SystemLog::from_setting("none"), SystemLog::None);
        assert_eq!(
            SystemLog::from_setting("/x/y.log"),
            SystemLog::File("/x/y.log".into())
        );
    }

    #[test]
    fn the_sink_filters_and_shortens_what_would_not_fit() {
        let temp = tempfile::tempdir().expect("temp");
        let spools =
            Spools::open(temp.path(), SpoolConfig::default(), ServerClock::new()).expect("opens");
        let sink = Sink::new(spools.clone(), ServerClock::new());
        let record = |priority: u8, message: String| LogRecord {
            at: chrono::Utc::now(),
            priority,
            unit: "app".into(),
            message,
            fields: Default::default(),
        };
        sink.set_filter(Filter::new(&tether_proto::spec::LoggingConfig {
            enable_journal_export: false,
            priority: 4,
            units: Vec::new(),
        }));
        assert!(!sink.offer(record(6, "info".into()), Origin::Syslog));
        assert!(sink.offer(record(3, "error".into()), Origin::Syslog));
        // 16 KiB of control characters is 96 KiB of JSON: shortened to fit.
        assert!(sink.offer(record(0, "\u{1}".repeat(16 * 1024)), Origin::File));
        // One field too large to send (structured data of a 64 KiB frame).
        let mut huge_field = record(0, "small".into());
        huge_field
            .fields
            .insert("sd.x.y".into(), "\u{2}".repeat(40 * 1024));
        huge_field.unit = "u".repeat(40 * 1024);
        assert!(sink.offer(huge_field, Origin::Journal));
        spools.flush();
        let batch = spools
            .spool(Stream::Logs)
            .next_batch()
            .expect("reads")
            .expect("a batch");
        let Records::Logs(records) = batch.records else {
            panic!("logs expected");
        };
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].message, "error");
        assert_eq!(records[1].fields["truncated"], (16 * 1024).to_string());
        assert_eq!(records[2].fields["truncated"], FIELDS_LEFT_OUT);
        assert_eq!(
            (records[2].message.as_str(), records[2].unit.len()),
            ("small", 255)
        );
    }

    #[test]
    fn positions_survive_a_restart_and_journal_export_off_means_from_now() {
        let temp = tempfile::tempdir().expect("temp");
        let positions = Positions::open(temp.path()).expect("opens");
        let position = FilePosition {
            identity: file::Identity { dev: 1, inode: 2 },
            offset: 30,
        };
        positions.set_file("/var/log/app.log", position);
        positions.set_journal("system", "s=1");
        positions.persist();
        let again = Positions::open(temp.path()).expect("opens");
        assert_eq!(again.file("/var/log/app.log"), Some(position));
        assert_eq!(
            again.journal("system"),
            Some(JournalStart::After("s=1".into()))
        );
        again.set_journal_start("system", JournalStart::Now);
        again.persist();
        assert_eq!(
            Positions::open(temp.path())
                .expect("opens")
                .journal("system"),
            Some(JournalStart::Now)
        );
    }

    #[tokio::test]
    async fn following_extends_and_never_shortens() {
        let follow = FollowHandle::new(&SystemLog::Journal);
        let long = follow.follow_for(60);
        let short = follow.follow_for(5);
        assert_eq!(long, short);
        assert_eq!(follow.system_log(), "journal");
    }
}
