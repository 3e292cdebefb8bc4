//! The `devices` table, and `device_labels`, the index of their labels.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use sqlx::{Any, Transaction};
use tether_proto::api::Labels;
use tether_proto::labels::LabelSelector;
use tether_proto::{DeviceId, Presence};

use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_i64, to_json, to_u64,
    violates,
};
use super::selector::label_filter;
use super::telemetry::values_sql;
use super::{DeviceCount, DeviceRecord, Store, StoreError};

/// Bytes of a device's actions: the requests tetherd sent it and the
/// answers and events it received, MQTT payloads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ActionBytes {
    pub sent: u64,
    pub received: u64,
}

/// A device seen at `at`, with the action bytes counted since its last
/// write ([`Store::touch_last_seen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenDevice {
    pub device: DeviceId,
    pub at: DateTime<Utc>,
    pub actions: ActionBytes,
}

impl ActionBytes {
    pub fn is_zero(&self) -> bool {
        self.sent == 0 && self.received == 0
    }
}

/// Which devices a listing holds and in which order.
#[derive(Debug, Clone, Copy)]
pub struct DeviceListing<'a> {
    pub selector: &'a LabelSelector,
    /// Only devices whose name or display name contains this, ignoring
    /// case (on SQLite, of ASCII letters only).
    pub search: Option<&'a str>,
    pub order: DeviceOrder,
}

/// The orders of the device list; equal times are ordered by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOrder {
    Name,
    NameDescending,
    /// Least recently seen first; a device never seen before all.
    LastSeen,
    LastSeenDescending,
}

impl DeviceOrder {
    /// Whether the order is by time last seen, and whether it descends.
    fn key(self) -> (bool, bool) {
        match self {
            Self::Name => (false, false),
            Self::NameDescending => (false, true),
            Self::LastSeen => (true, false),
            Self::LastSeenDescending => (true, true),
        }
    }
}

/// Where a page of a device listing starts: after this device, whose
/// time last seen (ms, 0 for never) matters in the orders by time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCursor {
    pub last_seen: i64,
    pub name: String,
}

impl DeviceCursor {
    /// The cursor after `device`.
    pub fn after(device: &DeviceRecord) -> Self {
        Self {
            last_seen: device.last_seen.map_or(0, millis),
            name: device.name.to_string(),
        }
    }
}

/// A `LIKE` pattern for "contains `text`", lowercased, its wildcards
/// escaped (with `\`).
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

const COLUMNS: &str = "name, labels, presence, certificate_serial, last_seen, agent_version, \
                       capabilities, boot_id, status_seq, created_at, display_name, policy";

impl Store {
    /// `Conflict` if a device of that name exists.
    pub async fn create_device(
        &self,
        name: &DeviceId,
        labels: &Labels,
        now: DateTime<Utc>,
    ) -> Result<DeviceRecord, StoreError> {
        self.create_named_device(name, labels, None, now).await
    }

