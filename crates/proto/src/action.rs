//! Actions (server → device) and their events (device → server), and the
//! lifecycle an action goes through in the controller.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::limits::{self, TooLarge};

/// An action as delivered to a device on its `actions` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    pub correlation_id: String,
    pub action: String,
    #[serde(default)]
    pub input: serde_json::Value,
    /// After this instant, by tetherd's clock, the device must not start the
    /// action any more. For people and older agents: a device judges expiry
    /// from `expires_in_ms`, because its own clock may be far off.
    pub expires_at: DateTime<Utc>,
    /// Milliseconds the action had left when tetherd published it. The
    /// device starts its own countdown when the message arrives; set on every
    /// publish (a redelivery carries what is left then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// tetherd's clock when it published the action, so a device can tell
    /// (and log) how far its own clock is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
}

impl ActionRequest {
    /// The request as tetherd publishes it at `now`: with the time left and
    /// tetherd's clock filled in.
    pub fn stamped(&self, now: DateTime<Utc>) -> Self {
        let left = (self.expires_at - now).num_milliseconds();
        Self {
            expires_in_ms: Some(u64::try_from(left).unwrap_or(0)),
            sent_at: Some(now),
            ..self.clone()
        }
    }
}

/// The answer of a device to an action, on its `events` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActionEvent {
    pub correlation_id: String,
    pub event: String,
    /// HTTP-like: 200 done, 400 bad input, 401 not authorized, 404 unknown,
    /// 409 conflict, 410 expired before it started, 500 failed, 501 not
    /// implemented, 504 timed out.
    pub status_code: u16,
    pub status_message: String,
    #[serde(default)]
    pub response: serde_json::Value,
}

impl ActionEvent {
    /// Largest `events` payload tetherd accepts, in bytes: a `send-api`
    /// answer carries up to 1 MiB of body, which JSON escaping can grow.
    pub const MAX_PAYLOAD_BYTES: usize = 3 * 1024 * 1024;
    pub const MAX_CORRELATION_ID_BYTES: usize = 128;
    pub const MAX_EVENT_BYTES: usize = 64;
    pub const MAX_STATUS_MESSAGE_BYTES: usize = 8 * 1024;

    /// Checks every field against its limit; `response` is bounded by the
    /// payload limit.
    pub fn check_limits(&self) -> Result<(), TooLarge> {
        limits::check(
            "correlationId",
            self.correlation_id.len(),
            Self::MAX_CORRELATION_ID_BYTES,
        )?;
        limits::check("event", self.event.len(), Self::MAX_EVENT_BYTES)?;
        limits::check(
            "statusMessage",
            self.status_message.len(),
            Self::MAX_STATUS_MESSAGE_BYTES,
        )
    }

    pub fn new(
        request: &ActionRequest,
        event: impl Into<String>,
        status_code: u16,
        status_message: impl Into<String>,
        response: serde_json::Value,
    ) -> Self {
        Self {
            correlation_id: request.correlation_id.clone(),
            event: event.into(),
            status_code,
            status_message: status_message.into(),
            response,
        }
    }
}

/// Where an action is in its life:
/// `[queued →] pending → delivered → succeeded | failed | timed-out | expired | rejected`,
/// and `cancelled` from `queued` or `pending`.
///
/// Only actions of a fleet-wide job start `queued`: the job's dispatcher
/// releases them to `pending` within its concurrency and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ActionState {
    /// Accepted as part of a job, not yet released for delivery.
    Queued,
    /// Accepted and stored; waiting for the device to be online.
    Pending,
    /// Published to the device; waiting for its event.
    Delivered,
    /// The device answered with a 2xx status.
    Succeeded,
    /// The device ran the action and it failed (5xx), or the agent lost it.
    Failed,
    /// Delivered, but no answer came before the action's deadline.
    TimedOut,
    /// Never run: the device stayed offline past the action's TTL, or got it
    /// only after (410).
    Expired,
    /// The device refused to run it (4xx but 410, or 501 not implemented).
    Rejected,
    /// Never delivered: its job was cancelled first.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("action is already {from}; it cannot become {to}")]
pub struct TransitionError {
    pub from: ActionState,
    pub to: ActionState,
}

