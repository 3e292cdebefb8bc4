//! The `jobs` table, and the queries over a job's actions: batch creation,
//! counts by state, release of queued actions, cancellation.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::api::{JobCounts, JobState};
use tether_proto::{ActionState, DeviceId, Presence};

use super::actions::{COLUMNS as ACTION_COLUMNS, action_from_row};
use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_i64, to_json, to_u64,
    violates,
};
use super::telemetry::before_or_newest;
use super::{ActionRecord, Before, Store, StoreError};

const COLUMNS: &str = "id, label_selector, action, input, state, devices, concurrency, \
                       rate_per_second, ttl_seconds, timeout_seconds, created_at, cancelled_at, \
                       finished_at, counts";

/// Rows per multi-row INSERT: 2 parameters a row stays far below SQLite's
/// and PostgreSQL's limits, and a few statements carry 10,000 devices.
const INSERT_BATCH: usize = 500;

/// How often a job's creation is tried again after a concurrent single
/// action took a `seq` the batch computed for the same device.
const INSERT_ATTEMPTS: usize = 4;

/// A job to store with one queued action per device.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub label_selector: String,
    pub action: String,
    /// Redacted, as shown.
    pub input: serde_json::Value,
    /// The full input sealed for delivery; every device's action carries it.
    pub sealed_input: String,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<u32>,
    pub ttl_seconds: u64,
    pub timeout_seconds: u64,
    pub created_at: DateTime<Utc>,
    /// Each device with the correlation id of its action.
    pub actions: Vec<(String, DeviceId)>,
    /// The actions are stored `pending`, released at once, rather than
    /// `queued` for the dispatcher.
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub label_selector: String,
    pub action: String,
    pub input: serde_json::Value,
    pub state: JobState,
    pub devices: u64,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<u32>,
    pub ttl_seconds: u64,
    pub timeout_seconds: u64,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The final counts, once finished.
    pub counts: Option<JobCounts>,
}

