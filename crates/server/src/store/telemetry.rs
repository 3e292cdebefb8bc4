//! The `events` and `metrics` tables: what devices report.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::metrics::HostMetrics;
use tether_proto::telemetry::{
    Dropped, FeatureBytes, LogRecord, MetricRecord, Stream, StreamUsage,
};

use super::codec::{
    device_id, from_json, get, limit, millis, time, to_i64, to_json, to_u16, to_u64, violates,
};
use super::{ActionBytes, Before, EventRecord, RefusedSeries, Store, StoreError};
use crate::metrics::series::DevicePoints;

const EVENT_COLUMNS: &str =
    "id, device, correlation_id, event, status_code, status_message, response, received_at";

const METRICS_COLUMNS: &str = "sampled_at, cpu_percent, memory_used_bytes, memory_total_bytes, \
                               disk_used_bytes, disk_total_bytes, network_rx_bytes, \
                               network_tx_bytes";

impl Store {
    /// `Conflict` if the event id is taken, `NotFound` if the device does not
    /// exist.
    pub async fn insert_event(&self, event: &EventRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        sqlx::query(&sql)
            .bind(&event.id)
            .bind(event.device.as_str())
            .bind(event.correlation_id.as_deref())
            .bind(&event.event)
            .bind(i64::from(event.status_code))
            .bind(&event.status_message)
            .bind(to_json(&event.response, "event response")?)
            .bind(millis(event.received_at))
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::ForeignKeyViolation) {
                    StoreError::NotFound {
                        what: format!("device {}", event.device),
                    }
                } else if violates(&source, ErrorKind::UniqueViolation) {
                    StoreError::Conflict {
                        what: format!("event {}", event.id),
                    }
                } else {
                    StoreError::Query {
                        context: "store an event",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// The device's newest events, newest first, at most `limit`.
    pub async fn list_events(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.list_events_before(device, None, limit).await
    }

    /// The device's events, newest first, at most `limit`, those before
    /// `before` if given.
    pub async fn list_events_before(
        &self,
        device: &DeviceId,
        before: Option<&Before>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE device = $1 AND received_at <= $2 \
             AND (received_at < $2 OR id < $3) \
             ORDER BY received_at DESC, id DESC LIMIT $4"
        );
        let (at, id) = before_or_newest(before);
        let rows = sqlx::query(&sql)
            .bind(device.as_str())
            .bind(at)
            .bind(id)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list a device's events",
                source,
            })?;
        rows.iter().map(event_from_row).collect()
    }

    /// Every device's events after the key `(at, id)` (an empty `id` takes
    /// those received at `at` too), oldest first, at most `limit`: what a
    /// live follower reads (`crate::live`), by a strict key so that a page
    /// of events sharing one millisecond is never read again.
    pub async fn list_events_after(
        &self,
        at: DateTime<Utc>,
        id: &str,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE received_at >= $1 \
             AND (received_at > $1 OR id > $2) ORDER BY received_at, id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(millis(at))
            .bind(id)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list the fleet's newest events",
                source,
            })?;
        rows.iter().map(event_from_row).collect()
    }

    /// Stores a sample; a sample the device sends again (same instant) is
    /// kept once. `NotFound` if the device does not exist.
    pub async fn insert_metrics(
        &self,
        device: &DeviceId,
        metrics: &HostMetrics,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO metrics (device, {METRICS_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (device, sampled_at) DO NOTHING"
        );
        sqlx::query(&sql)
            .bind(device.as_str())
            .bind(millis(metrics.sampled_at))
            .bind(metrics.cpu_percent)
            .bind(to_i64(metrics.memory_used_bytes, "memory_used_bytes")?)
            .bind(to_i64(metrics.memory_total_bytes, "memory_total_bytes")?)
            .bind(to_i64(metrics.disk_used_bytes, "disk_used_bytes")?)
            .bind(to_i64(metrics.disk_total_bytes, "disk_total_bytes")?)
            .bind(to_i64(metrics.network_rx_bytes, "network_rx_bytes")?)
            .bind(to_i64(metrics.network_tx_bytes, "network_tx_bytes")?)
            .execute(&self.pool)
            .await
            .map_err(|source| {
                if violates(&source, ErrorKind::ForeignKeyViolation) {
                    StoreError::NotFound {
                        what: format!("device {device}"),
                    }
                } else {
                    StoreError::Query {
                        context: "store a metrics sample",
                        source,
                    }
                }
            })?;
        Ok(())
    }

    /// Deletes events received before `events_before` and metrics sampled
    /// before `metrics_before`, of every device. Returns how many of each.
    pub async fn delete_telemetry_before(
        &self,
        events_before: DateTime<Utc>,
        metrics_before: DateTime<Utc>,
    ) -> Result<(u64, u64), StoreError> {
        let events = self
            .delete_before(
                "DELETE FROM events WHERE received_at < $1",
                events_before,
                "delete old events",
            )
            .await?;
        let metrics = self
            .delete_before(
                "DELETE FROM metrics WHERE sampled_at < $1",
                metrics_before,
                "delete old metrics",
            )
            .await?;
        Ok((events, metrics))
    }

    /// Runs a retention `DELETE` whose one parameter is a time; returns how
    /// many rows went.
    pub(super) async fn delete_before(
        &self,
        sql: &'static str,
        before: DateTime<Utc>,
        context: &'static str,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql)
            .bind(millis(before))
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query { context, source })?
            .rows_affected())
    }

    /// The device's newest metrics samples, newest first, at most `limit`.
    pub async fn list_metrics(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<HostMetrics>, StoreError> {
        self.list_metrics_before(device, None, limit).await
    }

    /// The device's metrics samples, newest first, at most `limit`, those
    /// sampled before `before` if given.
    pub async fn list_metrics_before(
        &self,
        device: &DeviceId,
        before: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<HostMetrics>, StoreError> {
        let sql = format!(
            "SELECT {METRICS_COLUMNS} FROM metrics WHERE device = $1 AND sampled_at < $2 \
             ORDER BY sampled_at DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(device.as_str())
            .bind(before.map_or(i64::MAX, millis))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list a device's metrics",
                source,
            })?;
        rows.iter()
            .map(|row| metrics_from_row(device, row))
            .collect()
    }
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let id: String = get(row, "id")?;
    let what = |column: &str| format!("{column} of event {id}");
    let response: String = get(row, "response")?;
    Ok(EventRecord {
        device: device_id(get(row, "device")?)?,
        correlation_id: get(row, "correlation_id")?,
        event: get(row, "event")?,
        status_code: to_u16(get(row, "status_code")?, &what("status_code"))?,
        status_message: get(row, "status_message")?,
        response: from_json(&response, &what("response"))?,
        received_at: time(get(row, "received_at")?, &what("received_at"))?,
        id,
    })
}

