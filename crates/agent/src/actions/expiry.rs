//! When an action expires, judged without trusting the device's wall clock.
//!
//! A board without a real-time clock may boot hours or days off. tetherd
//! says how long an action has left (`expiresInMs`, and the MQTT 5 message
//! expiry interval); the agent starts that countdown on its monotonic clock
//! when the message arrives. Only a request from a tetherd that sends
//! neither is judged by comparing `expiresAt` with the device's clock.
//!
//! Nothing needs persisting for restarts: an action the agent had not
//! started when it stopped is delivered again by tetherd after the
//! reconnect, carrying the time left at that moment.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tether_proto::ActionRequest;

/// One instant on both clocks: the monotonic one decides, the wall one is
/// for the fallback and for logging the offset to tetherd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moment {
    pub monotonic: Instant,
    pub wall: DateTime<Utc>,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            monotonic: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// This moment `elapsed` later on both clocks.
    pub fn after(self, elapsed: Duration) -> Self {
        Self {
            monotonic: self.monotonic + elapsed,
            wall: self.wall + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX),
        }
    }
}

/// An action request as it came off the wire.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub arrived: Moment,
    /// MQTT 5 message expiry interval of the publish, as the broker passed
    /// it on (whole seconds left, rounded down).
    pub mqtt_expiry: Option<Duration>,
}

/// After when the action must not start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadline {
    /// On this device's monotonic clock.
    Local(Instant),
    /// By the device's wall clock: only for a tetherd that sent no TTL.
    Wall(DateTime<Utc>),
}

impl Deadline {
    /// The deadline of `request`, delivered as `delivery` says.
    pub fn of(request: &ActionRequest, delivery: &Delivery) -> Self {
        let time_left = request
            .expires_in_ms
            .map(Duration::from_millis)
            .or(delivery.mqtt_expiry);
        time_left
            .and_then(|left| delivery.arrived.monotonic.checked_add(left))
            .map_or(Deadline::Wall(request.expires_at), Deadline::Local)
    }

    pub fn passed(self, now: Moment) -> bool {
        match self {
            Deadline::Local(at) => at <= now.monotonic,
            Deadline::Wall(at) => at <= now.wall,
        }
    }
}

/// A change in the offset smaller than this is network delay, not news.
const NOTABLE_OFFSET_CHANGE: TimeDelta = TimeDelta::seconds(5);
/// Beyond this the offset is logged as a warning: timestamps the device
/// sends (metrics) will be off by as much.
const LARGE_OFFSET: TimeDelta = TimeDelta::seconds(60);

/// How far this device's clock is from tetherd's, as last reported.
#[derive(Debug, Default)]
pub struct ClockOffset {
    reported: Option<TimeDelta>,
}

impl ClockOffset {
    /// Records tetherd's clock `sent_at` as seen at `received`; returns the
    /// offset (positive: the device is ahead) when it is the first one or
    /// moved notably since the last one returned.
    pub fn observe(
        &mut self,
        sent_at: DateTime<Utc>,
        received: DateTime<Utc>,
    ) -> Option<TimeDelta> {
        let offset = received - sent_at;
        let notable = self
            .reported
            .is_none_or(|reported| (offset - reported).abs() >= NOTABLE_OFFSET_CHANGE);
        notable.then(|| {
            self.reported = Some(offset);
            offset
        })
    }
}

