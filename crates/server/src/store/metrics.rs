//! Metric series (migration 0016): series rows with their newest point,
//! raw points, and 1-minute and 1-hour rollups.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;

use super::codec::{from_json, get, limit, millis, time, to_i64, to_u64, violates};
use super::telemetry::values_sql;
use super::{Store, StoreError};
use crate::metrics::series::{DevicePoints, Labels, Point, PointRow, SeriesRow};

/// Points per multi-row INSERT on SQLite (4 binds each): within its limits.
const POINTS_PER_INSERT: usize = 1_000;
/// Series per multi-row upsert (6 binds each).
const SERIES_PER_INSERT: usize = 500;
/// A series row written again keeps the newer of its newest points.
const NEWEST_WINS: &str = " ON CONFLICT (id) DO UPDATE SET \
     last_value = CASE WHEN excluded.last_at > metric_series.last_at \
     THEN excluded.last_value ELSE metric_series.last_value END, \
     last_at = CASE WHEN excluded.last_at > metric_series.last_at \
     THEN excluded.last_at ELSE metric_series.last_at END";
/// Width of the rollups, in ms.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// A stored series and its newest point.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSeries {
    pub id: i64,
    pub name: String,
    pub labels: Labels,
    pub last_at: DateTime<Utc>,
    pub last_value: f64,
}

/// One bucket of one series: sum, min, max and count of its points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub series_id: i64,
    pub start_ms: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

/// A series' newest value, for the fleet exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    pub id: i64,
    pub name: String,
    pub device: String,
    pub labels: Labels,
    pub device_labels: Labels,
    pub value: f64,
}

/// New series of a device refused in one write because the device had as
/// many as it may (`ingest.max_series_per_device`), and their points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSeries {
    pub device: DeviceId,
    pub series: u64,
    pub points: u64,
}

/// What one run of the rollup did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolledUp {
    pub minute_buckets: u64,
    pub hour_buckets: u64,
}

/// Writes points of one or more devices received at `received_at`, each
/// given with the index of its first row to store: each series' row
/// (created, or its newest point moved forward) and the points, a point of
/// an instant already stored kept once (the first sent). A device creates
/// at most `max_series` series: the new ones beyond, in the order they
/// came, are refused with their points, and counted on the device's row.
pub(super) async fn write_points(
    conn: &mut sqlx::AnyConnection,
    postgres: bool,
    parts: &[(&DevicePoints, usize)],
    received_at: DateTime<Utc>,
    max_series: u64,
) -> Result<Vec<RefusedSeries>, StoreError> {
    let rows = || {
        parts
            .iter()
            .flat_map(|(points, from)| points.rows.get(*from..).unwrap_or(&[]))
    };
    if rows().next().is_none() {
        return Ok(Vec::new());
    }
    // One row per series per statement (PostgreSQL refuses to upsert a row
    // twice in one), carrying the newest point; of points at one instant
    // the first, which is the one `metric_points` keeps.
    let mut newest: HashMap<i64, PointRow> = HashMap::new();
    for row in rows() {
        newest
            .entry(row.series_id)
            .and_modify(|p| {
                if row.at > p.at {
                    *p = *row;
                }
            })
            .or_insert(*row);
    }
    let mut series: Vec<(&DeviceId, &SeriesRow, PointRow)> = parts
        .iter()
        .flat_map(|(points, _)| {
            points
                .series
                .iter()
                .map(move |series| (&points.device, series))
        })
        .filter_map(|(device, series)| Some((device, series, newest.remove(&series.id)?)))
        .collect();
    let over = beyond_limit(conn, postgres, &series, max_series).await?;
    let refused = if over.is_empty() {
        Vec::new()
    } else {
        let refused = count_refused(parts, &series, &over);
        series.retain(|(_, series, _)| !over.contains(&series.id));
        record_refused(conn, &refused).await?;
        refused
    };
    // A fixed order: two transactions lock the rows alike.
    series.sort_unstable_by_key(|(_, series, _)| series.id);
    let rows: Vec<&PointRow> = rows()
        .filter(|row| !over.contains(&row.series_id))
        .collect();
    let received = millis(received_at);
    if postgres {
        write_unnest(conn, parts, &series, &rows, received).await?;
    } else {
        write_values(conn, parts, &series, &rows, received).await?;
    }
    Ok(refused)
}

