//! Telemetry batches from the devices' spools: metrics and log records,
//! each batch stored exactly once, in one transaction with its spool's
//! cursor (see [`cursor`] for which records of a batch are new).

pub mod cursor;

use std::sync::Arc;

use chrono::Utc;
use tether_proto::DeviceId;
use tether_proto::telemetry::{Records, Stream, TelemetryBatch};

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
}

impl Telemetry {
    pub fn new(store: Store, observability: Arc<Observability>, bus: Bus) -> Self {
        Self {
            store,
            observability,
            bus,
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
        let verdict = cursor::judge(Some(tx.next_seq), batch.first_seq, count);
        let (update, stored) = match verdict {
            Verdict::Duplicate => (
                CursorUpdate {
                    next_seq: tx.next_seq,
                    gap: 0,
                    stored: 0,
                    duplicates: count,
                    wire_bytes: wire_bytes as u64,
                    dropped: batch.dropped.clone(),
                },
                Stored::Duplicate,
            ),
            Verdict::Store {
                skip,
                gap,
                next_seq,
            } => {
                let from = usize::try_from(skip).unwrap_or(usize::MAX);
                match &batch.records {
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
                        dropped: batch.dropped.clone(),
                    },
                    Stored::New {
                        records: count - skip,
                        gap,
                    },
                )
            }
        };
        tx.commit(&update).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use tether_proto::telemetry::{
        CustomMetric, Dropped, LogRecord, MetricRecord, Stream, TelemetryBatch,
    };

    async fn service() -> (Telemetry, Store, DeviceId) {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let device = DeviceId::new("edge-1").expect("valid");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        (
            Telemetry::new(store.clone(), Arc::default(), Bus::in_process()),
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
        assert_eq!(ingest(logs("a", 0, 1000)).await, Stored::Duplicate);
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

        let usage = store.telemetry_usage(&device).await.expect("usage");
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
        let usage = store.telemetry_usage(&device).await.expect("usage");
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
        let usage = store.telemetry_usage(&device).await.expect("usage");
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
            .list_series(&device, Some("tank_level"), 10)
            .await
            .expect("custom");
        assert_eq!(custom.len(), 1);
        assert_eq!(custom[0].labels["tank"], "a");
        assert_eq!(points(&store, custom[0].id).await, [(millis(at), 0.73, 1)]);
    }

    /// (start ms, value, count) of each raw point of the series, by time.
    async fn points(store: &Store, series: i64) -> Vec<(i64, f64, u64)> {
        store
            .series_buckets(&[series], 1, 1, Utc::now() - Duration::days(1), Utc::now())
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
        telemetry.ingest(&device, &first, 1).await.expect("stored");
        let later = metrics(
            3,
            vec![
                custom("flow", &[("a", "1"), ("b", "2")], at, 4.0),
                custom("flow", &[("a", "1"), ("b", "2")], earlier, 5.0),
            ],
        );
        telemetry.ingest(&device, &later, 1).await.expect("stored");
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
            .ingest(&device, &metrics(0, records), 1)
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
}
