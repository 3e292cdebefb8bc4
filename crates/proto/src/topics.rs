//! MQTT topic layout: everything a device sends or receives lives under
//! `tether/v1/devices/{deviceId}/`, so authorization is a prefix check.

use crate::device::DeviceId;

/// The prefix under which every device topic lives.
pub const DEVICES_PREFIX: &str = "tether/v1/devices/";

/// What a topic under a device's prefix carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Server → device: action requests, QoS 1.
    Actions,
    /// Device → server: action results, QoS 1.
    Events,
    /// Device → server, retained: birth and death (also the MQTT will).
    Status,
    /// Device → server: host metrics samples.
    Metrics,
    /// Device → server: log batches.
    Logs,
    /// Server → device: the device's spec and its version, QoS 1.
    Spec,
    /// Device → server: the agent's reported status (spec version applied,
    /// errors, facts), QoS 1.
    Reported,
    /// Server → device: the monitor's requests (a rebirth, a reload;
    /// [`crate::control::ControlMessage`]), QoS 1.
    Control,
}

impl TopicKind {
    pub const ALL: [TopicKind; 8] = [
        TopicKind::Actions,
        TopicKind::Events,
        TopicKind::Status,
        TopicKind::Metrics,
        TopicKind::Logs,
        TopicKind::Spec,
        TopicKind::Reported,
        TopicKind::Control,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Actions => "actions",
            TopicKind::Events => "events",
            TopicKind::Status => "status",
            TopicKind::Metrics => "metrics",
            TopicKind::Logs => "logs",
            TopicKind::Spec => "spec",
            TopicKind::Reported => "reported",
            TopicKind::Control => "control",
        }
    }

    /// Whether the device is the one that publishes on this topic. A device may
    /// subscribe only to the others and publish only to these.
    pub fn published_by_device(self) -> bool {
        matches!(
            self,
            TopicKind::Events
                | TopicKind::Status
                | TopicKind::Metrics
                | TopicKind::Logs
                | TopicKind::Reported
        )
    }

    fn parse(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == segment)
    }
}

/// A concrete topic of one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceTopic {
    pub device: DeviceId,
    pub kind: TopicKind,
}

impl DeviceTopic {
    pub fn new(device: DeviceId, kind: TopicKind) -> Self {
        Self { device, kind }
    }

    /// Parses a concrete topic name (no wildcards). Anything outside the
    /// layout, including extra levels, is `None`.
    pub fn parse(topic: &str) -> Option<Self> {
        let rest = topic.strip_prefix(DEVICES_PREFIX)?;
        let (device, kind) = rest.split_once('/')?;
        let device = DeviceId::new(device).ok()?;
        let kind = TopicKind::parse(kind)?;
        Some(Self { device, kind })
    }
}

impl std::fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{DEVICES_PREFIX}{}/{}", self.device, self.kind.as_str())
    }
}

/// Whether `device` may subscribe to `filter`. Only exact topics of its own
/// that the server publishes on are allowed: wildcards could reach further
/// than the device's own prefix, so they are refused outright.
pub fn device_may_subscribe(device: &DeviceId, filter: &str) -> bool {
    if filter.contains(['#', '+']) {
        return false;
    }
    matches!(DeviceTopic::parse(filter), Some(t) if &t.device == device && !t.kind.published_by_device())
}

/// Whether `device` may publish on `topic`: only its own device-published topics.
pub fn device_may_publish(device: &DeviceId, topic: &str) -> bool {
    matches!(DeviceTopic::parse(topic), Some(t) if &t.device == device && t.kind.published_by_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("valid id")
    }

    #[test]
    fn topics_round_trip() {
        for kind in TopicKind::ALL {
            let topic = DeviceTopic::new(id("edge-1"), kind);
            assert_eq!(DeviceTopic::parse(&topic.to_string()), Some(topic));
        }
        assert_eq!(
            DeviceTopic::new(id("edge-1"), TopicKind::Actions).to_string(),
            "tether/v1/devices/edge-1/actions"
        );
    }

    #[test]
    fn parse_refuses_anything_outside_the_layout() {
        for bad in [
            "tether/v1/devices/edge-1",
            "tether/v1/devices/edge-1/actions/extra",
            "tether/v1/devices/edge-1/unknown",
            "tether/v2/devices/edge-1/events",
            "tether/v1/devices/../events",
            "other/edge-1/events",
        ] {
            assert_eq!(DeviceTopic::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_device_is_confined_to_its_own_prefix() {
        let a = id("device-a");
        assert!(device_may_subscribe(
            &a,
            "tether/v1/devices/device-a/actions"
        ));
        assert!(!device_may_subscribe(
            &a,
            "tether/v1/devices/device-b/actions"
        ));
        assert!(!device_may_subscribe(&a, "tether/v1/devices/+/actions"));
        assert!(!device_may_subscribe(&a, "tether/v1/devices/device-a/#"));
        assert!(!device_may_subscribe(&a, "#"));
        assert!(!device_may_subscribe(
            &a,
            "tether/v1/devices/device-a/events"
        ));

        assert!(device_may_publish(&a, "tether/v1/devices/device-a/events"));
        assert!(device_may_publish(&a, "tether/v1/devices/device-a/status"));
        assert!(!device_may_publish(&a, "tether/v1/devices/device-b/events"));
        assert!(!device_may_publish(
            &a,
            "tether/v1/devices/device-a/actions"
        ));
        assert!(!device_may_publish(&a, "$SYS/anything"));
    }

    #[test]
    fn a_device_reads_only_its_own_spec_and_reports_only_for_itself() {
        let a = id("device-a");
        assert!(device_may_subscribe(&a, "tether/v1/devices/device-a/spec"));
        assert!(!device_may_subscribe(&a, "tether/v1/devices/device-b/spec"));
        assert!(!device_may_subscribe(
            &a,
            "tether/v1/devices/device-a/reported"
        ));
        assert!(device_may_publish(
            &a,
            "tether/v1/devices/device-a/reported"
        ));
        assert!(!device_may_publish(
            &a,
            "tether/v1/devices/device-b/reported"
        ));
        assert!(!device_may_publish(&a, "tether/v1/devices/device-a/spec"));
    }
}
