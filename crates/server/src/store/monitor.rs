//! The `monitor_watches` and `alerts` tables (issue 18, ADR 0032).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use tether_proto::DeviceId;
use tether_proto::alerts::{Alert, AlertState, Severity};

use super::alert_deliveries::queue_alert_change;
use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_json, to_u64,
};
use super::{Store, StoreError};
use crate::monitor::silence::Watch;

/// A device as the silence check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedDevice {
    pub device: DeviceId,
    pub last_seen: Option<DateTime<Utc>>,
    pub watch: Watch,
}

/// An alert to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub rule: String,
    pub device: DeviceId,
    pub severity: Severity,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
}

/// Tries of a new alert's id before giving up: ids are the highest plus
/// one, and a leader overlapping another may take the same.
const ID_ATTEMPTS: usize = 5;

const ALERT_COLUMNS: &str = "id, rule, device, severity, state, summary, labels, started_at, \
     acknowledged_at, acknowledged_by, resolved_at";

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn alert_from_row(row: &AnyRow) -> Result<Alert, StoreError> {
    let id = to_u64(get(row, "id")?, "an alert's id")?;
    let what = format!("alert {id}");
    let severity: String = get(row, "severity")?;
    let state: String = get(row, "state")?;
    Ok(Alert {
        id,
        rule: get(row, "rule")?,
        device: get(row, "device")?,
        severity: Severity::parse(&severity)
            .ok_or_else(|| StoreError::Corrupt(format!("{what} has severity {severity:?}")))?,
        state: AlertState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("{what} has state {state:?}")))?,
        summary: get(row, "summary")?,
        labels: from_json(&get::<String>(row, "labels")?, &what)?,
        started_at: time(get(row, "started_at")?, "an alert's started_at")?,
        acknowledged_at: optional_time(get(row, "acknowledged_at")?, "an alert's acknowledged_at")?,
        acknowledged_by: get(row, "acknowledged_by")?,
        resolved_at: optional_time(get(row, "resolved_at")?, "an alert's resolved_at")?,
    })
}

