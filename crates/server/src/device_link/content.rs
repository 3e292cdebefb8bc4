//! What a device's publish means to the controller: its topic picks the wire
//! type, its payload is JSON of that type.

use tether_proto::telemetry::{self, Stream};
use tether_proto::{DeviceId, DeviceTopic, TopicKind};

use crate::device_link::{Content, DeviceMessage};

/// Reads a publish by `device` on `topic`. Topics the controller does not
/// consume (logs), and anything outside the device's own
/// prefix, which the ACL has refused already, are `NotConsumed`.
pub(crate) fn content(device: &DeviceId, topic: &str, payload: &[u8]) -> Content {
    let Some(parsed) = DeviceTopic::parse(topic) else {
        return Content::NotConsumed;
    };
    if &parsed.device != device {
        return Content::NotConsumed;
    }
    let parsed = match parsed.kind {
        TopicKind::Events => serde_json::from_slice(payload).map(DeviceMessage::Event),
        TopicKind::Status => serde_json::from_slice(payload).map(DeviceMessage::Status),
        // A bare JSON sample is what agents sent before batches.
        TopicKind::Metrics if payload.first() == Some(&b'{') => {
            serde_json::from_slice(payload).map(DeviceMessage::Metrics)
        }
        TopicKind::Metrics => return batch(Stream::Metrics, payload),
        TopicKind::Logs => return batch(Stream::Logs, payload),
        TopicKind::Reported => serde_json::from_slice(payload)
            .map(|reported| DeviceMessage::Reported(Box::new(reported))),
        TopicKind::Actions | TopicKind::Spec | TopicKind::Control => {
            return Content::NotConsumed;
        }
    };
    match parsed {
        Ok(message) => Content::Message(message),
        Err(e) => Content::Malformed(format!("malformed {} payload: {e}", parsed_kind(topic))),
    }
}

/// A telemetry batch, which must be of the topic's stream.
fn batch(stream: Stream, payload: &[u8]) -> Content {
    match telemetry::decode(payload) {
        Ok(batch) if batch.stream() == stream => {
            Content::Message(DeviceMessage::Telemetry(std::sync::Arc::new(batch)))
        }
        Ok(batch) => Content::Malformed(format!(
            "malformed {stream} payload: a {} batch on the {stream} topic",
            batch.stream()
        )),
        Err(error) => Content::Malformed(format!("malformed {stream} payload: {error}")),
    }
}

fn parsed_kind(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
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
        match content(&a, "tether/v1/devices/device-a/events", event) {
            Content::Message(DeviceMessage::Event(event)) => {
                assert_eq!(event.correlation_id, "c-1");
                assert_eq!(event.status_code, 200);
            }
            other => panic!("expected an event, got {other:?}"),
        }

        let status = br#"{"state":"offline","agentVersion":"0.1.0","bootId":"b","seq":3}"#;
        match content(&a, "tether/v1/devices/device-a/status", status) {
            Content::Message(DeviceMessage::Status(status)) => {
                assert_eq!(status.state, Presence::Offline);
                assert_eq!(status.seq, 3);
            }
            other => panic!("expected a status, got {other:?}"),
        }

        let metrics = br#"{"sampledAt":"2026-11-25T10:00:00Z","cpuPercent":12.5,"memoryUsedBytes":1,"memoryTotalBytes":2,"diskUsedBytes":3,"diskTotalBytes":4,"networkRxBytes":5,"networkTxBytes":6}"#;
        match content(&a, "tether/v1/devices/device-a/metrics", metrics) {
            Content::Message(DeviceMessage::Metrics(metrics)) => {
                assert_eq!(metrics.network_tx_bytes, 6);
            }
            other => panic!("expected metrics, got {other:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_named_by_kind() {
        let a = id("device-a");
        for (topic, payload) in [
            ("tether/v1/devices/device-a/events", &b"not json"[..]),
            (
                "tether/v1/devices/device-a/status",
                br#"{"state":"sideways"}"#,
            ),
            ("tether/v1/devices/device-a/metrics", b""),
            ("tether/v1/devices/device-a/reported", br#"{"errors":[]}"#),
        ] {
            match content(&a, topic, payload) {
                Content::Malformed(reason) => {
                    let kind = topic.rsplit('/').next().expect("kind");
                    assert!(
                        reason.starts_with(&format!("malformed {kind} payload")),
                        "{reason}"
                    );
                }
                other => panic!("{topic}: expected malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn batches_are_read_on_their_own_topic_only() {
        use tether_proto::telemetry::{Dropped, LogRecord, Records, TelemetryBatch, encode};
        let a = id("device-a");
        let batch = TelemetryBatch {
            spool_id: "s".into(),
            first_seq: 3,
            records: Records::Logs(vec![LogRecord {
                at: chrono::Utc::now(),
                priority: 4,
                unit: "u".into(),
                message: "m".into(),
                fields: Default::default(),
            }]),
            dropped: Dropped::default(),
            replay: false,
            usage: Vec::new(),
        };
        match content(&a, "tether/v1/devices/device-a/logs", &encode(&batch)) {
            Content::Message(DeviceMessage::Telemetry(read)) => assert_eq!(*read, batch),
            other => panic!("expected a batch, got {other:?}"),
        }
        match content(&a, "tether/v1/devices/device-a/metrics", &encode(&batch)) {
            Content::Malformed(reason) => {
                assert!(
                    reason.contains("a logs batch on the metrics topic"),
                    "{reason}"
                );
            }
            other => panic!("expected malformed, got {other:?}"),
        }
        match content(
            &a,
            "tether/v1/devices/device-a/logs",
            b"{\"message\":\"x\"}",
        ) {
            Content::Malformed(reason) => {
                assert!(reason.contains("unknown batch format 0x7b"), "{reason}");
            }
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn other_topics_and_other_devices_are_not_consumed() {
        let a = id("device-a");
        for topic in [
            "tether/v1/devices/device-a/actions",
            "tether/v1/devices/device-b/events",
            "tether/v1/devices/device-a/events/extra",
            "elsewhere",
        ] {
            assert!(
                matches!(content(&a, topic, b"{}"), Content::NotConsumed),
                "{topic}"
            );
        }
    }
}
