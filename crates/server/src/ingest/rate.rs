//! Per-device rate limits: token buckets for messages and bytes, and the
//! rule that a device which keeps exceeding them is disconnected. Pure: the
//! caller passes the time in.

use std::time::Instant;

/// A bucket of `burst` tokens refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(per_second: f64, burst: u64, now: Instant) -> Self {
        Self {
            per_second,
            burst: burst as f64,
            tokens: burst as f64,
            refilled_at: now,
        }
    }

    /// Takes `cost` tokens if there are that many; otherwise takes none.
    pub fn take(&mut self, cost: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        self.refilled_at = now;
        let cost = cost as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// How much a device may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub messages_per_second: u64,
    pub message_burst: u64,
    pub bytes_per_second: u64,
    pub byte_burst: u64,
    /// Publishes refused in a row for their rate before the session is closed.
    pub strikes_before_disconnect: u32,
}

impl Default for RateLimits {
    /// Generous for tether-agent: it sends a sample a second at most, a
    /// birth per connection and an answer per action, and answers carry at
    /// most 3 MiB.
    fn default() -> Self {
        Self {
            messages_per_second: 100,
            message_burst: 1000,
            bytes_per_second: 1024 * 1024,
            byte_burst: 16 * 1024 * 1024,
            strikes_before_disconnect: 100,
        }
    }
}

/// What to do with one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Over the rate: refuse this one (MQTT 5: 0x97).
    Slow,
    /// Over the rate again and again: end the session.
    Disconnect,
}

/// One device's buckets.
#[derive(Debug, Clone)]
pub struct DeviceRate {
    limits: RateLimits,
    messages: TokenBucket,
    bytes: TokenBucket,
    strikes: u32,
}

impl DeviceRate {
    pub fn new(limits: RateLimits, now: Instant) -> Self {
        Self {
            messages: TokenBucket::new(
                limits.messages_per_second as f64,
                limits.message_burst,
                now,
            ),
            bytes: TokenBucket::new(limits.bytes_per_second as f64, limits.byte_burst, now),
            limits,
            strikes: 0,
        }
    }

    /// Admits a publish of `size` bytes, or says how to refuse it. A
    /// publish larger than the byte burst could never pass; it is refused as
    /// too large before it gets here.
    pub fn admit(&mut self, size: usize, now: Instant) -> Admission {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        // Both buckets are checked so neither is drained by a refused publish.
        let message_ok = self.messages.take(1, now);
        let bytes_ok = message_ok && self.bytes.take(size, now);
        if message_ok && !bytes_ok {
            // Give the message token back: the publish did not happen.
            self.messages.tokens = (self.messages.tokens + 1.0).min(self.messages.burst);
        }
        if message_ok && bytes_ok {
            self.strikes = 0;
            return Admission::Admit;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes >= self.limits.strikes_before_disconnect {
            self.strikes = 0;
            Admission::Disconnect
        } else {
            Admission::Slow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> RateLimits {
        RateLimits {
            messages_per_second: 10,
            message_burst: 20,
            bytes_per_second: 1000,
            byte_burst: 5000,
            strikes_before_disconnect: 3,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        for _ in 0..20 {
            assert!(bucket.take(1, start));
        }
        assert!(!bucket.take(1, start));
        assert!(!bucket.take(1, start + Duration::from_millis(50)));
        assert!(bucket.take(1, start + Duration::from_millis(150)));
        // Idle time refills up to the burst, not beyond.
        let later = start + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(bucket.take(1, later));
        }
        assert!(!bucket.take(1, later));
    }

    #[test]
    fn bytes_are_limited_apart_from_messages() {
        let start = Instant::now();
        let mut rate = DeviceRate::new(limits(), start);
        assert_eq!(rate.admit(4000, start), Admission::Admit);
        assert_eq!(rate.admit(4000, start), Admission::Slow);
        // Small messages still pass while the byte bucket refills.
        assert_eq!(rate.admit(500, start), Admission::Admit);
        assert_eq!(
            rate.admit(4000, start + Duration::from_secs(4)),
            Admission::Admit
        );
    }

    #[test]
    fn a_device_that_keeps_exceeding_is_disconnected_and_one_that_slows_down_is_not() {
        let start = Instant::now();
        let mut rate = DeviceRate::new(limits(), start);
        for _ in 0..20 {
            assert_eq!(rate.admit(1, start), Admission::Admit);
        }
        assert_eq!(rate.admit(1, start), Admission::Slow);
        assert_eq!(rate.admit(1, start), Admission::Slow);
        // Backing off resets the strikes.
        assert_eq!(
            rate.admit(1, start + Duration::from_millis(100)),
            Admission::Admit
        );
        let at = start + Duration::from_millis(100);
        assert_eq!(rate.admit(1, at), Admission::Slow);
        assert_eq!(rate.admit(1, at), Admission::Slow);
        assert_eq!(rate.admit(1, at), Admission::Disconnect);
    }
}
