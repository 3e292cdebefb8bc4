//! tetherd's monitor's requests on the device's `control` topic (issue 18,
//! ADR 0032): `rebirth` (publish the birth and a fresh reported status
//! now) and `reload` (apply the saved spec again in full, as at start, and
//! report). The session does them: a rebirth is the birth it publishes at
//! every connection, a reload [`crate::spec::SpecHandle::reload`].
//!
//! This part only reads requests and says when each is due. A payload it
//! cannot read (not JSON, a kind this agent does not know: a newer
//! tetherd's) is an error for the session to log and ignore; the
//! connection stays up.
//!
//! Requests are spaced ([`spacing`]): a rebirth costs tetherd a store
//! write for the birth and one for the status, a reload renders every
//! config file and reconciles every chart. The monitor asks once per
//! device's interval, but overlapping leaders, a retried notice or a
//! misbehaving publisher could ask many times a second; the agent answers
//! a burst once, and no request goes unanswered.

pub mod spacing;

use std::time::{Duration, Instant};

use tether_proto::control::ControlMessage;

use spacing::Spaced;

/// At most one rebirth this often: a birth answers every request made
/// before it, so more would tell tetherd nothing new.
pub const REBIRTH_SPACING: Duration = Duration::from_secs(5);
/// At most one reload this often: it re-renders and rewrites everything.
pub const RELOAD_SPACING: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("ignoring a request on the control topic: it is not one this agent knows ({reason})")]
pub struct ControlError {
    reason: String,
}

/// The requests received and not yet done.
#[derive(Debug)]
pub struct Requests {
    rebirth: Spaced,
    reload: Spaced,
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            rebirth: Spaced::new(REBIRTH_SPACING),
            reload: Spaced::new(RELOAD_SPACING),
        }
    }
}

impl Requests {
    /// Reads a request off the `control` topic and holds it until it is due.
    pub fn receive(
        &mut self,
        payload: &[u8],
        now: Instant,
    ) -> Result<ControlMessage, ControlError> {
        let message =
            serde_json::from_slice::<ControlMessage>(payload).map_err(|e| ControlError {
                reason: e.to_string(),
            })?;
        match message {
            ControlMessage::Rebirth => self.rebirth.request(now),
            ControlMessage::Reload => self.reload.request(now),
        }
        Ok(message)
    }

    /// When the next held request is due.
    pub fn next_due(&self) -> Option<Instant> {
        [self.reload.due_at(), self.rebirth.due_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The requests due at `now`, each now counted as done: a reload
    /// first, so a rebirth due with it reports the reloaded spec.
    pub fn take_due(&mut self, now: Instant) -> Vec<ControlMessage> {
        let reload = self.reload.take_due(now).then_some(ControlMessage::Reload);
        let rebirth = self
            .rebirth
            .take_due(now)
            .then_some(ControlMessage::Rebirth);
        reload.into_iter().chain(rebirth).collect()
    }
}

/// Resolves when `due` comes; never without one.
pub async fn until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_held_and_done_reload_first() {
        let now = Instant::now();
        let mut requests = Requests::default();
        assert_eq!(requests.next_due(), None);
        assert_eq!(
            requests
                .receive(br#"{"kind":"rebirth"}"#, now)
                .expect("read"),
            ControlMessage::Rebirth
        );
        requests
            .receive(br#"{"kind":"reload"}"#, now)
            .expect("read");
        assert_eq!(requests.next_due(), Some(now));
        assert_eq!(
            requests.take_due(now),
            [ControlMessage::Reload, ControlMessage::Rebirth]
        );
        assert_eq!(requests.take_due(now), []);

        requests
            .receive(br#"{"kind":"rebirth"}"#, now)
            .expect("read");
        requests
            .receive(br#"{"kind":"reload"}"#, now)
            .expect("read");
        assert_eq!(
            requests.next_due(),
            Some(now + REBIRTH_SPACING),
            "spaced, each by its own spacing"
        );
        assert_eq!(
            requests.take_due(now + REBIRTH_SPACING),
            [ControlMessage::Rebirth]
        );
        assert_eq!(requests.next_due(), Some(now + RELOAD_SPACING));
    }

    #[test]
    fn a_payload_that_is_not_a_known_request_is_an_error_naming_why_and_holds_nothing() {
        let now = Instant::now();
        let mut requests = Requests::default();
        for (payload, reason) in [
            (&b"not json"[..], "expected ident"),
            (br#"{"kind":"reboot"}"#, "unknown variant `reboot`"),
            (br#"{}"#, "missing field `kind`"),
            (b"\xff\xfe", "expected value"),
        ] {
            let error = requests.receive(payload, now).expect_err("refused");
            let text = error.to_string();
            assert!(
                text.contains("control topic") && text.contains(reason),
                "{text}"
            );
        }
        assert_eq!(requests.next_due(), None);
        // What a later tetherd may add beside the kind does not matter.
        assert_eq!(
            requests
                .receive(br#"{"kind":"reload","reason":"behind"}"#, now)
                .expect("read"),
            ControlMessage::Reload
        );
    }
}
