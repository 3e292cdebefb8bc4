//! Device identity and the birth/death message on the `status` topic.

use serde::{Deserialize, Serialize};

/// A device's name, which is also its identity in topics, certificates and URLs.
///
/// Like a Kubernetes object name: 1 to 63 characters of lowercase letters,
/// digits and `-`, starting and ending with a letter or digit. That keeps it
/// safe in an MQTT topic level, a certificate CN and a URL path segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid device name {name:?}: use 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
)]
pub struct InvalidDeviceId {
    pub name: String,
}

impl DeviceId {
    pub const MAX_LEN: usize = 63;

    pub fn new(name: impl Into<String>) -> Result<Self, InvalidDeviceId> {
        let name = name.into();
        let bytes = name.as_bytes();
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let valid = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(allowed)
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
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
/// `bootId` changes every time the agent process starts and `seq` every time
/// it (re)connects, so a late death from an old session can be told apart
/// from the current one and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub state: Presence,
    pub agent_version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub boot_id: String,
    pub seq: u64,
}

impl DeviceStatus {
    /// Whether this status message supersedes `current` (same session or newer).
    /// A death for an older session must not mark a reconnected device offline.
    pub fn supersedes(&self, current_boot_id: &str, current_seq: u64) -> bool {
        self.boot_id != current_boot_id || self.seq >= current_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_topic_and_url_safe() {
        for ok in ["a", "edge-1", "x".repeat(63).as_str(), "0abc"] {
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
    fn a_stale_death_does_not_supersede_a_newer_session() {
        let death = DeviceStatus {
            state: Presence::Offline,
            agent_version: "0.1.0".into(),
            capabilities: vec![],
            boot_id: "boot-1".into(),
            seq: 3,
        };
        assert!(!death.supersedes("boot-1", 4));
        assert!(death.supersedes("boot-1", 3));
        assert!(death.supersedes("boot-2", 1));
    }
}
