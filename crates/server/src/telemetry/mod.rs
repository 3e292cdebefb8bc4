//! Telemetry batches from the devices' spools: metrics and log records,
//! each batch stored exactly once, in one transaction with its spool's
//! cursor (see [`cursor`] for which records of a batch are new); batches
//! of several devices share a transaction when they arrive together
//! (ADR 0014, amendment).

pub mod cursor;
pub mod usage;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::telemetry::{LogRecord, MetricRecord, Records, Stream, TelemetryBatch};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::cluster::bus::{Bus, Channel};
use crate::metrics::series::DevicePoints;
use crate::observability::Observability;
use crate::store::{CursorUpdate, SpoolRef, Store, StoreError, TelemetryTx};
use cursor::Verdict;

/// Batches one transaction stores at most, and records in them: enough
/// that the per-transaction work (locking, commit, the statements'
/// round trips) is shared by several devices, few enough that a batch
/// waits little for the others and that a transaction's pages stay in
/// SQLite's page cache (2 MiB; groups of 20,000 log lines made log ingest
/// about 10 % slower than a transaction per batch, 5,000 faster:
/// `BENCHMARKS.md`).
const GROUP_BATCHES: usize = 32;
const GROUP_RECORDS: usize = 5_000;

/// Batches waiting for a writer; a device whose batch finds the queue full
/// waits (its batch is not acknowledged meanwhile).
const QUEUE: usize = 256;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// New records stored (`records`), after `gap` numbers never received.
    New { records: u64, gap: u64 },
    /// Stored before: acknowledged, nothing stored.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The store failed the batch, or the transaction it shared with other
    /// devices' batches.
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("every store write slot stayed busy for {} s", .0.as_secs())]
    Busy(Duration),
    #[error("tetherd is shutting down")]
    Stopped,
}

impl From<StoreError> for TelemetryError {
    fn from(error: StoreError) -> Self {
        Self::Store(Arc::new(error))
    }
}

/// Stores devices' telemetry batches, several devices' batches in one
/// transaction (group commit). A batch is answered only after the
/// transaction that stored it, with its spool's cursor, committed, so a
/// device's acknowledgement still means its records are durable, and a
/// batch sent again meets the cursor that stored it (ADR 0012).
pub struct Telemetry {
    queue: mpsc::Sender<Job>,
    /// How far ahead of tetherd's clock a record may be dated (the
    /// ingest's `max_clock_ahead`); later ones are dated when received.
    max_ahead: chrono::Duration,
}

/// What a device's telemetry may do (from `[ingest]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records dated more than this after their arrival are dated when
    /// received.
    pub max_ahead: Duration,
    /// Metric series a device may create; points of new ones beyond are
    /// refused and counted (`ingest.max_series_per_device`).
    pub max_series: u64,
}

struct Job {
    device: DeviceId,
    /// The batch as stored: its records dated too far ahead dated when
    /// received ([`dated_by_now`]).
    batch: Arc<TelemetryBatch>,
    /// Some of its records were so dated.
    redated: bool,
    /// A metrics batch's points and where each record's begin.
    points: Option<(DevicePoints, Vec<usize>)>,
    wire_bytes: usize,
    done: oneshot::Sender<Result<Stored, TelemetryError>>,
}

/// What a writer needs; writers share one queue.
struct Writer {
    store: Store,
    observability: Arc<Observability>,
    /// Announces stored log lines to live followers (`crate::logs`).
    bus: Bus,
    /// Shared with the other device-driven writes (`crate::ingest`).
    write_slots: Arc<Semaphore>,
    slot_wait: Duration,
    queue: Mutex<mpsc::Receiver<Job>>,
    /// How many writers share the queue.
    writers: usize,
    max_series: u64,
}

/// Field of a log record dated when tetherd received it: the time its
/// device gave it, too far ahead of tetherd's clock.
pub const DEVICE_AT_FIELD: &str = "deviceAt";

