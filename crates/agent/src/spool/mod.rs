//! The telemetry spool: every metrics sample and log line the device
//! produces goes to disk first, and from there to tetherd, so nothing is
//! lost while tetherd is unreachable or the agent restarts.
//!
//! Producers (the stats sampler, log sources, the local API) only call
//! [`Spools::append`]. It keeps records in memory and the flusher writes them
//! to the stream's [`disk`] spool in batches (every [`SpoolConfig::flush_records`]
//! records or [`SpoolConfig::flush_interval`], one write and one fsync
//! each: flash wears by writes, not by bytes). A record appended but not yet
//! flushed when the power goes is lost; a clean stop flushes. The
//! [`sender`] carries flushed records to tetherd and moves the acknowledged
//! position when tetherd has stored them. Both ends count what each
//! feature sent ([`usage`]).

pub mod budget;
pub mod disk;
pub mod sender;
pub mod usage;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tether_proto::spec::Budgets;
use tether_proto::telemetry::{
    Dropped, Feature, FeatureBytes, LogRecord, MAX_LOG_MESSAGE_BYTES, MAX_PRIORITY, MetricRecord,
    Records, Stream, TelemetryBatch,
};
use tokio::sync::Notify;

use crate::clock::ServerClock;
use budget::DailyBudget;
use disk::{Disk, DiskError};
use usage::Usage;

/// Directory of the spools in the state directory.
pub const SPOOL_DIR: &str = "spool";
/// Largest record the spool takes, as JSON; a batch must hold at least one.
pub const MAX_RECORD_BYTES: usize = 32 * 1024;
/// A batch sent to tetherd holds at most this many records …
const BATCH_RECORDS: usize = 1_000;
/// … and this much JSON, so that even incompressible records stay within
/// `tether_proto::telemetry::MAX_COMPRESSED_BYTES`.
const BATCH_BYTES: usize = 192 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Bound of both spools together on disk; each stream gets half.
    pub max_bytes: u64,
    /// Flush once this many records wait in memory …
    pub flush_records: u64,
    /// … or this long after the last flush.
    pub flush_interval: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            flush_records: 512,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// What a producer hands to the spool; the kind picks the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Metric(MetricRecord),
    Log(LogRecord),
}

impl Record {
    pub fn stream(&self) -> Stream {
        match self {
            Record::Metric(_) => Stream::Metrics,
            Record::Log(_) => Stream::Logs,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("priority {0} is not 0 (emergency) to 7 (debug)")]
    Priority(u8),
    #[error("the record is {0} bytes as JSON, more than the {MAX_RECORD_BYTES} allowed")]
    TooLarge(usize),
}

/// Records appended and not yet written.
#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    count: u64,
    /// Records the day's budget did not admit: counted as dropped over
    /// budget at the next flush.
    over_budget: u64,
    over_budget_by_priority: [u64; 8],
}

/// One stream's spool: records in memory, then on disk.
#[derive(Debug)]
pub struct Spool {
    stream: Stream,
    pending: Mutex<Pending>,
    disk: Mutex<Disk>,
    flush_records: u64,
    /// Wakes the flusher early: enough records wait.
    flush_due: Arc<Notify>,
    /// Wakes the sender: records reached the disk, or the drop counts
    /// changed (they reach tetherd with the next batch, or alone).
    flushed: Notify,
    /// The spec's bytes a day for this stream.
    budget: Mutex<DailyBudget>,
    /// Until then every record is flushed (and so sent) at once: an
    /// operator follows this stream live (`follow-logs`).
    fast_until: Mutex<Option<Instant>>,
    shared: Arc<Shared>,
}

/// What both streams' spools share.
#[derive(Debug)]
struct Shared {
    /// The agent's own counts, reported to tetherd.
    usage: Arc<Usage>,
    /// The spec's `spoolReplay` budget: it slows the backlogs of both.
    replay: Mutex<DailyBudget>,
    /// Budgets count days by tetherd's clock (ADR 0015): a device clock
    /// set a day ahead or an hour back would otherwise start a second
    /// allowance for the same day, or hold the bucket empty for the hour.
    clock: Arc<ServerClock>,
}

