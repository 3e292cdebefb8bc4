//! Operator-defined alert rules (issue 18, ADR 0032): the API's checks
//! and writes, and the evaluator, a singleton job that looks at every rule
//! each `[alert_rules] evaluation_interval`.
//!
//! A pass costs, per rule, one indexed statement per page of the devices
//! on which the condition holds (series beyond the threshold, statuses
//! that report the failure), one read of the rule's stored states (rows
//! exist only while a condition holds) and a write per change: the
//! devices where nothing is wrong cost nothing.

pub mod condition;
pub mod rule;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::alert_rules::{
    self, AlertRule, AlertRuleSpec, Condition, CreateAlertRule, MetricCondition, StatusCondition,
};
use tether_proto::spec::{ReportedStatus, SpecError};

use self::condition::Finding;
use self::rule::{AlertChange, RuleState};
use crate::store::{AlertRuleRecord, NewAlert, Store, StoreError};

/// Rows per page of the evaluator's reads.
const PAGE: u32 = 1_000;
/// Most rules the fleet may have: each costs every pass.
pub const MAX_RULES: usize = 500;

/// `[alert_rules]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRulesConfig {
    /// How often every rule is evaluated.
    pub evaluation_interval: Duration,
    /// A series whose newest value is older than this no longer counts (a
    /// device that stopped sending is the silence check's business).
    pub stale_after: Duration,
}

