//! The `actions` table: each action with its per-device `seq` and its state.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::{ActionState, DeviceId};

use super::cluster::{EVENT_COLUMNS, bind_event, event_error, insert_event};
use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_i64, to_json, to_u16, to_u64,
    violates,
};
use super::{ActionRecord, Announcement, EventRecord, NewAction, Outcome, Store, StoreError};

pub(super) const COLUMNS: &str = "correlation_id, device, seq, action, input, sealed_input, \
                       state, status_code, status_message, response, created_at, delivered_at, \
                       completed_at, expires_at, timeout_seconds, job_id";

/// How often `insert_action` computes the next `seq` again after another
/// replica took the same one. Each retry means a concurrent insert for the
/// same device succeeded, so a handful covers any realistic burst.
const SEQ_ATTEMPTS: usize = 8;

/// Devices or actions named in one query: far below SQLite's and
/// PostgreSQL's limits on bound parameters, and a job's release batch in a
/// handful of statements.
const DEVICES_PER_QUERY: usize = 500;

impl Store {
    /// Stores a new `pending` action with the next per-device `seq`.
    /// `Conflict` if the correlation id is taken, `NotFound` if the device
    /// does not exist.
    pub async fn insert_action(&self, action: &NewAction) -> Result<ActionRecord, StoreError> {
        self.insert_action_announced(action, None).await
    }

    /// [`Store::insert_action`], sending `announcement` (PostgreSQL only)
    /// when the action commits, from the same statement.
    pub async fn insert_action_announced(
        &self,
        action: &NewAction,
        announcement: Option<&Announcement>,
    ) -> Result<ActionRecord, StoreError> {
        // One statement computes the seq and inserts, so it is its own
        // transaction: SQLite serialises writers, and on PostgreSQL two
        // replicas racing for the same seq make one fail on the unique
        // (device, seq) index, which then tries again.
        let insert = format!(
            "INSERT INTO actions (correlation_id, device, seq, action, input, sealed_input, \
                                  state, created_at, expires_at, timeout_seconds) \
             SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4, $5, $6, $7, $8, $9 \
             FROM actions WHERE device = $2 \
             RETURNING {COLUMNS}"
        );
        let announcement = announcement.filter(|_| self.postgres);
        let sql = match announcement {
            Some(_) => announcing(&insert, &[], Some(10)),
            None => insert,
        };
        let input = to_json(&action.input, "action input")?;
        let timeout_seconds = to_i64(action.timeout_seconds, "action timeout")?;
        let mut attempt = 1;
        loop {
            let mut query = sqlx::query(&sql)
                .bind(&action.correlation_id)
                .bind(action.device.as_str())
                .bind(&action.action)
                .bind(&input)
                .bind(&action.sealed_input)
                .bind(ActionState::Pending.as_str())
                .bind(millis(action.created_at))
                .bind(millis(action.expires_at))
                .bind(timeout_seconds);
            if let Some(announcement) = announcement {
                query = query.bind(announcement.channel).bind(&announcement.payload);
            }
            let result = query.fetch_one(&self.pool).await;
            let source = match result {
                Ok(row) => return action_from_row(&row),
                Err(source) => source,
            };
            if violates(&source, ErrorKind::ForeignKeyViolation) {
                return Err(StoreError::NotFound {
                    what: format!("device {}", action.device),
                });
            }
            if violates(&source, ErrorKind::UniqueViolation) {
                // Either the correlation id is taken, or another writer took
                // the seq; only the first is final.
                if self.get_action(&action.correlation_id).await?.is_some() {
                    return Err(StoreError::Conflict {
                        what: format!("action {}", action.correlation_id),
                    });
                }
                if attempt < SEQ_ATTEMPTS {
                    attempt += 1;
                    continue;
                }
            }
            return Err(StoreError::Query {
                context: "store an action",
                source,
            });
        }
    }

