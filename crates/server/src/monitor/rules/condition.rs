//! What a rule found on a device, and what its alert says: pure functions
//! over the rows the store returns.

use tether_proto::alert_rules::{AlertRuleSpec, Condition, MetricCondition, StatusCondition};
use tether_proto::api::Labels;
use tether_proto::desired::DeploymentState;
use tether_proto::spec::ReportedStatus;

/// The condition holding on one device, for its alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// A metric condition's value (the furthest beyond the threshold of
    /// the device's matching series).
    pub value: Option<f64>,
    /// What holds, for a person: `disk_used_percent{mount="/"} is 93.5`,
    /// `deployment web failed: …`.
    pub detail: String,
    pub device_labels: Labels,
}

/// Whether a series with `labels` is one the condition names: it carries
/// every label the condition asks for.
pub fn series_matches(condition: &MetricCondition, labels: &Labels) -> bool {
    condition
        .labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// Whether `value` is further beyond the threshold than `than`.
pub fn further(condition: &MetricCondition, value: f64, than: f64) -> bool {
    use tether_proto::alert_rules::Comparison::{Above, AtLeast};
    match condition.op {
        Above | AtLeast => value > than,
        _ => value < than,
    }
}

/// `name{k="v",…} is value`.
pub fn describe_series(name: &str, labels: &Labels, value: f64) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    if labels.is_empty() {
        format!("{name} is {value}")
    } else {
        format!("{name}{{{}}} is {value}", labels.join(","))
    }
}

/// What of `status` meets `condition`, if anything.
pub fn status_detail(condition: &StatusCondition, status: &ReportedStatus) -> Option<String> {
    let found: Vec<String> = match condition {
        StatusCondition::DeploymentFailed => status
            .deployments
            .iter()
            .filter(|(_, deployment)| deployment.state == DeploymentState::Failed)
            .map(|(name, deployment)| match &deployment.reason {
                Some(reason) => format!("deployment {name} failed: {reason}"),
                None => format!("deployment {name} failed"),
            })
            .collect(),
        StatusCondition::SpecErrors => status
            .errors
            .iter()
            .map(|error| format!("{} not applied: {}", error.path, error.message))
            .collect(),
        StatusCondition::Condition(kind) => status
            .conditions
            .iter()
            .filter(|condition| condition.kind == *kind)
            .map(|condition| format!("{kind} ({}): {}", condition.reason, condition.message))
            .collect(),
    };
    (!found.is_empty()).then(|| found.join("; "))
}

/// The device's labels with the rule's over them.
pub fn alert_labels(device_labels: &Labels, spec: &AlertRuleSpec) -> Labels {
    let mut labels = device_labels.clone();
    labels.extend(spec.labels.clone());
    labels
}

/// The threshold a metric condition compares with, for summaries.
fn threshold(spec: &AlertRuleSpec) -> Option<f64> {
    match &spec.condition {
        Condition::Metric(metric) => Some(metric.value),
        Condition::Status(_) => None,
    }
}

/// The sentence an alert is raised with when the rule has no summary.
fn default_summary(rule: &str, spec: &AlertRuleSpec, device: &str, finding: &Finding) -> String {
    let condition = match &spec.condition {
        Condition::Metric(metric) => format!(" ({} {})", metric.op, metric.value),
        Condition::Status(_) => String::new(),
    };
    let held = if spec.hold_for() > std::time::Duration::ZERO {
        format!(" for {}", spec.hold_for)
    } else {
        String::new()
    };
    format!("{rule}: {}{condition} on {device}{held}", finding.detail)
}

