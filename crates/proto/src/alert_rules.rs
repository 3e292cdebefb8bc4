//! Operator-defined alert rules (issue 18, ADR 0032): a condition on a
//! metric or on what devices report, held for a while by a device the
//! rule's label selector picks, raises an alert of the rule's severity.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alerts::Severity;
use crate::labels::{self, LabelSelector};
use crate::spec::SpecError;
use crate::telemetry::{MAX_LABEL_NAME_BYTES, MAX_LABEL_VALUE_BYTES, MAX_METRIC_NAME_BYTES};

/// Longest summary template, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 1024;
/// Longest `for`: a condition that must hold longer is not an alert.
pub const MAX_FOR_SECONDS: u64 = 7 * 86_400;
/// Most labels a rule adds to its alerts, and most series labels a metric
/// condition names.
pub const MAX_RULE_LABELS: usize = 16;

/// What a rule watches, when it fires, and what its alerts say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRuleSpec {
    /// The devices the rule watches (`key=value,key in (a,b),!key`);
    /// every device when empty.
    #[serde(default)]
    pub selector: String,
    pub severity: Severity,
    /// How long the condition must hold on a device before the alert
    /// fires: `0s` (at once), `90s`, `10m`, `2h`, `1d`.
    #[serde(rename = "for", default = "AlertRuleSpec::at_once")]
    pub hold_for: String,
    /// The alert's summary, a template (Jinja syntax) seeing `rule`,
    /// `device`, `value` (a metric condition's value, else none),
    /// `threshold` and `labels`; a sentence naming the condition when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Added to the device's labels on each alert (a rule's label wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub condition: Condition,
}

impl AlertRuleSpec {
    fn at_once() -> String {
        "0s".to_owned()
    }

    /// How long the condition must hold; valid once [`check`] passed.
    pub fn hold_for(&self) -> std::time::Duration {
        parse_duration(&self.hold_for).unwrap_or_default()
    }

    /// The selector; valid once [`check`] passed.
    pub fn selector(&self) -> LabelSelector {
        LabelSelector::parse(&self.selector).unwrap_or_default()
    }
}

/// When a rule's condition holds on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Condition {
    /// A series of the device, as `GET /devices/{name}/metrics/series`
    /// lists them, compared with a threshold.
    Metric(MetricCondition),
    /// Something the device reports.
    Status(StatusCondition),
}

/// Holds when any of the device's series named `name` (and carrying every
/// label of `labels`) has a recent value beyond the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricCondition {
    /// `disk_used_percent`, `cpu_percent`, `memory_used_bytes`, a custom
    /// metric's name, …
    pub name: String,
    /// Only series with these labels (`{"mount": "/"}`); any when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub op: Comparison,
    pub value: f64,
}

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Comparison {
    #[serde(rename = ">")]
    Above,
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<")]
    Below,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Above => ">",
            Comparison::AtLeast => ">=",
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }

    /// Whether `value` is beyond `threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition on what the device last reported (its `reported` status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StatusCondition {
    /// A deployment of the device's spec is `failed`: a supervised process
    /// that keeps failing, a chart that could not be installed.
    DeploymentFailed,
    /// The device could not apply a section of its spec.
    SpecErrors,
    /// The device reports a condition of this type (`conditions` in its
    /// status): `{"condition": "ClockSkewed"}`.
    Condition(String),
}

impl StatusCondition {
    pub fn as_str(&self) -> &str {
        match self {
            StatusCondition::DeploymentFailed => "deploymentFailed",
            StatusCondition::SpecErrors => "specErrors",
            StatusCondition::Condition(kind) => kind,
        }
    }
}

/// The body of `POST /api/v1/alert-rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAlertRule {
    pub name: String,
    pub spec: AlertRuleSpec,
}

/// A rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertRule {
    pub name: String,
    pub spec: AlertRuleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `90`, `90s`, `10m`, `2h`, `1d`: a length of time.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
}

