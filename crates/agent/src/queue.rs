//! Which actions are waiting for the worker or running now.
//!
//! tetherd delivers every open action again at each reconnect (at least
//! once), so on a flapping link the same action could pile up in the queue
//! behind a slow one. A copy of an action already queued is dropped here; a
//! copy arriving after it finished reaches the dispatcher, which answers it
//! from its record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default)]
pub struct Queued(Arc<Mutex<HashSet<String>>>);

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CorrelationId {
    correlation_id: String,
}

fn correlation_id(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<CorrelationId>(payload)
        .ok()
        .map(|id| id.correlation_id)
}

impl Queued {
    /// Whether to queue this payload: not if the same action is already
    /// queued or running. A payload without a correlation id is queued, so
    /// the dispatcher answers what it can about it.
    pub fn admit(&self, payload: &[u8]) -> bool {
        match correlation_id(payload) {
            Some(id) => self.lock().insert(id),
            None => true,
        }
    }

    /// The worker is done with this payload.
    pub fn done(&self, payload: &[u8]) {
        if let Some(id) = correlation_id(payload) {
            self.lock().remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivered_copy_is_dropped_while_the_action_waits() {
        let queued = Queued::default();
        let action = br#"{"correlationId":"c1","action":"get-node-ip","input":{},"expiresAt":"2030-01-01T00:00:00Z"}"#;
        assert!(queued.admit(action));
        assert!(!queued.admit(action), "a copy while it waits is dropped");
        queued.done(action);
        assert!(
            queued.admit(action),
            "after it ran, a copy reaches the dispatcher"
        );
        assert!(
            queued.admit(b"not json"),
            "the dispatcher answers malformed payloads"
        );
        assert!(queued.admit(b"not json"));
    }
}