impl Spool {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stream(&self) -> Stream {
        self.stream
    }

    fn budget(&self) -> MutexGuard<'_, DailyBudget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a record, unless the day's budget is spent for its priority
    /// (then it is counted as dropped).
    fn append(&self, line: Vec<u8>, priority: Option<u8>) {
        let now = self.shared.clock.now();
        let admitted = self.budget().admit(now, priority, line.len());
        let mut pending = self.pending();
        if !admitted {
            pending.over_budget += 1;
            if let Some(priority) = priority {
                pending.over_budget_by_priority[usize::from(priority)] += 1;
            }
            return;
        }
        pending.lines.extend(line);
        pending.lines.push(b'\n');
        pending.count += 1;
        if pending.count >= self.flush_records || self.is_fast() {
            self.flush_due.notify_one();
        }
    }

    fn is_fast(&self) -> bool {
        self.fast_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Until `until`, flushes each record at once rather than every
    /// [`SpoolConfig::flush_records`] records or [`SpoolConfig::flush_interval`]:
    /// the sender then carries it to tetherd within milliseconds, at the cost
    /// of a write per batch. `None` goes back to the normal cadence.
    pub fn hasten(&self, until: Option<Instant>) {
        *self
            .fast_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    /// Writes what waits in memory with one write and one fsync, and the
    /// metadata if due (always when `stopping`). Records whose write
    /// failed are counted as dropped (by [`Disk::append`]).
    fn flush(&self, stopping: bool) -> io::Result<()> {
        let mut disk = self.disk();
        let (written_from, dropped_before) = (disk.next_seq(), disk.dropped().clone());
        let flushed = self.write_pending(&mut disk, stopping);
        if disk.next_seq() > written_from || *disk.dropped() != dropped_before {
            self.flushed.notify_one();
        }
        flushed
    }

    fn write_pending(&self, disk: &mut Disk, stopping: bool) -> io::Result<()> {
        let pending = std::mem::take(&mut *self.pending());
        disk.set_budget(self.budget().saved());
        if pending.over_budget > 0 {
            tracing::debug!(stream = %self.stream, records = pending.over_budget, "dropped records over the day's budget");
            // Counted in memory even if the disk cannot take the count
            // now: the records that wait must still be written.
            if let Err(error) =
                disk.over_budget(pending.over_budget, pending.over_budget_by_priority)
            {
                tracing::warn!(stream = %self.stream, error = %error, "could not save the spool's counts; saved with the next write");
            }
        }
        if pending.count == 0 {
            return disk.save(stopping);
        }
        let written_from = disk.next_seq();
        match disk.append(&pending.lines, pending.count) {
            Ok(()) => disk.save(stopping),
            Err(error) => {
                let lost = pending.count - (disk.next_seq() - written_from);
                tracing::error!(stream = %self.stream, records = lost, error = %error, "could not write telemetry to the spool (is its disk full?); those records are dropped and counted");
                Ok(())
            }
        }
    }

    /// The next batch to send: the records from the acknowledged position
    /// on, or `None` if all were sent. Its records are held back from the
    /// bound until answered ([`Spool::ack`]) or given up ([`Spool::unsent`]),
    /// so that none is both delivered and counted as dropped.
    pub fn next_batch(&self) -> io::Result<Option<TelemetryBatch>> {
        let mut disk = self.disk();
        loop {
            let from = disk.acked();
            let read = disk.read(from, BATCH_RECORDS, BATCH_BYTES)?;
            if read.lines.is_empty() {
                return Ok(None);
            }
            let records = match self.records(&read.lines) {
                Ok(records) => records,
                // Only damage to the disk makes a record unreadable: the
                // batch ends before it, or it is skipped.
                Err(0) => {
                    tracing::error!(stream = %self.stream, seq = read.first_seq, "skipping an unreadable record in the spool");
                    disk.ack(read.first_seq + 1)?;
                    continue;
                }
                Err(bad) => self
                    .records(&read.lines[..bad])
                    .unwrap_or(match self.stream {
                        Stream::Metrics => Records::Metrics(Vec::new()),
                        Stream::Logs => Records::Logs(Vec::new()),
                    }),
            };
            let batch = TelemetryBatch {
                spool_id: disk.spool_id().to_owned(),
                first_seq: read.first_seq,
                records,
                dropped: disk.dropped().clone(),
                // The sender knows.
                replay: false,
                usage: Vec::new(),
            };
            disk.sent(batch.end_seq());
            return Ok(Some(batch));
        }
    }

    /// A batch of no records that carries the drop counts, when more were
    /// dropped (a full disk, the spool's bound) than `reported` (the counts
    /// of the last batch tetherd stored) says: drops that no record
    /// followed reach tetherd this way. Records the day's budget held back
    /// wait for the next batch: the budget is there to keep bytes off the
    /// link.
    pub fn counts_batch(&self, reported: &Dropped) -> Option<TelemetryBatch> {
        let disk = self.disk();
        (disk.dropped().total != reported.total).then(|| TelemetryBatch {
            spool_id: disk.spool_id().to_owned(),
            first_seq: disk.acked(),
            records: match self.stream {
                Stream::Metrics => Records::Metrics(Vec::new()),
                Stream::Logs => Records::Logs(Vec::new()),
            },
            dropped: disk.dropped().clone(),
            replay: false,
            usage: Vec::new(),
        })
    }

    fn records(&self, lines: &[Vec<u8>]) -> Result<Records, usize> {
        match self.stream {
            Stream::Metrics => parse(lines).map(Records::Metrics),
            Stream::Logs => parse(lines).map(Records::Logs),
        }
    }

    /// tetherd stored every record before `seq`.
    pub fn ack(&self, seq: u64) -> io::Result<()> {
        self.disk().ack(seq)
    }

    /// The batch last read will not be answered: its records are no longer
    /// held back from the bound.
    pub fn unsent(&self) -> io::Result<()> {
        self.disk().unsent()
    }

    /// The acknowledged position, the next sequence number and the totals
    /// dropped: what the spool holds.
    pub fn position(&self) -> (u64, u64, Dropped) {
        let disk = self.disk();
        (disk.acked(), disk.next_seq(), disk.dropped().clone())
    }

    /// What a batch cost on the wire, against the day's budget and in the
    /// agent's counts: every send counts, a batch sent again too.
    pub fn sent(&self, batch: &TelemetryBatch, wire_bytes: usize) {
        self.shared.usage.sent(self.stream.into(), wire_bytes);
        if batch.replay {
            self.shared.usage.sent(Feature::SpoolReplay, wire_bytes);
        }
        let mut budget = self.budget();
        if budget.limit().is_some() {
            let json = serde_json::to_vec(batch).map_or(0, |json| json.len());
            budget.sent(self.shared.clock.now(), json, wire_bytes);
        }
    }

    /// How long a backlog's batch of `wire_bytes` must wait for the
    /// `spoolReplay` budget, or `None` if it may go now.
    pub fn replay_delay(&self, wire_bytes: usize) -> Option<Duration> {
        self.shared
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delay(self.shared.clock.now(), wire_bytes)
    }

    /// The agent's counts of every feature, for a batch.
    pub fn usage_report(&self) -> Vec<FeatureBytes> {
        self.shared.usage.report()
    }

    /// Waits until a flush wrote records.
    pub async fn flushed(&self) {
        self.flushed.notified().await;
    }
}

/// The records of `lines`, or the index of the first unreadable one.
fn parse<T: serde::de::DeserializeOwned>(lines: &[Vec<u8>]) -> Result<Vec<T>, usize> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| serde_json::from_slice(line).map_err(|_| i))
        .collect()
}