    pub async fn get_action(
        &self,
        correlation_id: &str,
    ) -> Result<Option<ActionRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM actions WHERE correlation_id = $1");
        let row = sqlx::query(&sql)
            .bind(correlation_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read an action",
                source,
            })?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// The device's newest actions, newest first, at most `limit`.
    pub async fn list_actions(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        self.list_actions_before(device, None, limit).await
    }

    /// The device's actions, newest first, at most `limit`, those accepted
    /// before `before_seq` if given.
    pub async fn list_actions_before(
        &self,
        device: &DeviceId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM actions WHERE device = $1 AND seq < $2 \
             ORDER BY seq DESC LIMIT $3"
        );
        let before_seq = match before_seq {
            Some(seq) => to_i64(seq, "action sequence number")?,
            None => i64::MAX,
        };
        let rows = sqlx::query(&sql)
            .bind(device.as_str())
            .bind(before_seq)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list a device's actions",
                source,
            })?;
        rows.iter().map(action_from_row).collect()
    }

    /// The `pending` and `delivered` actions of these devices, by device and
    /// `seq`: one query per [`DEVICES_PER_QUERY`] devices, so delivering a
    /// job's batch does not read the store once per device.
    pub async fn open_actions(
        &self,
        devices: &[DeviceId],
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let mut open = Vec::new();
        for chunk in devices.chunks(DEVICES_PER_QUERY) {
            let sql = format!(
                "SELECT {COLUMNS} FROM actions WHERE state IN ($1, $2) AND device IN ({}) \
                 ORDER BY device, seq",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(ActionState::Pending.as_str())
                .bind(ActionState::Delivered.as_str());
            for device in chunk {
                query = query.bind(device.as_str());
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::Query {
                    context: "list devices' open actions",
                    source,
                })?;
            for row in &rows {
                open.push(action_from_row(row)?);
            }
        }
        Ok(open)
    }

    /// Marks those of these actions that are still `pending` as `delivered`
    /// at `at`, one statement per [`DEVICES_PER_QUERY`] actions; an action
    /// answered or ended meanwhile keeps its state. Returns how many changed.
    pub async fn mark_delivered(
        &self,
        correlation_ids: &[String],
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut marked = 0;
        for chunk in correlation_ids.chunks(DEVICES_PER_QUERY) {
            let sql = format!(
                "UPDATE actions SET state = $1, delivered_at = $2 \
                 WHERE state = $3 AND correlation_id IN ({})",
                placeholders(4, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(ActionState::Delivered.as_str())
                .bind(millis(at))
                .bind(ActionState::Pending.as_str());
            for correlation_id in chunk {
                query = query.bind(correlation_id);
            }
            marked += query
                .execute(&self.pool)
                .await
                .map_err(|source| StoreError::Query {
                    context: "mark actions delivered",
                    source,
                })?
                .rows_affected();
        }
        Ok(marked)
    }

    /// Records a device's answer: the device's open (`pending` or
    /// `delivered`) action moves to `to` with `outcome`, and `event` is
    /// stored, in one transaction, so an answer is either recorded whole or
    /// not at all; `announcement` (PostgreSQL only) goes out when it
    /// commits. Returns the finished action; `None` (nothing written, nothing
    /// announced) if the action is not this device's, does not exist, or
    /// has ended.
    pub async fn record_answer(
        &self,
        device: &DeviceId,
        correlation_id: &str,
        to: ActionState,
        outcome: &Outcome,
        event: &EventRecord,
        announcement: Option<&Announcement>,
    ) -> Result<Option<ActionRecord>, StoreError> {
        let context = "record a device's answer";
        let response = outcome
            .response
            .as_ref()
            .map(|response| to_json(response, "action response"))
            .transpose()?;
        // The UPDATE comes first: it takes the row's lock (SQLite: the write
        // lock, before it reads), so a concurrent timeout or a second copy
        // of the answer waits and then finds the action ended.
        let update = format!(
            "UPDATE actions SET state = $1, completed_at = $2, status_code = $3, \
                                status_message = $4, response = $5, sealed_input = NULL \
             WHERE correlation_id = $6 AND device = $7 AND state IN ($8, $9) \
             RETURNING {COLUMNS}"
        );
        let bind_update = |sql| {
            sqlx::query(sql)
                .bind(to.as_str())
                .bind(millis(outcome.at))
                .bind(outcome.status_code.map(i64::from))
                .bind(outcome.status_message.as_deref())
                .bind(response.clone())
                .bind(correlation_id)
                .bind(device.as_str())
                .bind(ActionState::Pending.as_str())
                .bind(ActionState::Delivered.as_str())
        };
        if self.postgres {
            // On PostgreSQL one statement does it all (one round trip, not
            // BEGIN, UPDATE, INSERT and COMMIT): the event is inserted from
            // the updated row, so only if there is one.
            let insert = format!(
                "INSERT INTO events ({EVENT_COLUMNS}) \
                 SELECT $10, $11, $12, $13, $14, $15, $16, $17 FROM changed"
            );
            let sql = announcing(&update, &[&insert], announcement.map(|_| 18));
            let mut query = bind_event(bind_update(&sql), event)?;
            if let Some(announcement) = announcement {
                query = query.bind(announcement.channel).bind(&announcement.payload);
            }
            let row = query
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| event_error(source, event, context))?;
            return row.as_ref().map(action_from_row).transpose();
        }
        let mut tx = self.begin(context).await?;
        let row = bind_update(&update)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let finished = action_from_row(&row)?;
        insert_event(&mut tx, event).await?;
        tx.commit()
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        Ok(Some(finished))
    }

    /// The devices with `pending` actions not yet expired at `now` (uses the
    /// `(state, expires_at)` index).
    pub async fn devices_with_pending_actions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT device FROM actions WHERE state = $1 AND expires_at > $2")
                .bind(ActionState::Pending.as_str())
                .bind(millis(now))
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::Query {
                    context: "find devices with pending actions",
                    source,
                })?;
        rows.iter()
            .map(|row| device_id(get(row, "device")?))
            .collect()
    }

    /// Moves the action to `to` only if its current state is one of `from`
    /// (compare-and-set); returns the updated record, or `None` if the action
    /// does not exist or was in another state.
    ///
    /// `Delivered` sets `delivered_at` to `outcome.at`; a terminal state sets
    /// `completed_at`, the status and the response, and drops `sealed_input`.
    pub async fn transition_action(
        &self,
        correlation_id: &str,
        from: &[ActionState],
        to: ActionState,
        outcome: &Outcome,
    ) -> Result<Option<ActionRecord>, StoreError> {
        if from.is_empty() {
            return Ok(None);
        }
        let response = outcome
            .response
            .as_ref()
            .map(|response| to_json(response, "action response"))
            .transpose()?;
        // Placeholders are numbered in the order they appear in the text and
        // bound in that order too.
        let mut sql = String::from("UPDATE actions SET state = $1");
        let mut next = 2;
        if to == ActionState::Delivered {
            sql.push_str(", delivered_at = $2");
            next = 3;
        } else if to.is_terminal() {
            sql.push_str(
                ", completed_at = $2, status_code = $3, status_message = $4, response = $5, \
                 sealed_input = NULL",
            );
            next = 6;
        }
        sql.push_str(&format!(" WHERE correlation_id = ${next} AND state IN ("));
        let states: Vec<String> = (0..from.len())
            .map(|i| format!("${}", next + 1 + i))
            .collect();
        sql.push_str(&states.join(", "));
        sql.push_str(&format!(") RETURNING {COLUMNS}"));

        let mut query = sqlx::query(&sql).bind(to.as_str());
        if to == ActionState::Delivered {
            query = query.bind(millis(outcome.at));
        } else if to.is_terminal() {
            query = query
                .bind(millis(outcome.at))
                .bind(outcome.status_code.map(i64::from))
                .bind(outcome.status_message.as_deref())
                .bind(response);
        }
        query = query.bind(correlation_id);
        for state in from {
            query = query.bind(state.as_str());
        }
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "change an action's state",
                source,
            })?;
        row.as_ref().map(action_from_row).transpose()
    }

    /// `pending` and `queued` actions whose `expires_at` is at or before
    /// `now`, by device and `seq`.
    pub async fn expired_pending_actions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM actions WHERE state IN ($1, $2) AND expires_at <= $3 \
             ORDER BY device, seq"
        );
        let rows = sqlx::query(&sql)
            .bind(ActionState::Pending.as_str())
            .bind(ActionState::Queued.as_str())
            .bind(millis(now))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "find expired actions",
                source,
            })?;
        rows.iter().map(action_from_row).collect()
    }

    /// `delivered` actions whose `delivered_at + timeout_seconds` is at or
    /// before `now`, by device and `seq`.
    pub async fn overdue_delivered_actions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM actions \
             WHERE state = $1 AND delivered_at + timeout_seconds * 1000 <= $2 \
             ORDER BY device, seq"
        );
        let rows = sqlx::query(&sql)
            .bind(ActionState::Delivered.as_str())
            .bind(millis(now))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "find overdue actions",
                source,
            })?;
        rows.iter().map(action_from_row).collect()
    }

    /// How many actions are in each open (not terminal) state; read from the
    /// state index, so it stays cheap however many finished ones are kept.
    pub async fn open_action_counts(&self) -> Result<Vec<(ActionState, u64)>, StoreError> {
        let open: Vec<ActionState> = ActionState::ALL
            .into_iter()
            .filter(|state| !state.is_terminal())
            .collect();
        let placeholders = (1..=open.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT state, COUNT(*) AS n FROM actions WHERE state IN ({placeholders}) GROUP BY state"
        );
        let mut query = sqlx::query(&sql);
        for state in &open {
            query = query.bind(state.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "count open actions",
                source,
            })?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, "state")?;
                let state = ActionState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "an action's state is {state:?}, not a known state"
                    ))
                })?;
                Ok((state, to_u64(get(row, "n")?, "n")?))
            })
            .collect()
    }

    /// Deletes finished actions completed before `before`; open ones stay
    /// whatever their age. Returns how many.
    pub async fn delete_finished_actions_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.delete_before(
            "DELETE FROM actions WHERE completed_at IS NOT NULL AND completed_at < $1",
            before,
            "delete old finished actions",
        )
        .await
    }
}

