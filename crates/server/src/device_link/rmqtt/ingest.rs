//! What a device's publish means to the controller: its topic picks the wire
//! type, its payload is JSON of that type.

use tether_proto::{DeviceTopic, TopicKind};

use crate::device_link::DeviceMessage;
use tether_proto::DeviceId;

#[derive(Debug, thiserror::Error)]
#[error("malformed {kind} payload")]
pub(super) struct MalformedPayload {
    pub kind: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// Turns a publish by `device` on `topic` into a message for the controller.
/// `Ok(None)` for topics the controller does not consume (logs, reported
/// state) and for anything outside the device's own prefix, which the ACL has
/// refused already; this is a second line, not the check.
pub(super) fn device_message(
    device: &DeviceId,
    topic: &str,
    payload: &[u8],
) -> Result<Option<DeviceMessage>, MalformedPayload> {
    let Some(parsed) = DeviceTopic::parse(topic) else {
        return Ok(None);
    };
    if &parsed.device != device {
        return Ok(None);
    }
    let kind = parsed.kind.as_str();
    let malformed = |source| MalformedPayload { kind, source };
    let device = device.clone();
    let message = match parsed.kind {
        TopicKind::Events => DeviceMessage::Event {
            device,
            event: serde_json::from_slice(payload).map_err(malformed)?,
        },
        TopicKind::Status => DeviceMessage::Status {
            device,
            status: serde_json::from_slice(payload).map_err(malformed)?,
        },
        TopicKind::Metrics => DeviceMessage::Metrics {
            device,
            metrics: serde_json::from_slice(payload).map_err(malformed)?,
        },
        TopicKind::Logs | TopicKind::Reported | TopicKind::Actions | TopicKind::Desired => {
            return Ok(None);
        }
    };
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::Presence;

    fn id(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid id")
    }

    #[test]
    fn events_status_and_metrics_are_parsed() {
        let a = id("device-a");
        let event = br#"{"correlationId":"c-1","event":"send-ping","statusCode":200,"statusMessage":"ok","response":{"x":1}}"#;
        match device_message(&a, "tether/v1/devices/device-a/events", event) {
            Ok(Some(DeviceMessage::Event { device, event })) => {
                assert_eq!(device, a);
                assert_eq!(event.correlation_id, "c-1");
                assert_eq!(event.status_code, 200);
            }
            other => panic!("expected an event, got {other:?}"),
        }

        let status = br#"{"state":"offline","agentVersion":"0.1.0","bootId":"b","seq":3}"#;
        match device_message(&a, "tether/v1/devices/device-a/status", status) {
            Ok(Some(DeviceMessage::Status { status, .. })) => {
                assert_eq!(status.state, Presence::Offline);
                assert_eq!(status.seq, 3);
            }
            other => panic!("expected a status, got {other:?}"),
        }

        let metrics = br#"{"sampledAt":"2026-11-25T10:00:00Z","cpuPercent":12.5,"memoryUsedBytes":1,"memoryTotalBytes":2,"diskUsedBytes":3,"diskTotalBytes":4,"networkRxBytes":5,"networkTxBytes":6}"#;
        match device_message(&a, "tether/v1/devices/device-a/metrics", metrics) {
            Ok(Some(DeviceMessage::Metrics { metrics, .. })) => {
                assert_eq!(metrics.network_tx_bytes, 6);
            }
            other => panic!("expected metrics, got {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_errors_naming_the_kind() {
        let a = id("device-a");
        for (topic, payload) in [
            ("tether/v1/devices/device-a/events", &b"not json"[..]),
            (
                "tether/v1/devices/device-a/status",
                br#"{"state":"sideways"}"#,
            ),
            ("tether/v1/devices/device-a/metrics", b""),
        ] {
            let err = device_message(&a, topic, payload).expect_err(topic);
            assert!(topic.ends_with(err.kind), "{topic}: {err}");
        }
    }

    #[test]
    fn other_topics_and_other_devices_are_not_ingested() {
        let a = id("device-a");
        for topic in [
            "tether/v1/devices/device-a/logs",
            "tether/v1/devices/device-a/reported",
            "tether/v1/devices/device-b/events",
            "tether/v1/devices/device-a/events/extra",
            "elsewhere",
        ] {
            assert!(
                matches!(device_message(&a, topic, b"{}"), Ok(None)),
                "{topic}"
            );
        }
    }
}
