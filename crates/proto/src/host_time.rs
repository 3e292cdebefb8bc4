//! The device's clock (issue 19, scope 4): the `time` section of the spec
//! (which NTP servers the device uses, how far off its clock may be), what
//! the agent reports of it (offset from tetherd's clock, sync state, the
//! servers in use), and tetherd's `GET /api/v1/time` answer it measures
//! the offset with.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::SpecError;

/// The spec section's name.
pub const SECTION: &str = "time";
/// At most this many NTP servers: timesyncd and chrony use a handful, and
/// each is a line of the drop-in.
pub const MAX_NTP_SERVERS: usize = 8;
/// Longest host name (RFC 1035).
pub const MAX_HOST_NAME_BYTES: usize = 253;
/// Largest `maxOffsetSeconds`: a day; beyond that the condition is off in all but name.
pub const MAX_OFFSET_SECONDS_LIMIT: u32 = 86_400;
/// The condition type a clock beyond `maxOffsetSeconds` raises.
pub const CLOCK_SKEWED: &str = "ClockSkewed";

/// `time`: the NTP servers the device uses and how far its clock may be
/// from tetherd's before the status says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeSpec {
    /// Host names or IP addresses; none: the device's own configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp_servers: Vec<String>,
    /// Beyond this offset from tetherd's clock the status carries the
    /// `ClockSkewed` condition.
    #[serde(default = "TimeSpec::default_max_offset")]
    pub max_offset_seconds: u32,
}

impl TimeSpec {
    pub const FIELDS: [&str; 2] = ["ntpServers", "maxOffsetSeconds"];
    /// 5 s: a clock NTP keeps is within milliseconds, and the measurement
    /// itself is off by at most half a round trip (under a second on a
    /// slow cellular link), so beyond 5 s the clock is not being kept;
    /// and 5 s already breaks what devices compare with other machines'
    /// clocks (log order across the fleet, short-lived tokens).
    pub const DEFAULT_MAX_OFFSET_SECONDS: u32 = 5;

    fn default_max_offset() -> u32 {
        Self::DEFAULT_MAX_OFFSET_SECONDS
    }

    /// The device's section, defaults without one. Valid once
    /// [`validate`] passed.
    pub fn of(spec: &crate::spec::DeviceSpec) -> Result<Self, SpecError> {
        match spec.get(SECTION) {
            None => Ok(Self::default()),
            Some(section) => {
                validate(&format!("spec.{SECTION}"), section)?;
                serde_json::from_value(section.clone())
                    .map_err(|e| SpecError::new(format!("spec.{SECTION}"), e.to_string()))
            }
        }
    }
}

impl Default for TimeSpec {
    fn default() -> Self {
        Self {
            ntp_servers: Vec::new(),
            max_offset_seconds: Self::DEFAULT_MAX_OFFSET_SECONDS,
        }
    }
}

