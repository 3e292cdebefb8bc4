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
}