/// `$first, $first+1, …`, `count` of them.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `change` (a statement `RETURNING` rows) as the CTE `changed`, followed
/// by the CTEs `more` (which may read `changed`), returning the rows of
/// `changed`; without `announce`, that is all. With it, PostgreSQL also
/// sends `pg_notify($n, $n + 1)` (`n` = `announce`, the next free
/// parameter) once for each changed row not of a job, at commit.
fn announcing(change: &str, more: &[&str], announce: Option<usize>) -> String {
    let mut sql = format!("WITH changed AS ({change})");
    for (i, cte) in more.iter().enumerate() {
        sql.push_str(&format!(", more_{i} AS ({cte})"));
    }
    match announce {
        Some(n) => {
            let next = n + 1;
            // Not for a job's actions: a job's answers arrive by the
            // thousand, and PostgreSQL serialises the commits of
            // transactions that NOTIFY (one queue lock): the job's answers
            // went from 4.9 s to 20 s for 10,000 devices. They are announced
            // after commit in batches instead (`ActionService::completed`).
            sql.push_str(&format!(
                ", announced AS (SELECT pg_notify(${n}, ${next}) FROM changed \
                 WHERE changed.job_id IS NULL) \
                 SELECT changed.* FROM changed LEFT JOIN announced ON true"
            ));
        }
        None => sql.push_str(" SELECT * FROM changed"),
    }
    sql
}

