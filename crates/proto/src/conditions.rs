//! Conditions a device reports about itself (`conditions` in the reported
//! status): a named state that holds now and that an operator may want to
//! be alerted on, such as `ClockSkewed`. An alert rule names the type
//! (`{"status": {"condition": "ClockSkewed"}}`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most conditions one status carries.
pub const MAX_CONDITIONS: usize = 16;
/// Longest condition type and reason.
pub const MAX_TYPE_BYTES: usize = 63;
/// Longest message.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// A condition holding on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportedCondition {
    /// What holds, in PascalCase: `ClockSkewed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Why, as a word a program can match: `OffsetBeyondLimit`.
    pub reason: String,
    /// Why, for a person.
    pub message: String,
    /// Since when it holds, by tetherd's clock.
    pub since: DateTime<Utc>,
}

/// A condition type: 1 to 63 ASCII letters and digits, starting with an
/// upper-case letter (`ClockSkewed`). Nothing else, so it cannot match
/// anything but itself where it is looked for in stored text.
pub fn is_condition_type(kind: &str) -> bool {
    kind.len() <= MAX_TYPE_BYTES
        && kind.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && kind.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_types_are_pascal_case_words() {
        assert!(is_condition_type("ClockSkewed"));
        assert!(is_condition_type("Disk2Full"));
        for bad in ["", "clockSkewed", "Clock_Skewed", "Clock Skewed", "Clock%"] {
            assert!(!is_condition_type(bad), "{bad}");
        }
        assert!(!is_condition_type(&"A".repeat(64)));
    }
}
