//! The device's host health (issue 19): the spec's `watchdog` section, and
//! what the agent reports of the machine's boot and of its watchdog.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::{self, TooLarge};
use crate::spec::SpecError;

/// `watchdog`: whether the agent keeps a hardware watchdog fed, which
/// device, and how often. Under systemd with `WatchdogSec=` the agent
/// notifies systemd instead and this only switches it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The watchdog device the agent writes to.
    #[serde(default = "WatchdogConfig::default_device")]
    pub device: String,
    /// Between two feeds; keep it well under the device's timeout.
    #[serde(default = "WatchdogConfig::default_interval")]
    pub interval_seconds: u32,
}

impl WatchdogConfig {
    pub const NAME: &str = "watchdog";
    pub const FIELDS: [&str; 3] = ["enabled", "device", "intervalSeconds"];
    pub const DEFAULT_DEVICE: &str = "/dev/watchdog";
    pub const DEFAULT_INTERVAL_SECONDS: u32 = 5;
    /// Longer than any hardware watchdog's timeout the agent would feed.
    pub const MAX_INTERVAL_SECONDS: u32 = 300;
    pub const MAX_DEVICE_BYTES: usize = 256;

    fn default_device() -> String {
        Self::DEFAULT_DEVICE.to_owned()
    }

    fn default_interval() -> u32 {
        Self::DEFAULT_INTERVAL_SECONDS
    }
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            device: Self::default_device(),
            interval_seconds: Self::DEFAULT_INTERVAL_SECONDS,
        }
    }
}

/// Checks the `watchdog` section; `path` is `spec.watchdog`.
pub fn validate_watchdog(path: &str, section: &Value) -> Result<(), SpecError> {
    let Value::Object(fields) = section else {
        return Err(SpecError::new(path, "must be a JSON object"));
    };
    for (field, value) in fields {
        let path = format!("{path}.{field}");
        match field.as_str() {
            "enabled" if !value.is_boolean() => {
                return Err(SpecError::new(path, "must be true or false"));
            }
            "enabled" => {}
            "device" => match value.as_str() {
                Some(device)
                    if device.starts_with('/')
                        && device.len() <= WatchdogConfig::MAX_DEVICE_BYTES =>
                {
                    if device.split('/').any(|part| part == "..") {
                        return Err(SpecError::new(path, "must not contain .."));
                    }
                }
                _ => {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "must be an absolute path of at most {} bytes, e.g. /dev/watchdog",
                            WatchdogConfig::MAX_DEVICE_BYTES
                        ),
                    ));
                }
            },
            "intervalSeconds" => match value.as_u64() {
                Some(n) if (1..=u64::from(WatchdogConfig::MAX_INTERVAL_SECONDS)).contains(&n) => {}
                _ => {
                    return Err(SpecError::new(
                        path,
                        format!(
                            "must be a whole number 1–{} (seconds between feeds; keep it well under the device's timeout)",
                            WatchdogConfig::MAX_INTERVAL_SECONDS
                        ),
                    ));
                }
            },
            _ => {
                return Err(SpecError::new(
                    path,
                    format!(
                        "unknown field; known fields: {}",
                        WatchdogConfig::FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The machine's current boot: a reboot changes `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootReport {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), not the
    /// agent's per-process id of the birth message.
    pub id: String,
    /// When the machine booted (`btime` of `/proc/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_at: Option<DateTime<Utc>>,
}

impl BootReport {
    pub const MAX_ID_BYTES: usize = 64;
}

/// How the agent keeps the watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WatchdogMode {
    /// Writes to a watchdog device (the spec's `watchdog.device`).
    Device,
    /// Notifies systemd (`WATCHDOG=1`), which runs the agent with `WatchdogSec=`.
    Systemd,
}

/// Whether the watchdog is being fed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WatchdogState {
    Feeding,
    /// Not fed: the machine (or systemd) resets it at its timeout.
    Stopped,
}

/// The watchdog as the agent keeps it; absent while it is off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchdogStatus {
    pub mode: WatchdogMode,
    /// The device written to (device mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub state: WatchdogState,
    /// Why it is stopped: the health checks that fail, or the device
    /// that cannot be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WatchdogStatus {
    pub const MAX_REASON_BYTES: usize = 1024;
}

/// Checks the sizes of what the agent reports here.
pub fn check_limits(
    boot: Option<&BootReport>,
    watchdog: Option<&WatchdogStatus>,
) -> Result<(), TooLarge> {
    if let Some(boot) = boot {
        limits::check("boot.id", boot.id.len(), BootReport::MAX_ID_BYTES)?;
    }
    if let Some(watchdog) = watchdog {
        limits::check(
            "watchdog.device",
            watchdog.device.as_ref().map_or(0, String::len),
            WatchdogConfig::MAX_DEVICE_BYTES,
        )?;
        limits::check(
            "watchdog.reason",
            watchdog.reason.as_ref().map_or(0, String::len),
            WatchdogStatus::MAX_REASON_BYTES,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_watchdog_section_takes_its_defaults_and_refuses_bad_fields_by_path() {
        let path = "spec.watchdog";
        assert_eq!(validate_watchdog(path, &json!({})), Ok(()));
        assert_eq!(
            validate_watchdog(
                path,
                &json!({"enabled": true, "device": "/dev/watchdog1", "intervalSeconds": 10})
            ),
            Ok(())
        );
        let config: WatchdogConfig =
            serde_json::from_value(json!({"enabled": true})).expect("parses");
        assert_eq!(config.device, "/dev/watchdog");
        assert_eq!(config.interval_seconds, 5);
        for (section, field) in [
            (json!([]), "spec.watchdog"),
            (json!({"enabled": "yes"}), "spec.watchdog.enabled"),
            (json!({"device": "watchdog"}), "spec.watchdog.device"),
            (
                json!({"device": "/dev/../etc/passwd"}),
                "spec.watchdog.device",
            ),
            (json!({"device": 3}), "spec.watchdog.device"),
            (
                json!({"intervalSeconds": 0}),
                "spec.watchdog.intervalSeconds",
            ),
            (
                json!({"intervalSeconds": 301}),
                "spec.watchdog.intervalSeconds",
            ),
            (json!({"timeout": 3}), "spec.watchdog.timeout"),
        ] {
            let error = validate_watchdog(path, &section).expect_err("refused");
            assert_eq!(error.path, field, "{section}");
        }
        let error = validate_watchdog(path, &json!({"timeout": 3})).expect_err("refused");
        assert!(error.message.contains("intervalSeconds"), "{error}");
    }

    #[test]
    fn the_reports_use_the_contract_names_and_are_bounded() {
        let watchdog = WatchdogStatus {
            mode: WatchdogMode::Device,
            device: Some("/dev/watchdog".into()),
            state: WatchdogState::Stopped,
            reason: Some("the state directory cannot be written".into()),
        };
        assert_eq!(
            serde_json::to_value(&watchdog).expect("json"),
            json!({"mode": "device", "device": "/dev/watchdog", "state": "stopped",
                   "reason": "the state directory cannot be written"})
        );
        let boot = BootReport {
            id: "x".repeat(65),
            booted_at: None,
        };
        assert_eq!(
            check_limits(Some(&boot), None).expect_err("too long").field,
            "boot.id"
        );
    }
}