impl Store {
    /// Every device after `after` (by name), at most `limit_to`, with when it
    /// was last heard and its watch (the default when it has none).
    pub async fn watched_devices(
        &self,
        after: Option<&DeviceId>,
        limit_to: u32,
    ) -> Result<Vec<WatchedDevice>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.name, d.last_seen, w.rebirths_sent, w.last_request_at, w.alerting \
             FROM devices d LEFT JOIN monitor_watches w ON w.device = d.name \
             WHERE d.name > $1 ORDER BY d.name LIMIT $2",
        )
        .bind(after.map_or("", DeviceId::as_str))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read the devices the monitor watches"))?;
        rows.iter()
            .map(|row| {
                let rebirths: Option<i64> = get(row, "rebirths_sent")?;
                let watch = Watch {
                    rebirths_sent: u32::try_from(rebirths.unwrap_or(0)).map_err(|_| {
                        StoreError::Corrupt(format!("a watch counts {rebirths:?} rebirths"))
                    })?,
                    last_request_at: optional_time(
                        get(row, "last_request_at")?,
                        "a watch's last_request_at",
                    )?,
                    alerting: get::<Option<i64>>(row, "alerting")?.unwrap_or(0) != 0,
                };
                Ok(WatchedDevice {
                    device: device_id(get(row, "name")?)?,
                    last_seen: optional_time(get(row, "last_seen")?, "a device's last_seen")?,
                    watch,
                })
            })
            .collect()
    }

    /// Stores `device`'s watch; the default watch is stored as no row.
    pub async fn save_watch(&self, device: &DeviceId, watch: &Watch) -> Result<(), StoreError> {
        let context = "store a device's watch";
        if *watch == Watch::default() {
            sqlx::query("DELETE FROM monitor_watches WHERE device = $1")
                .bind(device.as_str())
                .execute(&self.pool)
                .await
                .map_err(query_error(context))?;
            return Ok(());
        }
        // A device deleted meanwhile has no row to refer to: nothing is
        // written (the select finds no device).
        sqlx::query(
            "INSERT INTO monitor_watches (device, rebirths_sent, last_request_at, alerting) \
             SELECT name, $2, $3, $4 FROM devices WHERE name = $1 \
             ON CONFLICT (device) DO UPDATE SET rebirths_sent = excluded.rebirths_sent, \
             last_request_at = excluded.last_request_at, alerting = excluded.alerting",
        )
        .bind(device.as_str())
        .bind(i64::from(watch.rebirths_sent))
        .bind(watch.last_request_at.map(millis))
        .bind(i64::from(watch.alerting))
        .execute(&self.pool)
        .await
        .map_err(query_error(context))?;
        Ok(())
    }

    /// Raises `alert` unless its rule already has one not yet resolved for
    /// the device: `None` then. The new alert is queued for delivery in
    /// the same transaction.
    pub async fn raise_alert(
        &self,
        alert: &NewAlert,
        now: DateTime<Utc>,
    ) -> Result<Option<Alert>, StoreError> {
        let context = "raise an alert";
        let labels = to_json(&alert.labels, "an alert's labels")?;
        for _ in 0..ID_ATTEMPTS {
            let mut tx = self.begin(context).await?;
            let raised = sqlx::query(&format!(
                "INSERT INTO alerts ({ALERT_COLUMNS}) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, 'firing', $4, $5, $6, NULL, NULL, NULL \
                 FROM alerts WHERE true ON CONFLICT DO NOTHING RETURNING {ALERT_COLUMNS}"
            ))
            .bind(&alert.rule)
            .bind(alert.device.as_str())
            .bind(alert.severity.as_str())
            .bind(&alert.summary)
            .bind(&labels)
            .bind(millis(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error(context))?;
            if let Some(row) = raised {
                let raised = alert_from_row(&row)?;
                queue_alert_change(&mut tx, &raised, now).await?;
                tx.commit().await.map_err(query_error(context))?;
                return Ok(Some(raised));
            }
            let active: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM alerts WHERE rule = $1 AND device = $2 AND resolved_at IS NULL",
            )
            .bind(&alert.rule)
            .bind(alert.device.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(query_error(context))?;
            if active.is_some() {
                return Ok(None);
            }
            // Another alert took the id: try the next.
        }
        Err(StoreError::Conflict {
            what: format!(
                "alert {} for {}: no free id after {ID_ATTEMPTS} tries",
                alert.rule, alert.device
            ),
        })
    }

    /// Resolves the alert of `rule` on `device` not yet resolved, if any,
    /// and queues the change for delivery in the same transaction.
    pub async fn resolve_alert(
        &self,
        rule: &str,
        device: &DeviceId,
        now: DateTime<Utc>,
    ) -> Result<Option<Alert>, StoreError> {
        let context = "resolve an alert";
        let mut tx = self.begin(context).await?;
        let row = sqlx::query(&format!(
            "UPDATE alerts SET state = 'resolved', resolved_at = $3 \
             WHERE rule = $1 AND device = $2 AND resolved_at IS NULL RETURNING {ALERT_COLUMNS}"
        ))
        .bind(rule)
        .bind(device.as_str())
        .bind(millis(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error(context))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let resolved = alert_from_row(&row)?;
        queue_alert_change(&mut tx, &resolved, now).await?;
        tx.commit().await.map_err(query_error(context))?;
        Ok(Some(resolved))
    }

    /// Marks a firing alert acknowledged by `by`, and queues the change for
    /// delivery in the same transaction. An alert already acknowledged is
    /// returned as it is; a resolved one is a conflict.
    pub async fn acknowledge_alert(
        &self,
        id: u64,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Alert, StoreError> {
        let context = "acknowledge an alert";
        let id = i64::try_from(id).map_err(|_| StoreError::NotFound {
            what: format!("alert {id}"),
        })?;
        let mut tx = self.begin(context).await?;
        let acknowledged = sqlx::query(&format!(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = $2, acknowledged_by = $3 \
             WHERE id = $1 AND state = 'firing' RETURNING {ALERT_COLUMNS}"
        ))
        .bind(id)
        .bind(millis(now))
        .bind(by)
        .fetch_optional(&mut *tx)
        .await
        .map_err(query_error(context))?;
        if let Some(row) = acknowledged {
            let alert = alert_from_row(&row)?;
            queue_alert_change(&mut tx, &alert, now).await?;
            tx.commit().await.map_err(query_error(context))?;
            return Ok(alert);
        }
        drop(tx);
        let alert = self.get_alert(id.unsigned_abs()).await?;
        if alert.state == AlertState::Resolved {
            return Err(StoreError::Conflict {
                what: format!("alert {id} is resolved"),
            });
        }
        Ok(alert)
    }

    pub async fn get_alert(&self, id: u64) -> Result<Alert, StoreError> {
        let not_found = || StoreError::NotFound {
            what: format!("alert {id}"),
        };
        let id = i64::try_from(id).map_err(|_| not_found())?;
        let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("read an alert"))?
            .ok_or_else(not_found)?;
        alert_from_row(&row)
    }

    /// Alerts newest first, below `before` (an id), at most `limit_to`;
    /// only those in `state` if given.
    pub async fn list_alerts(
        &self,
        state: Option<AlertState>,
        before: Option<u64>,
        limit_to: u32,
    ) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = '' OR state = $1) AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(state.map_or("", AlertState::as_str))
        .bind(before.map_or(i64::MAX, |id| i64::try_from(id).unwrap_or(i64::MAX)))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list alerts"))?;
        rows.iter().map(alert_from_row).collect()
    }
}
