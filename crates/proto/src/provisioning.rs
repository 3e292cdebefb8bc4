//! Provisioning (seed 004): policies that register devices by themselves,
//! the keys that let a device register under one, the approvals of a
//! `MANUAL` policy, and the boot bundle `tether os edit` writes into an OS
//! image for the agent to find at first boot.
//!
//! A device proves nothing about itself but possession of the key in its
//! CSR: a provisioning key only lets it ask to register under that key's
//! policy. Which device it becomes is decided by tetherd from the
//! policy's identity fields (ADR 0025).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{EnrollResponse, Labels};
use crate::spec::{DeviceSpec, Facts};

/// The `kind` of a provisioning key file.
pub const PROVISIONING_KEY_KIND: &str = "tether-provisioning-key";
/// Longest policy name; the same rules as a device name.
pub const MAX_POLICY_NAME_BYTES: usize = 63;
/// At most this many identity fields in a policy.
pub const MAX_IDENTITY_FIELDS: usize = 8;
/// Longest value of an identity field a device may report.
pub const MAX_IDENTITY_VALUE_BYTES: usize = 256;
/// Registrations a policy approves by itself in an hour unless its
/// `maxRegistrationsPerHour` says otherwise: a whole batch of boards
/// booting at once, not a leaked key's endless stream of devices.
pub const DEFAULT_REGISTRATIONS_PER_HOUR: u64 = 1_000;
/// Within this many minutes (unless the policy's
/// `sharedIdentityWindowMinutes` says otherwise), a second key pair
/// claiming an identity waits for an operator: boards booted from one
/// image may all report the same identity facts.
pub const DEFAULT_SHARED_IDENTITY_WINDOW_MINUTES: u64 = 10;
/// Largest `maxDevices` and `maxRegistrationsPerHour`.
pub const MAX_POLICY_LIMIT: u64 = 1_000_000_000;
/// Largest `sharedIdentityWindowMinutes`: a day.
pub const MAX_SHARED_IDENTITY_WINDOW_MINUTES: u64 = 24 * 60;

/// How a policy registers a device it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProvisioningMode {
    /// A device is created and its certificate issued at once.
    Unattended,
    /// An approval request is made; the device waits for an operator.
    Manual,
}

/// What a policy sets on the devices it creates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceTemplate {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// The created device's spec (sections as `PATCH /devices/{name}/spec`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub spec: DeviceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateMetadata {
    #[serde(default)]
    pub labels: Labels,
}

/// The body of `POST /api/v1/provisioning-policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicySpec {
    pub mode: ProvisioningMode,
    /// Paths into the reported status that identify the same hardware
    /// again (see [`IdentityField`]); none: every registration is a new
    /// device.
    #[serde(default)]
    pub identity_field_paths: Vec<String>,
    #[serde(default)]
    pub template: DeviceTemplate,
    /// Most devices this policy creates without an operator; none: no
    /// cap. Past it, `UNATTENDED` registrations that would create a device
    /// are refused (429 `max_devices_reached`) until devices are deleted or
    /// the cap is raised; those reusing a device still register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000_000))]
    pub max_devices: Option<u64>,
    /// Most registrations this policy approves by itself (devices created
    /// or reused without an operator) in an hour, counted across replicas;
    /// default 1,000. Past it: 429 `registration_rate_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000_000))]
    pub max_registrations_per_hour: Option<u64>,
    /// A second key pair claiming an identity within this many minutes of
    /// another waits for an operator, even `UNATTENDED` (boards booted from
    /// one image can report the same facts); default 10, 0: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(maximum = 1440))]
    pub shared_identity_window_minutes: Option<u64>,
}

impl PolicySpec {
    /// `maxRegistrationsPerHour`, or its default.
    pub fn registrations_per_hour(&self) -> u64 {
        self.max_registrations_per_hour
            .unwrap_or(DEFAULT_REGISTRATIONS_PER_HOUR)
    }

    /// `sharedIdentityWindowMinutes`, or its default.
    pub fn shared_identity_window_minutes(&self) -> u64 {
        self.shared_identity_window_minutes
            .unwrap_or(DEFAULT_SHARED_IDENTITY_WINDOW_MINUTES)
    }
}

/// The body of `POST /api/v1/provisioning-policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatePolicy {
    /// As a device name: lowercase letters, digits and `-`.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    pub spec: PolicySpec,
}