impl ActionState {
    pub const ALL: [ActionState; 9] = [
        ActionState::Queued,
        ActionState::Pending,
        ActionState::Delivered,
        ActionState::Succeeded,
        ActionState::Failed,
        ActionState::TimedOut,
        ActionState::Expired,
        ActionState::Rejected,
        ActionState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Queued => "queued",
            ActionState::Pending => "pending",
            ActionState::Delivered => "delivered",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::TimedOut => "timed-out",
            ActionState::Expired => "expired",
            ActionState::Rejected => "rejected",
            ActionState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ActionState::Queued | ActionState::Pending | ActionState::Delivered
        )
    }

    /// The terminal state a device's status code puts an action in.
    pub fn from_status_code(code: u16) -> Self {
        match code {
            200..=299 => ActionState::Succeeded,
            410 => ActionState::Expired,
            400..=499 | 501 => ActionState::Rejected,
            504 => ActionState::TimedOut,
            _ => ActionState::Failed,
        }
    }

    /// Checks a transition: an open action may be delivered (again, after a
    /// reconnect) or end in any outcome, even straight from `pending`,
    /// because a device's answer may overtake the `delivered` mark; nothing
    /// goes back to `pending`, and a terminal state never changes. A
    /// `queued` action was never sent, so it can only be released to
    /// `pending`, expire or be cancelled; nothing becomes `queued`. Only
    /// what was never delivered can be cancelled: a delivered action may be
    /// running on the device and finishes normally.
    pub fn transition(self, to: ActionState) -> Result<ActionState, TransitionError> {
        use ActionState::*;
        let allowed = match (self, to) {
            (from, _) if from.is_terminal() => false,
            (_, Queued) => false,
            (Queued, to) => matches!(to, Pending | Expired | Cancelled),
            (Pending, to) => to != Pending,
            (Delivered, to) => !matches!(to, Pending | Cancelled),
            _ => false,
        };
        if allowed {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ActionState::*;
    use super::*;

    #[test]
    fn lifecycle_moves_forward_only() {
        assert_eq!(Pending.transition(Delivered), Ok(Delivered));
        assert_eq!(Delivered.transition(Succeeded), Ok(Succeeded));
        assert_eq!(Delivered.transition(Delivered), Ok(Delivered));
        assert_eq!(Pending.transition(Expired), Ok(Expired));
        assert_eq!(Delivered.transition(TimedOut), Ok(TimedOut));
        // A delivered action the device found past its TTL when it got it.
        assert_eq!(Delivered.transition(Expired), Ok(Expired));
        assert_eq!(Pending.transition(TimedOut), Ok(TimedOut));
        assert!(Delivered.transition(Pending).is_err());
        assert_eq!(Pending.transition(Cancelled), Ok(Cancelled));
        assert!(
            Delivered.transition(Cancelled).is_err(),
            "a delivered action may be running: it finishes normally"
        );
        for terminal in ActionState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in ActionState::ALL {
                let err = terminal
                    .transition(to)
                    .expect_err("terminal states never change");
                assert_eq!(err.from, terminal);
            }
        }
    }

    #[test]
    fn a_queued_action_is_released_expires_or_is_cancelled() {
        assert_eq!(Queued.transition(Pending), Ok(Pending));
        assert_eq!(Queued.transition(Expired), Ok(Expired));
        assert_eq!(Queued.transition(Cancelled), Ok(Cancelled));
        for never_sent in [Delivered, Succeeded, Failed, TimedOut, Rejected, Queued] {
            assert!(Queued.transition(never_sent).is_err(), "{never_sent}");
        }
        for state in ActionState::ALL {
            assert!(state.transition(Queued).is_err(), "{state} → queued");
        }
        assert!(!Queued.is_terminal());
        assert!(Cancelled.is_terminal());
    }

    #[test]
    fn status_codes_map_to_outcomes() {
        assert_eq!(ActionState::from_status_code(200), Succeeded);
        assert_eq!(ActionState::from_status_code(204), Succeeded);
        assert_eq!(ActionState::from_status_code(400), Rejected);
        assert_eq!(ActionState::from_status_code(401), Rejected);
        assert_eq!(ActionState::from_status_code(501), Rejected);
        assert_eq!(ActionState::from_status_code(500), Failed);
        assert_eq!(ActionState::from_status_code(504), TimedOut);
        assert_eq!(ActionState::from_status_code(410), Expired);
    }

    #[test]
    fn states_use_their_wire_names() {
        for state in ActionState::ALL {
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(ActionState::parse(state.as_str()), Some(state));
        }
    }

    #[test]
    fn oversized_event_fields_are_named() {
        let request = ActionRequest {
            correlation_id: "c1".into(),
            action: "send-ping".into(),
            input: serde_json::json!({}),
            expires_at: DateTime::from_timestamp(0, 0).expect("epoch"),
            expires_in_ms: None,
            sent_at: None,
        };
        let ok = ActionEvent::new(&request, "send-ping", 200, "ok", serde_json::json!({}));
        assert!(ok.check_limits().is_ok());
        let long = "m".repeat(ActionEvent::MAX_STATUS_MESSAGE_BYTES + 1);
        let event = ActionEvent::new(&request, "send-ping", 500, long, serde_json::json!({}));
        assert_eq!(
            event.check_limits().expect_err("too long").field,
            "statusMessage"
        );
    }

    #[test]
    fn wire_messages_use_camel_case() {
        let event: ActionEvent = serde_json::from_str(
            r#"{"correlationId":"c1","event":"get-node-ip","statusCode":200,"statusMessage":"OK","response":{"a":1}}"#,
        )
        .expect("parses");
        assert_eq!(event.status_code, 200);
        let request = ActionRequest {
            correlation_id: "c1".into(),
            action: "get-node-ip".into(),
            input: serde_json::json!({}),
            expires_at: DateTime::from_timestamp(0, 0).expect("epoch"),
            expires_in_ms: None,
            sent_at: None,
        };
        let json = serde_json::to_value(&request).expect("serializes");
        assert_eq!(json["correlationId"], "c1");
        assert!(json.get("expiresAt").is_some());
        assert!(
            json.get("expiresInMs").is_none(),
            "unset relative TTL is left out, as older tetherds sent it"
        );
    }

    #[test]
    fn a_stamped_request_carries_the_time_left_and_the_senders_clock() {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let request = ActionRequest {
            correlation_id: "c1".into(),
            action: "get-node-ip".into(),
            input: serde_json::json!({}),
            expires_at: now + chrono::TimeDelta::milliseconds(30_500),
            expires_in_ms: None,
            sent_at: None,
        };
        let stamped = request.stamped(now);
        assert_eq!(stamped.expires_in_ms, Some(30_500));
        assert_eq!(stamped.sent_at, Some(now));
        assert_eq!(stamped.expires_at, request.expires_at);
        let json = serde_json::to_value(&stamped).expect("serializes");
        assert_eq!(json["expiresInMs"], 30_500);
        assert!(json["sentAt"].is_string());
        let late = request.stamped(now + chrono::TimeDelta::minutes(1));
        assert_eq!(late.expires_in_ms, Some(0), "already expired: nothing left");
    }
}