/// The ids of the new series among `series` (in their order) that would
/// take their device past `max_series`. One read of the ids when none is
/// new; a device with new ones has its series counted. Two transactions
/// creating series of one device at once may each pass the count (only
/// batches of different spools of one device run so: a spool's batches
/// wait for each other at its cursor).
async fn beyond_limit(
    conn: &mut sqlx::AnyConnection,
    postgres: bool,
    series: &[(&DeviceId, &SeriesRow, PointRow)],
    max_series: u64,
) -> Result<HashSet<i64>, StoreError> {
    let context = "count a device's metric series";
    let error = |source| StoreError::Query { context, source };
    let mut known = HashSet::new();
    if postgres {
        let rows = sqlx::query("SELECT id FROM metric_series WHERE id = ANY($1::bigint[])")
            .bind(array_literal(series.iter().map(|(_, s, _)| s.id)))
            .fetch_all(&mut *conn)
            .await
            .map_err(error)?;
        for row in &rows {
            known.insert(get::<i64>(row, "id")?);
        }
    } else {
        for chunk in series.chunks(SERIES_PER_INSERT) {
            let sql = format!(
                "SELECT id FROM metric_series WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (_, series, _) in chunk {
                query = query.bind(series.id);
            }
            for row in &query.fetch_all(&mut *conn).await.map_err(error)? {
                known.insert(get::<i64>(row, "id")?);
            }
        }
    }
    let mut over = HashSet::new();
    let mut counts: HashMap<&DeviceId, u64> = HashMap::new();
    for (device, series, _) in series {
        if known.contains(&series.id) {
            continue;
        }
        let count = match counts.get_mut(device) {
            Some(count) => count,
            None => {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM metric_series WHERE device = $1")
                    .bind(device.as_str())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(error)?;
                let stored = to_u64(get(&row, "n")?, "count of a device's series")?;
                counts.entry(device).or_insert(stored)
            }
        };
        if *count >= max_series {
            over.insert(series.id);
        } else {
            *count += 1;
        }
    }
    Ok(over)
}

/// Per device, how many of its series and points `over` refuses.
fn count_refused(
    parts: &[(&DevicePoints, usize)],
    series: &[(&DeviceId, &SeriesRow, PointRow)],
    over: &HashSet<i64>,
) -> Vec<RefusedSeries> {
    fn entry<'a>(refused: &'a mut Vec<RefusedSeries>, device: &DeviceId) -> &'a mut RefusedSeries {
        let i = match refused.iter().position(|r| &r.device == device) {
            Some(i) => i,
            None => {
                refused.push(RefusedSeries {
                    device: device.clone(),
                    series: 0,
                    points: 0,
                });
                refused.len() - 1
            }
        };
        &mut refused[i]
    }
    let mut refused = Vec::new();
    for (device, _, _) in series.iter().filter(|(_, s, _)| over.contains(&s.id)) {
        entry(&mut refused, device).series += 1;
    }
    for (points, from) in parts {
        let rows = points.rows.get(*from..).unwrap_or(&[]);
        let n = rows
            .iter()
            .filter(|row| over.contains(&row.series_id))
            .count() as u64;
        if n > 0 {
            entry(&mut refused, &points.device).points += n;
        }
    }
    refused
}

