//! The `monitor_watches` and `alerts` tables (issue 18, ADR 0032).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use tether_proto::alerts::{Alert, AlertState, Severity};
use tether_proto::{DeviceId, Presence};

use super::alert_deliveries::queue_alert_change;
use super::codec::{
    device_id, from_json, get, limit, millis, optional_time, time, to_json, to_u64,
};
use super::{Store, StoreError};
use crate::monitor::drift::DriftWatch;
use crate::monitor::silence::Watch;

/// A device as the silence check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedDevice {
    pub device: DeviceId,
    pub last_seen: Option<DateTime<Utc>>,
    pub watch: Watch,
}

/// The two stored watches, of one shape.
#[derive(Debug, Clone, Copy)]
enum WatchTable {
    Silence,
    Drift,
}

/// A device as the drift check sees it: behind its spec, or with a drift
/// watch to carry on or clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftingDevice {
    pub device: DeviceId,
    pub online: bool,
    /// Whether it reported its current spec version.
    pub current: bool,
    /// When its current spec version was written (`None`: before tether
    /// recorded it).
    pub spec_updated_at: Option<DateTime<Utc>>,
    pub watch: DriftWatch,
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

/// See [`Store::alerts_mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertsMark {
    pub newest: u64,
    pub firing: u64,
    pub acknowledged: u64,
}

/// Which alerts a listing returns, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStates {
    /// Not yet resolved: firing or acknowledged.
    Active,
    Only(AlertState),
    All,
}

impl AlertStates {
    /// `active`, `all`, or one state's name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "all" => Some(Self::All),
            other => AlertState::parse(other).map(Self::Only),
        }
    }
}