/// Checks the `time` section found at `path`.
pub fn validate(path: &str, section: &Value) -> Result<(), SpecError> {
    let Value::Object(fields) = section else {
        return Err(SpecError::new(path, "must be a JSON object"));
    };
    for (field, value) in fields {
        let path = format!("{path}.{field}");
        match field.as_str() {
            "ntpServers" => ntp_servers(&path, value)?,
            "maxOffsetSeconds" => match value.as_u64() {
                Some(n) if (1..=u64::from(MAX_OFFSET_SECONDS_LIMIT)).contains(&n) => {}
                _ => {
                    return Err(SpecError::new(
                        path,
                        format!("must be a whole number of seconds, 1–{MAX_OFFSET_SECONDS_LIMIT}"),
                    ));
                }
            },
            _ => {
                return Err(SpecError::new(
                    path,
                    format!(
                        "unknown field; known fields: {}",
                        TimeSpec::FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn ntp_servers(path: &str, value: &Value) -> Result<(), SpecError> {
    let Value::Array(servers) = value else {
        return Err(SpecError::new(
            path,
            "must be a list of NTP servers (host names or IP addresses)",
        ));
    };
    if servers.len() > MAX_NTP_SERVERS {
        return Err(SpecError::new(
            path,
            format!(
                "has {} servers, more than the {MAX_NTP_SERVERS} allowed",
                servers.len()
            ),
        ));
    }
    for (i, server) in servers.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(server) = server.as_str().filter(|s| is_ntp_server(s)) else {
            return Err(SpecError::new(
                path,
                format!(
                    "{server} is not an NTP server: a host name (letters, digits, '-', dots, at most {MAX_HOST_NAME_BYTES} bytes) or an IP address"
                ),
            ));
        };
        if servers[..i].iter().any(|earlier| earlier == server) {
            return Err(SpecError::new(path, format!("{server:?} is listed twice")));
        }
    }
    Ok(())
}

/// A host name (RFC 1123 labels) or an IP address: what timesyncd's
/// `NTP=` and chrony's `server` take, and nothing that could break the
/// line it is written on.
pub fn is_ntp_server(server: &str) -> bool {
    if server.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = server.strip_suffix('.').unwrap_or(server);
    !name.is_empty()
        && server.len() <= MAX_HOST_NAME_BYTES
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

/// The device's clock as its agent last measured it (`time` in the
/// reported status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostTime {
    /// tetherd's clock minus the device's, in milliseconds (positive: the
    /// device is behind); absent until a measurement succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_millis: Option<i64>,
    /// When that offset was measured, by tetherd's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<DateTime<Utc>>,
    pub sync_state: SyncState,
    pub source: TimeSource,
    /// The NTP servers the device's time service uses.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

impl HostTime {
    pub const MAX_SERVER_BYTES: usize = 256;
    pub const MAX_SERVERS: usize = 32;
}

/// Whether the device's time service says its clock is synchronized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SyncState {
    Synchronized,
    Unsynchronized,
    /// No time service could be asked.
    #[default]
    Unknown,
}

/// The time service the device runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TimeSource {
    Timesyncd,
    Chrony,
    #[default]
    None,
}

/// `GET /api/v1/time`: tetherd's clock, for devices to measure their
/// offset against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerTime {
    /// Milliseconds since the Unix epoch.
    pub unix_millis: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(section: Value) -> SpecError {
        validate("spec.time", &section).expect_err("refused")
    }

    #[test]
    fn host_names_and_addresses_are_ntp_servers() {
        for good in [
            "pool.ntp.org",
            "0.debian.pool.ntp.org",
            "time.example.com.",
            "ntp1",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(is_ntp_server(good), "{good}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            ".",
            "-pool.ntp.org",
            "pool..ntp.org",
            "pool.ntp.org\nNTP=evil",
            "pool ntp",
            "under_score.org",
            long.as_str(),
        ] {
            assert!(!is_ntp_server(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_valid_section_reads_back_with_its_default() {
        let section = json!({"ntpServers": ["pool.ntp.org", "192.0.2.1"]});
        validate("spec.time", &section).expect("valid");
        let spec: crate::spec::DeviceSpec =
            serde_json::from_value(json!({"time": section})).expect("spec");
        let time = TimeSpec::of(&spec).expect("valid");
        assert_eq!(time.ntp_servers, ["pool.ntp.org", "192.0.2.1"]);
        assert_eq!(time.max_offset_seconds, 5);
        assert_eq!(
            TimeSpec::of(&Default::default()).expect("none"),
            TimeSpec::default()
        );
    }

    #[test]
    fn each_bad_field_is_named_by_its_path() {
        let nine: Vec<String> = (0..9).map(|i| format!("ntp{i}.example")).collect();
        for (section, path) in [
            (json!([]), "spec.time"),
            (json!({"servers": []}), "spec.time.servers"),
            (
                json!({"ntpServers": "pool.ntp.org"}),
                "spec.time.ntpServers",
            ),
            (json!({"ntpServers": nine}), "spec.time.ntpServers"),
            (
                json!({"ntpServers": ["ok.example", "bad host"]}),
                "spec.time.ntpServers[1]",
            ),
            (json!({"ntpServers": [3]}), "spec.time.ntpServers[0]"),
            (
                json!({"ntpServers": ["a.example", "a.example"]}),
                "spec.time.ntpServers[1]",
            ),
            (json!({"maxOffsetSeconds": 0}), "spec.time.maxOffsetSeconds"),
            (
                json!({"maxOffsetSeconds": 86_401}),
                "spec.time.maxOffsetSeconds",
            ),
            (
                json!({"maxOffsetSeconds": 1.5}),
                "spec.time.maxOffsetSeconds",
            ),
        ] {
            let error = refused(section.clone());
            assert_eq!(error.path, path, "{section}: {error}");
        }
    }

    #[test]
    fn the_status_reads_as_documented() {
        let time = HostTime {
            offset_millis: Some(-600_000),
            measured_at: Some(DateTime::from_timestamp_millis(0).expect("epoch")),
            sync_state: SyncState::Unsynchronized,
            source: TimeSource::Timesyncd,
            ntp_servers: vec!["pool.ntp.org".into()],
        };
        assert_eq!(
            serde_json::to_value(&time).expect("json"),
            json!({
                "offsetMillis": -600_000,
                "measuredAt": "1970-01-01T00:00:00Z",
                "syncState": "unsynchronized",
                "source": "timesyncd",
                "ntpServers": ["pool.ntp.org"],
            })
        );
    }
}
