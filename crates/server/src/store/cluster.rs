//! What replicas share: the `replicas` leases, who holds each device's
//! session (`devices.session_replica`), `cluster_settings`, and PostgreSQL
//! advisory locks for singleton work. The rules are in `crate::cluster`.

use chrono::{DateTime, Utc};
use sqlx::Connection as _;
use sqlx::error::ErrorKind;
use tether_proto::{DeviceId, Presence};

use super::codec::{device_id, get, millis, time, to_json, violates};
use super::{EventRecord, Store, StoreError};

/// Who holds a device's session, as its row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSession {
    pub presence: Presence,
    /// The replica holding the session; `None` while offline.
    pub replica: Option<String>,
}

/// One replica's lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub id: String,
    pub api_url: String,
    pub mqtt_url: String,
    pub started_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub lease_expires_at: DateTime<Utc>,
}

/// Devices whose sessions a replica held, marked offline as of `last_seen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSessions {
    pub last_seen: DateTime<Utc>,
    pub devices: Vec<DeviceId>,
}

/// A session-level PostgreSQL advisory lock on a connection of its own,
/// outside the pool: held while the connection lives, released by
/// PostgreSQL when it closes or dies.
pub struct AdvisoryLock {
    connection: sqlx::AnyConnection,
    key: i64,
}

