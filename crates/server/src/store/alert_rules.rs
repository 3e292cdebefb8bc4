//! The `alert_rules` and `alert_rule_states` tables (issue 18, migration
//! 0036), and the reads the rule evaluator makes: per rule, only the
//! devices on which its condition may hold, found by one indexed statement
//! per page, so a pass stays cheap however large the fleet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::error::ErrorKind;
use tether_proto::DeviceId;
use tether_proto::alert_rules::{AlertRuleSpec, Comparison, StatusCondition};
use tether_proto::api::Labels;
use tether_proto::labels::LabelSelector;

use super::codec::{device_id, from_json, get, limit, millis, time, to_json, violates};
use super::selector::label_filter;
use super::{Store, StoreError};
use crate::monitor::rules::rule::RuleState;

/// A rule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    pub name: String,
    pub spec: AlertRuleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A series whose newest value is beyond a rule's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesBeyond {
    pub id: i64,
    pub device: DeviceId,
    pub series_labels: Labels,
    pub value: f64,
    pub device_labels: Labels,
}

/// A device's last reported status, as JSON, for a status condition to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedCandidate {
    pub device: DeviceId,
    pub status: String,
    pub device_labels: Labels,
}

fn query_error(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { context, source }
}

fn rule_from_row(row: &AnyRow) -> Result<AlertRuleRecord, StoreError> {
    let name: String = get(row, "name")?;
    let spec: String = get(row, "spec")?;
    Ok(AlertRuleRecord {
        spec: from_json(&spec, &format!("alert rule {name}"))?,
        created_at: time(get(row, "created_at")?, "an alert rule's created_at")?,
        updated_at: time(get(row, "updated_at")?, "an alert rule's updated_at")?,
        name,
    })
}

/// Text a stored reported status contains when the condition may hold:
/// serde_json writes it compactly, and the same characters inside a JSON
/// string would be escaped (`\"`), so only the field itself matches. The
/// evaluator parses the candidates to be sure. A condition type is
/// letters and digits only (`conditions::is_condition_type`), so it has no
/// LIKE wildcards.
fn status_pattern(condition: &StatusCondition) -> String {
    match condition {
        StatusCondition::DeploymentFailed => "%\"state\":\"failed\"%".to_owned(),
        StatusCondition::SpecErrors => "%\"errors\":[{%".to_owned(),
        StatusCondition::Condition(kind) => format!("%\"conditions\":[%\"type\":\"{kind}\"%"),
    }
}

