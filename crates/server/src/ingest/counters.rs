//! What happened to each device's messages since tetherd started, for the
//! operator (`GET /api/v1/devices/{name}`).

pub use tether_proto::device::IngestCounters;

/// How one publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// An answer for an action already finished (or unknown): acknowledged, dropped.
    Duplicate,
    Malformed,
    TooLarge,
    Clock,
    RateLimited,
    /// Refused for its rate so often in a row that the session was closed.
    Disconnected,
    /// Not acknowledged: the store was unavailable.
    NotDurable,
}

#[derive(Debug, Default, Clone)]
pub struct Counters(IngestCounters);

impl Counters {
    pub fn count(&mut self, outcome: Outcome) {
        let c = &mut self.0;
        let counter = match outcome {
            Outcome::Accepted => &mut c.accepted,
            Outcome::Duplicate => &mut c.duplicates_dropped,
            Outcome::Malformed => &mut c.rejected_malformed,
            Outcome::TooLarge => &mut c.rejected_too_large,
            Outcome::Clock => &mut c.rejected_clock,
            Outcome::RateLimited => &mut c.rate_limited,
            Outcome::Disconnected => &mut c.disconnected_for_rate,
            Outcome::NotDurable => &mut c.not_acknowledged_store_unavailable,
        };
        *counter += 1;
    }

    /// A refusal was counted but not recorded as an event.
    pub fn event_suppressed(&mut self) {
        self.0.rejection_events_suppressed += 1;
    }

    pub fn snapshot(&self) -> IngestCounters {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_counter() {
        let mut counters = Counters::default();
        for outcome in [
            Outcome::Accepted,
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Malformed,
            Outcome::TooLarge,
            Outcome::Clock,
            Outcome::RateLimited,
            Outcome::Disconnected,
            Outcome::NotDurable,
        ] {
            counters.count(outcome);
        }
        counters.event_suppressed();
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.accepted, 2);
        assert_eq!(snapshot.duplicates_dropped, 1);
        assert_eq!(snapshot.rejected_malformed, 1);
        assert_eq!(snapshot.rejected_too_large, 1);
        assert_eq!(snapshot.rejected_clock, 1);
        assert_eq!(snapshot.rate_limited, 1);
        assert_eq!(snapshot.disconnected_for_rate, 1);
        assert_eq!(snapshot.not_acknowledged_store_unavailable, 1);
        assert_eq!(snapshot.rejection_events_suppressed, 1);
    }
}
