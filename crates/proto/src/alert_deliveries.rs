//! The delivery of alerts to webhooks and Alertmanager (issue 18), as the
//! API lists it: one row per change of an alert and receiver.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertState;

/// Where one delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeliveryState {
    /// Not sent yet, or failed and waiting for its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up on (refused, or failed `max_attempts` times): kept until
    /// an operator retries it.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// One change of one alert, for one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertDelivery {
    /// Also sent to the receiver (`X-Tether-Delivery`), to recognise a repeat.
    pub id: String,
    /// The receiver's name in `[alerts]`.
    pub receiver: String,
    pub alert_id: u64,
    pub rule: String,
    pub device: String,
    /// The state the alert entered.
    pub event: AlertState,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When a pending delivery is tried next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_from_their_names() {
        for state in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ] {
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
        assert_eq!(DeliveryState::parse("failed"), None);
    }
}
