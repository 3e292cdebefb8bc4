//! tetherd's clock as this device sees it. Boards without a real-time clock
//! boot with any time at all; certificate lifetimes are judged by tetherd's
//! clock instead: the device's own clock plus the offset learned from
//! tetherd's answers (its `Date` header and the `serverTime` it reports).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};
use rustls::pki_types::UnixTime;

/// A change in the offset below this is network delay or drift, not news.
const NOTABLE_OFFSET_MS: i64 = 2_000;
/// Beyond this the offset is a warning: the device's own logs are off by as much.
const LARGE_OFFSET_MS: i64 = 60_000;

/// The device clock corrected by the last offset learned from tetherd.
#[derive(Debug, Default)]
pub struct ServerClock {
    /// tetherd's time minus the device's, in milliseconds.
    offset_ms: AtomicI64,
}

impl ServerClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// tetherd's time now, as well as this device can tell.
    pub fn now(&self) -> DateTime<Utc> {
        self.at(Utc::now())
    }

    /// tetherd's time when the device clock read `local`.
    pub fn at(&self, local: DateTime<Utc>) -> DateTime<Utc> {
        local + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub fn offset(&self) -> Duration {
        Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Learns the offset from `server_time`, which tetherd stamped on an
    /// answer to a request sent at `sent` and received at `received`
    /// (device clock): tetherd answered about halfway between.
    pub fn learn(&self, server_time: DateTime<Utc>, sent: DateTime<Utc>, received: DateTime<Utc>) {
        let midpoint = sent + (received - sent) / 2;
        let offset = (server_time - midpoint).num_milliseconds();
        let before = self.offset_ms.swap(offset, Ordering::Relaxed);
        if (offset - before).abs() < NOTABLE_OFFSET_MS
            && !(before == 0 && offset.abs() >= NOTABLE_OFFSET_MS)
        {
            tracing::debug!(offset_ms = offset, "clock offset to tetherd");
            return;
        }
        let seconds = offset as f64 / 1000.0;
        let (how_far, direction) = (
            seconds.abs(),
            if offset >= 0 { "behind" } else { "ahead of" },
        );
        if offset.abs() >= LARGE_OFFSET_MS {
            tracing::warn!(
                offset_seconds = seconds,
                "this device's clock is {how_far:.1} s {direction} tetherd's; actions still expire on \
                 time, and certificates and metrics are dated by tetherd's clock, but set this \
                 device's clock (NTP) for its own logs"
            );
        } else {
            tracing::info!(
                offset_seconds = seconds,
                "this device's clock is {how_far:.1} s {direction} tetherd's; certificates and \
                 metrics are dated by tetherd's clock"
            );
        }
    }

    /// Learns from an HTTP `Date` header (whole seconds), if there is one.
    pub fn learn_from_date_header(
        &self,
        headers: &reqwest::header::HeaderMap,
        sent: DateTime<Utc>,
        received: DateTime<Utc>,
    ) {
        if let Some(date) = date_header(headers) {
            // The header drops the fraction: aim at the middle of its second.
            self.learn(date + Duration::milliseconds(500), sent, received);
        }
    }
}

/// The time in an HTTP `Date` header, if there is a valid one.
pub fn date_header(headers: &reqwest::header::HeaderMap) -> Option<DateTime<Utc>> {
    headers
        .get(reqwest::header::DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| DateTime::parse_from_rfc2822(value).ok())
        .map(|date| date.with_timezone(&Utc))
}

impl ServerClock {}

/// rustls asks this for the time when it checks tetherd's certificate.
impl rustls::time_provider::TimeProvider for ServerClock {
    fn current_time(&self) -> Option<UnixTime> {
        let now = self.now().timestamp();
        u64::try_from(now)
            .ok()
            .map(|seconds| UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("valid")
    }

    #[test]
    fn the_offset_is_measured_against_the_middle_of_the_round_trip() {
        let clock = ServerClock::default();
        assert_eq!(clock.at(at(1_000)), at(1_000));
        // A device one day behind: tetherd answered at 86,400,000 + 1,100.
        clock.learn(at(86_401_100), at(1_000), at(1_200));
        assert_eq!(clock.offset(), Duration::days(1));
        assert_eq!(clock.at(at(5_000)), at(86_405_000));
        clock.learn(at(0), at(86_400_000), at(86_400_000));
        assert_eq!(clock.offset(), -Duration::days(1));
    }

    #[test]
    fn a_date_header_is_read_to_the_middle_of_its_second() {
        let clock = ServerClock::default();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::DATE,
            "Thu, 01 Jan 1970 00:00:10 GMT".parse().expect("header"),
        );
        clock.learn_from_date_header(&headers, at(0), at(0));
        assert_eq!(clock.offset(), Duration::milliseconds(10_500));
        // No header: the offset stays.
        clock.learn_from_date_header(&reqwest::header::HeaderMap::new(), at(0), at(0));
        assert_eq!(clock.offset(), Duration::milliseconds(10_500));
    }

    #[test]
    fn rustls_sees_tetherds_time() {
        use rustls::time_provider::TimeProvider;
        let clock = ServerClock::default();
        clock.learn(at(1_000_000_000), at(0), at(0));
        let seconds = clock.current_time().expect("a time").as_secs();
        let expected = u64::try_from(Utc::now().timestamp()).expect("after 1970") + 1_000_000;
        assert!(seconds.abs_diff(expected) <= 1, "{seconds} vs {expected}");
    }
}
