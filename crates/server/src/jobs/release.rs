//! How many of a job's queued actions to release now: the job's limits
//! applied to what is in flight and to the time since the last release.
//! Pure, so the dispatcher's pacing is tested without a clock or a store.

use std::time::Duration;

/// A job's delivery limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most actions released and not yet finished at once.
    pub concurrency: Option<u32>,
    /// Most releases per second.
    pub rate_per_second: Option<u32>,
}

impl Limits {
    pub fn unlimited(&self) -> bool {
        self.concurrency.is_none() && self.rate_per_second.is_none()
    }
}

/// The rate allows a burst of at most one second's worth after a pause, so
/// a job that waited for devices to come online does not flood them.
const MAX_BURST: Duration = Duration::from_secs(1);

/// How many to release: at most `waiting`, no more than the concurrency
/// leaves free beside `in_flight`, and no more than the rate earned since
/// the last release (`None`: nothing released yet, a full second's worth).
pub fn release_now(
    limits: Limits,
    in_flight: u64,
    waiting: u64,
    since_last_release: Option<Duration>,
) -> u64 {
    let mut count = waiting;
    if let Some(concurrency) = limits.concurrency {
        count = count.min(u64::from(concurrency).saturating_sub(in_flight));
    }
    if let Some(rate) = limits.rate_per_second {
        let earned = since_last_release.unwrap_or(MAX_BURST).min(MAX_BURST);
        // Whole releases only; the fraction stays as credit (`credit_left`).
        let allowed = (f64::from(rate) * earned.as_secs_f64()).floor() as u64;
        count = count.min(allowed);
    }
    count
}

/// The part of `since_last_release` that `released` releases did not use:
/// the dispatcher counts the next interval from `now - credit_left`, so a
/// rate of 7/s checked every 100 ms releases 7 a second, not 5.
pub fn credit_left(
    limits: Limits,
    since_last_release: Option<Duration>,
    released: u64,
) -> Duration {
    let Some(rate) = limits.rate_per_second else {
        return Duration::ZERO;
    };
    let earned = since_last_release.unwrap_or(MAX_BURST).min(MAX_BURST);
    let used = Duration::from_secs_f64(released as f64 / f64::from(rate));
    earned.saturating_sub(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn without_limits_everything_waiting_is_released_at_once() {
        assert_eq!(release_now(Limits::default(), 0, 10_000, None), 10_000);
        assert_eq!(release_now(Limits::default(), 500, 3, Some(MS(1))), 3);
        assert_eq!(
            credit_left(Limits::default(), Some(MS(300)), 3),
            Duration::ZERO
        );
    }

    #[test]
    fn concurrency_fills_only_the_free_slots() {
        let limits = Limits {
            concurrency: Some(5),
            rate_per_second: None,
        };
        assert_eq!(release_now(limits, 0, 100, None), 5);
        assert_eq!(release_now(limits, 3, 100, Some(MS(10))), 2);
        assert_eq!(release_now(limits, 5, 100, Some(MS(10))), 0);
        assert_eq!(
            release_now(limits, 7, 100, Some(MS(10))),
            0,
            "more in flight than allowed (the limit was never lowered, but a count may lag): none"
        );
        assert_eq!(release_now(limits, 0, 2, None), 2, "no more than wait");
    }

    #[test]
    fn the_rate_pays_out_what_the_time_since_the_last_release_earned() {
        let limits = Limits {
            concurrency: None,
            rate_per_second: Some(10),
        };
        assert_eq!(
            release_now(limits, 0, 100, None),
            10,
            "first: one second's worth"
        );
        assert_eq!(release_now(limits, 0, 100, Some(MS(50))), 0);
        assert_eq!(release_now(limits, 0, 100, Some(MS(100))), 1);
        assert_eq!(release_now(limits, 0, 100, Some(MS(350))), 3);
        assert_eq!(
            release_now(limits, 0, 100, Some(Duration::from_secs(60))),
            10,
            "a long pause earns at most a second's burst"
        );
    }

    #[test]
    fn fractions_of_the_rate_carry_over_so_the_rate_is_kept() {
        let limits = Limits {
            concurrency: None,
            rate_per_second: Some(7),
        };
        // Ticks every 100 ms for 10 s: the credit carried makes it 70.
        let mut released = 0;
        let mut credit = Duration::ZERO;
        let mut first = true;
        for _ in 0..100 {
            let since = if first {
                Some(MS(100))
            } else {
                Some(credit + MS(100))
            };
            first = false;
            let count = release_now(limits, 0, u64::MAX, since);
            credit = credit_left(limits, since, count);
            released += count;
        }
        assert!((69..=70).contains(&released), "{released}");
    }

    #[test]
    fn both_limits_apply_and_the_tighter_wins() {
        let limits = Limits {
            concurrency: Some(5),
            rate_per_second: Some(100),
        };
        assert_eq!(release_now(limits, 0, 1000, Some(MS(500))), 5);
        assert_eq!(release_now(limits, 0, 1000, Some(MS(20))), 2);
        assert!(!limits.unlimited());
        assert!(Limits::default().unlimited());
    }
}