/// Adds what was refused to the devices' counts (`GET /devices/{name}/usage`).
async fn record_refused(
    conn: &mut sqlx::AnyConnection,
    refused: &[RefusedSeries],
) -> Result<(), StoreError> {
    for refused in refused {
        sqlx::query(
            "UPDATE devices SET metric_series_refused = metric_series_refused + $1, \
             metric_points_refused = metric_points_refused + $2 WHERE name = $3",
        )
        .bind(to_i64(refused.series, "refused series")?)
        .bind(to_i64(refused.points, "refused points")?)
        .bind(refused.device.as_str())
        .execute(&mut *conn)
        .await
        .map_err(|source| StoreError::Query {
            context: "count a device's refused metric series",
            source,
        })?;
    }
    Ok(())
}

/// What a series upsert that fails says: `NotFound` if a device of the
/// batches is gone.
fn series_error(parts: &[(&DevicePoints, usize)], source: sqlx::Error) -> StoreError {
    if violates(&source, ErrorKind::ForeignKeyViolation) {
        StoreError::NotFound {
            what: match parts {
                [(points, _)] => format!("device {}", points.device),
                _ => "a device of the batches".to_owned(),
            },
        }
    } else {
        StoreError::Query {
            context: "store metric series",
            source,
        }
    }
}

fn points_error(source: sqlx::Error) -> StoreError {
    StoreError::Query {
        context: "store metric points",
        source,
    }
}

/// SQLite: multi-row `VALUES` with anonymous placeholders, a few hundred
/// rows a statement.
async fn write_values(
    conn: &mut sqlx::AnyConnection,
    parts: &[(&DevicePoints, usize)],
    series: &[(&DeviceId, &SeriesRow, PointRow)],
    rows: &[&PointRow],
    received: i64,
) -> Result<(), StoreError> {
    for chunk in series.chunks(SERIES_PER_INSERT) {
        let mut sql = values_sql(
            "INSERT INTO metric_series (id, device, name, labels, last_at, last_value) VALUES ",
            6,
            chunk.len(),
            false,
        );
        sql.push_str(NEWEST_WINS);
        let mut query = sqlx::query(&sql);
        for (device, series, point) in chunk {
            query = query
                .bind(series.id)
                .bind(device.as_str())
                .bind(series.name.as_str())
                .bind(series.labels.as_str())
                .bind(point.at)
                .bind(point.value);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(|source| series_error(parts, source))?;
    }
    for chunk in rows.chunks(POINTS_PER_INSERT) {
        let mut sql = values_sql(
            "INSERT INTO metric_points (series_id, at, value, received_at) VALUES ",
            4,
            chunk.len(),
            false,
        );
        sql.push_str(" ON CONFLICT (series_id, at) DO NOTHING");
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(row.series_id)
                .bind(row.at)
                .bind(row.value)
                .bind(received);
        }
        query.execute(&mut *conn).await.map_err(points_error)?;
    }
    Ok(())
}

