//! The `events` and `metrics` tables: what devices report.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::metrics::HostMetrics;

use super::codec::{
    device_id, from_json, get, limit, millis, time, to_i64, to_json, to_u16, to_u64, violates,
};
use super::{Before, EventRecord, Store, StoreError};

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