/// A provisioning policy as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    pub name: String,
    pub spec: PolicySpec,
    pub created_at: DateTime<Utc>,
    /// How many devices it created.
    pub devices: u64,
    /// How many approval requests wait.
    pub pending_approvals: u64,
}

/// A field of the reported status a policy can identify hardware by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdentityField {
    /// `status.facts.hardwareSerial` (seed 004's
    /// `status.deviceInfo.hardwareInformation.system.serialNumber` is
    /// taken as this).
    HardwareSerial,
    /// `status.facts.machineId`.
    MachineId,
    /// `status.facts.macs.<interface>`.
    Mac(String),
    /// `status.facts.hostname`.
    Hostname,
}

/// The identity path seed 004's examples use.
pub const SEED_SERIAL_PATH: &str = "status.deviceInfo.hardwareInformation.system.serialNumber";

impl IdentityField {
    /// Parses a path of [`PolicySpec::identity_field_paths`].
    pub fn parse(path: &str) -> Result<Self, String> {
        let field = match path {
            "status.facts.hardwareSerial" | SEED_SERIAL_PATH => Self::HardwareSerial,
            "status.facts.machineId" => Self::MachineId,
            "status.facts.hostname" => Self::Hostname,
            _ => match path.strip_prefix("status.facts.macs.") {
                Some(interface)
                    if !interface.is_empty()
                        && interface.len() <= 15
                        && interface
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) =>
                {
                    Self::Mac(interface.to_owned())
                }
                _ => {
                    return Err(format!(
                        "identity field {path:?} is not one of status.facts.hardwareSerial, \
                         status.facts.machineId, status.facts.hostname, status.facts.macs.<interface> \
                         (or {SEED_SERIAL_PATH})"
                    ));
                }
            },
        };
        Ok(field)
    }

    /// The canonical path.
    pub fn path(&self) -> String {
        match self {
            Self::HardwareSerial => "status.facts.hardwareSerial".into(),
            Self::MachineId => "status.facts.machineId".into(),
            Self::Hostname => "status.facts.hostname".into(),
            Self::Mac(interface) => format!("status.facts.macs.{interface}"),
        }
    }

    /// The field's value in `facts`, if the device reported one that is
    /// not blank.
    pub fn value<'a>(&self, facts: &'a Facts) -> Option<&'a str> {
        let value = match self {
            Self::HardwareSerial => facts.hardware_serial.as_deref(),
            Self::MachineId => facts.machine_id.as_deref(),
            Self::Hostname => facts.hostname.as_deref(),
            Self::Mac(interface) => facts.macs.get(interface).map(String::as_str),
        }?;
        let value = value.trim();
        (!is_placeholder(value)).then_some(value)
    }
}

/// What firmware reports when nobody set the field: no identity, or every
/// board of a batch would be one device.
const PLACEHOLDERS: [&str; 14] = [
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "not specified",
    "not applicable",
    "not available",
    "system serial number",
    "chassis serial number",
    "serial number",
    "none",
    "n/a",
    "oem",
    "unknown",
    "uninitialized",
];

/// Blank, a known firmware placeholder, or one digit repeated (all zeros,
/// all `f`s, `00:00:00:00:00:00`, `0123456789`-style counting aside).
pub fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    let digits: Vec<char> = lower.chars().filter(|c| !" -:.".contains(*c)).collect();
    value.is_empty()
        || PLACEHOLDERS.contains(&lower.as_str())
        || ["0123456789", "123456789", "1234567890"].contains(&lower.as_str())
        || digits
            .first()
            .is_none_or(|first| matches!(first, '0' | 'f') && digits.iter().all(|c| c == first))
}