/// PostgreSQL: the series in one statement and the points in another,
/// each column bound as one array instead of multi-row `VALUES` of up to
/// 4,000 parameters (tetherd spent about 8 % less CPU per sample:
/// `BENCHMARKS.md`, telemetry). The arrays go as text (`{1,2,3}`: sqlx's
/// `Any` binds no arrays), cast by the server. Of points at one instant
/// the first sent is the one kept, as on SQLite.
async fn write_unnest(
    conn: &mut sqlx::AnyConnection,
    parts: &[(&DevicePoints, usize)],
    series: &[(&DeviceId, &SeriesRow, PointRow)],
    rows: &[&PointRow],
    received: i64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO metric_series (id, device, name, labels, last_at, last_value) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], \
         $5::bigint[], $6::float8[]){NEWEST_WINS}"
    ))
    .bind(array_literal(series.iter().map(|(_, s, _)| s.id)))
    .bind(text_array_literal(
        series.iter().map(|(d, _, _)| d.as_str()),
    ))
    .bind(text_array_literal(
        series.iter().map(|(_, s, _)| s.name.as_str()),
    ))
    .bind(text_array_literal(
        series.iter().map(|(_, s, _)| s.labels.as_str()),
    ))
    .bind(array_literal(series.iter().map(|(_, _, p)| p.at)))
    .bind(array_literal(series.iter().map(|(_, _, p)| p.value)))
    .execute(&mut *conn)
    .await
    .map_err(|source| series_error(parts, source))?;
    // Points: a plain insert, in a savepoint. `ON CONFLICT DO NOTHING`
    // made PostgreSQL look every point up before inserting it (a
    // speculative insertion: about 0.7 of its CPU per point without it,
    // ADR 0018, amendment), for a point that is almost never there: a
    // batch sent again meets its spool's cursor and never gets here.
    // Points of one instant of a series within the write are kept once
    // here; should one have been stored by another write (a custom sample
    // pushed twice, a bare sample sent again, a late batch of a folded
    // spool), the insert fails alone and is made again keeping what is
    // stored.
    let mut seen = HashSet::with_capacity(rows.len());
    let rows: Vec<&PointRow> = rows
        .iter()
        .copied()
        .filter(|row| seen.insert((row.series_id, row.at)))
        .collect();
    let ids = array_literal(rows.iter().map(|row| row.series_id));
    let ats = array_literal(rows.iter().map(|row| row.at));
    let values = array_literal(rows.iter().map(|row| row.value));
    let insert = |sql: &'static str| {
        sqlx::query(sql)
            .bind(ids.as_str())
            .bind(ats.as_str())
            .bind(values.as_str())
            .bind(received)
    };
    let mut savepoint = conn.begin().await.map_err(points_error)?;
    match insert(POINTS_UNNEST).execute(&mut *savepoint).await {
        Ok(_) => savepoint.commit().await.map_err(points_error)?,
        Err(source) if violates(&source, ErrorKind::UniqueViolation) => {
            savepoint.rollback().await.map_err(points_error)?;
            tracing::debug!(
                points = rows.len(),
                "metric points stored before among a write's; written again keeping those"
            );
            insert(POINTS_UNNEST_KEEP_STORED)
                .execute(&mut *conn)
                .await
                .map_err(points_error)?;
        }
        Err(source) => return Err(points_error(source)),
    }
    Ok(())
}

/// PostgreSQL: the points of a write, each column bound as an array.
const POINTS_UNNEST: &str = "INSERT INTO metric_points (series_id, at, value, received_at) \
     SELECT s, a, v, $4 FROM unnest($1::bigint[], $2::bigint[], $3::float8[]) AS t (s, a, v)";
/// The same, keeping the points stored before.
const POINTS_UNNEST_KEEP_STORED: &str = "INSERT INTO metric_points \
     (series_id, at, value, received_at) \
     SELECT s, a, v, $4 FROM unnest($1::bigint[], $2::bigint[], $3::float8[]) AS t (s, a, v) \
     ON CONFLICT (series_id, at) DO NOTHING";

/// A PostgreSQL array literal of numbers: `{1,2.5,-3}`. Rust prints an
/// `f64` with the fewest digits that read back as the same value, and
/// never in a form PostgreSQL does not read (no exponent; points are
/// finite: JSON has no NaN and host samples leave non-finite values out).
fn array_literal<T: std::fmt::Display>(values: impl Iterator<Item = T>) -> String {
    use std::fmt::Write;
    let mut literal = String::from("{");
    for (i, value) in values.enumerate() {
        if i > 0 {
            literal.push(',');
        }
        let _ = write!(literal, "{value}");
    }
    literal.push('}');
    literal
}

/// A PostgreSQL array literal of strings, each quoted: `{"a","b\\"c"}`.
fn text_array_literal<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut literal = String::from("{");
    for (i, value) in values.enumerate() {
        if i > 0 {
            literal.push(',');
        }
        literal.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                literal.push('\\');
            }
            literal.push(c);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// Recomputes the `width`-ms rollups of every bucket that holds a point