impl Telemetry {
    /// Starts `writers` writers, each holding one of `write_slots` (waiting
    /// at most `slot_wait` for it) while it stores a group.
    pub fn new(
        store: Store,
        observability: Arc<Observability>,
        bus: Bus,
        limits: Limits,
        write_slots: Arc<Semaphore>,
        slot_wait: Duration,
        writers: usize,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let writers = writers.max(1);
        let writer = Arc::new(Writer {
            store,
            observability,
            bus,
            write_slots,
            slot_wait,
            queue: Mutex::new(receiver),
            writers,
            max_series: limits.max_series,
        });
        for _ in 0..writers {
            tokio::spawn(writer.clone().run());
        }
        Self {
            queue,
            max_ahead: chrono::Duration::from_std(limits.max_ahead)
                .unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Stores `batch` of `device`, which came as `wire_bytes` bytes;
    /// returns once it is committed.
    pub async fn ingest(
        &self,
        device: &DeviceId,
        batch: Arc<TelemetryBatch>,
        wire_bytes: usize,
    ) -> Result<Stored, TelemetryError> {
        let received = Utc::now();
        let latest = received
            .checked_add_signed(self.max_ahead)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let dated = dated_by_now(&batch.records, received, latest);
        let redated = matches!(dated, Cow::Owned(_));
        let records = match (without_nul(&dated), dated) {
            (Some(records), _) | (None, Cow::Owned(records)) => Some(records),
            (None, Cow::Borrowed(_)) => None,
        };
        let batch = match records {
            Some(records) => Arc::new(TelemetryBatch {
                records,
                ..TelemetryBatch::clone(&batch)
            }),
            None => batch,
        };
        // Flattened here, on the device's task, so devices do it in parallel.
        let points = prepare(device, &batch);
        let (done, answer) = oneshot::channel();
        let job = Job {
            device: device.clone(),
            batch,
            redated,
            points,
            wire_bytes,
            done,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| TelemetryError::Stopped)?;
        answer.await.map_err(|_| TelemetryError::Stopped)?
    }
}

/// A metrics batch's points, ready to store, and where each record's begin.
fn prepare(device: &DeviceId, batch: &TelemetryBatch) -> Option<(DevicePoints, Vec<usize>)> {
    match &batch.records {
        Records::Metrics(records) => {
            let (points, starts) = crate::metrics::flatten::points(records);
            Some((DevicePoints::new(device, &points), starts))
        }
        Records::Logs(_) => None,
    }
}

/// What one batch changes, decided inside its transaction.
struct Outcome {
    update: CursorUpdate,
    stored: Stored,
}

impl Writer {
    async fn run(self: Arc<Self>) {
        while let Some(jobs) = self.next_group().await {
            self.store_group(jobs).await;
        }
    }

    /// The next batch and those queued behind it, up to a group's size
    /// and to this writer's share of the queue: the other writers take
    /// the rest, and their transactions run beside this one.
    async fn next_group(&self) -> Option<Vec<Job>> {
        let mut queue = self.queue.lock().await;
        let first = queue.recv().await?;
        let share = (queue.len() + 1).div_ceil(self.writers).min(GROUP_BATCHES);
        let mut records = first.batch.records.len();
        let mut jobs = vec![first];
        while jobs.len() < share && records < GROUP_RECORDS {
            let Ok(job) = queue.try_recv() else { break };
            records += job.batch.records.len();
            jobs.push(job);
        }
        Some(jobs)
    }

    async fn store_group(&self, mut jobs: Vec<Job>) {
        let slot = tokio::time::timeout(self.slot_wait, self.write_slots.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            for job in jobs {
                let _ = job.done.send(Err(TelemetryError::Busy(self.slot_wait)));
            }
            return;
        };
        // One order for every transaction: two that hold batches of the
        // same spools lock their cursors alike.
        jobs.sort_by(|a, b| {
            (&a.device, a.batch.stream().as_str(), &a.batch.spool_id).cmp(&(
                &b.device,
                b.batch.stream().as_str(),
                &b.batch.spool_id,
            ))
        });
        let now = Utc::now();
        match self.store(&jobs, now).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    self.stored(job, outcome);
                }
            }
            // A batch the store refuses (its device deleted, a number it
            // cannot hold, a value the database rejects that nobody
            // foresaw) fails the whole transaction: each batch is then
            // stored alone, so only that one is refused and a hostile
            // device cannot hold the others' batches back.
            Err(error) if jobs.len() > 1 && may_be_one_batchs(&error) => {
                for job in jobs {
                    match self.store(std::slice::from_ref(&job), now).await {
                        Ok(mut outcome) => self.stored(job, outcome.remove(0)),
                        Err(error) => {
                            let _ = job.done.send(Err(error.into()));
                        }
                    }
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for job in jobs {
                    let _ = job.done.send(Err(TelemetryError::Store(error.clone())));
                }
            }
        }
    }

    /// Stores `jobs` in one transaction, each after its own cursor.
    async fn store(&self, jobs: &[Job], now: DateTime<Utc>) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.store.begin_telemetry().await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut points = Vec::new();
        for job in jobs {
            let outcome = store_batch(&mut tx, job, now, &mut points).await?;
            outcomes.push(outcome);
        }
        let refused = tx.insert_points(&points, now, self.max_series).await?;
        tx.commit().await?;
        for refused in refused {
            tracing::warn!(device = %refused.device, series = refused.series, points = refused.points, max_series = self.max_series, "new metric series refused: the device has as many as it may (ingest.max_series_per_device); their points are not stored");
        }
        Ok(outcomes)
    }

    /// Answers a committed batch's device and counts it.
    fn stored(&self, job: Job, outcome: Outcome) {
        let stream = job.batch.stream();
        if stream == Stream::Logs && outcome.update.stored > 0 {
            self.bus.publish(Channel::LogsStored, [job.device.as_str()]);
        }
        self.observability.telemetry_received(
            stream,
            outcome.update.wire_bytes,
            outcome.update.stored,
            outcome.update.duplicates,
        );
        let _ = job.done.send(Ok(outcome.stored));
    }
}

