//! What becomes of a delivery after an attempt: a pure function of the
//! attempt's result, how many attempts were made, the policy, the clock
//! and a random number, so the schedule is tested without a network.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::AttemptResult;

/// How often and how long a failing delivery is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a delivery that keeps failing is given up (dead).
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each next one.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Fifteen attempts wait about 29 to 57 minutes in all (the waits
        // reach the cap at the eleventh): a receiver restarted or briefly
        // unreachable loses nothing; eight gave up after two minutes.
        Self {
            max_attempts: 15,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It may succeed later: the network, a 5xx, 408 or 429.
    Transient(String),
    /// It never will: the receiver refused this request (another 4xx).
    Refused(String),
}

impl Failure {
    /// What an HTTP status means for a delivery; `None` for a success.
    pub fn from_status(status: u16, detail: &str) -> Option<Self> {
        let error = if detail.is_empty() {
            format!("the receiver answered HTTP {status}")
        } else {
            format!("the receiver answered HTTP {status}: {detail}")
        };
        match status {
            200..=299 => None,
            408 | 429 | 500..=599 => Some(Failure::Transient(error)),
            _ => Some(Failure::Refused(error)),
        }
    }
}

/// The wait after attempt number `attempt` (from 1) failed: `initial`
/// doubled per earlier failure, capped at `max`, of which a random half
/// (`jitter` in `[0, 1)`) is left out so that receivers coming back are
/// not hit by every sender at once. Below the cap, each wait is at least
/// as long as the one before it, whatever the jitter.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let full = policy
        .initial
        .saturating_mul(1u32 << doublings.min(31))
        .min(policy.max);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// What attempt number `attempt` (from 1) leaves the delivery in.
pub fn after_attempt(
    policy: &RetryPolicy,
    attempt: u32,
    failure: Option<Failure>,
    now: DateTime<Utc>,
    jitter: f64,
) -> AttemptResult {
    match failure {
        None => AttemptResult::Delivered,
        Some(Failure::Refused(error)) => AttemptResult::Dead { error },
        Some(Failure::Transient(error)) if attempt >= policy.max_attempts => AttemptResult::Dead {
            error: format!("gave up after {attempt} attempts; the last: {error}"),
        },
        Some(Failure::Transient(error)) => AttemptResult::RetryAt {
            at: now
                + chrono::Duration::from_std(backoff(policy, attempt, jitter))
                    .unwrap_or(chrono::Duration::MAX),
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(2),
            max: Duration::from_secs(20),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_cap() {
        let policy = policy();
        let waits = |jitter| {
            (1..=6)
                .map(|attempt| backoff(&policy, attempt, jitter).as_millis())
                .collect::<Vec<_>>()
        };
        assert_eq!(waits(1.0), [2000, 4000, 8000, 16000, 20000, 20000]);
        assert_eq!(waits(0.0), [1000, 2000, 4000, 8000, 10000, 10000]);
        // Below the cap, the longest wait of one step never exceeds the
        // shortest of the next.
        for attempt in 1..4 {
            assert!(backoff(&policy, attempt, 1.0) <= backoff(&policy, attempt + 1, 0.0));
        }
    }

    #[test]
    fn a_huge_attempt_count_cannot_overflow_the_wait() {
        assert_eq!(backoff(&policy(), u32::MAX, 1.0), Duration::from_secs(20),);
    }

    #[test]
    fn success_delivers_a_refusal_kills_at_once_and_a_transient_failure_retries_until_the_last_attempt()
     {
        let policy = policy();
        assert_eq!(
            after_attempt(&policy, 1, None, now(), 0.5),
            AttemptResult::Delivered
        );
        let refused = Failure::from_status(404, "no such hook");
        assert_eq!(
            after_attempt(&policy, 1, refused, now(), 0.5),
            AttemptResult::Dead {
                error: "the receiver answered HTTP 404: no such hook".into()
            }
        );
        let failed = || Failure::from_status(503, "");
        assert_eq!(
            after_attempt(&policy, 2, failed(), now(), 0.5),
            AttemptResult::RetryAt {
                at: now() + chrono::Duration::seconds(3),
                error: "the receiver answered HTTP 503".into()
            }
        );
        assert_eq!(
            after_attempt(&policy, 5, failed(), now(), 0.5),
            AttemptResult::Dead {
                error: "gave up after 5 attempts; the last: the receiver answered HTTP 503".into()
            }
        );
    }

    #[test]
    fn statuses_are_sorted_into_retry_and_refusal() {
        for status in [408, 429, 500, 502, 599] {
            assert!(matches!(
                Failure::from_status(status, ""),
                Some(Failure::Transient(_))
            ));
        }
        for status in [301, 400, 401, 403, 404, 410, 422] {
            assert!(matches!(
                Failure::from_status(status, ""),
                Some(Failure::Refused(_))
            ));
        }
        assert_eq!(Failure::from_status(204, ""), None);
    }
}
