//! When certificates are valid and when they are renewed: the one rule
//! tetherd (for its own TLS certificate) and tether-agent (for the device's
//! client certificate) both follow.

use chrono::{DateTime, Duration, Utc};

/// Certificates are valid from a little before they are issued, so a peer
/// whose clock runs somewhat behind accepts a fresh one. A tenth of the
/// lifetime, at most a day, keeps the two thirds point meaningful for the
/// short lifetimes tests use.
const MAX_BACKDATE: Duration = Duration::days(1);

/// Renewal happens at two thirds of the validity period, spread by up to a
/// twelfth either way so devices enrolled together do not renew together.
const RENEW_AT: f64 = 2.0 / 3.0;
const JITTER: f64 = 1.0 / 12.0;

/// `(not_before, not_after)` of a certificate issued at `now` for `lifetime`.
pub fn validity(now: DateTime<Utc>, lifetime: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let backdate = (lifetime / 10).min(MAX_BACKDATE);
    (now - backdate, now + lifetime)
}

/// When a certificate valid from `not_before` to `not_after` should be
/// renewed. `random` is a uniform sample in `[0, 1)`, passed in so this stays
/// deterministic under test; 0.5 gives exactly two thirds.
pub fn renewal_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    random: f64,
) -> DateTime<Utc> {
    let life = (not_after - not_before).max(Duration::zero());
    let fraction = RENEW_AT + JITTER * (2.0 * random.clamp(0.0, 1.0) - 1.0);
    let offset_ms = (life.num_milliseconds() as f64 * fraction).round() as i64;
    not_before + Duration::milliseconds(offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("valid time")
    }

    #[test]
    fn long_lifetimes_are_backdated_a_day_short_ones_a_tenth() {
        let now = at(1_000_000);
        assert_eq!(
            validity(now, Duration::days(365)),
            (now - Duration::days(1), now + Duration::days(365))
        );
        assert_eq!(
            validity(now, Duration::seconds(30)),
            (now - Duration::seconds(3), now + Duration::seconds(30))
        );
    }

    #[test]
    fn renewal_is_at_two_thirds_give_or_take_a_twelfth() {
        let (nb, na) = (at(0), at(1200));
        assert_eq!(renewal_time(nb, na, 0.5), at(800));
        assert_eq!(renewal_time(nb, na, 0.0), at(700));
        assert_eq!(renewal_time(nb, na, 1.0), at(900));
        // Out-of-range samples are clamped, never pushing past expiry.
        assert_eq!(renewal_time(nb, na, 7.0), at(900));
        assert_eq!(renewal_time(nb, na, -1.0), at(700));
    }

    #[test]
    fn a_fleet_enrolled_together_renews_spread_over_a_sixth_of_the_life() {
        let (nb, na) = validity(at(0), Duration::days(365));
        let times: Vec<_> = (0..100)
            .map(|i| renewal_time(nb, na, f64::from(i) / 100.0))
            .collect();
        let spread = *times.iter().max().expect("some") - *times.iter().min().expect("some");
        assert!(spread > Duration::days(55), "{spread}");
        assert!(times.iter().all(|t| *t < na - Duration::days(90)));
    }

    #[test]
    fn an_inverted_validity_renews_at_once() {
        assert_eq!(renewal_time(at(100), at(50), 0.5), at(100));
    }
}