impl Default for AlertRulesConfig {
    fn default() -> Self {
        Self {
            evaluation_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertRuleError {
    #[error("alert rule {0} not found")]
    NotFound(String),
    /// A field of the request, by its path, and what is wrong with it.
    #[error("invalid {0}")]
    Invalid(SpecError),
    #[error("alert rule {0} already exists; pick another name or change it with PUT")]
    Exists(String),
    #[error(
        "there are {MAX_RULES} alert rules already, as many as tetherd evaluates; delete one first"
    )]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one pass did, for the log and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evaluated {
    pub rules: usize,
    pub raised: usize,
    pub resolved: usize,
}

#[derive(Clone)]
pub struct AlertRules {
    store: Store,
    config: AlertRulesConfig,
}

fn to_api(record: AlertRuleRecord) -> AlertRule {
    AlertRule {
        name: record.name,
        spec: record.spec,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn not_found(name: &str) -> impl FnOnce(StoreError) -> AlertRuleError + '_ {
    move |error| match error {
        StoreError::NotFound { .. } => AlertRuleError::NotFound(name.to_owned()),
        other => other.into(),
    }
}

impl AlertRules {
    pub fn new(store: Store, config: AlertRulesConfig) -> Self {
        Self { store, config }
    }

    pub fn config(&self) -> &AlertRulesConfig {
        &self.config
    }

    pub async fn create(
        &self,
        request: CreateAlertRule,
        now: DateTime<Utc>,
    ) -> Result<AlertRule, AlertRuleError> {
        alert_rules::check(&request.name, &request.spec).map_err(AlertRuleError::Invalid)?;
        let existing = self.store.list_alert_rules(None, MAX_RULES as u32).await?;
        if existing.len() >= MAX_RULES {
            return Err(AlertRuleError::TooMany);
        }
        self.store
            .insert_alert_rule(&request.name, &request.spec, now)
            .await
            .map_err(|error| match error {
                StoreError::Conflict { .. } => AlertRuleError::Exists(request.name.clone()),
                other => other.into(),
            })?;
        tracing::info!(rule = %request.name, "alert rule created");
        self.get(&request.name).await
    }

    /// Replaces a rule's spec. Devices where the old condition holds keep
    /// their state: the next pass resolves what no longer holds.
    pub async fn update(
        &self,
        name: &str,
        spec: AlertRuleSpec,
        now: DateTime<Utc>,
    ) -> Result<AlertRule, AlertRuleError> {
        alert_rules::check(name, &spec).map_err(AlertRuleError::Invalid)?;
        self.store
            .update_alert_rule(name, &spec, now)
            .await
            .map_err(not_found(name))?;
        tracing::info!(rule = %name, "alert rule updated");
        self.get(name).await
    }

    pub async fn get(&self, name: &str) -> Result<AlertRule, AlertRuleError> {
        self.store
            .get_alert_rule(name)
            .await
            .map(to_api)
            .map_err(not_found(name))
    }

    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AlertRule>, AlertRuleError> {
        Ok(self
            .store
            .list_alert_rules(after, limit)
            .await?
            .into_iter()
            .map(to_api)
            .collect())
    }

    /// Deletes a rule and resolves its alerts.
    pub async fn delete(&self, name: &str, now: DateTime<Utc>) -> Result<(), AlertRuleError> {
        self.store
            .delete_alert_rule(name)
            .await
            .map_err(not_found(name))?;
        // After the delete: a pass that raised one meanwhile is resolved
        // too, and no later pass raises another (the state cannot be stored).
        for device in self.store.devices_alerted_by(name).await? {
            self.store.resolve_alert(name, &device, now).await?;
        }
        tracing::info!(rule = %name, "alert rule deleted, its alerts resolved");
        Ok(())
    }

    /// One pass over every rule. A rule that cannot be evaluated is logged
    /// and the others go on.
    pub async fn evaluate(&self, now: DateTime<Utc>) -> Result<Evaluated, StoreError> {
        let mut total = Evaluated::default();
        for record in self.store.list_alert_rules(None, MAX_RULES as u32).await? {
            match self.evaluate_rule(&record, now).await {
                Ok(done) => {
                    total.raised += done.raised;
                    total.resolved += done.resolved;
                }
                Err(error) => tracing::error!(
                    rule = %record.name,
                    error = %crate::error_chain(&error),
                    "could not evaluate an alert rule"
                ),
            }
            total.rules += 1;
        }
        Ok(total)
    }

    async fn evaluate_rule(
        &self,
        record: &AlertRuleRecord,
        now: DateTime<Utc>,
    ) -> Result<Evaluated, StoreError> {
        let spec = &record.spec;
        let findings = match &spec.condition {
            Condition::Metric(metric) => self.metric_findings(spec, metric, now).await?,
            Condition::Status(status) => self.status_findings(spec, status).await?,
        };
        let stored = self.store.alert_rule_states(&record.name).await?;
        let devices: BTreeSet<&DeviceId> = findings.keys().chain(stored.keys()).collect();
        let mut done = Evaluated::default();
        for device in devices {
            let finding = findings.get(device);
            let step = rule::step(
                stored.get(device).copied(),
                finding.is_some(),
                spec.hold_for(),
                now,
            );
            if !step.changed {
                continue;
            }
            match (step.state, step.alert, finding) {
                (Some(state), Some(AlertChange::Raise), Some(finding)) => {
                    if self.raise(record, device, &state, finding, now).await? {
                        done.raised += 1;
                    }
                }
                (Some(state), _, _) => {
                    self.store
                        .save_alert_rule_state(&record.name, device, &state)
                        .await?;
                }
                (None, alert, _) => {
                    if alert == Some(AlertChange::Resolve)
                        && self
                            .store
                            .resolve_alert(&record.name, device, now)
                            .await?
                            .is_some()
                    {
                        tracing::info!(rule = %record.name, %device, "alert rule resolved");
                        done.resolved += 1;
                    }
                    self.store
                        .clear_alert_rule_state(&record.name, device)
                        .await?;
                }
            }
        }
        Ok(done)
    }

    /// Stores the firing state, then raises the alert: a rule deleted
    /// meanwhile has no state to store, and raises nothing.
    async fn raise(
        &self,
        record: &AlertRuleRecord,
        device: &DeviceId,
        state: &RuleState,
        finding: &Finding,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !self
            .store
            .save_alert_rule_state(&record.name, device, state)
            .await?
        {
            return Ok(false);
        }
        let alert = NewAlert {
            rule: record.name.clone(),
            device: device.clone(),
            severity: record.spec.severity,
            summary: condition::summary(&record.name, &record.spec, device.as_str(), finding),
            labels: condition::alert_labels(&finding.device_labels, &record.spec),
        };
        let raised = self.store.raise_alert(&alert, now).await?;
        if raised.is_some() {
            tracing::info!(rule = %record.name, %device, severity = record.spec.severity.as_str(), summary = %alert.summary, "alert rule fired");
        }
        Ok(raised.is_some())
    }

    /// The devices with a recent series beyond the threshold, with the
    /// value furthest beyond it.
    async fn metric_findings(
        &self,
        spec: &AlertRuleSpec,
        metric: &MetricCondition,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<DeviceId, Finding>, StoreError> {
        let selector = spec.selector();
        let fresh_since = now
            - chrono::Duration::from_std(self.config.stale_after).unwrap_or(chrono::Duration::MAX);
        let mut findings: BTreeMap<DeviceId, Finding> = BTreeMap::new();
        let mut after: Option<(DeviceId, i64)> = None;
        loop {
            let page = self
                .store
                .series_beyond(
                    &metric.name,
                    metric.op,
                    metric.value,
                    &selector,
                    fresh_since,
                    after.as_ref().map(|(device, id)| (device, *id)),
                    PAGE,
                )
                .await?;
            let full = page.len() == PAGE as usize;
            after = page.last().map(|row| (row.device.clone(), row.id));
            for row in page {
                if !condition::series_matches(metric, &row.series_labels) {
                    continue;
                }
                let further = findings.get(&row.device).is_none_or(|found| {
                    condition::further(metric, row.value, found.value.unwrap_or(row.value))
                });
                if further {
                    findings.insert(
                        row.device,
                        Finding {
                            value: Some(row.value),
                            detail: condition::describe_series(
                                &metric.name,
                                &row.series_labels,
                                row.value,
                            ),
                            device_labels: row.device_labels,
                        },
                    );
                }
            }
            if !full {
                return Ok(findings);
            }
        }
    }

    /// The devices whose last reported status meets the condition.
    async fn status_findings(
        &self,
        spec: &AlertRuleSpec,
        status: &StatusCondition,
    ) -> Result<BTreeMap<DeviceId, Finding>, StoreError> {
        let selector = spec.selector();
        let mut findings = BTreeMap::new();
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self
                .store
                .reported_candidates(status, &selector, after.as_ref(), PAGE)
                .await?;
            let full = page.len() == PAGE as usize;
            after = page.last().map(|row| row.device.clone());
            for row in page {
                let reported: ReportedStatus = match serde_json::from_str(&row.status) {
                    Ok(reported) => reported,
                    Err(error) => {
                        tracing::warn!(device = %row.device, %error, "a stored status does not read back; passed over");
                        continue;
                    }
                };
                if let Some(detail) = condition::status_detail(status, &reported) {
                    findings.insert(
                        row.device,
                        Finding {
                            value: None,
                            detail,
                            device_labels: row.device_labels,
                        },
                    );
                }
            }
            if !full {
                return Ok(findings);
            }
        }
    }
}