/// Logs the offset of the device's clock to tetherd's.
pub fn log_offset(offset: TimeDelta) {
    let seconds = offset.num_milliseconds() as f64 / 1000.0;
    let (how_far, direction) = if seconds < 0.0 {
        (-seconds, "behind")
    } else {
        (seconds, "ahead of")
    };
    if offset.abs() >= LARGE_OFFSET {
        tracing::warn!(
            offset_seconds = seconds,
            "this device's clock is {how_far:.1} s {direction} tetherd's; actions still expire \
             on time (their TTL is counted here), but timestamps this device sends are off by as \
             much: set the clock (NTP)"
        );
    } else {
        tracing::info!(
            offset_seconds = seconds,
            "this device's clock is {how_far:.1} s {direction} tetherd's"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(expires_at: DateTime<Utc>, expires_in_ms: Option<u64>) -> ActionRequest {
        ActionRequest {
            correlation_id: "c1".into(),
            action: "get-node-ip".into(),
            input: serde_json::Value::Null,
            expires_at,
            expires_in_ms,
            sent_at: None,
        }
    }

    fn delivered_at(arrived: Moment, mqtt_expiry: Option<Duration>) -> Delivery {
        Delivery {
            payload: Vec::new(),
            arrived,
            mqtt_expiry,
        }
    }

    /// The device's clock is a day off in either direction; the controller's
    /// `expiresAt` is 30 s after the device received the action.
    #[test]
    fn the_time_left_decides_whatever_the_device_clock_says() {
        let controller_now = Utc::now();
        let expires_at = controller_now + TimeDelta::seconds(30);
        for skew in [TimeDelta::days(1), TimeDelta::days(-1), TimeDelta::zero()] {
            let arrived = Moment {
                monotonic: Instant::now(),
                wall: controller_now + skew,
            };
            let deadline = Deadline::of(
                &request(expires_at, Some(30_000)),
                &delivered_at(arrived, None),
            );
            assert!(!deadline.passed(arrived), "skew {skew}: fresh action");
            assert!(
                !deadline.passed(arrived.after(Duration::from_millis(29_999))),
                "skew {skew}: still inside its TTL"
            );
            assert!(
                deadline.passed(arrived.after(Duration::from_secs(30))),
                "skew {skew}: TTL over"
            );
        }
    }

    #[test]
    fn without_the_payload_ttl_the_mqtt_expiry_decides() {
        let arrived = Moment::now();
        // A device a day ahead: `expiresAt` is long past by its clock.
        let deadline = Deadline::of(
            &request(arrived.wall - TimeDelta::days(1), None),
            &delivered_at(arrived, Some(Duration::from_secs(10))),
        );
        assert_eq!(
            deadline,
            Deadline::Local(arrived.monotonic + Duration::from_secs(10))
        );
        assert!(!deadline.passed(arrived.after(Duration::from_secs(9))));
        assert!(deadline.passed(arrived.after(Duration::from_secs(10))));
    }

    #[test]
    fn the_payload_ttl_wins_over_the_coarser_mqtt_expiry() {
        let arrived = Moment::now();
        let deadline = Deadline::of(
            &request(arrived.wall, Some(1_500)),
            &delivered_at(arrived, Some(Duration::from_secs(1))),
        );
        assert_eq!(
            deadline,
            Deadline::Local(arrived.monotonic + Duration::from_millis(1_500))
        );
    }

    #[test]
    fn a_request_from_an_older_tetherd_falls_back_to_the_wall_clock() {
        let arrived = Moment::now();
        let expires_at = arrived.wall + TimeDelta::seconds(5);
        let deadline = Deadline::of(&request(expires_at, None), &delivered_at(arrived, None));
        assert_eq!(deadline, Deadline::Wall(expires_at));
        assert!(!deadline.passed(arrived));
        assert!(deadline.passed(arrived.after(Duration::from_secs(5))));
    }

    #[test]
    fn a_ttl_of_zero_has_expired_on_arrival_and_a_huge_one_does_not_overflow() {
        let arrived = Moment::now();
        let zero = Deadline::of(
            &request(arrived.wall, Some(0)),
            &delivered_at(arrived, None),
        );
        assert!(zero.passed(arrived));
        let far = arrived.wall + TimeDelta::days(365);
        let huge = Deadline::of(&request(far, Some(u64::MAX)), &delivered_at(arrived, None));
        assert!(!huge.passed(arrived.after(Duration::from_secs(3600))));
    }

    #[test]
    fn the_clock_offset_is_reported_once_and_again_when_it_moves() {
        let mut offset = ClockOffset::default();
        let sent = Utc::now();
        let day = TimeDelta::days(1);
        assert_eq!(offset.observe(sent, sent + day), Some(day));
        // Network delay and jitter: nothing new.
        assert_eq!(
            offset.observe(sent, sent + day + TimeDelta::milliseconds(300)),
            None
        );
        assert_eq!(
            offset.observe(sent, sent + day - TimeDelta::seconds(2)),
            None
        );
        // NTP corrected the clock.
        assert_eq!(
            offset.observe(sent, sent + TimeDelta::milliseconds(20)),
            Some(TimeDelta::milliseconds(20))
        );
        assert_eq!(offset.observe(sent, sent), None);
        assert_eq!(
            offset.observe(sent, sent - TimeDelta::hours(1)),
            Some(-TimeDelta::hours(1))
        );
    }
}