fn metrics_from_row(device: &DeviceId, row: &AnyRow) -> Result<HostMetrics, StoreError> {
    let what = |column: &str| format!("{column} of a metrics sample of device {device}");
    let bytes = |column: &'static str| -> Result<u64, StoreError> {
        to_u64(get(row, column)?, &what(column))
    };
    Ok(HostMetrics {
        sampled_at: time(get(row, "sampled_at")?, &what("sampled_at"))?,
        cpu_percent: get(row, "cpu_percent")?,
        memory_used_bytes: bytes("memory_used_bytes")?,
        memory_total_bytes: bytes("memory_total_bytes")?,
        disk_used_bytes: bytes("disk_used_bytes")?,
        disk_total_bytes: bytes("disk_total_bytes")?,
        network_rx_bytes: bytes("network_rx_bytes")?,
        network_tx_bytes: bytes("network_tx_bytes")?,
    })
}

/// The bounds of a newest-first listing by `(time, id)`: `before`, or past
/// everything (no stored time reaches `i64::MAX`). Listings write the
/// condition as `time <= $t AND (time < $t OR id < $id)`, whose first half
/// the time index answers on both databases.
pub(super) fn before_or_newest(before: Option<&Before>) -> (i64, String) {
    match before {
        Some(before) => (millis(before.at), before.id.clone()),
        None => (i64::MAX, String::new()),
    }
}

/// A stored log line and its number in its spool.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLog {
    pub seq: u64,
    pub record: LogRecord,
}

/// Rows per multi-row INSERT: well within both databases' bind limits.
const ROWS_PER_INSERT: usize = 500;

