//! Telemetry batches from the devices' spools: metrics and log records,
//! each batch stored exactly once, in one transaction with its spool's
//! cursor (see [`cursor`] for which records of a batch are new).

pub mod cursor;
pub mod usage;

use std::sync::Arc;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::telemetry::{MetricRecord, Records, Stream, TelemetryBatch};

use crate::cluster::bus::{Bus, Channel};
use crate::observability::Observability;
use crate::store::{CursorUpdate, Store, StoreError};
use cursor::Verdict;

/// What became of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// New records stored (`records`), after `gap` numbers never received.
    New { records: u64, gap: u64 },
    /// Stored before: acknowledged, nothing stored.
    Duplicate,
}

pub struct Telemetry {
    store: Store,
    observability: Arc<Observability>,
    /// Announces stored log lines to live followers (`crate::logs`).
    bus: Bus,
    /// How far ahead of tetherd's clock a record may be dated (the
    /// ingest's `max_clock_ahead`); later ones are dated when received.
    max_ahead: chrono::Duration,
}

/// Field of a log record dated when tetherd received it: the time its
/// device gave it, too far ahead of tetherd's clock.
pub const DEVICE_AT_FIELD: &str = "deviceAt";

impl Telemetry {
    pub fn new(
        store: Store,
        observability: Arc<Observability>,
        bus: Bus,
        max_ahead: std::time::Duration,
    ) -> Self {
        Self {
            store,
            observability,
            bus,
            max_ahead: chrono::Duration::from_std(max_ahead).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Stores `batch` of `device`, which came as `wire_bytes` bytes.
    pub async fn ingest(
        &self,
        device: &DeviceId,
        batch: &TelemetryBatch,
        wire_bytes: usize,
    ) -> Result<Stored, StoreError> {
        let stream = batch.stream();
        let count = batch.records.len() as u64;
        let now = Utc::now();
        let mut tx = self
            .store
            .open_cursor(device, stream, &batch.spool_id, batch.first_seq, now)
            .await?;
        if tx.new_spool {
            let retired = tx.retire_spools(cursor::MAX_SPOOLS, now).await?;
            if retired > 0 {
                tracing::info!(%device, %stream, spool = batch.spool_id, retired, "a new spool: the device's least recently used ones folded into its usage");
            }
        }
        let verdict = cursor::judge(Some(tx.next_seq), batch.first_seq, count);
        let (update, stored) = match verdict {
            Verdict::Duplicate => (
                CursorUpdate {
                    next_seq: tx.next_seq,
                    gap: 0,
                    stored: 0,
                    duplicates: count,
                    wire_bytes: wire_bytes as u64,
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
                let latest = now
                    .checked_add_signed(self.max_ahead)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                let records = dated_by_now(&batch.records, now, latest);
                if let Cow::Owned(_) = records {
                    tracing::info!(%device, %stream, spool = batch.spool_id, "telemetry records dated too far ahead of tetherd's clock; dated when received");
                }
                match records.as_ref() {
                    Records::Logs(logs) => {
                        tx.insert_logs(batch.first_seq + skip, logs.get(from..).unwrap_or(&[]))
                            .await?;
                    }
                    Records::Metrics(metrics) => {
                        let new = metrics.get(from..).unwrap_or(&[]);
                        tx.insert_metrics(new).await?;
                        tx.insert_points(&crate::metrics::flatten::points(new), now)
                            .await?;
                    }
                }
                if gap > 0 {
                    tracing::info!(%device, %stream, spool = batch.spool_id, gap, first_seq = batch.first_seq, "telemetry batch after a gap; the numbers between never arrived");
                }
                (
                    CursorUpdate {
                        next_seq,
                        gap,
                        stored: count - skip,
                        duplicates: skip,
                        wire_bytes: wire_bytes as u64,
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
        tx.commit(&update, now).await?;
        if stream == Stream::Logs && update.stored > 0 {
            self.bus.publish(Channel::LogsStored, [device.as_str()]);
        }
        self.observability.telemetry_received(
            stream,
            wire_bytes as u64,
            update.stored,
            update.duplicates,
        );
        Ok(stored)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tether_proto::telemetry::{
        CustomMetric, Dropped, Feature, FeatureBytes, LogRecord, MetricRecord, Stream,
        TelemetryBatch,
    };

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
                std::time::Duration::from_secs(300),
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
            async move { telemetry.ingest(device, &batch, 100).await.expect("stored") }
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
            .ingest(&device, &logs("a", 0, 10), 1)
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
                .ingest(&device, &after_gap, 1)
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
            .ingest(&device, &stale, 1)
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

    #[tokio::test]
    async fn a_wiped_spool_starts_over_and_its_old_batches_still_meet_their_cursor() {
        let (telemetry, store, device) = service().await;
        telemetry
            .ingest(&device, &logs("old", 0, 100), 1)
            .await
            .expect("stored");
        // The device lost its state: a new spool numbers from 0 again.
        assert_eq!(
            telemetry
                .ingest(&device, &logs("new", 0, 50), 1)
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
                .ingest(&device, &logs("old", 0, 100), 1)
                .await
                .expect("acknowledged"),
            Stored::Duplicate
        );
        // ... while its records not seen before are.
        assert_eq!(
            telemetry
                .ingest(&device, &logs("old", 100, 110), 1)
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
        telemetry.ingest(&device, &batch, 1).await.expect("stored");
        telemetry
            .ingest(&device, &batch, 1)
            .await
            .expect("acknowledged");
        let host = store.list_metrics(&device, 10).await.expect("metrics");
        assert_eq!(host.len(), 1);
        assert_eq!(host[0].cpu_percent, 12.5);
        let custom = store
            .list_custom_metrics(&device, 10)
            .await
            .expect("custom");
        assert_eq!(custom.len(), 1);
        assert_eq!(custom[0].labels["tank"], "a");
    }

    #[tokio::test]
    async fn a_batch_for_a_device_that_does_not_exist_is_not_found() {
        let (telemetry, _store, _device) = service().await;
        let ghost = DeviceId::new("ghost").expect("valid");
        let err = telemetry
            .ingest(&ghost, &logs("a", 0, 1), 1)
            .await
            .expect_err("no device");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
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
        telemetry.ingest(&device, &batch, 1).await.expect("stored");
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
            .ingest(&device, &metrics, 1)
            .await
            .expect("stored");
        let custom = store
            .list_custom_metrics(&device, 10)
            .await
            .expect("custom");
        assert!(custom[0].at <= Utc::now(), "{}", custom[0].at);

        // A day of retention later, nothing the device dated ahead is left.
        store
            .delete_logs_before(Utc::now() + Duration::days(1))
            .await
            .expect("prunes");
        assert!(messages(&store, &device).await.is_empty());
    }
}