/// Both streams' spools.
#[derive(Debug)]
pub struct Spools {
    metrics: Arc<Spool>,
    logs: Arc<Spool>,
    shared: Arc<Shared>,
    flush_due: Arc<Notify>,
    flush_interval: Duration,
}

impl Spools {
    /// Opens (or creates) the spools under `state_dir`.
    pub fn open(
        state_dir: &Path,
        config: SpoolConfig,
        clock: Arc<ServerClock>,
    ) -> Result<Arc<Self>, DiskError> {
        let flush_due = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            usage: Arc::new(Usage::open(&state_dir.join(SPOOL_DIR))),
            replay: Mutex::new(DailyBudget::new(None)),
            clock,
        });
        let open = |stream: Stream| -> Result<Arc<Spool>, DiskError> {
            let disk = Disk::open(
                &state_dir.join(SPOOL_DIR).join(stream.as_str()),
                stream,
                config.max_bytes / 2,
            )?;
            Ok(Arc::new(Spool {
                stream,
                pending: Mutex::default(),
                budget: Mutex::new(DailyBudget::restored(disk.budget())),
                disk: Mutex::new(disk),
                flush_records: config.flush_records.max(1),
                flush_due: flush_due.clone(),
                flushed: Notify::new(),
                fast_until: Mutex::new(None),
                shared: shared.clone(),
            }))
        };
        Ok(Arc::new(Self {
            metrics: open(Stream::Metrics)?,
            logs: open(Stream::Logs)?,
            shared,
            flush_due,
            flush_interval: config.flush_interval,
        }))
    }

    /// The spec's `budgets`: the streams' drop records, `spoolReplay`
    /// slows their backlogs, `actions` warns.
    pub fn set_budgets(&self, budgets: &Budgets) {
        self.metrics.budget().set_limit(budgets.metrics);
        self.logs.budget().set_limit(budgets.logs);
        self.shared
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_limit(budgets.spool_replay);
        self.shared.usage.set_actions_budget(budgets.actions);
    }

    /// The agent's own counts of bytes per feature.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.shared.usage
    }

    pub fn spool(&self, stream: Stream) -> &Arc<Spool> {
        match stream {
            Stream::Metrics => &self.metrics,
            Stream::Logs => &self.logs,
        }
    }

    /// Queues a record for tetherd. A log message longer than tetherd takes
    /// is cut, and says so.
    pub fn append(&self, record: Record) -> Result<(), AppendError> {
        let (record, priority) = match record {
            Record::Log(mut log) => {
                if log.priority > MAX_PRIORITY {
                    return Err(AppendError::Priority(log.priority));
                }
                cut(&mut log.message);
                let priority = log.priority;
                (Record::Log(log), Some(priority))
            }
            metric => (metric, None),
        };
        let line = match &record {
            Record::Log(log) => serde_json::to_vec(log),
            Record::Metric(metric) => serde_json::to_vec(metric),
        }
        .unwrap_or_default();
        if line.len() > MAX_RECORD_BYTES {
            return Err(AppendError::TooLarge(line.len()));
        }
        self.spool(record.stream()).append(line, priority);
        Ok(())
    }

    /// Writes both spools' pending records now, and the counts that are
    /// due.
    pub fn flush(&self) {
        self.flush_all(false);
    }

    /// At a clean stop: writes everything that waits, every count too.
    pub fn close(&self) {
        self.flush_all(true);
    }

    fn flush_all(&self, stopping: bool) {
        for spool in [&self.metrics, &self.logs] {
            if let Err(error) = spool.flush(stopping) {
                tracing::error!(stream = %spool.stream, error = %error, "could not save the telemetry spool");
            }
        }
        self.shared.usage.save(stopping);
    }

    /// Flushes on the interval, or earlier when enough records wait, off
    /// the async thread. Runs until dropped.
    pub async fn run_flusher(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.flush_interval) => {}
                () = self.flush_due.notified() => {}
            }
            let spools = self.clone();
            if tokio::task::spawn_blocking(move || spools.flush())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Cuts `message` to what tetherd takes, at a character boundary.