/// Telemetry batches being stored, of one device or several: one
/// transaction, from [`Store::begin_telemetry`] to [`TelemetryTx::commit`],
/// that takes each batch's spool cursor ([`TelemetryTx::take_cursor`])
/// before storing the batch's records and moving the cursor with them.
pub struct TelemetryTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Which placeholders its multi-row statements use.
    postgres: bool,
}

/// A spool of a device: which cursor a batch moves.
#[derive(Debug, Clone, Copy)]
pub struct SpoolRef<'a> {
    pub device: &'a DeviceId,
    pub stream: Stream,
    pub spool_id: &'a str,
}

/// Where a spool's cursor stood when its batch took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenCursor {
    pub next_seq: u64,
    /// The spool was not seen before: this transaction made its cursor.
    pub new_spool: bool,
}

/// What a stored batch changes in its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorUpdate {
    pub next_seq: u64,
    pub gap: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub wire_bytes: u64,
    /// The device sent the batch from its backlog.
    pub replay: bool,
    pub dropped: Dropped,
    /// The agent's own counts, if the batch carried them.
    pub agent_usage: Vec<FeatureBytes>,
}

/// The columns of a cursor row that [`add_cursor`] sums.
const USAGE_COLUMNS: &str = "stream, spools, gap, stored_records, duplicate_records, batches, \
     wire_bytes, replay_bytes, dropped_total, dropped_by_priority, over_budget_total, \
     over_budget_by_priority, agent_usage, agent_usage_at";

fn cursor_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

impl Store {
    /// Begins storing telemetry batches.
    pub async fn begin_telemetry(&self) -> Result<TelemetryTx, StoreError> {
        Ok(TelemetryTx {
            tx: self.begin("store telemetry").await?,
            postgres: self.postgres,
        })
    }

