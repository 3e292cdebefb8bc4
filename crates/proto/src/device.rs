//! Device identity and the birth/death message on the `status` topic.

use serde::{Deserialize, Serialize};

use crate::limits::{self, TooLarge};

/// A device's name, which is also its identity in topics, certificates and URLs.
///
/// Like a Kubernetes object name: 1 to 63 characters of lowercase letters,
/// digits and `-`, starting and ending with a letter or digit. That keeps it
/// safe in an MQTT topic level, a certificate CN and a URL path segment.
/// [`DeviceId::RESERVED`] is not a device name: an external MQTT broker
/// takes the certificate CN as the username, and that one is tetherd's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid device name {name:?}: use 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit, other than \"tetherd\" (the controller's own name)"
)]
pub struct InvalidDeviceId {
    pub name: String,
}

impl DeviceId {
    pub const MAX_LEN: usize = 63;
    /// The CN of tetherd's own client certificate for an external broker,
    /// which grants it every device's topics.
    pub const RESERVED: &str = "tetherd";

    pub fn new(name: impl Into<String>) -> Result<Self, InvalidDeviceId> {
        let name = name.into();
        let bytes = name.as_bytes();
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(allowed)
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-')
            && name != Self::RESERVED;
        if valid {
            Ok(Self(name))
        } else {
            Err(InvalidDeviceId { name })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DeviceId> for String {
    fn from(value: DeviceId) -> Self {
        value.0
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
        }
    }
}

/// Birth (`online`) or death (`offline`) of an agent session, published
/// retained on the `status` topic; the death is also the MQTT will.
///
/// Presence follows the device's MQTT session, not this message: a device is
/// online from its CONNECT to the end of that session. A birth adds what the
/// controller shows about the agent (version, capabilities); a death is
/// informational. Only `state` is required. `bootId` (changes every time the
/// agent process starts) and `seq` (every time it reconnects) help an
/// operator read a device's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub state: Presence,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub seq: u64,
}

impl DeviceStatus {
    /// Largest `status` payload tetherd accepts, in bytes.
    pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
    pub const MAX_AGENT_VERSION_BYTES: usize = 64;
    pub const MAX_BOOT_ID_BYTES: usize = 64;
    pub const MAX_CAPABILITIES: usize = 64;
    pub const MAX_CAPABILITY_BYTES: usize = 64;

    /// Checks every field against its limit.
    pub fn check_limits(&self) -> Result<(), TooLarge> {
        limits::check(
            "agentVersion",
            self.agent_version.len(),
            Self::MAX_AGENT_VERSION_BYTES,
        )?;
        limits::check("bootId", self.boot_id.len(), Self::MAX_BOOT_ID_BYTES)?;
        limits::check(
            "capabilities (entries)",
            self.capabilities.len(),
            Self::MAX_CAPABILITIES,
        )?;
        for capability in &self.capabilities {
            limits::check("a capability", capability.len(), Self::MAX_CAPABILITY_BYTES)?;
        }
        Ok(())
    }
}

/// What happened to a device's messages since tetherd started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestCounters {
    /// Stored and acknowledged.
    pub accepted: u64,
    /// Answers for actions already finished: acknowledged and dropped.
    pub duplicates_dropped: u64,
    /// Not the JSON the device contract describes (PUBACK 0x99).
    pub rejected_malformed: u64,
    /// A payload or field over its limit (PUBACK 0x99).
    pub rejected_too_large: u64,
    /// Dated too far from the server's clock (PUBACK 0x99).
    pub rejected_clock: u64,
    /// Over the device's rate limit (PUBACK 0x97).
    pub rate_limited: u64,
    /// Sessions closed because the device kept exceeding its rate limit.
    pub disconnected_for_rate: u64,
    /// Not acknowledged because the store was unavailable; the device sends
    /// them again.
    pub not_acknowledged_store_unavailable: u64,
    /// Refusals not recorded as events, so the events table stays bounded.
    pub rejection_events_suppressed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_topic_and_url_safe() {
        for ok in ["a", "edge-1", "x".repeat(63).as_str(), "0abc", "tetherd-1"] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a/b",
            "a+b",
            "a#",
            "a b",
            "a.b",
            &"x".repeat(64),
            "tetherd",
        ] {
            let err = DeviceId::new(bad).expect_err(bad);
            assert!(err.to_string().contains("invalid device name"));
        }
    }

    #[test]
    fn device_id_deserialization_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"edge-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"../x\"").is_err());
    }

    #[test]
    fn a_status_needs_only_its_state() {
        let status: DeviceStatus = serde_json::from_str(r#"{"state":"online"}"#).expect("parses");
        assert_eq!(status.state, Presence::Online);
        assert_eq!(status.agent_version, "");
        assert_eq!(status.seq, 0);
        assert!(status.check_limits().is_ok());
    }

    #[test]
    fn oversized_status_fields_are_named() {
        let mut status: DeviceStatus =
            serde_json::from_str(r#"{"state":"online"}"#).expect("parses");
        status.agent_version = "v".repeat(DeviceStatus::MAX_AGENT_VERSION_BYTES + 1);
        assert_eq!(
            status.check_limits().expect_err("too long").field,
            "agentVersion"
        );
        status.agent_version = "1.0".into();
        status.capabilities = vec!["c".into(); DeviceStatus::MAX_CAPABILITIES + 1];
        assert!(status.check_limits().is_err());
        status.capabilities = vec!["c".repeat(DeviceStatus::MAX_CAPABILITY_BYTES + 1)];
        assert!(status.check_limits().is_err());
    }
}