fn cut(message: &mut String) {
    const MARK: &str = "…[cut]";
    if message.len() <= MAX_LOG_MESSAGE_BYTES {
        return;
    }
    let mut end = MAX_LOG_MESSAGE_BYTES - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MARK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tether_proto::telemetry::CustomMetric;

    fn log(i: usize) -> Record {
        Record::Log(LogRecord {
            at: Utc::now(),
            priority: (i % 8) as u8,
            unit: "app".into(),
            message: format!("line {i}"),
            fields: Default::default(),
        })
    }

    fn config() -> SpoolConfig {
        SpoolConfig {
            max_bytes: 1 << 20,
            flush_records: 10,
            flush_interval: Duration::from_secs(3600),
        }
    }

    /// A device clock a day ahead of tetherd's: the budget counts
    /// tetherd's day (ADR 0015), not a day of its own that would start a
    /// second allowance when the clock is set right, or an hour back.
    #[test]
    fn budgets_count_tetherd_s_days_whatever_the_device_clock_says() {
        let temp = tempfile::tempdir().expect("temp");
        let clock = ServerClock::new();
        let now = Utc::now();
        clock.learn(now - chrono::Duration::days(1), now, now);
        let spools = Spools::open(temp.path(), config(), clock.clone()).expect("opens");
        spools.set_budgets(&Budgets {
            logs: Some(48_000),
            ..Budgets::default()
        });
        for i in 0..100 {
            spools.append(log(i)).expect("appends");
        }
        let spent = spools.logs.budget().saved().expect("counted");
        assert_eq!(spent.day, (now - chrono::Duration::days(1)).date_naive());
        let filled = spent.filled_at - (now - chrono::Duration::days(1));
        assert!(filled.num_seconds().abs() < 60, "{spent:?}");
    }

    #[test]
    fn appended_records_reach_a_batch_only_once_flushed_and_leave_it_once_acknowledged() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        for i in 0..25 {
            spools.append(log(i)).expect("appends");
        }
        let logs = spools.spool(Stream::Logs);
        assert!(
            logs.next_batch().expect("reads").is_none(),
            "nothing flushed yet"
        );
        spools.flush();
        let batch = logs.next_batch().expect("reads").expect("a batch");
        assert_eq!((batch.first_seq, batch.records.len()), (0, 25));
        let Records::Logs(records) = &batch.records else {
            panic!("logs expected");
        };
        assert_eq!(records[24].message, "line 24");
        logs.ack(batch.end_seq()).expect("acks");
        assert!(logs.next_batch().expect("reads").is_none());
        assert!(
            spools
                .spool(Stream::Metrics)
                .next_batch()
                .expect("reads")
                .is_none(),
            "the streams are apart"
        );
    }

    #[test]
    fn bad_records_are_refused_and_long_messages_cut() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        let Record::Log(mut bad) = log(0) else {
            unreachable!()
        };
        bad.priority = 9;
        assert!(matches!(
            spools.append(Record::Log(bad.clone())),
            Err(AppendError::Priority(9))
        ));
        bad.priority = 3;
        bad.message = "é".repeat(MAX_LOG_MESSAGE_BYTES);
        spools.append(Record::Log(bad)).expect("cut, not refused");
        let huge = Record::Metric(MetricRecord::Custom(CustomMetric {
            name: "x".into(),
            value: 1.0,
            labels: (0..2000)
                .map(|i| (format!("label{i}"), "v".repeat(20)))
                .collect(),
            at: Utc::now(),
        }));
        assert!(matches!(spools.append(huge), Err(AppendError::TooLarge(_))));
        spools.flush();
        let batch = spools
            .spool(Stream::Logs)
            .next_batch()
            .expect("reads")
            .expect("one");
        let Records::Logs(records) = batch.records else {
            panic!("logs expected");
        };
        assert!(records[0].message.len() <= MAX_LOG_MESSAGE_BYTES);
        assert!(records[0].message.ends_with("[cut]"));
        tether_proto::telemetry::check(&TelemetryBatch {
            records: Records::Logs(records),
            ..batch
        })
        .expect("tetherd takes it");
    }

    #[tokio::test]
    async fn a_hastened_spool_flushes_each_record_at_once_until_its_time_is_up() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        let logs = spools.spool(Stream::Logs).clone();
        let flusher = tokio::spawn(spools.clone().run_flusher());
        logs.hasten(Some(Instant::now() + Duration::from_secs(60)));
        spools.append(log(1)).expect("appends");
        tokio::time::timeout(Duration::from_secs(5), logs.flushed())
            .await
            .expect("flushed at once, not after the hour-long interval");
        assert_eq!(
            logs.next_batch()
                .expect("reads")
                .expect("one")
                .records
                .len(),
            1
        );
        logs.hasten(Some(Instant::now()));
        spools.append(log(2)).expect("appends");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), logs.flushed())
                .await
                .is_err(),
            "back to the normal cadence"
        );
        flusher.abort();
    }

    #[test]
    fn batches_stay_within_what_tetherd_takes() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        for i in 0..3000 {
            spools.append(log(i)).expect("appends");
        }
        spools.flush();
        let logs = spools.spool(Stream::Logs);
        let mut next = 0;
        while let Some(batch) = logs.next_batch().expect("reads") {
            assert_eq!(batch.first_seq, next, "consecutive");
            let wire = tether_proto::telemetry::encode(&batch);
            assert_eq!(
                tether_proto::telemetry::decode(&wire).expect("valid"),
                batch
            );
            next = batch.end_seq();
            logs.ack(next).expect("acks");
        }
        assert_eq!(next, 3000);
    }

    /// A restart mid-day keeps counting against the same day's budget:
    /// what the first run spent is not spent again by the second.
    #[test]
    fn a_restart_keeps_counting_against_the_same_day_s_budget() {
        let temp = tempfile::tempdir().expect("temp");
        let budgets = Budgets {
            logs: Some(3_000),
            ..Budgets::default()
        };
        // Errors go until the day's cap whatever the bucket holds.
        let error = |i: usize| {
            let Record::Log(mut record) = log(i) else {
                unreachable!()
            };
            record.priority = 3;
            Record::Log(record)
        };
        let run = |from: usize| {
            let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
            spools.set_budgets(&budgets);
            for i in from..from + 500 {
                spools.append(error(i)).expect("appends");
            }
            spools.close();
            let (_, next_seq, dropped) = spools.spool(Stream::Logs).position();
            (next_seq, dropped.over_budget)
        };
        let (first_admitted, first_dropped) = run(0);
        assert!(
            first_admitted > 0 && first_dropped > 0,
            "the cap was reached"
        );
        let saved = std::fs::read_to_string(temp.path().join(SPOOL_DIR).join("logs/meta.json"))
            .expect("meta");
        assert!(saved.contains("\"budget\""), "{saved}");
        let (admitted, dropped) = run(500);
        // Without the saved counts another ~100 would go. The bytes the
        // first run left may still take one line (timestamps vary in
        // length), no more.
        assert!(
            admitted - first_admitted <= 1 && dropped - first_dropped >= 499,
            "the same day's cap holds after the restart: {first_admitted} then {admitted} went"
        );
    }

    #[test]
    fn records_over_budget_are_counted_apart_from_a_full_spool_s() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        spools.set_budgets(&Budgets {
            logs: Some(0),
            ..Budgets::default()
        });
        for i in 0..16 {
            spools.append(log(i)).expect("appends");
        }
        spools.flush();
        let logs = spools.spool(Stream::Logs);
        assert!(logs.next_batch().expect("reads").is_none(), "none went");
        let (_, _, dropped) = logs.position();
        assert_eq!((dropped.total, dropped.over_budget), (0, 16));
        assert_eq!(dropped.over_budget_by_priority, [2; 8]);
        // The count survives a restart, and rides on the next batch. The
        // agent applies its spec at start: this one has no budget.
        drop(spools);
        let spools = Spools::open(temp.path(), config(), ServerClock::new()).expect("opens");
        spools.set_budgets(&Budgets::default());
        spools.append(log(3)).expect("appends");
        spools.flush();
        let batch = spools
            .spool(Stream::Logs)
            .next_batch()
            .expect("reads")
            .expect("one");
        assert_eq!(batch.dropped.over_budget, 16);
    }
}
