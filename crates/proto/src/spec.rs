//! A device's spec (the configuration operators, and later provisioning
//! templates and deployments, want it to have) and its reported status (what
//! its agent applied, what it could not, and the facts of the machine).
//!
//! The spec is a JSON object of named sections. tetherd refuses a section it
//! does not know and a field outside a section's rules; the agent owns how to
//! apply each section and reports what it could not. Both use [`validate`],
//! so the rules are the same on both ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{self, TooLarge};

/// The desired configuration: section name → section.
pub type DeviceSpec = Map<String, Value>;

/// The sections a spec may have today. A capability that needs another
/// (deployments, provisioning) adds it here with its rules.
pub const SECTIONS: [&str; 10] = [
    LoggingConfig::NAME,
    MetricsConfig::NAME,
    Budgets::NAME,
    ActionSet::NAME,
    crate::desired::SECTION,
    crate::desired::updates::SECTION,
    crate::secrets::SECTION,
    crate::host::WatchdogConfig::NAME,
    crate::host_time::SECTION,
    crate::network::SECTION,
];

/// Largest spec tetherd stores and sends, as JSON.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// At most this many systemd units in `loggingConfig.units`.
pub const MAX_UNITS: usize = 256;
/// Longest systemd unit name (systemd's own limit).
pub const MAX_UNIT_NAME_BYTES: usize = 255;

/// A field of the spec that breaks its rules, named by its path from
/// `spec` (`spec.loggingConfig.priority`, `spec.loggingConfig.units[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

impl SpecError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `loggingConfig` (seed 004): which of the device's logs go to tetherd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingConfig {
    /// Export the systemd journal.
    #[serde(default)]
    pub enable_journal_export: bool,
    /// This syslog priority and more severe (0 emerg … 7 debug; 7 means all).
    #[serde(default = "LoggingConfig::all_priorities")]
    pub priority: u8,
    /// Only these systemd units; none means all.
    #[serde(default)]
    pub units: Vec<String>,
}

impl LoggingConfig {
    pub const NAME: &str = "loggingConfig";

    fn all_priorities() -> u8 {
        7
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            enable_journal_export: false,
            priority: Self::all_priorities(),
            units: Vec::new(),
        }
    }
}

/// `metricsConfig`: how often the agent samples host metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsConfig {
    #[serde(default = "MetricsConfig::default_interval")]
    pub interval_seconds: u32,
}

impl MetricsConfig {
    pub const NAME: &str = "metricsConfig";
    pub const DEFAULT_INTERVAL_SECONDS: u32 = 60;
    pub const MAX_INTERVAL_SECONDS: u32 = 86_400;

    fn default_interval() -> u32 {
        Self::DEFAULT_INTERVAL_SECONDS
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            interval_seconds: Self::DEFAULT_INTERVAL_SECONDS,
        }
    }
}

/// `budgets`: bytes a day each feature may send; absent means unlimited.
/// `metrics` and `logs` are enforced by dropping the least severe records
/// first; `spoolReplay` slows a backlog's replay and drops nothing; an
/// operator's action is never dropped, so `actions` only warns
/// (ADR 0015).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_replay: Option<u64>,
}

impl Budgets {
    pub const NAME: &str = "budgets";
    pub const FEATURES: [&str; 4] = ["actions", "metrics", "logs", "spoolReplay"];
}

/// `actions`: which actions of the catalogue the device accepts, as
/// changes to [`ActionSet::DEFAULTS`] (ADR 0017). Changes rather than a
/// whole list, so a template that enables one action does not disable the
/// defaults, and a device follows a change of the defaults it did not
/// override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSet {
    /// Accepted besides the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enabled: Vec<String>,
    /// Defaults refused on this device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
}