/// received in `from..to`, from raw points (1 minute) or from 1-minute
/// rollups (1 hour). Recomputing a whole bucket makes running twice,
/// or over overlapping windows, harmless.
fn rollup_sql(width: i64) -> String {
    let source = if width == MINUTE_MS {
        "SELECT p.series_id, p.at - p.at % $3 AS b, SUM(p.value) AS s, MIN(p.value) AS lo, \
         MAX(p.value) AS hi, COUNT(*) AS n \
         FROM metric_points p JOIN (SELECT DISTINCT series_id, at - at % $3 AS start \
         FROM metric_points WHERE received_at >= $1 AND received_at < $2) d \
         ON p.series_id = d.series_id AND p.at >= d.start AND p.at < d.start + $3 \
         WHERE 1 = 1 GROUP BY p.series_id, p.at - p.at % $3"
    } else {
        "SELECT r.series_id, r.bucket - r.bucket % $3 AS b, SUM(r.sum) AS s, MIN(r.min) AS lo, \
         MAX(r.max) AS hi, CAST(SUM(r.count) AS BIGINT) AS n \
         FROM metric_rollups r JOIN (SELECT DISTINCT series_id, at - at % $3 AS start \
         FROM metric_points WHERE received_at >= $1 AND received_at < $2) d \
         ON r.series_id = d.series_id AND r.resolution = 60000 \
         AND r.bucket >= d.start AND r.bucket < d.start + $3 \
         WHERE 1 = 1 GROUP BY r.series_id, r.bucket - r.bucket % $3"
    };
    format!(
        "INSERT INTO metric_rollups (series_id, resolution, bucket, sum, min, max, count) \
         SELECT series_id, $3, b, s, lo, hi, n FROM ({source}) AS buckets WHERE 1 = 1 \
         ON CONFLICT (series_id, resolution, bucket) DO UPDATE SET \
         sum = excluded.sum, min = excluded.min, max = excluded.max, count = excluded.count"
    )
}

impl Store {
    /// Stores `points` of `device` in a transaction of their own (bare
    /// samples of older agents), the device having at most `max_series`
    /// series; returns what that refused. `NotFound` if the device does
    /// not exist.
    pub async fn insert_points(
        &self,
        device: &DeviceId,
        points: &[Point],
        received_at: DateTime<Utc>,
        max_series: u64,
    ) -> Result<Vec<RefusedSeries>, StoreError> {
        let points = DevicePoints::new(device, points);
        let mut tx = self.begin("store metric points").await?;
        let refused = write_points(
            &mut tx,
            self.postgres,
            &[(&points, 0)],
            received_at,
            max_series,
        )
        .await?;
        tx.commit().await.map_err(|source| StoreError::Query {
            context: "store metric points",
            source,
        })?;
        Ok(refused)
    }

