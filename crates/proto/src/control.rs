//! What tetherd's monitor asks of an agent on its `control` topic (issue
//! 18, ADR 0032). Nothing here is stored: a request that is lost is made
//! again at the monitor's next pass.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ControlMessage {
    /// Publish the birth and a fresh reported status now (seed 002's
    /// rebirth request to a node that went silent).
    Rebirth,
    /// Apply the current spec in full, as at start, and report (seed 002's
    /// "Reload Edge Agent Config" to a node left behind).
    Reload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_kind() {
        for (message, json) in [
            (ControlMessage::Rebirth, r#"{"kind":"rebirth"}"#),
            (ControlMessage::Reload, r#"{"kind":"reload"}"#),
        ] {
            assert_eq!(serde_json::to_string(&message).expect("json"), json);
            assert_eq!(
                serde_json::from_str::<ControlMessage>(json).expect("parsed"),
                message
            );
        }
        assert!(serde_json::from_str::<ControlMessage>(r#"{"kind":"reboot"}"#).is_err());
    }
}
