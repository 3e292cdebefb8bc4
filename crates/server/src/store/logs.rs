//! The `logs` table read back: pages of the archive, the lines stored after
//! a position for live followers, and retention. Lines are written by the
//! telemetry ingest (`telemetry.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use tether_proto::DeviceId;
use tether_proto::telemetry::LogRecord;

use super::codec::{device_id, from_json, get, limit, millis, placeholders, time, to_i64, to_u64};
use super::{Store, StoreError};

const COLUMNS: &str = "device, pos, at, priority, unit, message, fields";

/// A stored log line: its device, its number among the device's lines in
/// the order they were stored (`pos`), and the record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub device: DeviceId,
    pub pos: u64,
    pub record: LogRecord,
}

/// Which lines an archive read covers. Lines are in time order, then
/// device, then `pos`.
#[derive(Debug, Clone)]
pub struct LogScan<'a> {
    pub devices: &'a [DeviceId],
    /// From this time on (inclusive).
    pub since: DateTime<Utc>,
    /// Before this time (exclusive).
    pub until: DateTime<Utc>,
    /// This priority and more severe (0 emergency … 7 debug).
    pub max_priority: u8,
    /// Only these units; none means all.
    pub units: &'a [String],
}

/// Where a page of the archive ends: the next starts after this line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition {
    pub at: DateTime<Utc>,
    pub device: String,
    pub pos: u64,
}

impl Store {
    /// Up to `limit` lines of `scan` after `after`, oldest first.
    pub async fn scan_logs(
        &self,
        scan: &LogScan<'_>,
        after: Option<&LogPosition>,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        if scan.devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "SELECT {COLUMNS} FROM logs WHERE device IN ({}) AND at >= $1 AND at < $2 AND priority <= $3",
            placeholders(4, scan.devices.len())
        );
        let mut next = 4 + scan.devices.len();
        if !scan.units.is_empty() {
            sql.push_str(&format!(
                " AND unit IN ({})",
                placeholders(next, scan.units.len())
            ));
            next += scan.units.len();
        }
        if after.is_some() {
            let (at, device, pos) = (next, next + 1, next + 2);
            sql.push_str(&format!(
                " AND (at > ${at} OR (at = ${at} AND (device > ${device} \
                 OR (device = ${device} AND pos > ${pos}))))"
            ));
            next += 3;
        }
        sql.push_str(&format!(" ORDER BY at, device, pos LIMIT ${next}"));

        let mut query = sqlx::query(&sql)
            .bind(millis(scan.since))
            .bind(millis(scan.until))
            .bind(i64::from(scan.max_priority));
        for device in scan.devices {
            query = query.bind(device.as_str());
        }
        for unit in scan.units {
            query = query.bind(unit.as_str());
        }
        if let Some(after) = after {
            query = query
                .bind(millis(after.at))
                .bind(after.device.as_str())
                .bind(to_i64(after.pos, "pos")?);
        }
        let rows = query
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(error("read log lines"))?;
        rows.iter().map(line).collect()
    }

    /// Up to `limit` lines of `device` stored after line `after_pos`, in
    /// the order they were stored.
    pub async fn logs_stored_after(
        &self,
        device: &DeviceId,
        after_pos: u64,
        limit: u32,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM logs WHERE device = $1 AND pos > $2 ORDER BY pos LIMIT $3"
        ))
        .bind(device.as_str())
        .bind(to_i64(after_pos, "pos")?)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(error("read the log lines stored since"))?;
        rows.iter().map(line).collect()
    }

    /// The number of each device's last stored line (devices without lines
    /// are absent): where a live follower starts.
    pub async fn last_log_positions(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, u64>, StoreError> {
        if devices.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT device, MAX(pos) AS pos FROM logs WHERE device IN ({}) GROUP BY device",
            placeholders(1, devices.len())
        );
        let mut query = sqlx::query(&sql);
        for device in devices {
            query = query.bind(device.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(error("read where the devices' logs end"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    device_id(get(row, "device")?)?,
                    to_u64(get(row, "pos")?, "pos of a log line")?,
                ))
            })
            .collect()
    }

    /// Deletes log lines of every device from before `before`; returns how
    /// many went.
    pub async fn delete_logs_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.delete_before(
            "DELETE FROM logs WHERE at < $1",
            before,
            "delete old log lines",
        )
        .await
    }
}

fn line(row: &AnyRow) -> Result<LogLine, StoreError> {
    let device = device_id(get(row, "device")?)?;
    let what = |column: &str| format!("{column} of a log line of {device}");
    let priority: i64 = get(row, "priority")?;
    let fields: String = get(row, "fields")?;
    Ok(LogLine {
        pos: to_u64(get(row, "pos")?, &what("pos"))?,
        record: LogRecord {
            at: time(get(row, "at")?, &what("at"))?,
            priority: u8::try_from(priority)
                .map_err(|_| StoreError::Corrupt(format!("{} is {priority}", what("priority"))))?,
            unit: get(row, "unit")?,
            message: get(row, "message")?,
            fields: from_json(&fields, &what("fields"))?,
        },
        device,
    })
}

fn error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}