/// Whether `error` may come from one batch of a group: anything but a
/// database that cannot be reached (or tetherd stopping), after which
/// storing the batches one by one would only fail as many times.
fn may_be_one_batchs(error: &StoreError) -> bool {
    !error.is_unavailable() && !matches!(error, StoreError::ShuttingDown)
}

/// Takes `job`'s cursor, stores its new log records, or its host samples
/// and adds its new points to `points` (stored for the whole group after
/// the last batch), and moves the cursor.
async fn store_batch<'a>(
    tx: &mut TelemetryTx,
    job: &'a Job,
    now: DateTime<Utc>,
    points: &mut Vec<(&'a DevicePoints, usize)>,
) -> Result<Outcome, StoreError> {
    let batch = &job.batch;
    let spool = SpoolRef {
        device: &job.device,
        stream: batch.stream(),
        spool_id: &batch.spool_id,
    };
    let count = batch.records.len() as u64;
    let taken = tx.take_cursor(spool, batch.first_seq, now).await?;
    if taken.new_spool {
        let retired = tx.retire_spools(spool, cursor::MAX_SPOOLS, now).await?;
        if retired > 0 {
            tracing::info!(device = %job.device, stream = %spool.stream, spool = batch.spool_id, retired, "a new spool: the device's least recently used ones folded into its usage");
        }
    }
    let (update, stored) = match cursor::judge(Some(taken.next_seq), batch.first_seq, count) {
        Verdict::Duplicate => (
            CursorUpdate {
                next_seq: taken.next_seq,
                gap: 0,
                stored: 0,
                duplicates: count,
                wire_bytes: job.wire_bytes as u64,
                replay: batch.replay,
                dropped: batch.dropped.clone(),
                agent_usage: batch.usage.clone(),
            },
            Stored::Duplicate,
        ),
        Verdict::Store {
            skip,
            gap,
            next_seq,
        } => {
            let from = usize::try_from(skip).unwrap_or(usize::MAX);
            if job.redated {
                tracing::info!(device = %job.device, stream = %spool.stream, spool = batch.spool_id, "telemetry records dated too far ahead of tetherd's clock; dated when received");
            }
            match &batch.records {
                Records::Logs(logs) => {
                    tx.insert_logs(
                        &job.device,
                        batch.first_seq + skip,
                        logs.get(from..).unwrap_or(&[]),
                    )
                    .await?;
                }
                Records::Metrics(metrics) => {
                    tx.insert_metrics(&job.device, metrics.get(from..).unwrap_or(&[]))
                        .await?;
                    if let Some((device_points, starts)) = &job.points {
                        let first_row = starts.get(from).copied().unwrap_or(usize::MAX);
                        points.push((device_points, first_row));
                    }
                }
            }
            if gap > 0 {
                tracing::info!(device = %job.device, stream = %spool.stream, spool = batch.spool_id, gap, first_seq = batch.first_seq, "telemetry batch after a gap; the numbers between never arrived");
            }
            (
                CursorUpdate {
                    next_seq,
                    gap,
                    stored: count - skip,
                    duplicates: skip,
                    wire_bytes: job.wire_bytes as u64,
                    replay: batch.replay,
                    dropped: batch.dropped.clone(),
                    agent_usage: batch.usage.clone(),
                },
                Stored::New {
                    records: count - skip,
                    gap,
                },
            )
        }
    };
    tx.move_cursor(spool, taken.next_seq, &update, now).await?;
    Ok(Outcome { update, stored })
}

/// `records`, those dated after `latest` dated `now` instead (a log line
/// keeps its device's time in [`DEVICE_AT_FIELD`]): retention goes by
/// these times, so a record dated years ahead would never be pruned, and
/// a metric sample so dated would stay its series' newest.
fn dated_by_now(records: &Records, now: DateTime<Utc>, latest: DateTime<Utc>) -> Cow<'_, Records> {
    let ahead = |at: DateTime<Utc>| at > latest;
    let any_ahead = match records {
        Records::Logs(logs) => logs.iter().any(|log| ahead(log.at)),
        Records::Metrics(metrics) => metrics.iter().any(|metric| ahead(metric.at())),
    };
    if !any_ahead {
        return Cow::Borrowed(records);
    }
    let mut records = records.clone();
    match &mut records {
        Records::Logs(logs) => {
            for log in logs.iter_mut().filter(|log| ahead(log.at)) {
                log.fields
                    .insert(DEVICE_AT_FIELD.to_owned(), log.at.to_rfc3339());
                log.at = now;
            }
        }
        Records::Metrics(metrics) => {
            for metric in metrics.iter_mut().filter(|metric| ahead(metric.at())) {
                match metric {
                    MetricRecord::Host(sample) => sample.sampled_at = now,
                    MetricRecord::Custom(custom) => custom.at = now,
                    MetricRecord::Sample(sample) => sample.at = now,
                }
            }
        }
    }
    Cow::Owned(records)
}

