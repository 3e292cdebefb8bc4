//! Whether a device may renew its certificate: the rules, without IO.
//!
//! The device sends its current certificate and a CSR signed with the
//! certificate's key. The CA has already checked that it issued the
//! certificate and the CSR's signature; here the rest is decided: same key,
//! a serial the registry still accepts, not revoked, not expired beyond the
//! grace, not renewing too often.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::PresentedDeviceCertificate;
use crate::store::CertificateSerials;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the certificate signing request is not for the certificate's key")]
    KeyMismatch,
    #[error(
        "device {device}'s certificate was revoked: enroll it again with a token from `tether devices enrollment-token {device}`"
    )]
    Revoked { device: String },
    #[error(
        "device {device} was deleted: add it again with `tether devices add {device}` and enroll it with the command that prints"
    )]
    Deleted { device: String },
    #[error(
        "this certificate of device {device} was replaced (re-enrolled or renewed elsewhere): enroll it again with a token from `tether devices enrollment-token {device}`"
    )]
    Replaced { device: String },
    #[error(
        "device {device}'s certificate expired on {expired} and the renewal grace ended on {grace_ended}: re-enroll it with a token from `tether devices enrollment-token {device}`"
    )]
    PastGrace {
        device: String,
        expired: DateTime<Utc>,
        grace_ended: DateTime<Utc>,
    },
}