/// The alert's summary: the rule's template rendered for this device, or
/// a sentence naming the condition when it has none. A template that does
/// not render for this device (a label it names is missing) falls back to
/// that sentence with the reason, so the alert is raised all the same.
pub fn summary(rule: &str, spec: &AlertRuleSpec, device: &str, finding: &Finding) -> String {
    let Some(template) = &spec.summary else {
        return default_summary(rule, spec, device, finding);
    };
    let context = serde_json::json!({
        "rule": rule,
        "device": device,
        "value": finding.value,
        "threshold": threshold(spec),
        "detail": finding.detail,
        "labels": alert_labels(&finding.device_labels, spec),
    });
    match tether_proto::template::render("summary", template, &context) {
        Ok(text) => text,
        Err(error) => format!(
            "{} (the rule's summary {error})",
            default_summary(rule, spec, device, finding)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use tether_proto::desired::DeploymentStatus;
    use tether_proto::spec::SpecError;

    use super::*;

    fn rule(value: serde_json::Value) -> AlertRuleSpec {
        serde_json::from_value(value).expect("a rule")
    }

    fn disk() -> AlertRuleSpec {
        rule(json!({
            "severity": "critical", "for": "10m", "labels": {"team": "ops"},
            "condition": {"metric": {"name": "disk_used_percent", "labels": {"mount": "/"}, "op": ">", "value": 90}}
        }))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn finding(value: f64) -> Finding {
        Finding {
            value: Some(value),
            detail: describe_series("disk_used_percent", &labels(&[("mount", "/")]), value),
            device_labels: labels(&[("site", "a"), ("team", "dev")]),
        }
    }

    #[test]
    fn a_series_matches_when_it_carries_every_label_named() {
        let Condition::Metric(metric) = disk().condition else {
            panic!("a metric rule")
        };
        assert!(series_matches(
            &metric,
            &labels(&[("mount", "/"), ("fs", "ext4")])
        ));
        assert!(!series_matches(&metric, &labels(&[("mount", "/data")])));
        assert!(!series_matches(&metric, &Labels::new()));
        assert!(further(&metric, 95.0, 91.0));
        let below = MetricCondition {
            op: tether_proto::alert_rules::Comparison::Below,
            ..metric
        };
        assert!(further(&below, 1.0, 2.0));
    }

    #[test]
    fn the_default_summary_names_the_series_the_threshold_and_the_duration() {
        assert_eq!(
            summary("disk-full", &disk(), "edge-1", &finding(93.5)),
            r#"disk-full: disk_used_percent{mount="/"} is 93.5 (> 90) on edge-1 for 10m"#
        );
    }

    #[test]
    fn a_summary_template_sees_the_value_and_the_labels_with_the_rules_over_the_devices() {
        let mut spec = disk();
        spec.summary = Some(
            "{{ device }} at {{ labels.site }} ({{ labels.team }}): {{ value }} > {{ threshold }}"
                .into(),
        );
        assert_eq!(
            summary("disk-full", &spec, "edge-1", &finding(93.5)),
            "edge-1 at a (ops): 93.5 > 90.0"
        );
        // A label the device lacks: the default sentence, with the reason.
        spec.summary = Some("{{ labels.room }}".into());
        let text = summary("disk-full", &spec, "edge-1", &finding(93.5));
        assert!(text.starts_with("disk-full: disk_used_percent"), "{text}");
        assert!(
            text.contains("the rule's summary cannot be rendered"),
            "{text}"
        );
    }

    #[test]
    fn status_conditions_name_what_failed() {
        let mut status = ReportedStatus::default();
        assert_eq!(
            status_detail(&StatusCondition::DeploymentFailed, &status),
            None
        );
        status.deployments = BTreeMap::from([
            (
                "db".to_owned(),
                DeploymentStatus {
                    version: "1".into(),
                    state: DeploymentState::Ready,
                    reason: None,
                },
            ),
            (
                "web".to_owned(),
                DeploymentStatus {
                    version: "2".into(),
                    state: DeploymentState::Failed,
                    reason: Some("process web exited 3 times".into()),
                },
            ),
        ]);
        status.errors = vec![SpecError::new("spec.loggingConfig", "unknown unit")];
        assert_eq!(
            status_detail(&StatusCondition::DeploymentFailed, &status).as_deref(),
            Some("deployment web failed: process web exited 3 times")
        );
        assert_eq!(
            status_detail(&StatusCondition::SpecErrors, &status).as_deref(),
            Some("spec.loggingConfig not applied: unknown unit")
        );
        let skewed = StatusCondition::Condition("ClockSkewed".into());
        assert_eq!(status_detail(&skewed, &status), None);
        status.conditions = vec![tether_proto::conditions::ReportedCondition {
            kind: "ClockSkewed".into(),
            reason: "OffsetBeyondLimit".into(),
            message: "the clock is 600.0 s ahead of tetherd's".into(),
            since: chrono::DateTime::from_timestamp_millis(0).expect("epoch"),
        }];
        assert_eq!(
            status_detail(&skewed, &status).as_deref(),
            Some("ClockSkewed (OffsetBeyondLimit): the clock is 600.0 s ahead of tetherd's")
        );
        assert_eq!(
            status_detail(&StatusCondition::Condition("DiskFull".into()), &status),
            None
        );
        let spec =
            rule(json!({"severity": "warning", "condition": {"status": "deploymentFailed"}}));
        let found = Finding {
            value: None,
            detail: "deployment web failed".into(),
            device_labels: Labels::new(),
        };
        assert_eq!(
            summary("process-failed", &spec, "edge-1", &found),
            "process-failed: deployment web failed on edge-1"
        );
    }
}