    /// [`Self::create_device`] with what people call it.
    pub async fn create_named_device(
        &self,
        name: &DeviceId,
        labels: &Labels,
        display_name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<DeviceRecord, StoreError> {
        let mut tx = self.begin("create a device").await?;
        let record = insert_device(
            &mut tx,
            &NewDevice {
                name,
                labels,
                display_name,
                policy: None,
            },
            now,
        )
        .await?;
        commit(tx, "create a device").await?;
        Ok(record)
    }

    /// Creates many devices in few statements, all or none: `Conflict` if
    /// any name exists.
    pub async fn create_devices(
        &self,
        devices: &[(DeviceId, Labels)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        /// Rows per statement: well under both databases' parameter limits.
        const CHUNK: usize = 500;
        let mut tx = self.begin("create devices").await?;
        for chunk in devices.chunks(CHUNK) {
            let values = placeholders(chunk.len(), 4, ", 0");
            let sql = format!(
                "INSERT INTO devices (name, labels, presence, created_at, status_seq) VALUES {values}"
            );
            let mut query = sqlx::query(&sql);
            for (name, labels) in chunk {
                query = query
                    .bind(name.as_str())
                    .bind(to_json(labels, "device labels")?)
                    .bind(Presence::Offline.as_str())
                    .bind(millis(now));
            }
            query.execute(&mut *tx).await.map_err(|source| {
                let (first, last) = (&chunk[0].0, &chunk[chunk.len() - 1].0);
                create_error(source, format!("a device of {first} … {last}"))
            })?;
            let labels: Vec<(&DeviceId, &String, &String)> = chunk
                .iter()
                .flat_map(|(name, labels)| labels.iter().map(move |(k, v)| (name, k, v)))
                .collect();
            for rows in labels.chunks(CHUNK * 2) {
                insert_label_rows(&mut tx, rows).await?;
            }
        }
        commit(tx, "create devices").await
    }

    pub async fn get_device(&self, name: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a device",
                source,
            })?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// All devices, ordered by name.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices ORDER BY name");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list devices",
                source,
            })?;
        rows.iter().map(device_from_row).collect()
    }

    /// Replaces the labels; `None` if the device does not exist.
    pub async fn set_labels(
        &self,
        name: &DeviceId,
        labels: &Labels,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let context = "set a device's labels";
        let sql = format!("UPDATE devices SET labels = $1 WHERE name = $2 RETURNING {COLUMNS}");
        let mut tx = self.begin(context).await?;
        let row = sqlx::query(&sql)
            .bind(to_json(labels, "device labels")?)
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM device_labels WHERE device = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        insert_labels(&mut tx, name, labels).await?;
        commit(tx, context).await?;
        device_from_row(&row).map(Some)
    }

    /// One page of the devices the selector picks, by name: at most `limit`
    /// whose names come after `after`.
    pub async fn list_devices_page(
        &self,
        selector: &LabelSelector,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let listing = DeviceListing {
            selector,
            search: None,
            order: DeviceOrder::Name,
        };
        let after = after.map(|name| DeviceCursor {
            last_seen: 0,
            name: name.to_owned(),
        });
        self.search_devices(&listing, after.as_ref(), limit).await
    }

    /// One page of the devices `listing` picks, in its order: at most
    /// `limit` that come after `after` (the last device of the previous
    /// page). Each order is a walk of an index: the primary key for names,
    /// `devices_last_seen_name` for times last seen, in either direction.
    pub async fn search_devices(
        &self,
        listing: &DeviceListing<'_>,
        after: Option<&DeviceCursor>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        const SEEN: &str = "COALESCE(d.last_seen, 0)";
        let mut conditions = Vec::new();
        let mut text_binds: Vec<String> = Vec::new();
        let mut next = 1;
        let placeholder = |next: &mut usize| {
            *next += 1;
            format!("${}", *next - 1)
        };
        // Binds in placeholder order: the cursor's time (twice, if sorted
        // by it), then text (cursor name, search patterns, selector values).
        let mut seen_binds = Vec::new();
        if let Some(after) = after {
            let (by_time, descending) = listing.order.key();
            let compare = if descending { "<" } else { ">" };
            if by_time {
                let (from, beyond) = (placeholder(&mut next), placeholder(&mut next));
                let name = placeholder(&mut next);
                seen_binds.extend([after.last_seen, after.last_seen]);
                text_binds.push(after.name.clone());
                // Rather than the row value `(time, name) > (…)`: SQLite
                // starts an index range at `time >= …` but not at that.
                conditions.push(format!(
                    "{SEEN} {compare}= {from} AND ({SEEN} {compare} {beyond} OR d.name {compare} {name})"
                ));
            } else {
                let name = placeholder(&mut next);
                text_binds.push(after.name.clone());
                conditions.push(format!("d.name {compare} {name}"));
            }
        }
        if let Some(search) = listing.search.filter(|search| !search.is_empty()) {
            // A placeholder per use: SQLite and PostgreSQL number them
            // alike only when each is bound once.
            let (in_name, in_display_name) = (placeholder(&mut next), placeholder(&mut next));
            text_binds.extend([like_pattern(search), like_pattern(search)]);
            conditions.push(format!(
                "(LOWER(d.name) LIKE {in_name} ESCAPE '\\' \
                 OR LOWER(COALESCE(d.display_name, '')) LIKE {in_display_name} ESCAPE '\\')"
            ));
        }
        let filter = label_filter(listing.selector, next);
        next += filter.binds.len();
        text_binds.extend(filter.binds.iter().cloned());
        let order = match listing.order {
            DeviceOrder::Name => "d.name".to_owned(),
            DeviceOrder::NameDescending => "d.name DESC".to_owned(),
            DeviceOrder::LastSeen => format!("{SEEN}, d.name"),
            DeviceOrder::LastSeenDescending => format!("{SEEN} DESC, d.name DESC"),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM devices d WHERE 1 = 1{}{} ORDER BY {order} LIMIT ${next}",
            conditions
                .iter()
                .map(|condition| format!(" AND {condition}"))
                .collect::<String>(),
            filter.and_clause(),
        );
        let mut query = sqlx::query(&sql);
        for at in seen_binds {
            query = query.bind(at);
        }
        for value in &text_binds {
            query = query.bind(value);
        }
        let rows = query
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list devices",
                source,
            })?;
        rows.iter().map(device_from_row).collect()
    }

    /// How many of the devices the selector picks are in each presence,
    /// per value of label `by` (`None` for those without it) if given.
    /// One `GROUP BY`; a combination without devices has no entry.
    pub async fn count_devices(
        &self,
        selector: &LabelSelector,
        by: Option<&str>,
    ) -> Result<Vec<DeviceCount>, StoreError> {
        // Without a label the groups are the presences alone (PostgreSQL
        // refuses `GROUP BY NULL`).
        let (group, join, first) = match by {
            Some(_) => (
                "l.value, d.presence",
                "LEFT JOIN device_labels l ON l.device = d.name AND l.key = $1",
                2,
            ),
            None => ("d.presence", "", 1),
        };
        let filter = label_filter(selector, first);
        // The selector's subqueries alias device_labels as `l` too; each is
        // scoped to its subquery, so the joined `l` is unambiguous outside.
        let sql = format!(
            "SELECT {group}, COUNT(*) AS devices FROM devices d {join} \
             WHERE 1 = 1{} GROUP BY {group}",
            filter.and_clause()
        );
        let mut query = sqlx::query(&sql);
        if let Some(by) = by {
            query = query.bind(by);
        }
        for value in &filter.binds {
            query = query.bind(value);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "count devices",
                source,
            })?;
        rows.iter()
            .map(|row| {
                Ok(DeviceCount {
                    label_value: if by.is_some() {
                        get(row, "value")?
                    } else {
                        None
                    },
                    presence: presence(get(row, "presence")?, "a device count")?,
                    devices: to_u64(get(row, "devices")?, "a device count")?,
                })
            })
            .collect()
    }

    /// Copies the labels of devices stored before `device_labels` existed
    /// (migration 0010) into it; a no-op once done. Idempotent, so replicas
    /// starting together may both run it.
    pub(super) async fn index_unindexed_labels(&self) -> Result<(), StoreError> {
        let context = "index the labels of existing devices";
        let rows = sqlx::query(
            "SELECT name, labels FROM devices d WHERE labels <> '{}' \
             AND NOT EXISTS (SELECT 1 FROM device_labels l WHERE l.device = d.name)",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query { context, source })?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            let labels = device_id(get(row, "name")?).and_then(|name| {
                let labels: Labels = from_json(
                    &get::<String>(row, "labels")?,
                    &format!("labels of device {name}"),
                )?;
                Ok((name, labels))
            });
            // One unreadable row must not keep tetherd from starting; reading
            // that device reports it as well.
            match labels {
                Ok(device) => devices.push(device),
                Err(error) => tracing::warn!(
                    error = %crate::error_chain(&error),
                    "a device's labels cannot be indexed; label selectors will not find it"
                ),
            }
        }
        let mut tx = self.begin(context).await?;
        let labels: Vec<(&DeviceId, &String, &String)> = devices
            .iter()
            .flat_map(|(name, labels)| labels.iter().map(move |(k, v)| (name, k, v)))
            .collect();
        for rows in labels.chunks(1000) {
            insert_label_rows(&mut tx, rows).await?;
        }
        commit(tx, context).await?;
        tracing::info!(
            devices = devices.len(),
            "indexed the labels of existing devices"
        );
        Ok(())
    }

    /// Deletes the device with its tokens, actions, events and metrics
    /// (foreign keys cascade; its raw metric points by hand). `false` if it
    /// did not exist.
    pub async fn delete_device(&self, name: &DeviceId) -> Result<bool, StoreError> {
        let context = "delete a device";
        let error = |source| StoreError::Query { context, source };
        let mut tx = self.begin(context).await?;
        // Raw points have no foreign key to their series (ADR 0018), and a
        // device of the same name would find them again (series ids come
        // from the names): they go first. On PostgreSQL the device's row
        // is locked first, so no ingest creates a series of it meanwhile
        // (that checks the row), then its series, so the ingest storing
        // points of them has committed (SQLite has one writer).
        if self.postgres {
            for sql in [
                "SELECT name FROM devices WHERE name = $1 FOR UPDATE",
                "SELECT id FROM metric_series WHERE device = $1 FOR UPDATE",
            ] {
                sqlx::query(sql)
                    .bind(name.as_str())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(error)?;
            }
        }
        sqlx::query(
            "DELETE FROM metric_points WHERE series_id IN \
             (SELECT id FROM metric_series WHERE device = $1)",
        )
        .bind(name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(error)?;
        let result = sqlx::query("DELETE FROM devices WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(error)?;
        if result.rows_affected() > 0 {
            Store::resolve_device_alerts(&mut tx, name, Utc::now()).await?;
        }
        tx.commit().await.map_err(error)?;
        Ok(result.rows_affected() > 0)
    }

    /// `NotFound` if the device does not exist (deleted while enrolling).
    /// The certificate before it, if any, stops working at once.
    pub async fn set_certificate_serial(
        &self,
        name: &DeviceId,
        serial_hex: &str,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE devices SET certificate_serial = $1, previous_certificate_serial = NULL \
             WHERE name = $2",
        )
        .bind(serial_hex)
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "store a device's certificate serial",
            source,
        })?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("device {name}"),
            });
        }
        Ok(())
    }

    /// A device deleted meanwhile is not an error: its session is on its way
    /// out and there is nothing left to update.
    pub async fn set_presence(
        &self,
        name: &DeviceId,
        presence: Presence,
        last_seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET presence = $1, last_seen = $2 WHERE name = $3")
            .bind(presence.as_str())
            .bind(millis(last_seen))
            .bind(name.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "set a device's presence",
                source,
            })?;
        Ok(())
    }

    /// Records when each device was last seen and adds the action bytes
    /// counted since its last write (they ride on this write rather than
    /// cost a statement per action), for every device in one statement;
    /// at most one entry per device (PostgreSQL would apply only one of
    /// two). Their presence is left alone; a device deleted meanwhile is
    /// skipped.
    pub async fn touch_last_seen(&self, seen: &[SeenDevice]) -> Result<(), StoreError> {
        let context = "record when devices were last seen";
        if seen.is_empty() {
            return Ok(());
        }
        // Both dialects name a VALUES list's columns column1, column2, ….
        let sql = values_sql(
            "UPDATE devices SET last_seen = v.column2, \
             action_bytes_sent = action_bytes_sent + v.column3, \
             action_bytes_received = action_bytes_received + v.column4 \
             FROM (VALUES ",
            4,
            seen.len(),
            self.postgres,
        ) + ") AS v WHERE devices.name = v.column1";
        let mut query = sqlx::query(&sql);
        for SeenDevice {
            device,
            at,
            actions,
        } in seen
        {
            query = query
                .bind(device.as_str())
                .bind(millis(*at))
                .bind(to_i64(actions.sent, "action bytes sent")?)
                .bind(to_i64(actions.received, "action bytes received")?);
        }
        query
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        Ok(())
    }

    /// What the device's birth says about its agent; an empty version or
    /// boot id (a birth without them) is stored as unknown. Like
    /// `set_presence`, a device deleted meanwhile is not an error.
    pub async fn set_agent_status(
        &self,
        name: &DeviceId,
        agent_version: &str,
        capabilities: &[String],
        boot_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET agent_version = $1, capabilities = $2, boot_id = $3, \
             status_seq = $4 WHERE name = $5",
        )
        .bind((!agent_version.is_empty()).then_some(agent_version))
        .bind(to_json(&capabilities, "device capabilities")?)
        .bind((!boot_id.is_empty()).then_some(boot_id))
        .bind(to_i64(seq, "status sequence number")?)
        .bind(name.as_str())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "set a device's agent status",
            source,
        })?;
        Ok(())
    }
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord, StoreError> {
    let name = device_id(get(row, "name")?)?;
    let labels: String = get(row, "labels")?;
    let presence = presence(get(row, "presence")?, &format!("device {name}"))?;
    Ok(DeviceRecord {
        labels: from_json(&labels, &format!("labels of device {name}"))?,
        presence,
        certificate_serial: get(row, "certificate_serial")?,
        last_seen: optional_time(
            get(row, "last_seen")?,
            &format!("last_seen of device {name}"),
        )?,
        agent_version: get(row, "agent_version")?,
        capabilities: from_json(
            &get::<String>(row, "capabilities")?,
            &format!("capabilities of device {name}"),
        )?,
        boot_id: get(row, "boot_id")?,
        display_name: get(row, "display_name")?,
        policy: get(row, "policy")?,
        status_seq: to_u64(
            get(row, "status_seq")?,
            &format!("status_seq of device {name}"),
        )?,
        created_at: time(
            get(row, "created_at")?,
            &format!("created_at of device {name}"),
        )?,
        name,
    })
}