/// What a listing of alerts keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    pub states: AlertStates,
    pub device: Option<DeviceId>,
    pub rule: Option<String>,
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

    /// Devices after `after` (by name), at most `limit_to`, that have not
    /// reported their current spec version or have a drift watch.
    pub async fn drifting_devices(
        &self,
        after: Option<&DeviceId>,
        limit_to: u32,
    ) -> Result<Vec<DriftingDevice>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.name, d.presence, s.spec_updated_at, \
             CASE WHEN s.status_spec_version IS NOT NULL AND s.status_spec_version >= s.spec_version \
             THEN 1 ELSE 0 END AS current, \
             w.reloads_sent, w.last_reload_at, w.alerting \
             FROM devices d JOIN device_specs s ON s.device = d.name \
             LEFT JOIN monitor_drift w ON w.device = d.name \
             WHERE d.name > $1 AND (w.device IS NOT NULL OR (s.spec_version > 0 \
             AND (s.status_spec_version IS NULL OR s.status_spec_version < s.spec_version))) \
             ORDER BY d.name LIMIT $2",
        )
        .bind(after.map_or("", DeviceId::as_str))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read the devices behind their spec"))?;
        rows.iter()
            .map(|row| {
                let reloads: Option<i64> = get(row, "reloads_sent")?;
                let watch = DriftWatch {
                    reloads_sent: u32::try_from(reloads.unwrap_or(0)).map_err(|_| {
                        StoreError::Corrupt(format!("a drift watch counts {reloads:?} reloads"))
                    })?,
                    last_reload_at: optional_time(
                        get(row, "last_reload_at")?,
                        "a drift watch's last_reload_at",
                    )?,
                    alerting: get::<Option<i64>>(row, "alerting")?.unwrap_or(0) != 0,
                };
                Ok(DriftingDevice {
                    device: device_id(get(row, "name")?)?,
                    online: get::<String>(row, "presence")? == Presence::Online.as_str(),
                    current: get::<i64>(row, "current")? != 0,
                    spec_updated_at: optional_time(
                        get(row, "spec_updated_at")?,
                        "a spec's spec_updated_at",
                    )?,
                    watch,
                })
            })
            .collect()
    }

    /// Stores `device`'s drift watch; the default is stored as no row.
    pub async fn save_drift_watch(
        &self,
        device: &DeviceId,
        watch: &DriftWatch,
    ) -> Result<(), StoreError> {
        self.save_watch_row(
            WatchTable::Drift,
            device,
            (*watch != DriftWatch::default()).then_some((
                watch.reloads_sent,
                watch.last_reload_at,
                watch.alerting,
            )),
        )
        .await
    }

    /// Stores `device`'s watch; the default watch is stored as no row.
    pub async fn save_watch(&self, device: &DeviceId, watch: &Watch) -> Result<(), StoreError> {
        self.save_watch_row(
            WatchTable::Silence,
            device,
            (*watch != Watch::default()).then_some((
                watch.rebirths_sent,
                watch.last_request_at,
                watch.alerting,
            )),
        )
        .await
    }

    /// Writes one watch row (requests sent, when the last was, whether its
    /// alert is raised), or deletes it for `None`, the default watch.
    async fn save_watch_row(
        &self,
        table: WatchTable,
        device: &DeviceId,
        watch: Option<(u32, Option<DateTime<Utc>>, bool)>,
    ) -> Result<(), StoreError> {
        let (name, sent, last, context) = match table {
            WatchTable::Silence => (
                "monitor_watches",
                "rebirths_sent",
                "last_request_at",
                "store a device's watch",
            ),
            WatchTable::Drift => (
                "monitor_drift",
                "reloads_sent",
                "last_reload_at",
                "store a device's drift watch",
            ),
        };
        let Some((requests, last_at, alerting)) = watch else {
            sqlx::query(&format!("DELETE FROM {name} WHERE device = $1"))
                .bind(device.as_str())
                .execute(&self.pool)
                .await
                .map_err(query_error(context))?;
            return Ok(());
        };
        // A device deleted meanwhile has no row to refer to: nothing is
        // written (the select finds no device).
        sqlx::query(&format!(
            "INSERT INTO {name} (device, {sent}, {last}, alerting) \
             SELECT name, $2, $3, $4 FROM devices WHERE name = $1 \
             ON CONFLICT (device) DO UPDATE SET {sent} = excluded.{sent}, \
             {last} = excluded.{last}, alerting = excluded.alerting"
        ))
        .bind(device.as_str())
        .bind(i64::from(requests))
        .bind(last_at.map(millis))
        .bind(i64::from(alerting))
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

    /// Resolves every alert of `device` not yet resolved, queuing each
    /// change for delivery, in the transaction that deletes the device: a
    /// device gone has no condition left, and its alerts must neither stay
    /// active forever nor block a new device of the same name.
    pub(super) async fn resolve_device_alerts(
        conn: &mut sqlx::AnyConnection,
        device: &DeviceId,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE alerts SET state = 'resolved', resolved_at = $2 \
             WHERE device = $1 AND resolved_at IS NULL RETURNING {ALERT_COLUMNS}"
        ))
        .bind(device.as_str())
        .bind(millis(now))
        .fetch_all(&mut *conn)
        .await
        .map_err(query_error("resolve a deleted device's alerts"))?;
        for row in &rows {
            queue_alert_change(conn, &alert_from_row(row)?, now).await?;
        }
        Ok(())
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

    /// What changes whenever an alert is raised, acknowledged or resolved:
    /// the newest alert's id and how many are firing and acknowledged. Read
    /// from the indexes only, so a live follower may ask every second.
    pub async fn alerts_mark(&self) -> Result<AlertsMark, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM alerts) AS newest, \
             (SELECT COUNT(*) FROM alerts WHERE state = 'firing') AS firing, \
             (SELECT COUNT(*) FROM alerts WHERE state = 'acknowledged') AS acknowledged",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("read what changed in the alerts"))?;
        let count = |column: &'static str| -> Result<u64, StoreError> {
            to_u64(get::<i64>(&row, column)?, &format!("the alerts' {column}"))
        };
        Ok(AlertsMark {
            newest: count("newest")?,
            firing: count("firing")?,
            acknowledged: count("acknowledged")?,
        })
    }

    /// Alerts newest first, below `before` (an id), at most `limit_to`,
    /// those `filter` lets through.
    pub async fn list_alerts(
        &self,
        filter: &AlertFilter,
        before: Option<u64>,
        limit_to: u32,
    ) -> Result<Vec<Alert>, StoreError> {
        let states = match filter.states {
            AlertStates::All => "",
            AlertStates::Active => "active",
            AlertStates::Only(state) => state.as_str(),
        };
        let rows = sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = '' \
             OR ($1 = 'active' AND resolved_at IS NULL) OR state = $1) \
             AND ($2 = '' OR device = $2) AND ($3 = '' OR rule = $3) AND id < $4 \
             ORDER BY id DESC LIMIT $5"
        ))
        .bind(states)
        .bind(filter.device.as_ref().map_or("", DeviceId::as_str))
        .bind(filter.rule.as_deref().unwrap_or(""))
        .bind(before.map_or(i64::MAX, |id| i64::try_from(id).unwrap_or(i64::MAX)))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list alerts"))?;
        rows.iter().map(alert_from_row).collect()
    }
}