fn check_labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > MAX_RULE_LABELS {
        return Err(SpecError::new(
            path,
            format!(
                "{} labels, more than the {MAX_RULE_LABELS} allowed",
                labels.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a rule named `name`; the error names the field by its path in
/// the request (`name`, `spec.condition.metric.op`, …).
pub fn check(name: &str, spec: &AlertRuleSpec) -> Result<(), SpecError> {
    crate::desired::check_name("name", name)?;
    LabelSelector::parse(&spec.selector)
        .map_err(|e| SpecError::new("spec.selector", e.to_string()))?;
    match parse_duration(&spec.hold_for) {
        Some(hold) if hold.as_secs() <= MAX_FOR_SECONDS => {}
        Some(_) => {
            return Err(SpecError::new(
                "spec.for",
                format!(
                    "{:?} is longer than the {} days allowed",
                    spec.hold_for,
                    MAX_FOR_SECONDS / 86_400
                ),
            ));
        }
        None => {
            return Err(SpecError::new(
                "spec.for",
                format!(
                    "{:?} is not a duration: a whole number with s, m, h or d (`0s`, `90s`, `10m`, `2h`)",
                    spec.hold_for
                ),
            ));
        }
    }
    if let Some(summary) = &spec.summary {
        if summary.trim().is_empty() || summary.len() > MAX_SUMMARY_BYTES {
            return Err(SpecError::new(
                "spec.summary",
                format!("must be 1 to {MAX_SUMMARY_BYTES} bytes of text"),
            ));
        }
        crate::template::check("summary", summary)
            .map_err(|e| SpecError::new("spec.summary", e.to_string()))?;
    }
    check_labels("spec.labels", &spec.labels)?;
    for (key, value) in &spec.labels {
        let path = format!("spec.labels.{key}");
        if !labels::is_valid_key(key) {
            return Err(SpecError::new(
                path,
                "is not a label name: letters, digits, '-', '_', '.', '/', at most 63, starting with a letter or digit",
            ));
        }
        if !labels::is_valid_value(value) {
            return Err(SpecError::new(
                path,
                format!(
                    "{value:?} is not a label value: letters, digits, '-', '_', '.', '/', at most 63"
                ),
            ));
        }
    }
    match &spec.condition {
        Condition::Metric(metric) => check_metric(metric),
        Condition::Status(StatusCondition::Condition(kind))
            if !crate::conditions::is_condition_type(kind) =>
        {
            Err(SpecError::new(
                "spec.condition.status.condition",
                format!(
                    "{kind:?} is not a condition type: 1 to {} letters and digits starting with an upper-case letter, as devices report them (ClockSkewed)",
                    crate::conditions::MAX_TYPE_BYTES
                ),
            ))
        }
        Condition::Status(_) => Ok(()),
    }
}

fn check_metric(metric: &MetricCondition) -> Result<(), SpecError> {
    let path = "spec.condition.metric";
    if metric.name.is_empty()
        || metric.name.len() > MAX_METRIC_NAME_BYTES
        || metric.name.chars().any(char::is_control)
    {
        return Err(SpecError::new(
            format!("{path}.name"),
            format!(
                "must be a metric's name, 1 to {MAX_METRIC_NAME_BYTES} bytes without control characters (see `tether metrics series DEVICE`)"
            ),
        ));
    }
    check_labels(&format!("{path}.labels"), &metric.labels)?;
    for (key, value) in &metric.labels {
        if key.is_empty()
            || key.len() > MAX_LABEL_NAME_BYTES
            || value.len() > MAX_LABEL_VALUE_BYTES
            || key.contains('\0')
            || value.contains('\0')
        {
            return Err(SpecError::new(
                format!("{path}.labels.{key}"),
                format!(
                    "series label names are 1 to {MAX_LABEL_NAME_BYTES} bytes and values at most {MAX_LABEL_VALUE_BYTES}, without NUL"
                ),
            ));
        }
    }
    if !metric.value.is_finite() {
        return Err(SpecError::new(
            format!("{path}.value"),
            "must be a finite number",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn disk_rule() -> serde_json::Value {
        json!({
            "selector": "site=a",
            "severity": "critical",
            "for": "10m",
            "labels": {"team": "ops"},
            "condition": {"metric": {"name": "disk_used_percent", "labels": {"mount": "/"}, "op": ">", "value": 90.5}}
        })
    }

    fn spec(value: serde_json::Value) -> AlertRuleSpec {
        serde_json::from_value(value).expect("a rule spec")
    }

    fn refused(name: &str, value: serde_json::Value) -> SpecError {
        check(name, &spec(value)).expect_err("refused")
    }

    #[test]
    fn a_metric_rule_reads_back_with_its_duration_and_comparison() {
        let rule = spec(disk_rule());
        check("disk-full", &rule).expect("valid");
        assert_eq!(rule.hold_for(), std::time::Duration::from_secs(600));
        let Condition::Metric(metric) = &rule.condition else {
            panic!("a metric condition: {rule:?}");
        };
        assert_eq!(metric.op, Comparison::Above);
        assert!(metric.op.holds(91.0, 90.0) && !metric.op.holds(90.0, 90.0));
        assert!(Comparison::AtLeast.holds(90.0, 90.0));
        assert!(Comparison::Below.holds(1.0, 2.0) && !Comparison::Below.holds(2.0, 2.0));
        assert!(Comparison::AtMost.holds(2.0, 2.0));
        assert_eq!(serde_json::to_value(&rule).expect("json"), disk_rule());
    }

    #[test]
    fn a_status_rule_needs_no_duration() {
        let rule =
            spec(json!({"severity": "warning", "condition": {"status": "deploymentFailed"}}));
        check("process-failed", &rule).expect("valid");
        assert_eq!(rule.hold_for(), std::time::Duration::ZERO);
        assert_eq!(
            rule.condition,
            Condition::Status(StatusCondition::DeploymentFailed)
        );
    }

    #[test]
    fn a_rule_on_a_reported_condition_names_its_type() {
        let body =
            json!({"severity": "warning", "condition": {"status": {"condition": "ClockSkewed"}}});
        let rule = spec(body.clone());
        check("clock-skewed", &rule).expect("valid");
        assert_eq!(
            rule.condition,
            Condition::Status(StatusCondition::Condition("ClockSkewed".into()))
        );
        assert_eq!(
            serde_json::to_value(&rule).expect("json")["condition"],
            body["condition"]
        );
        for bad in ["clock skewed", "", "Clock%"] {
            let error = refused(
                "clock-skewed",
                json!({"severity": "warning", "condition": {"status": {"condition": bad}}}),
            );
            assert_eq!(error.path, "spec.condition.status.condition", "{bad}");
        }
    }

    #[test]
    fn unknown_fields_operators_and_statuses_are_refused_by_serde() {
        for (change, expected) in [
            (json!({"unknown": 1}), "unknown field"),
            (
                json!({"condition": {"metric": {"name": "x", "op": "=>", "value": 1}}}),
                "unknown variant",
            ),
            (
                json!({"condition": {"status": "diskFull"}}),
                "unknown variant",
            ),
            (json!({"severity": "page"}), "unknown variant"),
        ] {
            let mut body = disk_rule();
            for (key, value) in change.as_object().expect("an object") {
                body[key] = value.clone();
            }
            let error = serde_json::from_value::<AlertRuleSpec>(body)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(expected), "{change}: {error}");
        }
    }

    #[test]
    fn each_bad_field_is_named_by_its_path() {
        let with = |key: &str, value: serde_json::Value| {
            let mut body = disk_rule();
            body[key] = value;
            body
        };
        let metric = |value: serde_json::Value| {
            let mut body = disk_rule();
            for (key, v) in value.as_object().expect("an object") {
                body["condition"]["metric"][key] = v.clone();
            }
            body
        };
        let cases = [
            ("Disk_Full", disk_rule(), "name"),
            ("disk", with("selector", json!("=a")), "spec.selector"),
            ("disk", with("for", json!("10 minutes")), "spec.for"),
            ("disk", with("for", json!("8d")), "spec.for"),
            ("disk", with("summary", json!("{{ value")), "spec.summary"),
            ("disk", with("summary", json!(" ")), "spec.summary"),
            (
                "disk",
                with("labels", json!({"bad key": "x"})),
                "spec.labels.bad key",
            ),
            (
                "disk",
                with("labels", json!({"team": "a b"})),
                "spec.labels.team",
            ),
            (
                "disk",
                metric(json!({"name": ""})),
                "spec.condition.metric.name",
            ),
            (
                "disk",
                metric(json!({"labels": {"": "x"}})),
                "spec.condition.metric.labels.",
            ),
        ];
        for (name, body, path) in cases {
            let error = refused(name, body.clone());
            assert_eq!(error.path, path, "{body}: {error}");
            assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn durations_read_as_documented() {
        assert_eq!(
            parse_duration("90"),
            Some(std::time::Duration::from_secs(90))
        );
        assert_eq!(parse_duration("0s"), Some(std::time::Duration::ZERO));
        assert_eq!(
            parse_duration("2h"),
            Some(std::time::Duration::from_secs(7200))
        );
        assert_eq!(
            parse_duration("1d"),
            Some(std::time::Duration::from_secs(86_400))
        );
        for bad in [
            "",
            "m",
            "1.5m",
            "-1s",
            "10 m",
            "1w",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
