//! Reconnect delays: exponential from 1 s to 60 s with jitter, so a fleet that
//! lost its controller does not reconnect in lockstep when it comes back.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay lies between half and
/// all of the exponential step, so it never collapses to zero yet spreads out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `random` is a uniform sample in
    /// `[0, 1)`; passing it in keeps this function deterministic under test.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        // 2^attempt overflows nothing: the exponent is capped well below 64.
        let factor = 1u32 << self.attempt.min(16);
        let step = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }

    /// Starts over at the minimum, after a connection that proved healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let upper: Vec<u64> = (0..10).map(|_| backoff.next_delay(1.0).as_secs()).collect();
        assert_eq!(upper, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_half_and_full_step() {
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        for _ in 0..20 {
            let lo = low.next_delay(0.0);
            let hi = high.next_delay(0.999);
            assert!(lo >= Duration::from_millis(500), "{lo:?}");
            assert!(hi <= Duration::from_secs(60), "{hi:?}");
            assert!(lo <= hi);
        }
        assert_eq!(low.next_delay(0.0), Duration::from_secs(30));
    }

    #[test]
    fn reset_starts_over_and_many_attempts_do_not_overflow() {
        let mut backoff = Backoff::default();
        for _ in 0..1000 {
            backoff.next_delay(0.5);
        }
        assert!(backoff.next_delay(1.0) <= Duration::from_secs(60));
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_secs(1));
    }

    #[test]
    fn out_of_range_random_is_clamped() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay(7.0), Duration::from_secs(1));
    }
}