    /// Where the rollup job stands: points received before this are
    /// rolled up. `None` before its first run.
    pub async fn rollup_done_until(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query("SELECT done_until FROM metric_rollup_state WHERE name = 'rollup'")
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read where the metrics rollup stands",
                source,
            })?;
        row.map(|row| time(get(&row, "done_until")?, "rollup done_until"))
            .transpose()
    }

    /// When the first raw point received at or after `since` arrived.
    pub async fn first_point_received(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(received_at) AS oldest FROM metric_points WHERE received_at >= $1",
        )
        .bind(millis(since))
        .fetch_one(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "find the oldest metric point",
            source,
        })?;
        let oldest: Option<i64> = get(&row, "oldest")?;
        oldest.map(|ms| time(ms, "oldest received_at")).transpose()
    }

    /// Rolls up every bucket holding a point received in `from..to` (1
    /// minute from the raw points, then 1 hour from the 1-minute rollups)
    /// and records `to` as done, in one transaction.
    pub async fn roll_up_received(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<RolledUp, StoreError> {
        let context = "roll up metric points";
        let error = |source| StoreError::Query { context, source };
        let mut tx = self.begin(context).await?;
        let mut done = RolledUp::default();
        for width in [MINUTE_MS, HOUR_MS] {
            let rows = sqlx::query(&rollup_sql(width))
                .bind(millis(from))
                .bind(millis(to))
                .bind(width)
                .execute(&mut *tx)
                .await
                .map_err(error)?
                .rows_affected();
            if width == MINUTE_MS {
                done.minute_buckets = rows;
            } else {
                done.hour_buckets = rows;
            }
        }
        sqlx::query(
            "INSERT INTO metric_rollup_state (name, done_until) VALUES ('rollup', $1) \
             ON CONFLICT (name) DO UPDATE SET done_until = excluded.done_until",
        )
        .bind(millis(to))
        .execute(&mut *tx)
        .await
        .map_err(error)?;
        tx.commit().await.map_err(error)?;
        Ok(done)
    }

    /// Deletes raw points received before `raw_before`, 1-minute rollups
    /// before `minutes_before`, 1-hour rollups and series whose newest
    /// point is before `hours_before`. Returns the rows deleted.
    pub async fn prune_metrics(
        &self,
        raw_before: DateTime<Utc>,
        minutes_before: DateTime<Utc>,
        hours_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let context = "delete metrics past their retention";
        let run =
            |sql: &'static str, before: i64| sqlx::query(sql).bind(before).execute(&self.pool);
        let mut deleted = 0;
        for (sql, before) in [
            (
                "DELETE FROM metric_points WHERE received_at < $1",
                millis(raw_before),
            ),
            (
                "DELETE FROM metric_rollups WHERE resolution = 60000 AND bucket < $1",
                millis(minutes_before),
            ),
            (
                "DELETE FROM metric_rollups WHERE resolution = 3600000 AND bucket < $1",
                millis(hours_before),
            ),
            // Their points first: no foreign key deletes them (ADR 0018).
            (
                "DELETE FROM metric_points WHERE series_id IN \
                 (SELECT id FROM metric_series WHERE last_at < $1)",
                millis(hours_before),
            ),
            (
                "DELETE FROM metric_series WHERE last_at < $1",
                millis(hours_before),
            ),
        ] {
            deleted += run(sql, before)
                .await
                .map_err(|source| StoreError::Query { context, source })?
                .rows_affected();
        }
        Ok(deleted)
    }

    /// The device's series, of `name` if given, by name and labels; at most
    /// `limit`.
    pub async fn list_series(
        &self,
        device: &DeviceId,
        name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredSeries>, StoreError> {
        let sql = "SELECT id, name, labels, last_at, last_value FROM metric_series \
                   WHERE device = $1 AND ($2 = '' OR name = $2) ORDER BY name, labels LIMIT $3";
        let rows = sqlx::query(sql)
            .bind(device.as_str())
            .bind(name.unwrap_or(""))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list a device's metric series",
                source,
            })?;
        rows.iter().map(series_from_row).collect()
    }

    /// The buckets of `step_ms` (a multiple of `resolution_ms`; 1 for raw
    /// points) of `series` in `since..until`, by series then time.
    pub async fn series_buckets(
        &self,
        series: &[i64],
        resolution_ms: i64,
        step_ms: i64,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<Bucket>, StoreError> {
        if series.is_empty() {
            return Ok(Vec::new());
        }
        let ids = (0..series.len())
            .map(|i| format!("${}", i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = if resolution_ms <= 1 {
            format!(
                "SELECT series_id, at - at % $1 AS b, SUM(value) AS s, MIN(value) AS lo, \
                 MAX(value) AS hi, COUNT(*) AS n FROM metric_points \
                 WHERE series_id IN ({ids}) AND at >= $2 AND at < $3 \
                 GROUP BY series_id, at - at % $1 ORDER BY series_id, b"
            )
        } else {
            format!(
                "SELECT series_id, bucket - bucket % $1 AS b, SUM(sum) AS s, MIN(min) AS lo, \
                 MAX(max) AS hi, CAST(SUM(count) AS BIGINT) AS n FROM metric_rollups \
                 WHERE resolution = {resolution_ms} AND series_id IN ({ids}) \
                 AND bucket >= $2 AND bucket < $3 \
                 GROUP BY series_id, bucket - bucket % $1 ORDER BY series_id, b"
            )
        };
        // Rollup buckets that start before `since` hold points of the window.
        let since_ms = millis(since) - millis(since).rem_euclid(resolution_ms.max(1));
        let mut query = sqlx::query(&sql)
            .bind(step_ms)
            .bind(since_ms)
            .bind(millis(until));
        for id in series {
            query = query.bind(*id);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a metric's points",
                source,
            })?;
        rows.iter()
            .map(|row| {
                Ok(Bucket {
                    series_id: get(row, "series_id")?,
                    start_ms: get(row, "b")?,
                    sum: get(row, "s")?,
                    min: get(row, "lo")?,
                    max: get(row, "hi")?,
                    count: to_u64(get(row, "n")?, "bucket count")?,
                })
            })
            .collect()
    }

    /// A page of the fleet's series whose newest point is at or after
    /// `fresh_since`, by name then id, after `after` (name, id); with
    /// their devices' labels.
    pub async fn fleet_latest(
        &self,
        after: Option<(&str, i64)>,
        fresh_since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<FleetRow>, StoreError> {
        let (name, id) = after.unwrap_or(("", i64::MIN));
        let sql = "SELECT s.id, s.name, s.device, s.labels, s.last_value, d.labels AS device_labels \
                   FROM metric_series s JOIN devices d ON d.name = s.device \
                   WHERE (s.name, s.id) > ($1, $2) AND s.last_at >= $3 \
                   ORDER BY s.name, s.id LIMIT $4";
        let rows = sqlx::query(sql)
            .bind(name)
            .bind(id)
            .bind(millis(fresh_since))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read the fleet's latest metrics",
                source,
            })?;
        rows.iter()
            .map(|row| {
                let labels: String = get(row, "labels")?;
                let device_labels: String = get(row, "device_labels")?;
                Ok(FleetRow {
                    id: get(row, "id")?,
                    name: get(row, "name")?,
                    device: get(row, "device")?,
                    labels: from_json(&labels, "series labels")?,
                    device_labels: from_json(&device_labels, "device labels")?,
                    value: get(row, "last_value")?,
                })
            })
            .collect()
    }
}

fn series_from_row(row: &AnyRow) -> Result<StoredSeries, StoreError> {
    let labels: String = get(row, "labels")?;
    Ok(StoredSeries {
        id: get(row, "id")?,
        name: get(row, "name")?,
        labels: from_json(&labels, "series labels")?,
        last_at: time(get(row, "last_at")?, "series last_at")?,
        last_value: get(row, "last_value")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_read_back_as_the_values() {
        assert_eq!(
            array_literal([1_i64, -2, i64::MAX].into_iter()),
            "{1,-2,9223372036854775807}"
        );
        assert_eq!(array_literal(std::iter::empty::<i64>()), "{}");
        for value in [0.1, 1e300, -2.5e-300, 0.73, f64::MAX] {
            let literal = array_literal([value].into_iter());
            let inner = literal.trim_matches(|c| c == '{' || c == '}');
            assert!(!inner.contains(['e', 'E']), "no exponent: {inner}");
            assert_eq!(inner.parse::<f64>(), Ok(value));
        }
        assert_eq!(
            text_array_literal([r#"{"k":"v"}"#, r"a\b", ""].into_iter()),
            r#"{"{\"k\":\"v\"}","a\\b",""}"#
        );
    }
}