/// Checks a policy's name and identity paths; the template's labels and
/// spec follow the registry's rules for any device, checked there.
pub fn check_policy(name: &str, spec: &PolicySpec) -> Result<Vec<IdentityField>, String> {
    if crate::DeviceId::new(name).is_err() || name.len() > MAX_POLICY_NAME_BYTES {
        return Err(format!(
            "policy name {name:?} must be 1 to {MAX_POLICY_NAME_BYTES} lowercase letters, digits and '-', as a device name"
        ));
    }
    if spec.identity_field_paths.len() > MAX_IDENTITY_FIELDS {
        return Err(format!(
            "identityFieldPaths has {} paths; at most {MAX_IDENTITY_FIELDS}",
            spec.identity_field_paths.len()
        ));
    }
    for (name, value) in [
        ("maxDevices", spec.max_devices),
        ("maxRegistrationsPerHour", spec.max_registrations_per_hour),
    ] {
        if let Some(value) = value
            && !(1..=MAX_POLICY_LIMIT).contains(&value)
        {
            return Err(format!(
                "{name} is {value}; it must be 1 to {MAX_POLICY_LIMIT} (leave it out for {})",
                if name == "maxDevices" {
                    "no cap".to_owned()
                } else {
                    format!("the default, {DEFAULT_REGISTRATIONS_PER_HOUR}")
                }
            ));
        }
    }
    // Under MANUAL an operator decides each device, and the pending caps
    // bound the queue: a limit there would be accepted and never apply.
    if spec.mode == ProvisioningMode::Manual {
        for (name, value) in [
            ("maxDevices", spec.max_devices),
            ("maxRegistrationsPerHour", spec.max_registrations_per_hour),
        ] {
            if value.is_some() {
                return Err(format!(
                    "{name} applies to UNATTENDED policies only: under MANUAL an operator approves each device; leave it out"
                ));
            }
        }
    }
    if spec.shared_identity_window_minutes() > MAX_SHARED_IDENTITY_WINDOW_MINUTES {
        return Err(format!(
            "sharedIdentityWindowMinutes is {}; at most {MAX_SHARED_IDENTITY_WINDOW_MINUTES} (0 turns the check off)",
            spec.shared_identity_window_minutes()
        ));
    }
    let mut fields = spec
        .identity_field_paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            IdentityField::parse(path).map_err(|e| format!("identityFieldPaths[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    fields.sort();
    fields.dedup();
    Ok(fields)
}

/// The identity of the hardware behind `facts` under a policy's `fields`:
/// one string of every field's path and value, or `None` if the device
/// reported none of them (then it cannot be recognised again).
pub fn identity_key(fields: &[IdentityField], facts: &Facts) -> Result<Option<String>, String> {
    let mut key = String::new();
    let mut any = false;
    for field in fields {
        let value = field.value(facts).unwrap_or_default();
        if value.len() > MAX_IDENTITY_VALUE_BYTES {
            return Err(format!(
                "{} is {} bytes, more than the {MAX_IDENTITY_VALUE_BYTES} allowed",
                field.path(),
                value.len()
            ));
        }
        any |= !value.is_empty();
        // JSON-escaped, so no value can forge a field boundary.
        key.push_str(&Value::String(field.path()).to_string());
        key.push('=');
        key.push_str(&Value::String(value.to_owned()).to_string());
        key.push(';');
    }
    Ok(any.then_some(key))
}

/// A provisioning key as the file the agent reads (`--provisioning-key`):
/// everything a device needs to find tetherd, trust it and register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvisioningKey {
    /// Always [`PROVISIONING_KEY_KIND`].
    pub kind: String,
    /// tetherd's API URL.
    pub server: String,
    /// SHA-256 of tetherd's CA certificate, hex.
    pub ca_sha256: String,
    pub policy: String,
    pub key_id: String,
    /// Shown once, when the key is made; tetherd keeps only a hash.
    pub secret: String,
}

/// A provisioning key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvisioningKeyInfo {
    pub key_id: String,
    pub policy: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The body of `POST /api/v1/provisioning-policies/{name}/keys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateKeyRequest {
    /// When the key stops working; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A device asks to register (`POST /api/v1/register`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    pub key_id: String,
    pub secret: String,
    /// PKCS#10 certificate signing request, PEM. Its key never leaves the
    /// device, and asking again with the same key is the same request.
    pub csr_pem: String,
    /// The machine's facts, as its status will report them.
    pub facts: Facts,
}

/// Where a registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RegistrationState {
    /// Waiting for an operator (`MANUAL`).
    Pending,
    /// Approved; the device has not fetched its certificate yet.
    Approved,
    /// Refused by an operator; the device gives up.
    Denied,
    /// The device has its certificate.
    Registered,
}

/// tetherd's answer to a registration: 200 with `enrollment` once
/// registered, 202 with `approval` while it waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    pub state: RegistrationState,
    /// The approval request's id while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// How long to wait before asking again, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollResponse>,
}

/// A registration as operators see it (`tether approvals list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Approval {
    pub id: String,
    pub policy: String,
    pub state: RegistrationState,
    /// What the device said about itself.
    pub facts: Facts,
    /// The device it became, or the existing one its identity fields
    /// matched (which approving reuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether `device` is online now: approving a request that matched an
    /// online device moves that device's credential to this hardware, and
    /// the device's current media loses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_online: Option<bool>,
    /// The provisioning key it registered with (none for registrations
    /// older than tetherd recording it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `POST /api/v1/approvals/{id}/approve`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApproveRequest {
    /// The new device's name; tetherd makes one from the policy's name if
    /// none is given. Ignored when the request reuses an existing device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The body of `POST /api/v1/approvals/{id}/deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DenyRequest {
    /// Told to the device, which stops with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where `tether os edit` writes the bundle on the boot partition, and the
/// agent's `--boot-bundle DIR` reads it: `DIR/tether/bundle.json`.
pub const BOOT_BUNDLE_DIR: &str = "tether";
/// The bundle's main file inside [`BOOT_BUNDLE_DIR`].
pub const BOOT_BUNDLE_FILE: &str = "bundle.json";
/// The netplan v2 YAML the OS applies at first boot, beside the bundle.
pub const BOOT_NETPLAN_FILE: &str = "netplan.yaml";
/// The systemd-timesyncd configuration, beside the bundle, if given.
pub const BOOT_TIMESYNCD_FILE: &str = "timesyncd.conf";
/// The disk mapping (seed 004's `diskmappings`/`bindmounts`), if given.
pub const BOOT_DISK_MAPPING_FILE: &str = "disk-mapping.yaml";

/// What a device registers with at first boot, written by `tether os edit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootBundle {
    /// Always 1.
    pub version: u32,
    /// tetherd's API URL.
    pub server: String,
    /// SHA-256 of tetherd's CA certificate, hex.
    pub ca_sha256: String,
    pub credential: BootCredential,
    /// The console login's password as a crypt(3) SHA-512 hash (`$6$…`),
    /// for the OS's first-boot setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_password_hash: Option<String>,
}

/// How the device behind a bundle gets its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum BootCredential {
    /// Register under a policy (`--provisioning-key FILE`).
    #[serde(rename_all = "camelCase")]
    Provisioning { key_id: String, secret: String },
    /// Become an existing device (`--device-name NAME`): a one-time
    /// enrollment token for it.
    #[serde(rename_all = "camelCase")]
    Enrollment { device: String, token: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_placeholders_are_no_identity() {
        for placeholder in [
            "",
            "  ",
            "To Be Filled By O.E.M.",
            "Default string",
            "System Serial Number",
            "N/A",
            "00000000",
            "0000-0000",
            "FFFFFFFF",
            "00:00:00:00:00:00",
            "0123456789",
        ] {
            assert!(is_placeholder(placeholder), "{placeholder:?}");
        }
        for serial in ["10000000abcdef", "SN-0001", "PF2X8K3L", "0000001", "ff00"] {
            assert!(!is_placeholder(serial), "{serial:?}");
        }
        let fields = [IdentityField::HardwareSerial];
        assert_eq!(
            identity_key(&fields, &facts("To Be Filled By O.E.M.")),
            Ok(None)
        );
    }

    fn facts(serial: &str) -> Facts {
        Facts {
            hardware_serial: Some(serial.into()),
            macs: [("eth0".to_owned(), "aa:bb".to_owned())].into(),
            ..Facts::default()
        }
    }

    #[test]
    fn identity_paths_are_the_documented_ones_and_the_seed_s() {
        assert_eq!(
            IdentityField::parse(SEED_SERIAL_PATH),
            Ok(IdentityField::HardwareSerial)
        );
        assert_eq!(
            IdentityField::parse("status.facts.macs.eth0"),
            Ok(IdentityField::Mac("eth0".into()))
        );
        for bad in [
            "status.facts.cpuModel",
            "status.facts.macs.",
            "spec.x",
            "status.facts.macs.a/b",
        ] {
            let err = IdentityField::parse(bad).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn an_identity_is_every_field_s_value_and_none_without_any() {
        let fields = [
            IdentityField::HardwareSerial,
            IdentityField::Mac("eth0".into()),
        ];
        let key = identity_key(&fields, &facts("SN1")).expect("fits");
        assert_eq!(
            key.as_deref(),
            Some(r#""status.facts.hardwareSerial"="SN1";"status.facts.macs.eth0"="aa:bb";"#)
        );
        assert_ne!(key, identity_key(&fields, &facts("SN2")).expect("fits"));
        assert_eq!(identity_key(&fields, &Facts::default()), Ok(None));
        // Blank is not a serial number: many boards report one.
        assert_eq!(
            identity_key(&[IdentityField::HardwareSerial], &facts("  ")),
            Ok(None)
        );
        // A value cannot pretend to end its field and start another.
        let forged = identity_key(
            &[IdentityField::HardwareSerial],
            &facts(r#"SN1";"status.facts.macs.eth0"="aa:bb"#),
        )
        .expect("fits");
        assert_ne!(forged, key);
        let err = identity_key(&fields, &facts(&"x".repeat(300))).expect_err("too long");
        assert!(
            err.contains("status.facts.hardwareSerial is 300 bytes"),
            "{err}"
        );
    }

    #[test]
    fn a_policy_names_its_problem() {
        let spec = |paths: &[&str]| PolicySpec {
            mode: ProvisioningMode::Unattended,
            identity_field_paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            template: DeviceTemplate::default(),
            max_devices: None,
            max_registrations_per_hour: None,
            shared_identity_window_minutes: None,
        };
        assert_eq!(
            check_policy(
                "lab",
                &spec(&[SEED_SERIAL_PATH, "status.facts.hardwareSerial"])
            ),
            Ok(vec![IdentityField::HardwareSerial])
        );
        let err = check_policy("lab", &spec(&["status.x"])).expect_err("path");
        assert!(err.starts_with("identityFieldPaths[0]: "), "{err}");
        let err = check_policy("Lab Pis", &spec(&[])).expect_err("name");
        assert!(err.contains("policy name \"Lab Pis\""), "{err}");
        let json = serde_json::json!({"mode": "MANUAL", "identityFieldPaths": [],
            "template": {"metadata": {"labels": {"device": "raspberry-pi"}},
                         "spec": {"loggingConfig": {"priority": 7, "enableJournalExport": true}}}});
        let parsed: PolicySpec = serde_json::from_value(json).expect("the seed's shape");
        assert_eq!(parsed.mode, ProvisioningMode::Manual);
        assert_eq!(parsed.template.metadata.labels["device"], "raspberry-pi");
        let mut capped = spec(&[]);
        capped.max_devices = Some(0);
        let err = check_policy("lab", &capped).expect_err("no devices at all");
        assert!(err.starts_with("maxDevices is 0"), "{err}");
        capped.max_devices = Some(50);
        capped.max_registrations_per_hour = Some(0);
        let err = check_policy("lab", &capped).expect_err("no registrations at all");
        assert!(err.starts_with("maxRegistrationsPerHour is 0"), "{err}");
        capped.max_registrations_per_hour = None;
        capped.mode = ProvisioningMode::Manual;
        let err = check_policy("lab", &capped).expect_err("a cap MANUAL never applies");
        assert!(err.starts_with("maxDevices applies to UNATTENDED"), "{err}");
        capped.mode = ProvisioningMode::Unattended;
        capped.shared_identity_window_minutes = Some(2 * 24 * 60);
        let err = check_policy("lab", &capped).expect_err("two days");
        assert!(err.starts_with("sharedIdentityWindowMinutes"), "{err}");
        capped.shared_identity_window_minutes = Some(0);
        assert!(check_policy("lab", &capped).is_ok());
        assert_eq!(
            capped.registrations_per_hour(),
            DEFAULT_REGISTRATIONS_PER_HOUR
        );
        let unknown = serde_json::json!({"mode": "UNATTENDED", "templat": {}});
        assert!(serde_json::from_value::<PolicySpec>(unknown).is_err());
    }

    #[test]
    fn a_bundle_says_which_credential_it_holds() {
        let bundle = BootBundle {
            version: 1,
            server: "https://tether.example:8443".into(),
            ca_sha256: "ab".repeat(32),
            credential: BootCredential::Enrollment {
                device: "edge-1".into(),
                token: "t".into(),
            },
            console_password_hash: None,
        };
        let json = serde_json::to_value(&bundle).expect("serializes");
        assert_eq!(json["credential"]["kind"], "enrollment");
        assert_eq!(json["caSha256"], "ab".repeat(32));
        let back: BootBundle = serde_json::from_value(json).expect("parses");
        assert_eq!(back, bundle);
    }
}