impl Store {
    pub async fn insert_alert_rule(
        &self,
        name: &str,
        spec: &AlertRuleSpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_rules (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(name)
        .bind(to_json(spec, "an alert rule")?)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(|source| {
            if violates(&source, ErrorKind::UniqueViolation) {
                StoreError::Conflict {
                    what: format!("alert rule {name}"),
                }
            } else {
                StoreError::Query {
                    context: "create an alert rule",
                    source,
                }
            }
        })?;
        Ok(())
    }

    /// Replaces a rule's spec; `NotFound` if there is none.
    pub async fn update_alert_rule(
        &self,
        name: &str,
        spec: &AlertRuleSpec,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE alert_rules SET spec = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(to_json(spec, "an alert rule")?)
                .bind(millis(now))
                .execute(&self.pool)
                .await
                .map_err(query_error("update an alert rule"))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("alert rule {name}"),
            });
        }
        Ok(())
    }

    pub async fn get_alert_rule(&self, name: &str) -> Result<AlertRuleRecord, StoreError> {
        let row = sqlx::query(
            "SELECT name, spec, created_at, updated_at FROM alert_rules WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("read an alert rule"))?
        .ok_or_else(|| StoreError::NotFound {
            what: format!("alert rule {name}"),
        })?;
        rule_from_row(&row)
    }

    /// Rules by name after `after`, at most `limit_to`.
    pub async fn list_alert_rules(
        &self,
        after: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<AlertRuleRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, spec, created_at, updated_at FROM alert_rules WHERE name > $1 \
             ORDER BY name LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit(limit_to))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list alert rules"))?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Deletes a rule and its states; `NotFound` if there is none.
    pub async fn delete_alert_rule(&self, name: &str) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM alert_rules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(query_error("delete an alert rule"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("alert rule {name}"),
            });
        }
        Ok(())
    }

    /// The devices with an alert of `rule` not yet resolved.
    pub async fn devices_alerted_by(&self, rule: &str) -> Result<Vec<DeviceId>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT device FROM alerts WHERE rule = $1 AND resolved_at IS NULL ORDER BY device",
        )
        .bind(rule)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list a rule's active alerts"))?
        .into_iter()
        .map(device_id)
        .collect()
    }

    /// Every device on which `rule`'s condition was holding at the last pass.
    pub async fn alert_rule_states(
        &self,
        rule: &str,
    ) -> Result<BTreeMap<DeviceId, RuleState>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, pending_since, firing FROM alert_rule_states WHERE rule = $1",
        )
        .bind(rule)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("read an alert rule's states"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    device_id(get(row, "device")?)?,
                    RuleState {
                        pending_since: time(
                            get(row, "pending_since")?,
                            "an alert rule state's pending_since",
                        )?,
                        firing: get::<i64>(row, "firing")? != 0,
                    },
                ))
            })
            .collect()
    }

    /// Stores a rule's state on a device. `false` when the rule or the
    /// device is gone (deleted meanwhile): nothing was written, and no
    /// alert should be raised for it.
    pub async fn save_alert_rule_state(
        &self,
        rule: &str,
        device: &DeviceId,
        state: &RuleState,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO alert_rule_states (rule, device, pending_since, firing) \
             SELECT r.name, d.name, $3, $4 FROM alert_rules r JOIN devices d ON d.name = $2 \
             WHERE r.name = $1 \
             ON CONFLICT (rule, device) DO UPDATE SET pending_since = excluded.pending_since, \
             firing = excluded.firing",
        )
        .bind(rule)
        .bind(device.as_str())
        .bind(millis(state.pending_since))
        .bind(i64::from(state.firing))
        .execute(&self.pool)
        .await
        .map_err(query_error("store an alert rule's state"))?;
        Ok(written.rows_affected() > 0)
    }

    pub async fn clear_alert_rule_state(
        &self,
        rule: &str,
        device: &DeviceId,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM alert_rule_states WHERE rule = $1 AND device = $2")
            .bind(rule)
            .bind(device.as_str())
            .execute(&self.pool)
            .await
            .map_err(query_error("clear an alert rule's state"))?;
        Ok(())
    }

    /// One page of the series named `metric` of the devices `selector`
    /// picks whose newest value, at `fresh_since` or later, is beyond
    /// `threshold`; after `(device, series id)`, in that order.
    #[allow(clippy::too_many_arguments)]
    pub async fn series_beyond(
        &self,
        metric: &str,
        comparison: Comparison,
        threshold: f64,
        selector: &LabelSelector,
        fresh_since: DateTime<Utc>,
        after: Option<(&DeviceId, i64)>,
        limit_to: u32,
    ) -> Result<Vec<SeriesBeyond>, StoreError> {
        let filter = label_filter(selector, 7);
        // The operator comes from the enum, never from the request's text.
        let sql = format!(
            "SELECT s.id, s.device, s.labels, s.last_value, d.labels AS device_labels \
             FROM metric_series s JOIN devices d ON d.name = s.device \
             WHERE s.name = $1 AND s.last_at >= $2 AND s.last_value {op} $3 \
             AND (s.device, s.id) > ($4, $5){filter} \
             ORDER BY s.device, s.id LIMIT $6",
            op = comparison.as_str(),
            filter = filter.and_clause(),
        );
        let (after_device, after_id) = after.map_or(("", i64::MIN), |(d, id)| (d.as_str(), id));
        let mut query = sqlx::query(&sql)
            .bind(metric)
            .bind(millis(fresh_since))
            .bind(threshold)
            .bind(after_device)
            .bind(after_id)
            .bind(limit(limit_to));
        for value in &filter.binds {
            query = query.bind(value);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("read the series beyond a rule's threshold"))?;
        rows.iter()
            .map(|row| {
                let labels: String = get(row, "labels")?;
                let device_labels: String = get(row, "device_labels")?;
                Ok(SeriesBeyond {
                    id: get(row, "id")?,
                    device: device_id(get(row, "device")?)?,
                    series_labels: from_json(&labels, "series labels")?,
                    value: get(row, "last_value")?,
                    device_labels: from_json(&device_labels, "device labels")?,
                })
            })
            .collect()
    }

    /// One page of the devices `selector` picks, after `after`, whose last
    /// reported status may meet `condition` (a text match; the caller
    /// reads the status to be sure).
    pub async fn reported_candidates(
        &self,
        condition: &StatusCondition,
        selector: &LabelSelector,
        after: Option<&DeviceId>,
        limit_to: u32,
    ) -> Result<Vec<ReportedCandidate>, StoreError> {
        let filter = label_filter(selector, 4);
        let sql = format!(
            "SELECT s.device, s.status, d.labels AS device_labels \
             FROM device_specs s JOIN devices d ON d.name = s.device \
             WHERE s.status LIKE $1 AND s.device > $2{} ORDER BY s.device LIMIT $3",
            filter.and_clause()
        );
        let mut query = sqlx::query(&sql)
            .bind(status_pattern(condition))
            .bind(after.map_or("", DeviceId::as_str))
            .bind(limit(limit_to));
        for value in &filter.binds {
            query = query.bind(value);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("read the statuses a rule may match"))?;
        rows.iter()
            .map(|row| {
                let device_labels: String = get(row, "device_labels")?;
                Ok(ReportedCandidate {
                    device: device_id(get(row, "device")?)?,
                    status: get(row, "status")?,
                    device_labels: from_json(&device_labels, "device labels")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::desired::{DeploymentState, DeploymentStatus};
    use tether_proto::spec::{ReportedStatus, SpecError};

    fn stored(status: &ReportedStatus) -> String {
        serde_json::to_string(status).expect("json")
    }

    /// SQL's LIKE with `%` as "anything", as both databases read it here.
    fn like(pattern: &str, text: &str) -> bool {
        let parts: Vec<&str> = pattern.split('%').collect();
        let inner = &parts[1..parts.len() - 1];
        let mut rest = text;
        for part in inner {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }

    #[test]
    fn the_patterns_find_a_failed_deployment_and_spec_errors_but_not_their_text_in_a_reason() {
        let mut status = ReportedStatus::default();
        status.deployments.insert(
            "web".into(),
            DeploymentStatus {
                version: "1".into(),
                state: DeploymentState::Progressing,
                reason: Some(r#"the app said "state":"failed" and "errors":[{"#.into()),
            },
        );
        let failed = &status_pattern(&StatusCondition::DeploymentFailed);
        let errors = &status_pattern(&StatusCondition::SpecErrors);
        assert!(!like(failed, &stored(&status)), "{}", stored(&status));
        assert!(!like(errors, &stored(&status)), "{}", stored(&status));

        status.deployments.get_mut("web").expect("web").state = DeploymentState::Failed;
        status
            .errors
            .push(SpecError::new("spec.loggingConfig", "bad"));
        assert!(like(failed, &stored(&status)), "{}", stored(&status));
        assert!(like(errors, &stored(&status)), "{}", stored(&status));
    }

    #[test]
    fn the_condition_pattern_finds_the_type_only_in_the_conditions() {
        let skewed = &status_pattern(&StatusCondition::Condition("ClockSkewed".into()));
        let mut status = ReportedStatus::default();
        status
            .errors
            .push(SpecError::new("spec.time", r#""type":"ClockSkewed""#));
        assert!(!like(skewed, &stored(&status)), "{}", stored(&status));
        status
            .conditions
            .push(tether_proto::conditions::ReportedCondition {
                kind: "ClockSkewed".into(),
                reason: "OffsetBeyondLimit".into(),
                message: "10 minutes ahead".into(),
                since: chrono::DateTime::from_timestamp_millis(0).expect("epoch"),
            });
        assert!(like(skewed, &stored(&status)), "{}", stored(&status));
    }
}