impl AdvisoryLock {
    /// Whether this session still holds the lock: false once the
    /// connection died, or if something reset the session.
    pub async fn is_held(&mut self) -> bool {
        // A bigint key shows in pg_locks as classid (high 32 bits) and
        // objid (low 32 bits), with objsubid 1.
        let held = sqlx::query(
            "SELECT COUNT(*) AS held FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(self.key)
        .fetch_one(&mut self.connection)
        .await;
        matches!(held.map(|row| get::<i64>(&row, "held")), Ok(Ok(1)))
    }

    pub async fn release(mut self) {
        // Unlocked first: PostgreSQL ends a closed connection's backend,
        // and frees its locks, only after the close has returned, so a
        // successor trying at once could still find the lock held.
        let _ = sqlx::query("SELECT CAST(pg_advisory_unlock($1) AS INTEGER) AS released")
            .bind(self.key)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn presence_from(text: &str) -> Result<Presence, StoreError> {
    match text {
        "online" => Ok(Presence::Online),
        "offline" => Ok(Presence::Offline),
        other => Err(StoreError::Corrupt(format!(
            "a device's presence is {other:?}, neither online nor offline"
        ))),
    }
}

impl Store {
    /// Answers a trivial query: whether the store is reachable now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(query_error("check that the database answers"))?;
        Ok(())
    }

    /// Inserts the replica's row, or replaces it (same id: the replica
    /// restarted, or re-claims after its lease lapsed).
    pub async fn register_replica(&self, replica: &ReplicaRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (id, api_url, mqtt_url, started_at, renewed_at, lease_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url, \
             mqtt_url = excluded.mqtt_url, started_at = excluded.started_at, \
             renewed_at = excluded.renewed_at, lease_expires_at = excluded.lease_expires_at",
        )
        .bind(&replica.id)
        .bind(&replica.api_url)
        .bind(&replica.mqtt_url)
        .bind(millis(replica.started_at))
        .bind(millis(replica.renewed_at))
        .bind(millis(replica.lease_expires_at))
        .execute(&self.pool)
        .await
        .map_err(query_error("register this replica"))?;
        Ok(())
    }

    /// Extends the replica's lease; `false` if its row is gone (another
    /// replica took its devices over).
    pub async fn renew_replica_lease(
        &self,
        id: &str,
        renewed_at: DateTime<Utc>,
        lease_expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE replicas SET renewed_at = $1, lease_expires_at = $2 WHERE id = $3")
                .bind(millis(renewed_at))
                .bind(millis(lease_expires_at))
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(query_error("renew this replica's lease"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Replicas whose lease ended before `now`.
    pub async fn lapsed_replicas(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT id FROM replicas WHERE lease_expires_at < $1 ORDER BY id")
            .bind(millis(now))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("list replicas whose lease lapsed"))?;
        rows.iter().map(|row| get(row, "id")).collect()
    }

    /// Replicas whose lease runs at `now`, oldest first.
    pub async fn live_replicas(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReplicaRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, api_url, mqtt_url, started_at, renewed_at, lease_expires_at \
             FROM replicas WHERE lease_expires_at >= $1 ORDER BY started_at, id",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list the live replicas"))?;
        rows.iter()
            .map(|row| {
                let id: String = get(row, "id")?;
                let at = |column: &'static str| -> Result<DateTime<Utc>, StoreError> {
                    time(get(row, column)?, &format!("{column} of replica {id}"))
                };
                Ok(ReplicaRecord {
                    api_url: get(row, "api_url")?,
                    mqtt_url: get(row, "mqtt_url")?,
                    started_at: at("started_at")?,
                    renewed_at: at("renewed_at")?,
                    lease_expires_at: at("lease_expires_at")?,
                    id,
                })
            })
            .collect()
    }

    /// Ends the sessions `replica` held: deletes its row (only if its lease
    /// ended before `lapsed_before`, when given) and marks its online
    /// devices offline as of its last renewal (`now` if it has no row),
    /// recording `event(device, last_seen)` for each, all in one
    /// transaction. `None` if the row was not deleted because it renewed
    /// meanwhile or another replica got there first: then nothing changed,
    /// so two replicas taking one over record each event once.
    pub async fn end_replica_sessions(
        &self,
        replica: &str,
        lapsed_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: impl Fn(&DeviceId, DateTime<Utc>) -> EventRecord,
    ) -> Result<Option<EndedSessions>, StoreError> {
        let context = "end the device sessions of a replica";
        let mut tx = self.pool.begin().await.map_err(query_error(context))?;
        // The delete comes first: it takes the row's lock (SQLite: the write
        // lock), so a concurrent renewal or takeover waits and then finds
        // the row changed or gone.
        let deleted = sqlx::query(
            "DELETE FROM replicas WHERE id = $1 AND lease_expires_at < $2 RETURNING renewed_at",
        )
        .bind(replica)
        .bind(lapsed_before.map_or(i64::MAX, millis))
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error(context))?;
        let last_seen = match (deleted, lapsed_before) {
            (Some(row), _) => time(
                get(&row, "renewed_at")?,
                &format!("renewed_at of replica {replica}"),
            )?,
            (None, None) => now,
            (None, Some(_)) => return Ok(None),
        };
        let rows = sqlx::query(
            "UPDATE devices SET presence = $1, session_replica = NULL, last_seen = $2 \
             WHERE session_replica = $3 RETURNING name",
        )
        .bind(Presence::Offline.as_str())
        .bind(millis(last_seen))
        .bind(replica)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error(context))?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            let device = device_id(get(row, "name")?)?;
            insert_event(&mut tx, &event(&device, last_seen)).await?;
            devices.push(device);
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(Some(EndedSessions { last_seen, devices }))
    }

    /// Who holds the device's session; `None` if the device does not exist.
    pub async fn device_session(
        &self,
        device: &DeviceId,
    ) -> Result<Option<DeviceSession>, StoreError> {
        let row = sqlx::query("SELECT presence, session_replica FROM devices WHERE name = $1")
            .bind(device.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("read who holds a device's session"))?;
        row.map(|row| {
            Ok(DeviceSession {
                presence: presence_from(&get::<String>(&row, "presence")?)?,
                replica: get(&row, "session_replica")?,
            })
        })
        .transpose()
    }

    /// Moves the device's session from `expected` to `new` and records
    /// `events`, in one transaction; `false` (nothing written) if the row no
    /// longer says `expected`, or if `new` names a replica that has no
    /// lease row (it lapsed and was taken over: it must re-claim first, so
    /// no device is ever held by a replica nobody would take over).
    pub async fn move_device_session(
        &self,
        device: &DeviceId,
        expected: &DeviceSession,
        new: &DeviceSession,
        last_seen: DateTime<Utc>,
        events: &[EventRecord],
    ) -> Result<bool, StoreError> {
        let context = "record who holds a device's session";
        // On PostgreSQL the replica row is key-share-locked: a takeover's
        // delete waits for this write and then ends this session too, while
        // renewals (which change no key) never wait for a connect.
        let lock = if self.postgres { " FOR KEY SHARE" } else { "" };
        let sql = format!(
            "UPDATE devices SET presence = $1, session_replica = $2, last_seen = $3 \
             WHERE name = $4 AND presence = $5 AND COALESCE(session_replica, '') = $6 \
             AND ($2 IS NULL OR EXISTS (SELECT 1 FROM replicas WHERE id = $2{lock}))"
        );
        let mut tx = self.pool.begin().await.map_err(query_error(context))?;
        let updated = sqlx::query(&sql)
            .bind(new.presence.as_str())
            .bind(new.replica.as_deref())
            .bind(millis(last_seen))
            .bind(device.as_str())
            .bind(expected.presence.as_str())
            .bind(expected.replica.as_deref().unwrap_or_default())
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        for event in events {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(true)
    }

    /// Stores `value` under `key` unless one is stored; returns the stored
    /// one (the first writer's).
    pub async fn claim_cluster_setting(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO cluster_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(query_error("record a cluster setting"))?;
        let row = sqlx::query("SELECT value FROM cluster_settings WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("read a cluster setting"))?;
        get(&row, "value")
    }

    /// Takes the PostgreSQL advisory lock `key` on a new connection of its
    /// own; `None` if another session holds it. Only on PostgreSQL.
    pub async fn try_advisory_lock(
        &self,
        key: i64,
        holder: &str,
    ) -> Result<Option<AdvisoryLock>, StoreError> {
        let context = "take an advisory lock";
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(query_error(context))?
            // Out of the pool: the lock lives with this connection, and the
            // pool must not hand it to anyone else or count it.
            .detach();
        // Named, so that a replica taking this one over can end it.
        sqlx::query("SELECT set_config('application_name', $1, false)")
            .bind(holder)
            .execute(&mut connection)
            .await
            .map_err(query_error(context))?;
        let row = sqlx::query(
            "SELECT CAST(CASE WHEN pg_try_advisory_lock($1) THEN 1 ELSE 0 END AS BIGINT) AS taken",
        )
        .bind(key)
        .fetch_one(&mut connection)
        .await
        .map_err(query_error(context))?;
        if get::<i64>(&row, "taken")? == 1 {
            Ok(Some(AdvisoryLock { connection, key }))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }

    /// Terminates the sessions named `application_name` (a lapsed replica's
    /// lock connections), so the locks they hold are released even when
    /// that replica is cut off without its connections closing. Returns how
    /// many. Nothing to do on SQLite.
    pub async fn end_connections_named(&self, application_name: &str) -> Result<u64, StoreError> {
        if !self.postgres {
            return Ok(0);
        }
        // The sessions are chosen first (a materialised CTE): in one WHERE,
        // PostgreSQL may call pg_terminate_backend before it compares the
        // name, and end every session it reads.
        let rows = sqlx::query(
            "WITH named AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()) \
             SELECT CAST(CASE WHEN pg_terminate_backend(pid) THEN 1 ELSE 0 END AS BIGINT) \
             AS ended FROM named",
        )
        .bind(application_name)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("end a lapsed replica's lock connections"))?;
        let mut ended = 0;
        for row in &rows {
            ended += u64::from(get::<i64>(row, "ended")? == 1);
        }
        Ok(ended)
    }
}

/// Stores a device's event inside a caller's transaction.
pub(super) async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &EventRecord,
) -> Result<(), StoreError> {
    let sql =
        format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
    bind_event(sqlx::query(&sql), event)?
        .execute(&mut **tx)
        .await
        .map_err(|source| event_error(source, event, "record a device's event"))?;
    Ok(())
}

/// The columns an event is inserted with, in [`bind_event`]'s order.
pub(super) const EVENT_COLUMNS: &str =
    "id, device, correlation_id, event, status_code, status_message, response, received_at";

/// Binds `event`'s [`EVENT_COLUMNS`] as the next eight parameters.
pub(super) fn bind_event<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    event: &'q EventRecord,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>, StoreError> {
    Ok(query
        .bind(&event.id)
        .bind(event.device.as_str())
        .bind(event.correlation_id.as_deref())
        .bind(&event.event)
        .bind(i64::from(event.status_code))
        .bind(&event.status_message)
        .bind(to_json(&event.response, "event response")?)
        .bind(millis(event.received_at)))
}

/// A failed event insert: `Conflict` if its id is taken.
pub(super) fn event_error(
    source: sqlx::Error,
    event: &EventRecord,
    context: &'static str,
) -> StoreError {
    if violates(&source, ErrorKind::UniqueViolation) {
        StoreError::Conflict {
            what: format!("event {}", event.id),
        }
    } else {
        StoreError::Query { context, source }
    }
}