/// `records` with each NUL character of a log line's message and unit
/// made U+FFFD, if any: PostgreSQL's text cannot hold NUL, and a line
/// with one would fail its batch's transaction (and the other devices'
/// batches in it) on every retry, holding the device's stream for good.
/// A local program may well write one to syslog; the line is kept.
/// (Fields are stored as JSON, where NUL is escaped.)
fn without_nul(records: &Records) -> Option<Records> {
    let Records::Logs(logs) = records else {
        return None;
    };
    let has_nul = |log: &LogRecord| log.message.contains('\0') || log.unit.contains('\0');
    if !logs.iter().any(has_nul) {
        return None;
    }
    let mut logs = logs.clone();
    for log in logs.iter_mut().filter(|log| has_nul(log)) {
        log.message = log.message.replace('\0', "\u{fffd}");
        log.unit = log.unit.replace('\0', "\u{fffd}");
    }
    Some(Records::Logs(logs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tether_proto::telemetry::{
        CustomMetric, Dropped, Feature, FeatureBytes, LogRecord, MetricRecord, Stream,
        TelemetryBatch,
    };

    #[test]
    fn a_group_is_stored_batch_by_batch_after_any_failure_but_an_unreachable_database() {
        let query = |source| StoreError::Query {
            context: "store telemetry",
            source,
        };
        for one_batchs in [
            StoreError::NotFound {
                what: "device edge-1".into(),
            },
            StoreError::TooLarge {
                what: "a sequence number",
                value: u64::MAX,
            },
            // What nobody foresaw, e.g. a value the database rejects.
            query(sqlx::Error::Protocol("invalid byte sequence".into())),
        ] {
            assert!(may_be_one_batchs(&one_batchs), "{one_batchs}");
        }
        for everyones in [
            query(sqlx::Error::PoolTimedOut),
            query(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            StoreError::ShuttingDown,
        ] {
            assert!(!may_be_one_batchs(&everyones), "{everyones}");
        }
    }

    async fn service() -> (Telemetry, Store, DeviceId) {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let device = DeviceId::new("edge-1").expect("valid");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        (
            Telemetry::new(
                store.clone(),
                Arc::default(),
                Bus::in_process(),
                Limits {
                    max_ahead: std::time::Duration::from_secs(300),
                    max_series: 10_000,
                },
                Arc::new(Semaphore::new(1)),
                std::time::Duration::from_secs(5),
                1,
            ),
            store,
            device,
        )
    }

    fn logs(spool: &str, from: u64, to: u64) -> TelemetryBatch {
        let start = Utc::now() - Duration::hours(1);
        TelemetryBatch {
            spool_id: spool.into(),
            first_seq: from,
            records: Records::Logs(
                (from..to)
                    .map(|i| LogRecord {
                        // Several lines share each instant: the spool's order holds.
                        at: start + Duration::milliseconds((i / 3) as i64),
                        priority: (i % 8) as u8,
                        unit: "app".into(),
                        message: format!("{spool} {i}"),
                        fields: Default::default(),
                    })
                    .collect(),
            ),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        }
    }

    async fn messages(store: &Store, device: &DeviceId) -> Vec<String> {
        store
            .list_logs(device, Utc::now() - Duration::days(1), 100_000)
            .await
            .expect("lists")
            .into_iter()
            .map(|log| log.record.message)
            .collect()
    }

    fn expected(spool: &str, range: std::ops::Range<u64>) -> Vec<String> {
        range.map(|i| format!("{spool} {i}")).collect()
    }

    #[tokio::test]
    async fn each_record_is_stored_once_whatever_is_sent_again() {
        let (telemetry, store, device) = service().await;
        let ingest = |batch: TelemetryBatch| {
            let telemetry = &telemetry;
            let device = &device;
            async move {
                telemetry
                    .ingest(device, Arc::new(batch), 100)
                    .await
                    .expect("stored")
            }
        };
        assert_eq!(
            ingest(logs("a", 0, 1000)).await,
            Stored::New {
                records: 1000,
                gap: 0
            }
        );
        let mut replayed = logs("a", 0, 1000);
        replayed.replay = true;
        replayed.usage = vec![FeatureBytes {
            feature: Feature::Logs,
            sent_bytes: 300,
            received_bytes: 0,
        }];
        assert_eq!(ingest(replayed.clone()).await, Stored::Duplicate);
        assert_eq!(ingest(logs("a", 0, 10)).await, Stored::Duplicate);
        // Re-cut after a restart: only the new part.
        assert_eq!(
            ingest(logs("a", 900, 1200)).await,
            Stored::New {
                records: 200,
                gap: 0
            }
        );
        assert_eq!(messages(&store, &device).await, expected("a", 0..1200));

        let usage = store.device_usage(&device).await.expect("usage").streams;
        let logs_usage = usage
            .iter()
            .find(|u| u.stream == Stream::Logs)
            .expect("logs");
        assert_eq!(
            (
                logs_usage.batches,
                logs_usage.stored_records,
                logs_usage.duplicate_records,
                logs_usage.wire_bytes
            ),
            (4, 1200, 1110, 400)
        );
        assert_eq!(logs_usage.replay_bytes, 100, "one batch was a replay");
        let record = store.device_usage(&device).await.expect("usage");
        let (_, reported) = record.agent.expect("the agent's counts");
        assert_eq!(reported, replayed.usage, "kept past batches without any");
    }

    #[tokio::test]
    async fn a_gap_is_passed_over_and_counted() {
        let (telemetry, store, device) = service().await;
        telemetry
            .ingest(&device, Arc::new(logs("a", 0, 10)), 1)
            .await
            .expect("stored");
        let mut after_gap = logs("a", 50, 60);
        after_gap.dropped = Dropped {
            total: 40,
            by_priority: [5, 5, 5, 5, 5, 5, 5, 5],
            over_budget: 3,
            over_budget_by_priority: [0, 0, 0, 0, 0, 0, 1, 2],
        };
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(after_gap.clone()), 1)
                .await
                .expect("stored"),
            Stored::New {
                records: 10,
                gap: 40
            }
        );
        let mut stale = logs("a", 0, 10);
        stale.dropped = Dropped::default();
        telemetry
            .ingest(&device, Arc::new(stale.clone()), 1)
            .await
            .expect("acknowledged");
        let usage = store.device_usage(&device).await.expect("usage").streams;
        let logs_usage = usage
            .iter()
            .find(|u| u.stream == Stream::Logs)
            .expect("logs");
        assert_eq!(logs_usage.gap, 40);
        assert_eq!(
            logs_usage.dropped, after_gap.dropped,
            "an old batch sent late does not lower the dropped totals"
        );
        let mut want = expected("a", 0..10);
        want.extend(expected("a", 50..60));
        assert_eq!(messages(&store, &device).await, want);
    }

    /// A device whose disk filled after its last record sends the new
    /// drop totals in a batch of no records: they are kept, nothing is
    /// stored, and the stream goes on where it was.
    #[tokio::test]
    async fn a_batch_of_counts_alone_updates_the_dropped_totals() {
        let (telemetry, store, device) = service().await;
        telemetry
            .ingest(&device, Arc::new(logs("a", 0, 10)), 1)
            .await
            .expect("stored");
        let mut counts = logs("a", 10, 10);
        counts.dropped.total = 25;
        counts.dropped.by_priority[6] = 25;
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(counts.clone()), 1)
                .await
                .expect("acknowledged"),
            Stored::Duplicate
        );
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(logs("a", 10, 12)), 1)
                .await
                .expect("stored"),
            Stored::New { records: 2, gap: 0 }
        );
        let usage = store.device_usage(&device).await.expect("usage").streams;
        let logs_usage = usage
            .iter()
            .find(|u| u.stream == Stream::Logs)
            .expect("logs");
        assert_eq!(logs_usage.stored_records, 12);
        assert_eq!(logs_usage.dropped.total, 25, "the later batch kept them");
        assert_eq!(messages(&store, &device).await, expected("a", 0..12));
    }

    #[tokio::test]
    async fn a_wiped_spool_starts_over_and_its_old_batches_still_meet_their_cursor() {
        let (telemetry, store, device) = service().await;
        telemetry
            .ingest(&device, Arc::new(logs("old", 0, 100)), 1)
            .await
            .expect("stored");
        // The device lost its state: a new spool numbers from 0 again.
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(logs("new", 0, 50)), 1)
                .await
                .expect("stored"),
            Stored::New {
                records: 50,
                gap: 0
            }
        );
        // A late copy of the old spool's batch is not stored again ...
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(logs("old", 0, 100)), 1)
                .await
                .expect("acknowledged"),
            Stored::Duplicate
        );
        // ... while its records not seen before are.
        assert_eq!(
            telemetry
                .ingest(&device, Arc::new(logs("old", 100, 110)), 1)
                .await
                .expect("stored"),
            Stored::New {
                records: 10,
                gap: 0
            }
        );
        let stored = messages(&store, &device).await;
        assert_eq!(stored.len(), 160);
        let usage = store.device_usage(&device).await.expect("usage").streams;
        assert_eq!(
            usage
                .iter()
                .find(|u| u.stream == Stream::Logs)
                .expect("logs")
                .spools,
            2
        );
    }

    #[tokio::test]
    async fn metrics_batches_fill_the_metrics_tables() {
        let (telemetry, store, device) = service().await;
        let at = Utc::now() - Duration::minutes(5);
        let batch = TelemetryBatch {
            spool_id: "m".into(),
            first_seq: 0,
            records: Records::Metrics(vec![
                MetricRecord::Host(tether_proto::metrics::HostMetrics {
                    sampled_at: at,
                    cpu_percent: 12.5,
                    memory_used_bytes: 1,
                    memory_total_bytes: 2,
                    disk_used_bytes: 3,
                    disk_total_bytes: 4,
                    network_rx_bytes: 5,
                    network_tx_bytes: 6,
                }),
                MetricRecord::Custom(CustomMetric {
                    name: "tank_level".into(),
                    value: 0.73,
                    labels: [("tank".to_owned(), "a".to_owned())].into(),
                    at,
                }),
            ]),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        };
        telemetry
            .ingest(&device, Arc::new(batch.clone()), 1)
            .await
            .expect("stored");
        telemetry
            .ingest(&device, Arc::new(batch.clone()), 1)
            .await
            .expect("acknowledged");
        let host = store.list_metrics(&device, 10).await.expect("metrics");
        assert_eq!(host.len(), 1);
        assert_eq!(host[0].cpu_percent, 12.5);
        let custom = store
            .list_series(&device, Some("tank_level"), 10)
            .await
            .expect("custom");
        assert_eq!(custom.len(), 1);
        assert_eq!(custom[0].labels["tank"], "a");
        assert_eq!(points(&store, custom[0].id).await, [(millis(at), 0.73, 1)]);
    }

    /// (start ms, value, count) of each raw point of the series, by time.
    async fn points(store: &Store, series: i64) -> Vec<(i64, f64, u64)> {
        // The window's end is exclusive: a point stored this millisecond
        // must fall inside it.
        let until = Utc::now() + Duration::seconds(1);
        store
            .series_buckets(&[series], 1, 1, Utc::now() - Duration::days(1), until)
            .await
            .expect("points")
            .iter()
            .map(|b| (b.start_ms, b.sum, b.count))
            .collect()
    }

    fn millis(at: chrono::DateTime<Utc>) -> i64 {
        at.timestamp_millis()
    }

    fn custom(
        name: &str,
        labels: &[(&str, &str)],
        at: chrono::DateTime<Utc>,
        value: f64,
    ) -> MetricRecord {
        MetricRecord::Custom(CustomMetric {
            name: name.into(),
            value,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            at,
        })
    }

    fn metrics(first_seq: u64, records: Vec<MetricRecord>) -> TelemetryBatch {
        TelemetryBatch {
            spool_id: "m".into(),
            first_seq,
            records: Records::Metrics(records),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_sample_sent_many_times_is_one_point_and_the_newest_stays_newest() {
        let (telemetry, store, device) = service().await;
        let at = Utc::now() - Duration::minutes(5);
        let earlier = at - Duration::seconds(10);
        // The same instant of a series three times in one batch (labels in
        // another order are the same series), then again in a later
        // batch, and an older point after a newer one.
        let first = metrics(
            0,
            vec![
                custom("flow", &[("a", "1"), ("b", "2")], at, 1.0),
                custom("flow", &[("b", "2"), ("a", "1")], at, 2.0),
                custom("flow", &[("a", "1"), ("b", "2")], at, 3.0),
            ],
        );
        telemetry
            .ingest(&device, Arc::new(first.clone()), 1)
            .await
            .expect("stored");
        let later = metrics(
            3,
            vec![
                custom("flow", &[("a", "1"), ("b", "2")], at, 4.0),
                custom("flow", &[("a", "1"), ("b", "2")], earlier, 5.0),
            ],
        );
        telemetry
            .ingest(&device, Arc::new(later.clone()), 1)
            .await
            .expect("stored");
        let series = store.list_series(&device, None, 10).await.expect("series");
        assert_eq!(series.len(), 1, "{series:?}");
        assert_eq!(series[0].last_at.timestamp_millis(), millis(at));
        assert_eq!(
            points(&store, series[0].id).await,
            [(millis(earlier), 5.0, 1), (millis(at), 1.0, 1)],
            "each instant once, the first value sent kept"
        );
    }

    #[tokio::test]
    async fn a_batch_of_many_series_stores_each_of_them() {
        let (telemetry, store, device) = service().await;
        let at = Utc::now() - Duration::minutes(1);
        let records = (0..2_000)
            .map(|i| custom(&format!("m{i:04}"), &[("k", "v")], at, f64::from(i)))
            .collect();
        telemetry
            .ingest(&device, Arc::new(metrics(0, records)), 1)
            .await
            .expect("stored");
        let series = store
            .list_series(&device, None, 5_000)
            .await
            .expect("series");
        assert_eq!(series.len(), 2_000);
        assert_eq!(series[1_999].name, "m1999");
        assert_eq!(
            points(&store, series[1_999].id).await,
            [(millis(at), 1999.0, 1)]
        );
    }

    /// A writer of its own and a queued job for `batch` of `device`.
    fn job(
        device: &DeviceId,
        batch: TelemetryBatch,
    ) -> (Job, oneshot::Receiver<Result<Stored, TelemetryError>>) {
        let (done, answer) = oneshot::channel();
        let job = Job {
            device: device.clone(),
            points: prepare(device, &batch),
            batch: Arc::new(batch),
            redated: false,
            wire_bytes: 1,
            done,
        };
        (job, answer)
    }

    fn writer(store: &Store) -> Writer {
        Writer {
            store: store.clone(),
            observability: Arc::default(),
            bus: Bus::in_process(),
            write_slots: Arc::new(Semaphore::new(1)),
            slot_wait: std::time::Duration::from_secs(5),
            queue: Mutex::new(mpsc::channel(1).1),
            writers: 1,
            max_series: 10_000,
        }
    }

    #[tokio::test]
    async fn a_group_stores_each_batch_once_and_refuses_only_the_batch_at_fault() {
        let (_telemetry, store, device) = service().await;
        let other = DeviceId::new("edge-2").expect("valid");
        store
            .create_device(&other, &Default::default(), Utc::now())
            .await
            .expect("device");
        let ghost = DeviceId::new("ghost").expect("valid");
        let at = Utc::now() - Duration::minutes(1);
        let (jobs, answers): (Vec<_>, Vec<_>) = [
            job(&device, logs("a", 0, 10)),
            // The same spool again, overlapping: only its new half is stored.
            job(&device, logs("a", 5, 15)),
            job(&ghost, logs("a", 0, 10)),
            job(&other, metrics(0, vec![custom("flow", &[], at, 1.0)])),
        ]
        .into_iter()
        .unzip();
        writer(&store).store_group(jobs).await;
        let mut answers = futures::future::join_all(answers).await.into_iter();
        let mut next = || answers.next().expect("answered").expect("sent");
        assert_eq!(
            next().expect("stored"),
            Stored::New {
                records: 10,
                gap: 0
            }
        );
        assert_eq!(next().expect("stored"), Stored::New { records: 5, gap: 0 });
        let refused = next().expect_err("no such device");
        assert!(refused.to_string().contains("ghost"), "{refused}");
        assert_eq!(next().expect("stored"), Stored::New { records: 1, gap: 0 });
        assert_eq!(messages(&store, &device).await, expected("a", 0..15));
        let series = store.list_series(&other, None, 10).await.expect("series");
        assert_eq!(points(&store, series[0].id).await, [(millis(at), 1.0, 1)]);
    }

    /// A store in a file (so a second connection sees it, unlike
    /// `sqlite::memory:`) with the device `edge-1`; the directory lives as
    /// long as the first value.
    async fn file_store() -> (tempfile::TempDir, String, Store, DeviceId) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("tether.db").display());
        let store = Store::connect(&url).await.expect("store");
        let device = DeviceId::new("edge-1").expect("valid");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        (dir, url, store, device)
    }

    /// Each batch of a group gets its own cursor handling: new spools
    /// beyond [`cursor::MAX_SPOOLS`] fold the oldest within the group's one
    /// transaction, and each batch's replay bytes and agent report reach
    /// its cursor.
    #[tokio::test]
    async fn a_group_of_new_spools_folds_the_oldest_and_counts_each_batch() {
        use sqlx::Connection;
        let (_dir, url, store, device) = file_store().await;
        let spools = u64::from(cursor::MAX_SPOOLS) + 8;
        let (jobs, answers): (Vec<_>, Vec<_>) = (0..spools)
            .map(|i| {
                let mut batch = logs(&format!("s{i:02}"), 0, 2);
                batch.replay = i % 2 == 0;
                if i == spools - 1 {
                    batch.usage = vec![FeatureBytes {
                        feature: Feature::Logs,
                        sent_bytes: 42,
                        received_bytes: 0,
                    }];
                }
                job(&device, batch)
            })
            .unzip();
        writer(&store).store_group(jobs).await;
        for answer in futures::future::join_all(answers).await {
            assert_eq!(
                answer.expect("answered").expect("stored"),
                Stored::New { records: 2, gap: 0 }
            );
        }
        let mut raw = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("second connection");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_cursors")
            .fetch_one(&mut raw)
            .await
            .expect("count");
        assert_eq!(rows, i64::from(cursor::MAX_SPOOLS) + 1, "kept and folded");
        let record = store.device_usage(&device).await.expect("usage");
        let logs_usage = record
            .streams
            .iter()
            .find(|u| u.stream == Stream::Logs)
            .expect("logs");
        assert_eq!(
            (
                logs_usage.spools,
                logs_usage.batches,
                logs_usage.stored_records,
                logs_usage.wire_bytes,
                logs_usage.replay_bytes
            ),
            (spools, spools, 2 * spools, spools, spools / 2)
        );
        let (_, reported) = record.agent.expect("the agent's counts");
        assert_eq!(reported[0].sent_bytes, 42);
        assert_eq!(messages(&store, &device).await.len() as u64, 2 * spools);
    }

    /// A group holding a device's active spool and new spools beside it
    /// (cursors taken in spool-id order, all stamped with the group's
    /// one `now`): the spools folded are the least recently used before
    /// the group, never a spool of the group, whichever side of the
    /// active one the new ids sort; each batch of the group, sent again,
    /// meets its cursor.
    #[tokio::test]
    async fn a_group_with_the_active_spool_and_new_ones_folds_only_older_spools() {
        use sqlx::Connection;
        let (_dir, url, store, device) = file_store().await;
        // The device's 16 spools: 15 old ones and the active one, used in
        // that order.
        let old: Vec<String> = (0..cursor::MAX_SPOOLS - 1)
            .map(|i| format!("old{i:02}"))
            .collect();
        for spool in old.iter().map(String::as_str).chain(["m-active"]) {
            let (job, answer) = job(&device, logs(spool, 0, 1));
            writer(&store).store_group(vec![job]).await;
            answer.await.expect("answered").expect("stored");
        }
        let mut raw = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("second connection");
        for (i, spool) in old
            .iter()
            .map(String::as_str)
            .chain(["m-active"])
            .enumerate()
        {
            sqlx::query("UPDATE telemetry_cursors SET updated_at = ? WHERE spool_id = ?")
                .bind(1_000 + i as i64)
                .bind(spool)
                .execute(&mut raw)
                .await
                .expect("dated");
        }
        let group = || {
            [
                logs("a-new", 0, 1),
                logs("m-active", 1, 2),
                logs("z-new", 0, 1),
            ]
        };
        let (jobs, answers): (Vec<_>, Vec<_>) =
            group().into_iter().map(|b| job(&device, b)).unzip();
        writer(&store).store_group(jobs).await;
        for answer in futures::future::join_all(answers).await {
            assert_eq!(
                answer.expect("answered").expect("stored"),
                Stored::New { records: 1, gap: 0 }
            );
        }
        let kept: Vec<String> = sqlx::query_scalar(
            "SELECT spool_id FROM telemetry_cursors WHERE spool_id <> '' ORDER BY spool_id",
        )
        .fetch_all(&mut raw)
        .await
        .expect("cursors");
        let mut expected: Vec<String> = ["a-new", "m-active", "z-new"]
            .into_iter()
            .map(str::to_owned)
            .chain(old[2..].iter().cloned())
            .collect();
        expected.sort();
        assert_eq!(kept, expected, "old00 and old01 folded");
        // Sent again (their acknowledgements lost), each is a duplicate.
        let (jobs, answers): (Vec<_>, Vec<_>) =
            group().into_iter().map(|b| job(&device, b)).unzip();
        writer(&store).store_group(jobs).await;
        for answer in futures::future::join_all(answers).await {
            assert_eq!(
                answer.expect("answered").expect("acknowledged"),
                Stored::Duplicate
            );
        }
        assert_eq!(messages(&store, &device).await.len(), 16 + 3);
    }

    #[tokio::test]
    async fn a_batch_for_a_device_that_does_not_exist_is_not_found() {
        let (telemetry, _store, _device) = service().await;
        let ghost = DeviceId::new("ghost").expect("valid");
        let err = telemetry
            .ingest(&ghost, Arc::new(logs("a", 0, 1)), 1)
            .await
            .expect_err("no device");
        assert!(
            matches!(&err, TelemetryError::Store(e) if matches!(**e, StoreError::NotFound { .. })),
            "{err}"
        );
    }

    #[tokio::test]
    async fn records_dated_far_ahead_are_dated_when_received_so_retention_reaches_them() {
        let (telemetry, store, device) = service().await;
        let future: DateTime<Utc> = "2999-01-01T00:00:00Z".parse().expect("time");
        let mut batch = logs("a", 0, 3);
        if let Records::Logs(logs) = &mut batch.records {
            logs[1].at = future;
        }
        let before = Utc::now();
        telemetry
            .ingest(&device, Arc::new(batch.clone()), 1)
            .await
            .expect("stored");
        let stored = store
            .list_logs(&device, before - Duration::days(1), 10)
            .await
            .expect("lists");
        assert_eq!(stored.len(), 3);
        let moved = &stored
            .iter()
            .find(|log| log.seq == 1)
            .expect("the line dated ahead")
            .record;
        assert!(
            moved.at > before - Duration::milliseconds(1) && moved.at <= Utc::now(),
            "dated when received, not {}",
            moved.at
        );
        assert_eq!(moved.fields[DEVICE_AT_FIELD], future.to_rfc3339());
        let Records::Logs(sent) = &batch.records else {
            unreachable!()
        };
        assert_eq!(
            (
                stored[0].record.at.timestamp_millis(),
                &stored[0].record.fields
            ),
            (sent[0].at.timestamp_millis(), &sent[0].fields),
            "records within the window kept as sent"
        );

        let metrics = TelemetryBatch {
            spool_id: "m".into(),
            first_seq: 0,
            records: Records::Metrics(vec![MetricRecord::Custom(CustomMetric {
                name: "tank_level".into(),
                value: 1.0,
                labels: Default::default(),
                at: future,
            })]),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        };
        telemetry
            .ingest(&device, Arc::new(metrics), 1)
            .await
            .expect("stored");
        let series = store
            .list_series(&device, Some("tank_level"), 10)
            .await
            .expect("series");
        assert!(series[0].last_at <= Utc::now(), "{}", series[0].last_at);
        let stored = points(&store, series[0].id).await;
        assert_eq!(stored.len(), 1, "the point dated when received: {stored:?}");

        // A day of retention later, nothing the device dated ahead is left.
        store
            .delete_logs_before(Utc::now() + Duration::days(1))
            .await
            .expect("prunes");
        assert!(messages(&store, &device).await.is_empty());
    }
}
