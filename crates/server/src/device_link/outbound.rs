//! The publish that carries an action to a device, before either link turns
//! it into an MQTT packet.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use tether_proto::{ActionRequest, DeviceId, DeviceTopic, TopicKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionPublish {
    pub topic: String,
    /// JSON of the [`ActionRequest`], stamped with the time left and
    /// tetherd's clock: a device judges expiry from those, not from its own
    /// clock against `expiresAt`.
    pub payload: Vec<u8>,
    /// MQTT 5 correlation data: the correlation id's bytes.
    pub correlation_data: Vec<u8>,
    /// MQTT 5 message expiry: whole seconds until `expiresAt`, at least 1 so
    /// an action about to expire is still sent with a (short) expiry rather
    /// than none, which would mean "never expires".
    pub expiry: NonZeroU32,
}

impl ActionPublish {
    pub fn new(
        device: &DeviceId,
        request: &ActionRequest,
        now: DateTime<Utc>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            topic: DeviceTopic::new(device.clone(), TopicKind::Actions).to_string(),
            payload: serde_json::to_vec(&request.stamped(now))?,
            correlation_data: request.correlation_id.as_bytes().to_vec(),
            expiry: seconds_until(request.expires_at, now),
        })
    }
}

/// Seconds from `now` until `at`, rounded up, at least 1.
fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> NonZeroU32 {
    let millis = u64::try_from((at - now).num_milliseconds()).unwrap_or(0);
    let seconds = u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX);
    NonZeroU32::new(seconds).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn an_action_publish_mirrors_the_request() {
        let now = Utc::now();
        let request = ActionRequest {
            correlation_id: "c-42".into(),
            action: "send-ping".into(),
            input: serde_json::json!({"a": 1}),
            expires_at: now + TimeDelta::seconds(30),
            expires_in_ms: None,
            sent_at: None,
        };
        let device = DeviceId::new("device-a").expect("valid id");
        let publish = ActionPublish::new(&device, &request, now).expect("serializes");
        assert_eq!(publish.topic, "tether/v1/devices/device-a/actions");
        assert_eq!(publish.correlation_data, b"c-42");
        assert_eq!(publish.expiry.get(), 30);
        let back: ActionRequest = serde_json::from_slice(&publish.payload).expect("JSON");
        assert_eq!(back, request.stamped(now));
        assert_eq!(back.expires_in_ms, Some(30_000));
        assert_eq!(back.sent_at, Some(now));
    }

    #[test]
    fn expiry_rounds_up_and_is_at_least_one_second() {
        let now = Utc::now();
        let after = |ms| seconds_until(now + TimeDelta::milliseconds(ms), now).get();
        assert_eq!(after(1), 1);
        assert_eq!(after(1000), 1);
        assert_eq!(after(1001), 2);
        assert_eq!(after(0), 1);
        assert_eq!(after(-5000), 1);
        assert_eq!(
            seconds_until(now + TimeDelta::days(365 * 200), now).get(),
            u32::MAX
        );
    }
}
