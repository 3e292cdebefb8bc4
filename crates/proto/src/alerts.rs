//! Alerts raised by the fleet monitor (issue 18, ADR 0032), as the API
//! returns them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The rule behind the monitor's own silence alert.
pub const RULE_DEVICE_SILENT: &str = "device_silent";
/// The rule behind the monitor's own configuration drift alert.
pub const RULE_CONFIG_DRIFT: &str = "config_drift";

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AlertState {
    /// The condition holds and nobody took it on.
    Firing,
    /// The condition holds; an operator took it on.
    Acknowledged,
    /// The condition ended.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Firing, Self::Acknowledged, Self::Resolved]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Info, Self::Warning, Self::Critical]
            .into_iter()
            .find(|severity| severity.as_str() == text)
    }
}

/// One alert: a rule's condition on one device, from when it began to
/// when it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: u64,
    /// The rule that raised it (`device_silent`, `config_drift`, or an
    /// operator's rule).
    pub rule: String,
    pub device: String,
    pub severity: Severity,
    pub state: AlertState,
    /// What happened, for a person.
    pub summary: String,
    /// The device's labels when it was raised, and the rule's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_severities_read_back_from_their_names() {
        for state in [
            AlertState::Firing,
            AlertState::Acknowledged,
            AlertState::Resolved,
        ] {
            assert_eq!(AlertState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
        for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
            assert_eq!(Severity::parse(severity.as_str()), Some(severity));
            assert_eq!(
                serde_json::to_value(severity).expect("json"),
                severity.as_str()
            );
        }
        assert_eq!(AlertState::parse("open"), None);
    }
}