    /// The device's log lines from `since` on, oldest first (in spool order
    /// within an instant), at most `limit`.
    pub async fn list_logs(
        &self,
        device: &DeviceId,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, seq, priority, unit, message, fields FROM logs \
             WHERE device = $1 AND at >= $2 ORDER BY at, seq LIMIT $3",
        )
        .bind(device.as_str())
        .bind(millis(since))
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(cursor_error("list a device's log lines"))?;
        rows.iter()
            .map(|row| {
                let what = |column: &str| format!("{column} of a log line of {device}");
                let priority: i64 = get(row, "priority")?;
                let fields: String = get(row, "fields")?;
                Ok(StoredLog {
                    seq: to_u64(get(row, "seq")?, &what("seq"))?,
                    record: LogRecord {
                        at: time(get(row, "at")?, &what("at"))?,
                        priority: u8::try_from(priority).map_err(|_| {
                            StoreError::Corrupt(format!("{} is {priority}", what("priority")))
                        })?,
                        unit: get(row, "unit")?,
                        message: get(row, "message")?,
                        fields: from_json(&fields, &what("fields"))?,
                    },
                })
            })
            .collect()
    }

    /// What `device` sent and was sent, as both ends counted it.
    /// `NotFound` if the device does not exist.
    pub async fn device_usage(&self, device: &DeviceId) -> Result<UsageRecord, StoreError> {
        self.usage_page(Some(device.as_str()), None, 1)
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound {
                what: format!("device {device}"),
            })
    }

    /// The usage of up to `limit` devices after `after` in name order
    /// (the fleet exposition's pages).
    pub async fn fleet_usage(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.usage_page(None, after, limit).await
    }

    /// The device named `only`, or those after `after`: two reads, the
    /// devices' rows and then their spools' cursors.
    async fn usage_page(
        &self,
        only: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let context = "read devices' usage";
        let (condition, name) = match only {
            Some(name) => ("name = $1", name),
            None => ("name > $1", after.unwrap_or("")),
        };
        let sql = format!(
            "SELECT name, action_bytes_sent, action_bytes_received, metric_series_refused, \
             metric_points_refused FROM devices WHERE {condition} ORDER BY name LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(name)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(cursor_error(context))?;
        let mut records = rows
            .iter()
            .map(|row| {
                let device: String = get(row, "name")?;
                let what = |column: &str| format!("{column} of device {device}");
                Ok(UsageRecord {
                    actions: ActionBytes {
                        sent: to_u64(get(row, "action_bytes_sent")?, &what("action_bytes_sent"))?,
                        received: to_u64(
                            get(row, "action_bytes_received")?,
                            &what("action_bytes_received"),
                        )?,
                    },
                    streams: Stream::ALL
                        .into_iter()
                        .map(|stream| StreamUsage {
                            stream,
                            ..StreamUsage::default()
                        })
                        .collect(),
                    agent: None,
                    metric_series_refused: to_u64(
                        get(row, "metric_series_refused")?,
                        &what("metric_series_refused"),
                    )?,
                    metric_points_refused: to_u64(
                        get(row, "metric_points_refused")?,
                        &what("metric_points_refused"),
                    )?,
                    device,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(records);
        };
        let cursors = sqlx::query(&format!(
            "SELECT device, {USAGE_COLUMNS} FROM telemetry_cursors \
             WHERE device >= $1 AND device <= $2"
        ))
        .bind(first.device.as_str())
        .bind(last.device.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(cursor_error(context))?;
        for row in &cursors {
            let device: String = get(row, "device")?;
            let Some(record) = records.iter_mut().find(|r| r.device == device) else {
                continue;
            };
            add_cursor(record, row)?;
        }
        Ok(records)
    }
}

/// What a device sent and was sent, as the store holds it: its streams
/// summed over their spools, its action bytes, and the newest counts its
/// agent reported.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub device: String,
    pub streams: Vec<StreamUsage>,
    pub actions: ActionBytes,
    pub agent: Option<(DateTime<Utc>, Vec<FeatureBytes>)>,
    /// New metric series refused at the device's limit, and their points.
    pub metric_series_refused: u64,
    pub metric_points_refused: u64,
}

fn add_cursor(record: &mut UsageRecord, row: &AnyRow) -> Result<(), StoreError> {
    let device = &record.device;
    let what = |column: &str| format!("{column} of a telemetry cursor of {device}");
    let count = |column: &'static str| -> Result<u64, StoreError> {
        to_u64(get(row, column)?, &what(column))
    };
    let by_priority = |column: &'static str| -> Result<[u64; 8], StoreError> {
        let json: String = get(row, column)?;
        from_json(&json, &what(column))
    };
    let stream: String = get(row, "stream")?;
    let Some(sum) = record
        .streams
        .iter_mut()
        .find(|u| u.stream.as_str() == stream)
    else {
        return Ok(());
    };
    // Up to i64::MAX each, and a hostile device's gaps and dropped
    // totals are what it says: summed over spools, they must not overflow.
    for (total, column) in [
        (&mut sum.spools, "spools"),
        (&mut sum.wire_bytes, "wire_bytes"),
        (&mut sum.replay_bytes, "replay_bytes"),
        (&mut sum.batches, "batches"),
        (&mut sum.stored_records, "stored_records"),
        (&mut sum.duplicate_records, "duplicate_records"),
        (&mut sum.gap, "gap"),
    ] {
        *total = total.saturating_add(count(column)?);
    }
    sum.dropped.total = sum.dropped.total.saturating_add(count("dropped_total")?);
    sum.dropped.over_budget = sum
        .dropped
        .over_budget
        .saturating_add(count("over_budget_total")?);
    for (total, n) in sum
        .dropped
        .by_priority
        .iter_mut()
        .zip(by_priority("dropped_by_priority")?)
    {
        *total = total.saturating_add(n);
    }
    for (total, n) in sum
        .dropped
        .over_budget_by_priority
        .iter_mut()
        .zip(by_priority("over_budget_by_priority")?)
    {
        *total = total.saturating_add(n);
    }
    let reported: Option<String> = get(row, "agent_usage")?;
    let reported_at: Option<i64> = get(row, "agent_usage_at")?;
    if let (Some(json), Some(at)) = (reported, reported_at) {
        let at = time(at, &what("agent_usage_at"))?;
        if record.agent.as_ref().is_none_or(|(newest, _)| at > *newest) {
            record.agent = Some((at, from_json(&json, &what("agent_usage"))?));
        }
    }
    Ok(())
}

impl TelemetryTx {
    /// Takes the cursor of `spool` for a batch whose first record is
    /// `first_seq`, and returns where it stands. The first statement of
    /// the transaction writes a cursor row (creating it at `first_seq` for
    /// a new spool), so the transaction holds the write lock from the
    /// start: SQLite cannot then refuse to upgrade a read, and on
    /// PostgreSQL a second batch of the spool waits for this one.
    /// `NotFound` if the device does not exist.
    pub async fn take_cursor(
        &mut self,
        spool: SpoolRef<'_>,
        first_seq: u64,
        now: DateTime<Utc>,
    ) -> Result<TakenCursor, StoreError> {
        let context = "take a telemetry cursor";
        let row = sqlx::query(
            "INSERT INTO telemetry_cursors (device, stream, spool_id, next_seq, updated_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (device, stream, spool_id) DO UPDATE SET updated_at = excluded.updated_at \
             RETURNING next_seq, batches",
        )
        .bind(spool.device.as_str())
        .bind(spool.stream.as_str())
        .bind(spool.spool_id)
        .bind(to_i64(first_seq, "firstSeq")?)
        .bind(millis(now))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                StoreError::NotFound {
                    what: format!("device {}", spool.device),
                }
            } else {
                StoreError::Query { context, source }
            }
        })?;
        let next_seq = to_u64(get(&row, "next_seq")?, "next_seq of a telemetry cursor")?;
        // Every committed batch counts itself: none yet is a new cursor.
        let batches: i64 = get(&row, "batches")?;
        Ok(TakenCursor {
            next_seq,
            new_spool: batches == 0,
        })
    }

    /// Folds the cursors of `spool`'s device and stream beyond the `keep`
    /// most recently used (`spool` among them) into its row of spool id
    /// `''`, which no batch can name: their counts stay in the usage, their
    /// rows go. Returns how many spools were folded.
    pub async fn retire_spools(
        &mut self,
        spool: SpoolRef<'_>,
        keep: u32,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let context = "retire a device's old spools";
        let retired = sqlx::query(&format!(
            "SELECT spool_id, {USAGE_COLUMNS} FROM telemetry_cursors \
             WHERE device = $1 AND stream = $2 AND spool_id <> '' AND spool_id <> $3 \
             ORDER BY updated_at DESC, spool_id LIMIT $4 OFFSET $5"
        ))
        .bind(spool.device.as_str())
        .bind(spool.stream.as_str())
        .bind(spool.spool_id)
        // Beyond `keep` there is one at most, unless `keep` was larger.
        .bind(1_000_i64)
        .bind(i64::from(keep.saturating_sub(1)))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(cursor_error(context))?;
        if retired.is_empty() {
            return Ok(0);
        }
        let folded = sqlx::query(&format!(
            "SELECT spool_id, {USAGE_COLUMNS} FROM telemetry_cursors \
             WHERE device = $1 AND stream = $2 AND spool_id = ''"
        ))
        .bind(spool.device.as_str())
        .bind(spool.stream.as_str())
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(cursor_error(context))?;
        let mut record = UsageRecord {
            device: spool.device.to_string(),
            streams: vec![StreamUsage {
                stream: spool.stream,
                ..StreamUsage::default()
            }],
            actions: ActionBytes::default(),
            agent: None,
            metric_series_refused: 0,
            metric_points_refused: 0,
        };
        for row in retired.iter().chain(&folded) {
            add_cursor(&mut record, row)?;
            let spool_id: String = get(row, "spool_id")?;
            sqlx::query(
                "DELETE FROM telemetry_cursors WHERE device = $1 AND stream = $2 AND spool_id = $3",
            )
            .bind(spool.device.as_str())
            .bind(spool.stream.as_str())
            .bind(spool_id)
            .execute(&mut *self.tx)
            .await
            .map_err(cursor_error(context))?;
        }
        let sum = &record.streams[0];
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let (agent_usage, agent_usage_at) = match &record.agent {
            Some((at, usage)) => (
                Some(to_json(usage, "the agent's usage")?),
                Some(millis(*at)),
            ),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO telemetry_cursors (device, stream, spool_id, next_seq, updated_at, \
             spools, gap, stored_records, duplicate_records, batches, wire_bytes, replay_bytes, \
             dropped_total, dropped_by_priority, over_budget_total, over_budget_by_priority, \
             agent_usage, agent_usage_at) \
             VALUES ($1, $2, '', 0, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(spool.device.as_str())
        .bind(spool.stream.as_str())
        .bind(millis(now))
        .bind(big(sum.spools))
        .bind(big(sum.gap))
        .bind(big(sum.stored_records))
        .bind(big(sum.duplicate_records))
        .bind(big(sum.batches))
        .bind(big(sum.wire_bytes))
        .bind(big(sum.replay_bytes))
        .bind(big(sum.dropped.total))
        .bind(to_json(
            &sum.dropped.by_priority.map(big),
            "dropped by priority",
        )?)
        .bind(big(sum.dropped.over_budget))
        .bind(to_json(
            &sum.dropped.over_budget_by_priority.map(big),
            "dropped over budget by priority",
        )?)
        .bind(agent_usage)
        .bind(agent_usage_at)
        .execute(&mut *self.tx)
        .await
        .map_err(cursor_error(context))?;
        Ok(retired.len() as u64)
    }

    /// Stores log records numbered from `first_seq`, a few hundred rows
    /// per statement.
    pub async fn insert_logs(
        &mut self,
        device: &DeviceId,
        first_seq: u64,
        records: &[LogRecord],
    ) -> Result<(), StoreError> {
        // Numbered after the device's last stored line. Batches of one
        // device are stored one after another; should two ever race (a
        // session moving between replicas), the unique (device, pos) index
        // refuses the second, which the device then sends again.
        // A seek to the end of the (device, pos) index: `MAX` wrapped in an
        // expression is not optimised by SQLite and scans the device's rows.
        let last = sqlx::query("SELECT pos FROM logs WHERE device = $1 ORDER BY pos DESC LIMIT 1")
            .bind(device.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(cursor_error("number log lines"))?;
        let last_pos = match last {
            Some(row) => to_u64(get(&row, "pos")?, "pos of a log line")?,
            None => 0,
        };
        for (chunk_index, chunk) in records.chunks(ROWS_PER_INSERT).enumerate() {
            let sql = self.values_sql(
                "INSERT INTO logs (device, at, seq, pos, priority, unit, message, fields) VALUES ",
                8,
                chunk.len(),
            );
            let mut query = sqlx::query(&sql);
            for (i, record) in chunk.iter().enumerate() {
                let index = (chunk_index * ROWS_PER_INSERT + i) as u64;
                query = query
                    .bind(device.as_str())
                    .bind(millis(record.at))
                    .bind(to_i64(first_seq + index, "seq")?)
                    .bind(to_i64(last_pos + 1 + index, "pos")?)
                    .bind(i64::from(record.priority))
                    .bind(record.unit.as_str())
                    .bind(record.message.as_str())
                    .bind(to_json(&record.fields, "log fields")?);
            }
            query
                .execute(&mut *self.tx)
                .await
                .map_err(cursor_error("store log lines"))?;
        }
        Ok(())
    }

    /// Stores series points of the batches (see `crate::metrics::flatten`),
    /// each from the index of its first new row, received at
    /// `received_at`: a few statements for them all. A device has at most
    /// `max_series` series; returns the new ones that refused.
    pub async fn insert_points(
        &mut self,
        parts: &[(&DevicePoints, usize)],
        received_at: DateTime<Utc>,
        max_series: u64,
    ) -> Result<Vec<RefusedSeries>, StoreError> {
        super::metrics::write_points(&mut self.tx, self.postgres, parts, received_at, max_series)
            .await
    }

    /// Stores the host samples among metrics records into `metrics` (one
    /// per instant, as before; a host sample as its totals). Named values
    /// are stored as series points only (`insert_points`).
    pub async fn insert_metrics(
        &mut self,
        device: &DeviceId,
        records: &[MetricRecord],
    ) -> Result<(), StoreError> {
        let host: Vec<HostMetrics> = records
            .iter()
            .filter_map(|r| match r {
                MetricRecord::Host(m) => Some(m.clone()),
                MetricRecord::Sample(s) => Some(s.summary()),
                MetricRecord::Custom(_) => None,
            })
            .collect();
        for chunk in host.chunks(ROWS_PER_INSERT) {
            let mut sql = self.values_sql(
                &format!("INSERT INTO metrics (device, {METRICS_COLUMNS}) VALUES "),
                9,
                chunk.len(),
            );
            sql.push_str(" ON CONFLICT (device, sampled_at) DO NOTHING");
            let mut query = sqlx::query(&sql);
            for m in chunk {
                query = query
                    .bind(device.as_str())
                    .bind(millis(m.sampled_at))
                    .bind(m.cpu_percent)
                    .bind(to_i64(m.memory_used_bytes, "memory_used_bytes")?)
                    .bind(to_i64(m.memory_total_bytes, "memory_total_bytes")?)
                    .bind(to_i64(m.disk_used_bytes, "disk_used_bytes")?)
                    .bind(to_i64(m.disk_total_bytes, "disk_total_bytes")?)
                    .bind(to_i64(m.network_rx_bytes, "network_rx_bytes")?)
                    .bind(to_i64(m.network_tx_bytes, "network_tx_bytes")?);
            }
            query
                .execute(&mut *self.tx)
                .await
                .map_err(cursor_error("store metrics samples"))?;
        }
        Ok(())
    }

    /// Moves `spool`'s cursor, taken at `taken` (what [`Self::take_cursor`]
    /// returned), by what its batch stored, in the one statement the
    /// batch's counts and the agent's report ride on too. The dropped
    /// totals only grow: a batch sent again late carries older ones.
    pub async fn move_cursor(
        &mut self,
        spool: SpoolRef<'_>,
        taken: u64,
        update: &CursorUpdate,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let agent_usage = if update.agent_usage.is_empty() {
            None
        } else {
            Some(to_json(&update.agent_usage, "the agent's usage")?)
        };
        sqlx::query(
            "UPDATE telemetry_cursors SET next_seq = $1, gap = gap + $2, \
             stored_records = stored_records + $3, duplicate_records = duplicate_records + $4, \
             batches = batches + 1, wire_bytes = wire_bytes + $5, \
             dropped_by_priority = CASE WHEN $6 >= dropped_total THEN $7 ELSE dropped_by_priority END, \
             dropped_total = CASE WHEN $6 >= dropped_total THEN $6 ELSE dropped_total END, \
             replay_bytes = replay_bytes + $8, \
             over_budget_by_priority = CASE WHEN $9 >= over_budget_total THEN $10 ELSE over_budget_by_priority END, \
             over_budget_total = CASE WHEN $9 >= over_budget_total THEN $9 ELSE over_budget_total END, \
             agent_usage = COALESCE($11, agent_usage), \
             agent_usage_at = CASE WHEN $12 > 0 THEN $12 ELSE agent_usage_at END \
             WHERE device = $13 AND stream = $14 AND spool_id = $15",
        )
        .bind(to_i64(update.next_seq.max(taken), "next_seq")?)
        .bind(to_i64(update.gap, "gap")?)
        .bind(to_i64(update.stored, "stored records")?)
        .bind(to_i64(update.duplicates, "duplicate records")?)
        .bind(to_i64(update.wire_bytes, "wire bytes")?)
        .bind(to_i64(update.dropped.total, "dropped total")?)
        .bind(to_json(&update.dropped.by_priority, "dropped by priority")?)
        .bind(to_i64(
            if update.replay { update.wire_bytes } else { 0 },
            "replay bytes",
        )?)
        .bind(to_i64(update.dropped.over_budget, "dropped over budget")?)
        .bind(to_json(
            &update.dropped.over_budget_by_priority,
            "dropped over budget by priority",
        )?)
        .bind(agent_usage)
        .bind(if update.agent_usage.is_empty() { 0 } else { millis(now) })
        .bind(spool.device.as_str())
        .bind(spool.stream.as_str())
        .bind(spool.spool_id)
        .execute(&mut *self.tx)
        .await
        .map_err(cursor_error("move a telemetry cursor"))?;
        Ok(())
    }

    /// Commits every batch stored in the transaction with its cursor.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx
            .commit()
            .await
            .map_err(cursor_error("commit telemetry batches"))
    }
}

impl TelemetryTx {
    /// `prefix` and `rows` rows of `columns` placeholders. SQLite gets
    /// anonymous `?`s: sqlx looks every numbered one up by name, and SQLite
    /// finds a name by scanning the statement's list of them, so `$N`
    /// costs the square of the parameters (4,000 in a 500-row insert; it
    /// was half of tetherd's time ingesting logs).
    fn values_sql(&self, prefix: &str, columns: usize, rows: usize) -> String {
        values_sql(prefix, columns, rows, self.postgres)
    }
}

/// `prefix` followed by `rows` groups of `columns` placeholders, `$N` if
/// `numbered`, else `?`.
pub(super) fn values_sql(prefix: &str, columns: usize, rows: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(prefix.len() + rows * columns * 5);
    sql.push_str(prefix);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&(row * columns + column + 1).to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}
