//! The `actions` table: each action with its per-device `seq` and its state.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::{ActionState, DeviceId};

use super::cluster::{EVENT_COLUMNS, bind_event, event_error, insert_event};
use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, placeholders, time, to_i64, to_json,
    to_u16, to_u64, violates,
};
use super::telemetry::values_sql;
use super::{
    ActionRecord, Announcement, AnswerWrite, EventRecord, NewAction, Outcome, Store, StoreError,
};

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
pub(super) const DEVICES_PER_QUERY: usize = 500;

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
            Some(_) => announcing(&insert, Some(10)),
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
            let ids = placeholders(4, chunk.len());
            let sql = if self.postgres {
                // Rows locked in one order, as an answer batch locks them:
                // locked in the order of the scan, the two deadlocked under
                // a fleet-wide job and PostgreSQL took a second
                // (`deadlock_timeout`) to break each tie.
                format!(
                    "WITH locked AS MATERIALIZED (SELECT correlation_id AS locked_id FROM actions \
                         WHERE state = $3 AND correlation_id IN ({ids}) \
                         ORDER BY correlation_id FOR UPDATE) \
                     UPDATE actions SET state = $1, delivered_at = $2 FROM locked \
                     WHERE actions.correlation_id = locked.locked_id AND actions.state = $3"
                )
            } else {
                format!(
                    "UPDATE actions SET state = $1, delivered_at = $2 \
                     WHERE state = $3 AND correlation_id IN ({ids})"
                )
            };
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

    /// Records a device's answer ([`Store::record_answers`] for one).
    pub async fn record_answer(
        &self,
        device: &DeviceId,
        correlation_id: &str,
        to: ActionState,
        outcome: &Outcome,
        event: &EventRecord,
        announcement: Option<&Announcement>,
    ) -> Result<Option<ActionRecord>, StoreError> {
        let answer = AnswerWrite {
            device: device.clone(),
            correlation_id: correlation_id.to_owned(),
            to,
            outcome: outcome.clone(),
            event: event.clone(),
            announcement: announcement.cloned(),
        };
        self.record_answers(std::slice::from_ref(&answer))
            .await
            .pop()
            .unwrap_or(Ok(None))
    }

    /// Records devices' answers, each as [`AnswerWrite`] says: the device's
    /// open (`pending` or `delivered`) action moves to `to` with `outcome`
    /// and `event` is stored, both or neither; the announcement (PostgreSQL
    /// only) goes out at commit, for actions not of a job. One result per
    /// answer, in order: the finished action, or `None` (nothing written,
    /// nothing announced) if the action is not that device's, does not
    /// exist, or has ended — a second answer to the same action in the
    /// batch included.
    ///
    /// All in one statement on PostgreSQL and one transaction on SQLite: a
    /// fleet-wide job's answers arrive by the thousand, and a statement
    /// each was most of the job's writes. If the batch fails as a whole,
    /// each answer is tried on its own, so one bad answer fails only
    /// itself.
    pub async fn record_answers(
        &self,
        answers: &[AnswerWrite],
    ) -> Vec<Result<Option<ActionRecord>, StoreError>> {
        // Two answers to one action: the first goes in this batch, the
        // others after it (they find the action ended).
        let mut firsts = Vec::with_capacity(answers.len());
        let mut again = Vec::new();
        let mut seen = HashSet::new();
        for (index, answer) in answers.iter().enumerate() {
            if seen.insert(answer.correlation_id.as_str()) {
                firsts.push(index);
            } else {
                again.push(index);
            }
        }
        let mut results: Vec<Option<Result<Option<ActionRecord>, StoreError>>> =
            answers.iter().map(|_| None).collect();
        let batch: Vec<&AnswerWrite> = firsts.iter().map(|&index| &answers[index]).collect();
        match self.record_batch(&batch).await {
            Ok(mut finished) => {
                for &index in &firsts {
                    let answer = &answers[index];
                    let record = finished.remove(&answer.correlation_id);
                    results[index] = Some(Ok(record));
                }
            }
            Err(error) if batch.len() == 1 => results[firsts[0]] = Some(Err(error)),
            Err(error) => {
                tracing::warn!(answers = batch.len(), error = %crate::error_chain(&error), "could not record a batch of answers; recording them one by one");
                again.extend_from_slice(&firsts);
            }
        }
        again.sort_unstable();
        for index in again {
            let one = [&answers[index]];
            results[index] = Some(
                self.record_batch(&one)
                    .await
                    .map(|mut finished| finished.remove(&answers[index].correlation_id)),
            );
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or(Ok(None)))
            .collect()
    }

    /// [`Store::record_answers`] for answers to distinct actions: the
    /// finished actions by correlation id.
    async fn record_batch(
        &self,
        answers: &[&AnswerWrite],
    ) -> Result<HashMap<String, ActionRecord>, StoreError> {
        let context = "record devices' answers";
        let mut finished = HashMap::with_capacity(answers.len());
        if answers.is_empty() {
            return Ok(finished);
        }
        if self.postgres {
            let sql = answers_sql(answers.len());
            let mut query = sqlx::query(&sql);
            for answer in answers {
                query = bind_event(bind_answer(query, answer)?, &answer.event)?;
                let (channel, payload) = match &answer.announcement {
                    Some(announcement) => (Some(announcement.channel), Some(&announcement.payload)),
                    None => (None, None),
                };
                query = query.bind(channel).bind(payload);
            }
            let rows = query
                .bind(ActionState::Pending.as_str())
                .bind(ActionState::Delivered.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(|source| match answers {
                    [answer] => event_error(source, &answer.event, context),
                    _ => StoreError::Query { context, source },
                })?;
            for row in &rows {
                let action = action_from_row(row)?;
                finished.insert(action.correlation_id.clone(), action);
            }
            return Ok(finished);
        }
        // The UPDATE comes first: it takes the write lock before it reads,
        // so a concurrent timeout or a second copy of the answer waits and
        // then finds the action ended.
        let update = format!(
            "UPDATE actions SET state = $1, completed_at = $2, status_code = $3, \
                                status_message = $4, response = $5, sealed_input = NULL \
             WHERE correlation_id = $6 AND device = $7 AND state IN ($8, $9) \
             RETURNING {COLUMNS}"
        );
        let mut tx = self.begin(context).await?;
        for answer in answers {
            let row = bind_answer(sqlx::query(&update), answer)?
                .bind(ActionState::Pending.as_str())
                .bind(ActionState::Delivered.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|source| StoreError::Query { context, source })?;
            if let Some(row) = row {
                insert_event(&mut tx, &answer.event).await?;
                let action = action_from_row(&row)?;
                finished.insert(action.correlation_id.clone(), action);
            }
        }
        tx.commit()
            .await
            .map_err(|source| StoreError::Query { context, source })?;
        Ok(finished)
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

/// `change` (a statement `RETURNING` rows) as the CTE `changed`, returning
/// its rows; with `announce`, PostgreSQL also sends `pg_notify($n, $n + 1)`
/// (`n` = `announce`, the next free parameter) once for each changed row
/// not of a job, at commit (a job's answers: see [`answers_sql`]).
fn announcing(change: &str, announce: Option<usize>) -> String {
    let mut sql = format!("WITH changed AS ({change})");
    match announce {
        Some(n) => {
            let next = n + 1;
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

/// Parameters of one answer in [`answers_sql`]: [`bind_answer`]'s 7, the
/// event's 8 ([`bind_event`]), then the announcement's channel and payload.
const ANSWER_PARAMETERS: usize = 17;

/// On PostgreSQL, the one statement recording `rows` answers to distinct
/// actions ([`Store::record_answers`]): each changed action's event is
/// inserted from the same row, and its announcement sent at commit. Not for
/// a job's actions: a job's answers arrive by the thousand, and PostgreSQL
/// serialises the commits of transactions that NOTIFY (one queue lock): the
/// job's answers went from 4.9 s to 20 s for 10,000 devices. They are
/// announced after commit in batches instead (`ActionService::completed`).
/// The two states an answered action may be in follow the rows. The rows
/// are locked first, in correlation-id order, as [`Store::mark_delivered`]
/// locks them: two statements taking the same rows in different orders
/// deadlock, and PostgreSQL breaks a deadlock only after a second.
fn answers_sql(rows: usize) -> String {
    let values = values_sql("", ANSWER_PARAMETERS, rows, true);
    let pending = rows * ANSWER_PARAMETERS + 1;
    let delivered = pending + 1;
    format!(
        "WITH answer AS (VALUES {values}), \
         locked AS MATERIALIZED (SELECT actions.correlation_id AS locked_id FROM actions JOIN answer \
                 ON actions.correlation_id = answer.column6 AND actions.device = answer.column7 \
             WHERE actions.state IN (${pending}, ${delivered}) \
             ORDER BY actions.correlation_id FOR UPDATE OF actions), \
         changed AS (UPDATE actions SET state = answer.column1, completed_at = answer.column2, \
                            status_code = answer.column3, status_message = answer.column4, \
                            response = answer.column5, sealed_input = NULL \
             FROM answer, locked WHERE actions.correlation_id = answer.column6 \
                 AND actions.correlation_id = locked.locked_id \
                 AND actions.device = answer.column7 AND actions.state IN (${pending}, ${delivered}) \
             RETURNING {COLUMNS}), \
         stored AS (INSERT INTO events ({EVENT_COLUMNS}) \
             SELECT answer.column8, answer.column9, answer.column10, answer.column11, \
                    answer.column12, answer.column13, answer.column14, answer.column15 \
             FROM answer JOIN changed ON changed.correlation_id = answer.column6), \
         announced AS (SELECT pg_notify(answer.column16, answer.column17) \
             FROM answer JOIN changed ON changed.correlation_id = answer.column6 \
             WHERE changed.job_id IS NULL AND answer.column16 IS NOT NULL) \
         SELECT * FROM changed WHERE (SELECT COUNT(*) FROM announced) >= 0"
    )
}

/// Binds an answer's new state, outcome and action (correlation id,
/// device) as the next seven parameters.
fn bind_answer<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    answer: &'q AnswerWrite,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>, StoreError> {
    let outcome = &answer.outcome;
    let response = outcome
        .response
        .as_ref()
        .map(|response| to_json(response, "action response"))
        .transpose()?;
    Ok(query
        .bind(answer.to.as_str())
        .bind(millis(outcome.at))
        .bind(outcome.status_code.map(i64::from))
        .bind(outcome.status_message.as_deref())
        .bind(response)
        .bind(answer.correlation_id.as_str())
        .bind(answer.device.as_str()))
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
