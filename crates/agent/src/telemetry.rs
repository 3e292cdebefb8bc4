//! Whether telemetry may go out now, and how much was dropped meanwhile.
//!
//! Metrics samples are QoS 0 and worth nothing late. Handed to the MQTT
//! client while tetherd is unreachable, they would wait in its request
//! channel and then, at every failed reconnect, move into its pending queue,
//! which has no bound: an agent left offline for hours grew without limit.
//! So samples go out only while the session is up; the rest are counted, and
//! the count is logged once the session is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct TelemetryGate {
    online: AtomicBool,
    dropped: AtomicU64,
}

impl TelemetryGate {
    /// Whether a sample may be handed to the MQTT client now; counts it as
    /// dropped if not.
    pub fn admit(&self) -> bool {
        let online = self.online.load(Ordering::Acquire);
        if !online {
            self.dropped();
        }
        online
    }

    /// Counts a sample that could not be handed over although online (the
    /// client's request channel was full).
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The session is up (subscribed, birth sent): samples flow again.
    /// Returns how many were dropped since the last time it came up.
    pub fn online(&self) -> u64 {
        self.online.store(true, Ordering::Release);
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// The session is down.
    pub fn offline(&self) {
        self.online.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_pass_only_while_online_and_the_dropped_ones_are_counted_once() {
        let gate = TelemetryGate::default();
        assert!(!gate.admit(), "not online before the first connection");
        assert_eq!(gate.online(), 1);
        assert!(gate.admit());
        assert!(gate.admit());
        gate.offline();
        for _ in 0..1800 {
            assert!(!gate.admit());
        }
        gate.dropped();
        assert_eq!(gate.online(), 1801);
        assert!(gate.admit());
        assert_eq!(gate.online(), 0, "the count starts over after a report");
    }
}