impl ActionSet {
    pub const NAME: &str = "actions";
    pub const FIELDS: [&str; 2] = ["enabled", "disabled"];
    /// Accepted by every device unless disabled: seed 000's default actions,
    /// and the ones tether answered before action sets that only read or
    /// tune the device (ADR 0017). What changes the cluster, issues its
    /// credentials or restarts it is enabled per device.
    pub const DEFAULTS: [&str; 10] = [
        "send-kubectl",
        "send-kubernetes-api",
        "run-stats",
        "stop-stats",
        "send-api",
        "configure-logger",
        "get-node-ip",
        "get-authorization-id",
        "follow-logs",
        "open-tunnel",
    ];

    /// The device's set, from its spec (the defaults alone without an
    /// `actions` section).
    pub fn of(spec: &DeviceSpec) -> Result<Self, SpecError> {
        match spec.get(Self::NAME) {
            None => Ok(Self::default()),
            Some(section) => serde_json::from_value(section.clone())
                .map_err(|e| SpecError::new(format!("spec.{}", Self::NAME), e.to_string())),
        }
    }

    /// Whether the device accepts `action`.
    pub fn accepts(&self, action: &str) -> bool {
        let listed = |list: &[String]| list.iter().any(|a| a == action);
        (Self::DEFAULTS.contains(&action) || listed(&self.enabled)) && !listed(&self.disabled)
    }

    /// Makes the device accept `action`, with as few entries as that takes.
    pub fn enable(&mut self, action: &str) {
        self.disabled.retain(|a| a != action);
        if !self.accepts(action) {
            self.enabled.push(action.to_owned());
        }
    }

    /// Makes the device refuse `action`, with as few entries as that takes.
    pub fn disable(&mut self, action: &str) {
        self.enabled.retain(|a| a != action);
        if self.accepts(action) {
            self.disabled.push(action.to_owned());
        }
    }

