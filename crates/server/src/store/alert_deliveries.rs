//! The alert delivery outbox (migration 0034, ADR 0032): the receivers
//! `[alerts]` names, and one row per change of an alert and receiver,
//! queued in the transaction of the change ([`queue_alert_change`]) and
//! sent by one replica at a time (`crate::monitor::delivery`).

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use tether_proto::alert_deliveries::{AlertDelivery, DeliveryState};
use tether_proto::alerts::{Alert, AlertState, Severity};

use super::codec::{from_json, get, limit, millis, optional_time, placeholders, time, to_json};
use super::{Before, Store, StoreError};

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

/// An alert enters each state once, in this order; a receiver gets an
/// alert's changes in it.
fn step(event: AlertState) -> i64 {
    match event {
        AlertState::Firing => 0,
        AlertState::Acknowledged => 1,
        AlertState::Resolved => 2,
    }
}

/// Queues the change that left `alert` as it is for every receiver, on the
/// connection of the transaction that made the change. Queuing the same
/// change twice is a no-op.
pub(super) async fn queue_alert_change(
    conn: &mut sqlx::AnyConnection,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let context = "queue an alert's change for delivery";
    let receivers: Vec<String> = sqlx::query_scalar("SELECT name FROM alert_receivers")
        .fetch_all(&mut *conn)
        .await
        .map_err(query_error(context))?;
    if receivers.is_empty() {
        return Ok(());
    }
    let snapshot = to_json(alert, "an alert to deliver")?;
    let alert_id = i64::try_from(alert.id).map_err(|_| StoreError::TooLarge {
        what: "an alert's id",
        value: alert.id,
    })?;
    for receiver in receivers {
        sqlx::query(
            "INSERT INTO alert_deliveries (id, receiver, alert_id, event, step, alert, created_at, \
             attempts, next_attempt_at, state, last_error, delivered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $7, 'pending', NULL, NULL) \
             ON CONFLICT DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&receiver)
        .bind(alert_id)
        .bind(alert.state.as_str())
        .bind(step(alert.state))
        .bind(&snapshot)
        .bind(millis(now))
        .execute(&mut *conn)
        .await
        .map_err(query_error(context))?;
    }
    Ok(())
}

/// A delivery due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDelivery {
    pub id: String,
    pub receiver: String,
    /// The state the alert entered.
    pub event: AlertState,
    /// The alert as the change left it.
    pub alert: Alert,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What became of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Failed; tried again at this time.
    RetryAt {
        at: DateTime<Utc>,
        error: String,
    },
    /// Given up on.
    Dead {
        error: String,
    },
}

/// Receivers that left the configuration, and their deliveries given up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiversChanged {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Pending deliveries of removed receivers, now dead.
    pub abandoned: u64,
}

/// Active alerts counted by what `/metrics` labels them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveAlertCount {
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    pub alerts: u64,
}

const DELIVERY_COLUMNS: &str = "id, receiver, alert_id, event, alert, created_at, attempts, \
     next_attempt_at, state, last_error, delivered_at";

fn u32_column(row: &AnyRow, column: &'static str) -> Result<u32, StoreError> {
    let value: i64 = get(row, column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} is {value}")))
}

fn event_of(row: &AnyRow) -> Result<AlertState, StoreError> {
    let event: String = get(row, "event")?;
    AlertState::parse(&event)
        .ok_or_else(|| StoreError::Corrupt(format!("an alert delivery's event is {event:?}")))
}

fn queued_from_row(row: &AnyRow) -> Result<QueuedDelivery, StoreError> {
    let id: String = get(row, "id")?;
    Ok(QueuedDelivery {
        alert: from_json(
            &get::<String>(row, "alert")?,
            &format!("delivery {id}'s alert"),
        )?,
        receiver: get(row, "receiver")?,
        event: event_of(row)?,
        attempts: u32_column(row, "attempts")?,
        id,
    })
}