/// Decides a renewal of `presented`, whose CSR carries `csr_key`, for a
/// device whose registry entry holds `serials` (`None`: no entry, deleted),
/// at `now`.
pub fn check(
    presented: &PresentedDeviceCertificate,
    csr_key: &[u8],
    serials: Option<&CertificateSerials>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<(), Refusal> {
    if presented.public_key != csr_key {
        return Err(Refusal::KeyMismatch);
    }
    let device = presented.device.clone();
    let Some(serials) = serials else {
        return Err(Refusal::Deleted { device });
    };
    if serials.current.is_none() {
        return Err(Refusal::Revoked { device });
    }
    let known = [&serials.current, &serials.previous]
        .into_iter()
        .flatten()
        .any(|serial| *serial == presented.serial_hex);
    if !known {
        return Err(Refusal::Replaced { device });
    }
    let grace_ended =
        presented.not_after + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    if now > grace_ended {
        return Err(Refusal::PastGrace {
            device,
            expired: presented.not_after,
            grace_ended,
        });
    }
    Ok(())
}

/// The window a device's renewals are counted in: its certificate's
/// lifetime, but never shorter than a minute (the short lifetimes of tests)
/// nor longer than a day. A device limited is told to wait until its oldest
/// renewal leaves the window, and the agent does: with a year-long window
/// that wait could outlast its certificate and the grace, stranding it.
pub fn renewal_window(lifetime: Duration) -> Duration {
    lifetime.clamp(Duration::from_secs(60), Duration::from_secs(86_400))
}

/// At most `max` renewals per device within `window`: a device renews once
/// per two thirds of its certificate's life, so more means a bug or abuse,
/// and every renewal costs a signature and a database write.
#[derive(Debug)]
pub struct RenewalLimiter {
    max: usize,
    window: Duration,
    recent: HashMap<String, VecDeque<DateTime<Utc>>>,
}

impl RenewalLimiter {
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            recent: HashMap::new(),
        }
    }

    /// Counts a renewal of `device` at `now`, or says how long until one is
    /// allowed.
    pub fn admit(&mut self, device: &str, now: DateTime<Utc>) -> Result<(), Duration> {
        let window = chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        // Forget devices whose renewals all left the window, so the map
        // holds only devices that renewed recently.
        self.recent
            .retain(|_, times| times.back().is_some_and(|last| *last + window > now));
        let times = self.recent.entry(device.to_owned()).or_default();
        while times.front().is_some_and(|first| *first + window <= now) {
            times.pop_front();
        }
        if times.len() >= self.max {
            let oldest = times.front().copied().unwrap_or(now);
            return Err((oldest + window - now).to_std().unwrap_or_default());
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("valid")
    }

    fn presented(serial: &str, not_after: i64) -> PresentedDeviceCertificate {
        PresentedDeviceCertificate {
            device: "edge-1".into(),
            serial_hex: serial.into(),
            not_after: at(not_after),
            public_key: vec![1, 2, 3],
        }
    }

    fn serials(current: Option<&str>, previous: Option<&str>) -> CertificateSerials {
        CertificateSerials {
            current: current.map(str::to_owned),
            previous: previous.map(str::to_owned),
        }
    }

    const GRACE: Duration = Duration::from_secs(100);

    #[test]
    fn the_current_certificate_renews_before_and_within_the_grace_after_expiry() {
        let cert = presented("aa", 1000);
        let ok = serials(Some("aa"), None);
        assert_eq!(check(&cert, &[1, 2, 3], Some(&ok), at(500), GRACE), Ok(()));
        assert_eq!(check(&cert, &[1, 2, 3], Some(&ok), at(1100), GRACE), Ok(()));
        let refused = check(&cert, &[1, 2, 3], Some(&ok), at(1101), GRACE).expect_err("past grace");
        assert_eq!(
            refused,
            Refusal::PastGrace {
                device: "edge-1".into(),
                expired: at(1000),
                grace_ended: at(1100),
            }
        );
        assert!(refused.to_string().contains("re-enroll"), "{refused}");
    }

    #[test]
    fn the_previous_certificate_renews_until_the_new_one_is_used() {
        // The answer to the renewal that issued "bb" was lost.
        let cert = presented("aa", 1000);
        assert_eq!(
            check(
                &cert,
                &[1, 2, 3],
                Some(&serials(Some("bb"), Some("aa"))),
                at(500),
                GRACE
            ),
            Ok(())
        );
        // Once "bb" has connected, "aa" is forgotten.
        assert_eq!(
            check(
                &cert,
                &[1, 2, 3],
                Some(&serials(Some("bb"), None)),
                at(500),
                GRACE
            ),
            Err(Refusal::Replaced {
                device: "edge-1".into()
            })
        );
    }

    #[test]
    fn revoked_devices_and_foreign_keys_are_refused() {
        let cert = presented("aa", 1000);
        assert_eq!(
            check(
                &cert,
                &[1, 2, 3],
                Some(&serials(None, None)),
                at(500),
                GRACE
            ),
            Err(Refusal::Revoked {
                device: "edge-1".into()
            })
        );
        assert_eq!(
            check(
                &cert,
                &[9],
                Some(&serials(Some("aa"), None)),
                at(500),
                GRACE
            ),
            Err(Refusal::KeyMismatch)
        );
    }

    #[test]
    fn a_deleted_device_is_told_to_add_it_again() {
        let refused =
            check(&presented("aa", 1000), &[1, 2, 3], None, at(500), GRACE).expect_err("deleted");
        assert_eq!(
            refused,
            Refusal::Deleted {
                device: "edge-1".into()
            }
        );
        assert!(
            refused.to_string().contains("tether devices add edge-1"),
            "{refused}"
        );
        // Without the key, nothing is told about the device.
        assert_eq!(
            check(&presented("aa", 1000), &[9], None, at(500), GRACE),
            Err(Refusal::KeyMismatch)
        );
    }

    #[test]
    fn a_limited_device_never_waits_longer_than_a_day() {
        let year = Duration::from_secs(365 * 86_400);
        assert_eq!(renewal_window(year), Duration::from_secs(86_400));
        assert_eq!(
            renewal_window(Duration::from_secs(3600)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            renewal_window(Duration::from_secs(10)),
            Duration::from_secs(60)
        );
        let mut limiter = RenewalLimiter::new(5, renewal_window(year));
        for _ in 0..5 {
            limiter.admit("a", at(0)).expect("admitted");
        }
        let wait = limiter.admit("a", at(0)).expect_err("limited");
        assert!(wait <= Duration::from_secs(86_400), "{wait:?}");
    }

    #[test]
    fn renewals_are_limited_per_device_within_the_window() {
        let mut limiter = RenewalLimiter::new(2, Duration::from_secs(60));
        assert_eq!(limiter.admit("a", at(0)), Ok(()));
        assert_eq!(limiter.admit("a", at(10)), Ok(()));
        assert_eq!(limiter.admit("a", at(20)), Err(Duration::from_secs(40)));
        assert_eq!(
            limiter.admit("b", at(20)),
            Ok(()),
            "other devices unaffected"
        );
        assert_eq!(limiter.admit("a", at(60)), Ok(()));
        // Devices that stopped renewing are forgotten.
        limiter.admit("c", at(1000)).expect("admitted");
        assert_eq!(limiter.recent.len(), 1);
    }
}