    /// The section as it goes into the spec.
    pub fn to_section(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// Checks a whole spec: an object of known sections, each within its rules.
/// The first offending field is named by its path from `spec`.
pub fn validate(spec: &Value) -> Result<(), SpecError> {
    let Value::Object(sections) = spec else {
        return Err(SpecError::new("spec", "must be a JSON object of sections"));
    };
    let size = serde_json::to_vec(spec).map_or(usize::MAX, |json| json.len());
    if size > MAX_SPEC_BYTES {
        return Err(SpecError::new(
            "spec",
            format!("is {size} bytes of JSON, more than the {MAX_SPEC_BYTES} allowed"),
        ));
    }
    for (name, section) in sections {
        validate_section(name, section)?;
    }
    Ok(())
}

/// Checks one section by name.
pub fn validate_section(name: &str, section: &Value) -> Result<(), SpecError> {
    validate_section_with(name, section, crate::template::check)
}

/// [`validate_section`], config file templates checked by `check_template`.
pub fn validate_section_with(
    name: &str,
    section: &Value,
    check_template: crate::template::TemplateCheck,
) -> Result<(), SpecError> {
    let path = format!("spec.{name}");
    if name == crate::desired::SECTION {
        return crate::desired::validate_with(&path, section, check_template);
    }
    if name == crate::desired::updates::SECTION {
        return crate::desired::updates::validate(&path, section);
    }
    if name == crate::secrets::SECTION {
        return crate::secrets::validate(&path, section);
    }
    if name == crate::host::WatchdogConfig::NAME {
        return crate::host::validate_watchdog(&path, section);
    }
    if name == crate::host_time::SECTION {
        return crate::host_time::validate(&path, section);
    }
    if name == crate::network::SECTION {
        return crate::network::validate(&path, section);
    }
    let fields = match name {
        LoggingConfig::NAME => &["enableJournalExport", "priority", "units"][..],
        MetricsConfig::NAME => &["intervalSeconds"][..],
        Budgets::NAME => &Budgets::FEATURES[..],
        ActionSet::NAME => &ActionSet::FIELDS[..],
        _ => {
            return Err(SpecError::new(
                path,
                format!("unknown section; known sections: {}", SECTIONS.join(", ")),
            ));
        }
    };
    let Value::Object(section) = section else {
        return Err(SpecError::new(path, "must be a JSON object"));
    };
    for (field, value) in section {
        let path = format!("{path}.{field}");
        if !fields.contains(&field.as_str()) {
            return Err(SpecError::new(
                path,
                format!("unknown field; known fields: {}", fields.join(", ")),
            ));
        }
        match (name, field.as_str()) {
            (LoggingConfig::NAME, "enableJournalExport") => {
                if !value.is_boolean() {
                    return Err(SpecError::new(path, "must be true or false"));
                }
            }
            (LoggingConfig::NAME, "priority") => integer_in(&path, value, 0, 7)?,
            (LoggingConfig::NAME, "units") => units(&path, value)?,
            (ActionSet::NAME, list) => {
                action_names(&path, value)?;
                if list == "enabled"
                    && let Some(both) = value.as_array().into_iter().flatten().find(|a| {
                        section
                            .get("disabled")
                            .and_then(Value::as_array)
                            .is_some_and(|d| d.contains(a))
                    })
                {
                    return Err(SpecError::new(
                        path,
                        format!("{both} is both enabled and disabled; list it in one of them"),
                    ));
                }
            }
            (MetricsConfig::NAME, "intervalSeconds") => integer_in(
                &path,
                value,
                1,
                u64::from(MetricsConfig::MAX_INTERVAL_SECONDS),
            )?,
            // A backlog replays in order, live records behind it: with
            // nothing a day it would never replay, and nothing newer go.
            (Budgets::NAME, "spoolReplay") => {
                if value.as_u64().is_none_or(|n| n == 0) {
                    return Err(SpecError::new(
                        path,
                        "must be a whole number of bytes a day, 1 or more: it sets how fast a backlog replays, and the records behind it wait (leave it out for no limit)",
                    ));
                }
            }
            _ => {
                if value.as_u64().is_none() {
                    return Err(SpecError::new(
                        path,
                        "must be a whole number of bytes a day, 0 or more",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn integer_in(path: &str, value: &Value, min: u64, max: u64) -> Result<(), SpecError> {
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(SpecError::new(
            path,
            format!("must be a whole number {min}–{max}"),
        )),
    }
}

/// A list of distinct action names of the catalogue.
fn action_names(path: &str, value: &Value) -> Result<(), SpecError> {
    let Value::Array(names) = value else {
        return Err(SpecError::new(path, "must be a list of action names"));
    };
    let catalogue = crate::catalogue::Catalogue::builtin();
    for (i, name) in names.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(name) = name.as_str() else {
            return Err(SpecError::new(path, "must be an action name"));
        };
        if catalogue.get(name).is_none() {
            return Err(SpecError::new(
                path,
                format!(
                    "unknown action {name:?}; known actions: {}",
                    catalogue.names().join(", ")
                ),
            ));
        }
        if names[..i].iter().any(|earlier| earlier == name) {
            return Err(SpecError::new(path, format!("{name:?} is listed twice")));
        }
    }
    Ok(())
}

fn units(path: &str, value: &Value) -> Result<(), SpecError> {
    let Value::Array(units) = value else {
        return Err(SpecError::new(path, "must be a list of systemd unit names"));
    };
    if units.len() > MAX_UNITS {
        return Err(SpecError::new(
            path,
            format!(
                "has {} units, more than the {MAX_UNITS} allowed",
                units.len()
            ),
        ));
    }
    for (i, unit) in units.iter().enumerate() {
        match unit.as_str() {
            Some(name) if !name.is_empty() && name.len() <= MAX_UNIT_NAME_BYTES => {}
            _ => {
                return Err(SpecError::new(
                    format!("{path}[{i}]"),
                    format!("must be a unit name of 1 to {MAX_UNIT_NAME_BYTES} bytes"),
                ));
            }
        }
    }
    Ok(())
}

/// Server → device on the `spec` topic (QoS 1): the whole current spec
/// and its version. Sent when the device subscribes and on every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecMessage {
    pub version: u64,
    pub spec: DeviceSpec,
}

/// Device → server on the `reported` topic (QoS 1): what the agent applied,
/// what it could not, and the facts of the machine. Sent at every birth and
/// after every spec it applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportedStatus {
    /// The spec version the agent last applied (0: none yet).
    pub spec_version: u64,
    /// The sections of that spec it could not apply, with the reason; those
    /// keep their previous value on the device.
    #[serde(default)]
    pub errors: Vec<SpecError>,
    #[serde(default)]
    pub facts: Facts,
    /// Each deployment of the spec's `deployments` section: the version
    /// it is about and how it is doing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, crate::desired::DeploymentStatus>,
    /// Why the device takes no new revision now (none: it does); a
    /// rollout passes it over until this is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_holds: Vec<crate::desired::updates::UpdateHold>,
    /// The public half of the device's X25519 key (base64), which tetherd
    /// seals secrets to (ADR 0030); absent from agents without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<String>,
    /// The machine's current boot; a new id means it rebooted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::host::BootReport>,
    /// The watchdog the agent keeps; absent while it keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<crate::host::WatchdogStatus>,
    /// The device's clock: offset from tetherd's, sync state, NTP servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<crate::host_time::HostTime>,
    /// Conditions holding on the device (`ClockSkewed`), which alert
    /// rules can name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::ReportedCondition>,
    /// The device's interfaces, routes and DNS, and how the last change
    /// of the spec's `network` section went; absent from agents without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkStatus>,
}

impl ReportedStatus {
    /// Largest `reported` payload tetherd accepts, in bytes.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
    pub const MAX_ERRORS: usize = 64;
    pub const MAX_ERROR_BYTES: usize = 1024;
    pub const MAX_FACT_BYTES: usize = 256;
    pub const MAX_MACS: usize = 64;

    /// Checks every field against its limit.
    pub fn check_limits(&self) -> Result<(), TooLarge> {
        limits::check("errors (entries)", self.errors.len(), Self::MAX_ERRORS)?;
        for error in &self.errors {
            limits::check(
                "an error",
                error.path.len() + error.message.len(),
                Self::MAX_ERROR_BYTES,
            )?;
        }
        limits::check(
            "deployments (entries)",
            self.deployments.len(),
            crate::desired::MAX_DEPLOYMENTS,
        )?;
        for (name, status) in &self.deployments {
            limits::check(
                "a deployment's status",
                name.len() + status.version.len() + status.reason.as_ref().map_or(0, String::len),
                crate::desired::DeploymentStatus::MAX_REASON_BYTES + 256,
            )?;
        }
        use crate::desired::updates;
        limits::check(
            "update holds (entries)",
            self.update_holds.len(),
            updates::MAX_HOLDS,
        )?;
        for hold in &self.update_holds {
            limits::check(
                "an update hold",
                hold.reason.len() + hold.name.as_ref().map_or(0, String::len),
                updates::MAX_REASON_BYTES + updates::MAX_LOCK_NAME_BYTES,
            )?;
        }
        limits::check(
            "sealingKey",
            self.sealing_key.as_ref().map_or(0, String::len),
            crate::sealed::MAX_PUBLIC_KEY_BYTES,
        )?;
        crate::host::check_limits(self.boot.as_ref(), self.watchdog.as_ref())?;
        if let Some(time) = &self.time {
            use crate::host_time::HostTime;
            limits::check(
                "time.ntpServers (entries)",
                time.ntp_servers.len(),
                HostTime::MAX_SERVERS,
            )?;
            for server in &time.ntp_servers {
                limits::check("an NTP server", server.len(), HostTime::MAX_SERVER_BYTES)?;
            }
        }
        use crate::conditions;
        limits::check(
            "conditions (entries)",
            self.conditions.len(),
            conditions::MAX_CONDITIONS,
        )?;
        for condition in &self.conditions {
            limits::check(
                "a condition's type and reason",
                condition.kind.len().max(condition.reason.len()),
                conditions::MAX_TYPE_BYTES,
            )?;
            limits::check(
                "a condition's message",
                condition.message.len(),
                conditions::MAX_MESSAGE_BYTES,
            )?;
        }
        if let Some(network) = &self.network {
            network.check_limits()?;
        }
        self.facts.check_limits()
    }
}

/// What the agent finds out about its machine once, at start. A fact the
/// machine does not expose is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Facts {
    /// `/sys/class/dmi/id/product_serial` or `/proc/device-tree/serial-number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_serial: Option<String>,
    /// `/etc/machine-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// MAC addresses by interface name (loopback left out).
    #[serde(default)]
    pub macs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    #[serde(default)]
    pub cpu_cores: u32,
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// From `/etc/os-release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_release: Option<OsRelease>,
    /// Kernel release (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub agent_version: String,
    /// The Kubernetes cluster the agent manages, if it manages one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesFacts>,
}

/// How the agent reaches its cluster and which cluster it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KubernetesFacts {
    /// `cluster` (in a pod, with its ServiceAccount) or `host` (on the
    /// node, with a kubeconfig file).
    pub mode: String,
    /// The cluster's name: the kubeconfig's, or as configured.
    #[serde(default)]
    pub cluster: String,
    /// The API server's URL; absent while the credentials cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl Facts {
    fn check_limits(&self) -> Result<(), TooLarge> {
        let max = ReportedStatus::MAX_FACT_BYTES;
        let optional = |value: &Option<String>| value.as_deref().map_or(0, str::len);
        limits::check("facts.hardwareSerial", optional(&self.hardware_serial), max)?;
        limits::check("facts.machineId", optional(&self.machine_id), max)?;
        limits::check("facts.cpuModel", optional(&self.cpu_model), max)?;
        limits::check("facts.kernel", optional(&self.kernel), max)?;
        limits::check("facts.hostname", optional(&self.hostname), max)?;
        limits::check("facts.agentVersion", self.agent_version.len(), max)?;
        limits::check(
            "facts.macs (entries)",
            self.macs.len(),
            ReportedStatus::MAX_MACS,
        )?;
        for (interface, mac) in &self.macs {
            limits::check("a MAC entry", interface.len() + mac.len(), max)?;
        }
        if let Some(kubernetes) = &self.kubernetes {
            limits::check("facts.kubernetes.mode", kubernetes.mode.len(), max)?;
            limits::check("facts.kubernetes.cluster", kubernetes.cluster.len(), max)?;
            limits::check("facts.kubernetes.server", optional(&kubernetes.server), max)?;
        }
        if let Some(os) = &self.os_release {
            limits::check("facts.osRelease.prettyName", os.pretty_name.len(), max)?;
            limits::check("facts.osRelease.id", os.id.len(), max)?;
            limits::check("facts.osRelease.versionId", os.version_id.len(), max)?;
        }
        Ok(())
    }
}

/// The operating system, as `/etc/os-release` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OsRelease {
    #[serde(default)]
    pub pretty_name: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub version_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(spec: Value) -> SpecError {
        validate(&spec).expect_err("refused")
    }

    #[test]
    fn the_known_sections_within_their_rules_are_valid() {
        let spec = json!({
            "loggingConfig": {"enableJournalExport": true, "priority": 4, "units": ["ssh.service"]},
            "metricsConfig": {"intervalSeconds": 86400},
            "budgets": {"logs": 50000000, "actions": 0, "metrics": 1, "spoolReplay": 2},
        });
        assert_eq!(validate(&spec), Ok(()));
        assert_eq!(validate(&json!({})), Ok(()));
        assert_eq!(validate(&json!({"loggingConfig": {}})), Ok(()));
    }

    #[test]
    fn each_refusal_names_the_field_by_its_path() {
        let cases = [
            (json!([]), "spec"),
            (json!({"provisioning": {}}), "spec.provisioning"),
            (json!({"deployments": []}), "spec.deployments"),
            (json!({"loggingConfig": 3}), "spec.loggingConfig"),
            (
                json!({"loggingConfig": {"priority": 8}}),
                "spec.loggingConfig.priority",
            ),
            (
                json!({"loggingConfig": {"priority": -1}}),
                "spec.loggingConfig.priority",
            ),
            (
                json!({"loggingConfig": {"priority": "7"}}),
                "spec.loggingConfig.priority",
            ),
            (
                json!({"loggingConfig": {"enableJournalExport": 1}}),
                "spec.loggingConfig.enableJournalExport",
            ),
            (
                json!({"loggingConfig": {"units": ["a.service", ""]}}),
                "spec.loggingConfig.units[1]",
            ),
            (
                json!({"loggingConfig": {"units": "a.service"}}),
                "spec.loggingConfig.units",
            ),
            (
                json!({"loggingConfig": {"colour": true}}),
                "spec.loggingConfig.colour",
            ),
            (
                json!({"metricsConfig": {"intervalSeconds": 0}}),
                "spec.metricsConfig.intervalSeconds",
            ),
            (
                json!({"metricsConfig": {"intervalSeconds": 86401}}),
                "spec.metricsConfig.intervalSeconds",
            ),
            (
                json!({"metricsConfig": {"intervalSeconds": 1.5}}),
                "spec.metricsConfig.intervalSeconds",
            ),
            (json!({"budgets": {"logs": -5}}), "spec.budgets.logs"),
            (json!({"budgets": {"video": 5}}), "spec.budgets.video"),
            (
                json!({"budgets": {"spoolReplay": 0}}),
                "spec.budgets.spoolReplay",
            ),
            (
                json!({"budgets": {"actions": "1MB"}}),
                "spec.budgets.actions",
            ),
        ];
        for (spec, path) in cases {
            assert_eq!(refused(spec.clone()).path, path, "{spec}");
        }
        assert_eq!(
            refused(json!({"loggingConfig": {"priority": 9}})).to_string(),
            "spec.loggingConfig.priority: must be a whole number 0–7"
        );
        assert!(
            refused(json!({"x": {}}))
                .message
                .contains("loggingConfig, metricsConfig, budgets, actions")
        );
    }

    #[test]
    fn an_action_set_changes_the_defaults_by_name() {
        let spec = |value: Value| value.as_object().cloned().expect("object");
        let defaults = ActionSet::of(&DeviceSpec::new()).expect("no section");
        assert!(defaults.accepts("send-kubectl") && defaults.accepts("get-node-ip"));
        for opt_in in ["manage-deployment", "restart-k3s", "restore-command"] {
            assert!(!defaults.accepts(opt_in), "{opt_in}");
        }
        let set = ActionSet::of(&spec(
            json!({"actions": {"enabled": ["manage-deployment"], "disabled": ["send-kubectl"]}}),
        ))
        .expect("valid");
        assert!(set.accepts("manage-deployment") && set.accepts("run-stats"));
        assert!(!set.accepts("send-kubectl"));

        let mut set = ActionSet::default();
        set.enable("copy-resource");
        set.enable("copy-resource");
        set.enable("run-stats");
        assert_eq!(set.enabled, ["copy-resource"]);
        set.disable("copy-resource");
        set.disable("run-stats");
        set.disable("run-stats");
        assert_eq!(
            set,
            ActionSet {
                enabled: vec![],
                disabled: vec!["run-stats".into()],
            }
        );
        set.enable("run-stats");
        assert_eq!(set, ActionSet::default());
        assert_eq!(set.to_section(), json!({}));
    }

    #[test]
    fn the_defaults_are_catalogue_actions_and_never_destructive() {
        let catalogue = crate::catalogue::Catalogue::builtin();
        for action in ActionSet::DEFAULTS {
            assert!(catalogue.get(action).is_some(), "{action}");
        }
        for destructive in ["restart-k3s", "restore-command", "reboot", "shutdown"] {
            assert!(!ActionSet::DEFAULTS.contains(&destructive));
        }
    }

    #[test]
    fn an_action_set_names_only_catalogue_actions_once() {
        assert_eq!(
            validate(
                &json!({"actions": {"enabled": ["restart-k3s", "reboot"], "disabled": ["send-api"]}})
            ),
            Ok(())
        );
        let error = refused(json!({"actions": {"enabled": ["self-destruct"]}}));
        assert_eq!(error.path, "spec.actions.enabled[0]");
        assert!(
            error
                .message
                .contains("unknown action \"self-destruct\"; known actions: "),
            "{error}"
        );
        let cases = [
            (
                json!({"actions": {"enabled": "get-node-ip"}}),
                "spec.actions.enabled",
            ),
            (
                json!({"actions": {"enabled": [3]}}),
                "spec.actions.enabled[0]",
            ),
            (
                json!({"actions": {"disabled": ["run-stats", "run-stats"]}}),
                "spec.actions.disabled[1]",
            ),
            (
                json!({"actions": {"enabled": ["copy-resource"], "disabled": ["copy-resource"]}}),
                "spec.actions.enabled",
            ),
            (json!({"actions": {"allowed": []}}), "spec.actions.allowed"),
        ];
        for (spec, path) in cases {
            assert_eq!(refused(spec.clone()).path, path, "{spec}");
        }
    }

    #[test]
    fn an_oversized_spec_is_refused_as_a_whole() {
        // Each unit within its own limit, together over the spec's.
        let units: Vec<String> = (0..MAX_UNITS).map(|i| format!("{i:0>254}")).collect();
        let error = refused(json!({"loggingConfig": {"units": units}}));
        assert_eq!(error.path, "spec");
        assert!(error.message.contains("bytes"), "{error}");
    }

    #[test]
    fn absent_fields_take_their_defaults() {
        let logging: LoggingConfig = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(logging, LoggingConfig::default());
        assert_eq!(logging.priority, 7);
        let metrics: MetricsConfig = serde_json::from_value(json!({})).expect("parses");
        assert_eq!(metrics.interval_seconds, 60);
        let budgets: Budgets = serde_json::from_value(json!({"spoolReplay": 9})).expect("parses");
        assert_eq!(budgets.spool_replay, Some(9));
    }

    #[test]
    fn a_reported_status_needs_only_its_version_and_is_bounded() {
        let status: ReportedStatus = serde_json::from_str(r#"{"specVersion":3}"#).expect("parses");
        assert_eq!(status.spec_version, 3);
        assert!(status.check_limits().is_ok());
        let mut status = status;
        status.facts.hostname = Some("h".repeat(ReportedStatus::MAX_FACT_BYTES + 1));
        assert_eq!(
            status.check_limits().expect_err("too long").field,
            "facts.hostname"
        );
        status.facts.hostname = None;
        status.errors = vec![SpecError::new("spec.x", "y"); ReportedStatus::MAX_ERRORS + 1];
        assert!(status.check_limits().is_err());
    }

    #[test]
    fn messages_use_the_contract_field_names() {
        let message = SpecMessage {
            version: 2,
            spec: json!({"metricsConfig": {"intervalSeconds": 5}})
                .as_object()
                .cloned()
                .expect("object"),
        };
        assert_eq!(
            serde_json::to_value(&message).expect("json"),
            json!({"version": 2, "spec": {"metricsConfig": {"intervalSeconds": 5}}})
        );
        let status = ReportedStatus {
            spec_version: 2,
            errors: vec![SpecError::new("spec.loggingConfig.units[0]", "bad")],
            facts: Facts {
                machine_id: Some("m".into()),
                os_release: Some(OsRelease {
                    pretty_name: "Debian".into(),
                    id: "debian".into(),
                    version_id: "13".into(),
                }),
                ..Facts::default()
            },
            deployments: BTreeMap::new(),
            update_holds: Vec::new(),
            sealing_key: None,
            ..ReportedStatus::default()
        };
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["specVersion"], 2);
        assert_eq!(json["errors"][0]["path"], "spec.loggingConfig.units[0]");
        assert_eq!(json["facts"]["machineId"], "m");
        assert_eq!(json["facts"]["osRelease"]["versionId"], "13");
    }
}