fn delivery_from_row(row: &AnyRow) -> Result<AlertDelivery, StoreError> {
    let queued = queued_from_row(row)?;
    let state: String = get(row, "state")?;
    let state = DeliveryState::parse(&state).ok_or_else(|| {
        StoreError::Corrupt(format!("delivery {} has state {state:?}", queued.id))
    })?;
    Ok(AlertDelivery {
        id: queued.id,
        receiver: queued.receiver,
        alert_id: queued.alert.id,
        rule: queued.alert.rule,
        device: queued.alert.device,
        event: queued.event,
        state,
        attempts: queued.attempts,
        next_attempt_at: match state {
            DeliveryState::Pending => Some(time(
                get(row, "next_attempt_at")?,
                "a delivery's next_attempt_at",
            )?),
            DeliveryState::Delivered | DeliveryState::Dead => None,
        },
        last_error: get(row, "last_error")?,
        created_at: time(get(row, "created_at")?, "a delivery's created_at")?,
        delivered_at: optional_time(get(row, "delivered_at")?, "a delivery's delivered_at")?,
    })
}

impl Store {
    /// Adds `names` to the receivers later changes are queued for, and
    /// takes out those `retired` (not also in `names`): their pending
    /// deliveries can never be sent, so they are given up (dead) and stay
    /// listed. A receiver is never taken out for being absent from one
    /// replica's list: a replica started with an old configuration would
    /// stop delivery for the whole cluster.
    pub async fn set_alert_receivers(
        &self,
        names: &[String],
        retired: &[String],
        now: DateTime<Utc>,
    ) -> Result<ReceiversChanged, StoreError> {
        let context = "record the alert receivers";
        let mut tx = self.begin(context).await?;
        let mut changed = ReceiversChanged::default();
        // Writes first: a SQLite transaction that reads first may fail to
        // upgrade its lock instead of waiting for another writer.
        for name in names {
            let added = sqlx::query(
                "INSERT INTO alert_receivers (name, added_at) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(millis(now))
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
            if added.rows_affected() > 0 {
                changed.added.push(name.clone());
            }
        }
        for name in retired.iter().filter(|name| !names.contains(name)) {
            let removed = sqlx::query("DELETE FROM alert_receivers WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(query_error(context))?;
            let abandoned = sqlx::query(
                "UPDATE alert_deliveries SET state = 'dead', \
                 last_error = 'the receiver is retired ([alerts] retired_receivers)' \
                 WHERE receiver = $1 AND state = 'pending'",
            )
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(query_error(context))?;
            changed.abandoned += abandoned.rows_affected();
            if removed.rows_affected() > 0 {
                changed.removed.push(name.clone());
            }
        }
        tx.commit().await.map_err(query_error(context))?;
        Ok(changed)
    }

    /// `receiver`'s pending deliveries due at `now`, oldest first, at most
    /// `limit_to`: of each alert only its earliest pending change, so an
    /// alert's changes arrive in the order they happened.
    pub async fn due_alert_deliveries(
        &self,
        receiver: &str,
        now: DateTime<Utc>,
        limit_to: u32,
    ) -> Result<Vec<QueuedDelivery>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries d \
             WHERE d.receiver = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM alert_deliveries e WHERE e.receiver = d.receiver \
                 AND e.alert_id = d.alert_id AND e.state = 'pending' AND e.step < d.step) \
             ORDER BY d.created_at, d.id LIMIT $3"
        ))
        .bind(receiver)
        .bind(millis(now))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read the alert deliveries due"))?;
        rows.iter().map(queued_from_row).collect()
    }

    /// Takes the next attempt of a delivery, which had `attempts` before:
    /// until `lease_until` no other sender takes it. False if another
    /// sender (an overlapping old leader) took it first.
    pub async fn claim_alert_delivery(
        &self,
        id: &str,
        attempts: u32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = $3 \
             WHERE id = $1 AND attempts = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(i64::from(attempts))
        .bind(millis(lease_until))
        .execute(&self.pool)
        .await
        .map_err(query_error("claim an alert delivery"))?;
        Ok(claimed.rows_affected() > 0)
    }

    /// Records the result of attempt number `attempt` (counted from 1).
    pub async fn record_alert_attempt(
        &self,
        id: &str,
        attempt: u32,
        result: &AttemptResult,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (state, next, error, delivered) = match result {
            AttemptResult::Delivered => ("delivered", now, None, Some(millis(now))),
            AttemptResult::RetryAt { at, error } => ("pending", *at, Some(error.as_str()), None),
            AttemptResult::Dead { error } => ("dead", now, Some(error.as_str()), None),
        };
        sqlx::query(
            "UPDATE alert_deliveries SET state = $3, next_attempt_at = $4, \
             last_error = COALESCE($5, last_error), delivered_at = $6 \
             WHERE id = $1 AND attempts = $2 AND state = 'pending'",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(state)
        .bind(millis(next))
        .bind(error)
        .bind(delivered)
        .execute(&self.pool)
        .await
        .map_err(query_error("record an alert delivery attempt"))?;
        Ok(())
    }

    /// Deliveries newest first, below `before`, at most `limit_to`; only
    /// those in `state` if given.
    pub async fn list_alert_deliveries(
        &self,
        state: Option<DeliveryState>,
        before: Option<&Before>,
        limit_to: u32,
    ) -> Result<Vec<AlertDelivery>, StoreError> {
        let (at, id) = before.map_or((i64::MAX, ""), |b| (millis(b.at), b.id.as_str()));
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries \
             WHERE ($1 = '' OR state = $1) AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(state.map_or("", DeliveryState::as_str))
        .bind(at)
        .bind(id)
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list alert deliveries"))?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn get_alert_delivery(&self, id: &str) -> Result<AlertDelivery, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read an alert delivery"))?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("alert delivery {id}"),
        })?;
        delivery_from_row(&row)
    }

    /// Puts a dead delivery back in the queue, due at `now` with its
    /// attempts counted afresh. `None`: it is not dead, its receiver is no
    /// longer configured, or a later change of the same alert was sent to
    /// that receiver or is on its way (it would arrive out of order); the
    /// caller reads why.
    pub async fn retry_alert_delivery(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertDelivery>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE alert_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $2 \
             WHERE id = $1 AND state = 'dead' \
             AND receiver IN (SELECT name FROM alert_receivers) \
             AND NOT EXISTS (SELECT 1 FROM alert_deliveries later \
             WHERE later.alert_id = alert_deliveries.alert_id \
             AND later.receiver = alert_deliveries.receiver \
             AND later.step > alert_deliveries.step AND later.state <> 'dead') \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(id)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("retry an alert delivery"))?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Whether `name` is a receiver changes are queued for.
    pub async fn is_alert_receiver(&self, name: &str) -> Result<bool, StoreError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT name FROM alert_receivers WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(query_error("read the alert receivers"))?;
        Ok(found.is_some())
    }

    /// Deletes deliveries made before `before`; dead ones are kept.
    pub async fn delete_delivered_alert_deliveries_before(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM alert_deliveries WHERE state = 'delivered' AND delivered_at < $1",
        )
        .bind(millis(before))
        .execute(&self.pool)
        .await
        .map_err(query_error("delete old alert deliveries"))?;
        Ok(deleted.rows_affected())
    }

    /// Alerts not resolved, counted by rule, severity and state.
    pub async fn active_alert_counts(&self) -> Result<Vec<ActiveAlertCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule, severity, state, COUNT(*) AS alerts FROM alerts \
             WHERE resolved_at IS NULL GROUP BY rule, severity, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("count the active alerts"))?;
        rows.iter()
            .map(|row| {
                let severity: String = get(row, "severity")?;
                let state: String = get(row, "state")?;
                let alerts: i64 = get(row, "alerts")?;
                Ok(ActiveAlertCount {
                    rule: get(row, "rule")?,
                    severity: Severity::parse(&severity).ok_or_else(|| {
                        StoreError::Corrupt(format!("an alert has severity {severity:?}"))
                    })?,
                    state: AlertState::parse(&state).ok_or_else(|| {
                        StoreError::Corrupt(format!("an alert has state {state:?}"))
                    })?,
                    alerts: alerts.unsigned_abs(),
                })
            })
            .collect()
    }

    /// Deliveries by state, for `/metrics`.
    pub async fn alert_delivery_counts(&self) -> Result<Vec<(DeliveryState, u64)>, StoreError> {
        let states = [DeliveryState::Pending, DeliveryState::Dead];
        let rows = sqlx::query(&format!(
            "SELECT state, COUNT(*) AS deliveries FROM alert_deliveries \
             WHERE state IN ({}) GROUP BY state",
            placeholders(1, states.len())
        ))
        .bind(states[0].as_str())
        .bind(states[1].as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("count the alert deliveries"))?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, "state")?;
                let count: i64 = get(row, "deliveries")?;
                let state = DeliveryState::parse(&state).ok_or_else(|| {
                    StoreError::Corrupt(format!("an alert delivery has state {state:?}"))
                })?;
                Ok((state, count.unsigned_abs()))
            })
            .collect()
    }
}