impl Store {
    /// Stores the job and its queued actions in one transaction, in
    /// multi-row INSERTs; each action gets its device's next `seq`.
    /// `NotFound` if a device was deleted meanwhile.
    pub async fn insert_job(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_insert_job(job).await {
                Err(StoreError::Query { source, .. })
                    if violates(&source, ErrorKind::UniqueViolation)
                        && attempt < INSERT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(StoreError::Query { source, .. })
                    if violates(&source, ErrorKind::ForeignKeyViolation) =>
                {
                    return Err(StoreError::NotFound {
                        what: "a device of the job (deleted while the job was created)".into(),
                    });
                }
                other => return other,
            }
        }
    }

    async fn try_insert_job(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        let query_error = |context| move |source| StoreError::Query { context, source };
        let input = to_json(&job.input, "job input")?;
        let ttl_seconds = to_i64(job.ttl_seconds, "job ttl")?;
        let timeout_seconds = to_i64(job.timeout_seconds, "job timeout")?;
        let expires_at = job.created_at + chrono::Duration::seconds(ttl_seconds);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("begin storing a job"))?;
        let sql = format!(
            "INSERT INTO jobs (id, label_selector, action, input, state, devices, concurrency, \
                               rate_per_second, ttl_seconds, timeout_seconds, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&job.id)
            .bind(&job.label_selector)
            .bind(&job.action)
            .bind(&input)
            .bind(JobState::Running.as_str())
            .bind(job.actions.len() as i64)
            .bind(job.concurrency.map(i64::from))
            .bind(job.rate_per_second.map(i64::from))
            .bind(ttl_seconds)
            .bind(timeout_seconds)
            .bind(millis(job.created_at))
            .fetch_one(&mut *tx)
            .await
            .map_err(query_error("store a job"))?;
        let record = job_from_row(&row)?;
        for batch in job.actions.chunks(INSERT_BATCH) {
            // Only the correlation id and the device differ between rows;
            // each row's seq follows the device's newest action (the unique
            // (device, seq) index answers the MAX).
            let values: Vec<String> = (0..batch.len())
                .map(|i| format!("(${}, ${})", 9 + 2 * i, 10 + 2 * i))
                .collect();
            let sql = format!(
                "INSERT INTO actions (correlation_id, device, seq, action, input, sealed_input, \
                                      state, created_at, expires_at, timeout_seconds, job_id) \
                 SELECT v.column1, v.column2, \
                        COALESCE((SELECT MAX(a.seq) FROM actions a WHERE a.device = v.column2), 0) + 1, \
                        $1, $2, $3, $4, $5, $6, $7, $8 \
                 FROM (VALUES {}) AS v",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql)
                .bind(&job.action)
                .bind(&input)
                .bind(&job.sealed_input)
                .bind(if job.released {
                    ActionState::Pending.as_str()
                } else {
                    ActionState::Queued.as_str()
                })
                .bind(millis(job.created_at))
                .bind(millis(expires_at))
                .bind(timeout_seconds)
                .bind(&job.id);
            for (correlation_id, device) in batch {
                query = query.bind(correlation_id).bind(device.as_str());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(query_error("store a job's actions"))?;
        }
        tx.commit().await.map_err(query_error("commit a new job"))?;
        Ok(record)
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "read a job",
                source,
            })?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs, newest first, at most `limit`.
    /// Jobs newest first, at most `limit` created before `before`.
    pub async fn list_jobs(
        &self,
        before: Option<&Before>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (at, id) = before_or_newest(before);
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE created_at <= $1 AND (created_at < $1 OR id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(at)
            .bind(id)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list jobs",
                source,
            })?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs some of whose actions may still be open: the dispatcher's work.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM jobs WHERE finished_at IS NULL ORDER BY created_at");
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list unfinished jobs",
                source,
            })?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many of the job's actions are in each state, in one GROUP BY.
    pub async fn job_counts(&self, id: &str) -> Result<JobCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS count FROM actions WHERE job_id = $1 GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "count a job's actions",
            source,
        })?;
        let mut counts = JobCounts::default();
        for row in &rows {
            let state: String = get(row, "state")?;
            let state = ActionState::parse(&state).ok_or_else(|| {
                StoreError::Corrupt(format!("an action of job {id} is {state:?}"))
            })?;
            counts.add(state, to_u64(get(row, "count")?, "count")?);
        }
        Ok(counts)
    }

    /// Moves up to `at_most` of the job's queued actions to `pending` and
    /// returns their devices; with `online_only`, only of devices online now.
    pub async fn release_queued(
        &self,
        job: &str,
        at_most: u64,
        online_only: bool,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let online = if online_only {
            "JOIN devices d ON d.name = q.device AND d.presence = $5"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE actions SET state = $1 WHERE state = $2 AND correlation_id IN ( \
                 SELECT q.correlation_id FROM actions q {online} \
                 WHERE q.job_id = $3 AND q.state = $2 ORDER BY q.device LIMIT $4) \
             RETURNING device"
        );
        let mut query = sqlx::query(&sql)
            .bind(ActionState::Pending.as_str())
            .bind(ActionState::Queued.as_str())
            .bind(job)
            .bind(i64::try_from(at_most).unwrap_or(i64::MAX));
        if online_only {
            query = query.bind(Presence::Online.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "release a job's queued actions",
                source,
            })?;
        rows.iter()
            .map(|row| device_id(get(row, "device")?))
            .collect()
    }

    /// Cancels a running job: its queued and pending actions become
    /// `cancelled` with `reason`, in one transaction with the job's state.
    /// Returns the job and the actions cancelled; `None` if there is no such
    /// job. A job that is not running is returned unchanged.
    pub async fn cancel_job(
        &self,
        id: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<(JobRecord, Vec<ActionRecord>)>, StoreError> {
        let query_error = |context| move |source| StoreError::Query { context, source };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("begin cancelling a job"))?;
        let sql = format!(
            "UPDATE jobs SET state = $1, cancelled_at = $2 WHERE id = $3 AND state = $4 \
             RETURNING {COLUMNS}"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(JobState::Cancelled.as_str())
            .bind(millis(now))
            .bind(id)
            .bind(JobState::Running.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error("cancel a job"))?
        else {
            drop(tx);
            return Ok(self.get_job(id).await?.map(|job| (job, Vec::new())));
        };
        let job = job_from_row(&row)?;
        let sql = if self.postgres {
            // In correlation-id order, as answers and deliveries lock a
            // job's pending actions (see `Store::mark_delivered`).
            format!(
                "WITH locked AS MATERIALIZED (SELECT correlation_id AS locked_id FROM actions \
                     WHERE job_id = $4 AND state IN ($5, $6) \
                     ORDER BY correlation_id FOR UPDATE) \
                 UPDATE actions SET state = $1, completed_at = $2, status_message = $3, \
                                    sealed_input = NULL \
                 FROM locked WHERE actions.correlation_id = locked.locked_id \
                     AND actions.state IN ($5, $6) RETURNING {ACTION_COLUMNS}"
            )
        } else {
            format!(
                "UPDATE actions SET state = $1, completed_at = $2, status_message = $3, \
                                    sealed_input = NULL \
                 WHERE job_id = $4 AND state IN ($5, $6) RETURNING {ACTION_COLUMNS}"
            )
        };
        let rows = sqlx::query(&sql)
            .bind(ActionState::Cancelled.as_str())
            .bind(millis(now))
            .bind(reason)
            .bind(id)
            .bind(ActionState::Queued.as_str())
            .bind(ActionState::Pending.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("cancel a job's undelivered actions"))?;
        let cancelled = rows.iter().map(action_from_row).collect::<Result<_, _>>()?;
        tx.commit()
            .await
            .map_err(query_error("commit a job's cancellation"))?;
        Ok(Some((job, cancelled)))
    }

    /// Records that the job's last action ended: its final counts, and
    /// `completed` unless it was cancelled.
    pub async fn finish_job(
        &self,
        id: &str,
        now: DateTime<Utc>,
        counts: &JobCounts,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET finished_at = $1, counts = $2, \
                 state = CASE WHEN state = $3 THEN $4 ELSE state END \
             WHERE id = $5 AND finished_at IS NULL",
        )
        .bind(millis(now))
        .bind(to_json(counts, "job counts")?)
        .bind(JobState::Running.as_str())
        .bind(JobState::Completed.as_str())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::Query {
            context: "finish a job",
            source,
        })?;
        Ok(())
    }

    /// The job's actions by device name, after `after` (a device name, for
    /// the next page), only in `state` if given.
    pub async fn list_job_actions(
        &self,
        id: &str,
        state: Option<ActionState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ActionRecord>, StoreError> {
        let state_filter = if state.is_some() {
            " AND state = $4"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {ACTION_COLUMNS} FROM actions WHERE job_id = $1 AND device > $2{state_filter} \
             ORDER BY device LIMIT $3"
        );
        let mut query = sqlx::query(&sql)
            .bind(id)
            .bind(after.unwrap_or_default())
            .bind(self::limit(limit));
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Query {
                context: "list a job's actions",
                source,
            })?;
        rows.iter().map(action_from_row).collect()
    }

    /// Deletes jobs that finished before `before`, as retention deletes
    /// finished actions. Returns how many.
    pub async fn delete_finished_jobs_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.delete_before(
            "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1",
            before,
            "delete old finished jobs",
        )
        .await
    }
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = get(row, "id")?;
    let what = |column: &str| format!("{column} of job {id}");
    let state: String = get(row, "state")?;
    let state = JobState::parse(&state).ok_or_else(|| {
        StoreError::Corrupt(format!("{} is {state:?}, not a known state", what("state")))
    })?;
    let input: String = get(row, "input")?;
    let counts: Option<String> = get(row, "counts")?;
    let limit_of = |value: Option<i64>, column: &str| {
        value
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("{} is {v}", what(column))))
            })
            .transpose()
    };
    Ok(JobRecord {
        label_selector: get(row, "label_selector")?,
        action: get(row, "action")?,
        input: from_json(&input, &what("input"))?,
        state,
        devices: to_u64(get(row, "devices")?, &what("devices"))?,
        concurrency: limit_of(get(row, "concurrency")?, "concurrency")?,
        rate_per_second: limit_of(get(row, "rate_per_second")?, "rate_per_second")?,
        ttl_seconds: to_u64(get(row, "ttl_seconds")?, &what("ttl_seconds"))?,
        timeout_seconds: to_u64(get(row, "timeout_seconds")?, &what("timeout_seconds"))?,
        created_at: time(get(row, "created_at")?, &what("created_at"))?,
        cancelled_at: optional_time(get(row, "cancelled_at")?, &what("cancelled_at"))?,
        finished_at: optional_time(get(row, "finished_at")?, &what("finished_at"))?,
        counts: counts
            .map(|counts| from_json(&counts, &what("counts")))
            .transpose()?,
        id,
    })
}