pub(super) fn action_from_row(row: &AnyRow) -> Result<ActionRecord, StoreError> {
    let correlation_id: String = get(row, "correlation_id")?;
    let what = |column: &str| format!("{column} of action {correlation_id}");
    let state: String = get(row, "state")?;
    let state = ActionState::parse(&state).ok_or_else(|| {
        StoreError::Corrupt(format!("{} is {state:?}, not a known state", what("state")))
    })?;
    let input: String = get(row, "input")?;
    let response: Option<String> = get(row, "response")?;
    let status_code: Option<i64> = get(row, "status_code")?;
    Ok(ActionRecord {
        device: device_id(get(row, "device")?)?,
        seq: to_u64(get(row, "seq")?, &what("seq"))?,
        action: get(row, "action")?,
        input: from_json(&input, &what("input"))?,
        sealed_input: get(row, "sealed_input")?,
        state,
        status_code: status_code
            .map(|code| to_u16(code, &what("status_code")))
            .transpose()?,
        status_message: get(row, "status_message")?,
        response: response
            .map(|response| from_json(&response, &what("response")))
            .transpose()?,
        created_at: time(get(row, "created_at")?, &what("created_at"))?,
        delivered_at: optional_time(get(row, "delivered_at")?, &what("delivered_at"))?,
        completed_at: optional_time(get(row, "completed_at")?, &what("completed_at"))?,
        expires_at: time(get(row, "expires_at")?, &what("expires_at"))?,
        timeout_seconds: to_u64(get(row, "timeout_seconds")?, &what("timeout_seconds"))?,
        job_id: get(row, "job_id")?,
        correlation_id,
    })
}