fn presence(stored: String, what: &str) -> Result<Presence, StoreError> {
    match stored.as_str() {
        "online" => Ok(Presence::Online),
        "offline" => Ok(Presence::Offline),
        other => Err(StoreError::Corrupt(format!(
            "presence of {what} is {other:?}, neither online nor offline"
        ))),
    }
}

/// `what` names the device or devices, as "`what` already exists".
fn create_error(source: sqlx::Error, what: String) -> StoreError {
    if violates(&source, ErrorKind::UniqueViolation) {
        StoreError::Conflict { what }
    } else {
        StoreError::Query {
            context: "create a device",
            source,
        }
    }
}

/// `($1, $2, …, $k), ($k+1, …)`: `rows` tuples of `columns` placeholders;
/// `tail` closes each tuple after its placeholders (`, 0` adds a literal).
fn placeholders(rows: usize, columns: usize, tail: &str) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({}{tail})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A device row to insert, with where it came from.
pub(super) struct NewDevice<'a> {
    pub name: &'a DeviceId,
    pub labels: &'a Labels,
    pub display_name: Option<&'a str>,
    /// The provisioning policy that creates it.
    pub policy: Option<&'a str>,
}

/// Inserts a device and its label index in `tx`; `Conflict` if the name
/// is taken.
pub(super) async fn insert_device(
    tx: &mut Transaction<'_, Any>,
    device: &NewDevice<'_>,
    now: DateTime<Utc>,
) -> Result<DeviceRecord, StoreError> {
    let sql = format!(
        "INSERT INTO devices (name, labels, presence, status_seq, created_at, display_name, policy) \
         VALUES ($1, $2, $3, 0, $4, $5, $6) RETURNING {COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(device.name.as_str())
        .bind(to_json(device.labels, "device labels")?)
        .bind(Presence::Offline.as_str())
        .bind(millis(now))
        .bind(device.display_name)
        .bind(device.policy)
        .fetch_one(&mut **tx)
        .await
        .map_err(|source| create_error(source, format!("device {}", device.name)))?;
    insert_labels(tx, device.name, device.labels).await?;
    device_from_row(&row)
}

async fn insert_labels(
    tx: &mut Transaction<'_, Any>,
    name: &DeviceId,
    labels: &Labels,
) -> Result<(), StoreError> {
    let rows: Vec<(&DeviceId, &String, &String)> = labels
        .iter()
        .map(|(key, value)| (name, key, value))
        .collect();
    insert_label_rows(tx, &rows).await
}

/// Rows that exist already are left alone (a start-up indexing that runs
/// on two replicas at once).
async fn insert_label_rows(
    tx: &mut Transaction<'_, Any>,
    rows: &[(&DeviceId, &String, &String)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO device_labels (device, key, value) VALUES {} \
         ON CONFLICT (device, key) DO NOTHING",
        placeholders(rows.len(), 3, "")
    );
    let mut query = sqlx::query(&sql);
    for (device, key, value) in rows {
        query = query
            .bind(device.as_str())
            .bind(key.as_str())
            .bind(value.as_str());
    }
    query
        .execute(&mut **tx)
        .await
        .map_err(|source| StoreError::Query {
            context: "index a device's labels",
            source,
        })?;
    Ok(())
}

async fn commit(tx: Transaction<'_, Any>, context: &'static str) -> Result<(), StoreError> {
    tx.commit()
        .await
        .map_err(|source| StoreError::Query { context, source })
}
