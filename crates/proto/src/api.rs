//! Types of tetherd's HTTP API (`/api/v1`), shared by the server and the CLI.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::action::ActionState;
use crate::device::{IngestCounters, Presence};
use crate::spec::{DeviceSpec, Facts, SpecError};

pub type Labels = BTreeMap<String, String>;

/// Longest username tetherd accepts, in bytes; longer is a 400 naming the field.
pub const MAX_USERNAME_LEN: usize = 128;
/// Longest password tetherd accepts, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Every error the API returns: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_input`, `not_found`.
    pub code: String,
    /// What failed and what to do about it.
    pub message: String,
    /// Structured detail, e.g. the offending fields of an input.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    #[cfg_attr(feature = "openapi", schema(max_length = 128))]
    pub username: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    /// Bearer token for the `Authorization` header.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub name: String,
    /// What people call the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub labels: Labels,
    /// `online` while the agent holds an MQTT session.
    pub presence: Presence,
    /// Whether the device has enrolled and holds a client certificate.
    pub enrolled: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    /// The actions the agent's last birth named.
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// What happened to the device's messages since tetherd started
    /// (`GET /devices/{name}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestCounters>,
    /// The provisioning policy that created the device, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The desired configuration (`GET /devices/{name}` only): an object of
    /// sections, see the device contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub spec: Option<DeviceSpec>,
    /// Bumped by one on every change of `spec`; 0 before the first. Send it
    /// back in `If-Match: "N"` to update only that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_version: Option<u64>,
    /// What the agent last reported, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceReport>,
    /// Whether the agent applied this `specVersion` without errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_in_sync: Option<bool>,
}

/// The agent's last `reported` message, as tetherd stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceReport {
    /// The spec version the agent applied.
    pub spec_version: u64,
    /// Sections of it the agent could not apply, each with the reason.
    pub errors: Vec<SpecError>,
    pub facts: Facts,
    /// How each deployment is doing on the device, as the agent reported it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, crate::desired::DeploymentStatus>,
    /// Why the device takes no new revision of its deployments now, as the
    /// agent reported it (update locks, maintenance windows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_holds: Vec<crate::desired::updates::UpdateHold>,
    /// The public half of the device's X25519 key, which secrets are
    /// sealed to (ADR 0030); absent until the agent reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing_key: Option<String>,
    /// The machine's current boot, as the agent reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::host::BootReport>,
    /// The watchdog the agent keeps, and whether it feeds it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<crate::host::WatchdogStatus>,
    /// The device's clock: offset from tetherd's, sync state, NTP servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<crate::host_time::HostTime>,
    /// Conditions holding on the device (`ClockSkewed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::conditions::ReportedCondition>,
    /// The device's interfaces, routes, DNS and how its last network
    /// change went, as the agent reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkStatus>,
    pub reported_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDevice {
    /// 1 to 63 lowercase letters, digits or `-`, starting and ending with a letter or digit;
    /// not `tetherd`, which is the controller's own name.
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// What people call the device, up to 256 characters; the name stays
    /// its identity.
    #[serde(
        default,
        rename = "displayName",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentToken {
    /// One-time token the agent enrolls with.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the server CA certificate (DER), hex; the agent pins it.
    pub ca_sha256: String,
    /// The command line that enrolls and starts an agent for this device.
    pub agent_command: String,
    /// The one command that joins a Kubernetes cluster as this device: it
    /// fetches the agent's manifest from tetherd, trusting only tetherd's
    /// CA, and applies it with the current kubectl context (ADR 0017).
    pub join_command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceCreated {
    pub device: Device,
    pub enrollment: EnrollmentToken,
}

/// JSON merge patch of a device's labels (a `null` value removes the
/// label), and its spec: the whole spec, or with `updateMask` only the
/// fields the mask names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PatchDevice {
    #[serde(default)]
    pub labels: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub spec: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 certificate signing request, PEM. Its key never leaves the device.
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device: String,
    pub certificate_pem: String,
    pub ca_certificate_pem: String,
    /// Where the agent connects, e.g. `mqtts://127.0.0.1:8883`.
    pub mqtt_url: String,
    /// Every MQTT endpoint of the cluster (each replica's, or one DNS name
    /// in front of all), `mqtt_url` first: the agent fails over between
    /// them. Empty from a tetherd that predates replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqtt_urls: Vec<String>,
    /// tetherd's clock when it answered: the agent judges certificate times
    /// by it, not by its own clock.
    #[serde(default)]
    pub server_time: Option<DateTime<Utc>>,
    /// The Ed25519 public key (base64) tetherd signs agent releases with
    /// (issue 19): the agent pins it and refuses a release signed by any
    /// other. Absent from a tetherd without releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_signing_key: Option<String>,
}

/// A device renews its client certificate: its current certificate, and a
/// CSR for the same key signed with that key, which proves the device holds
/// it. The key never leaves the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewRequest {
    /// The device's current client certificate, PEM.
    pub certificate_pem: String,
    /// PKCS#10 certificate signing request for the certificate's key, PEM.
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewResponse {
    pub device: String,
    pub certificate_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// tetherd's clock when it answered.
    pub server_time: DateTime<Utc>,
    /// The cluster's MQTT endpoints now, as in [`EnrollResponse::mqtt_urls`]:
    /// a renewing agent learns of replicas added since it enrolled. Empty
    /// means "keep the list you have".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqtt_urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestAction {
    pub action: String,
    #[serde(default)]
    pub input: serde_json::Value,
    /// How long the action may wait for an offline device before it expires.
    /// Default 3600.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_seconds: Option<u64>,
    /// How long the device has to answer once the action is delivered before
    /// it is `timed-out`. Default 300.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Action {
    pub correlation_id: String,
    pub device: String,
    pub action: String,
    /// The input as stored: secret-looking fields are redacted.
    pub input: serde_json::Value,
    pub state: ActionState,
    pub status_code: Option<u16>,
    pub status_message: Option<String>,
    pub response: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Undelivered after this instant, the action expires.
    pub expires_at: DateTime<Utc>,
    pub timeout_seconds: u64,
    /// The fleet-wide job this action is part of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// One action for every device a label selector matches when the job is
/// created, released with an optional concurrency and rate limit. Unknown
/// fields are refused: a misspelled limit would otherwise start the job
/// over the whole selection at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateJob {
    /// Which devices, e.g. `site=berlin,tier!=test` (at least one requirement).
    pub label_selector: String,
    pub action: String,
    #[serde(default)]
    pub input: serde_json::Value,
    /// How long each device's action may wait (queued or pending) before it
    /// expires, counted from the job's creation. Default 3600.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub ttl_seconds: Option<u64>,
    /// How long a device has to answer once its action is delivered. Default 300.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub timeout_seconds: Option<u64>,
    /// At most this many of the job's actions delivered and not yet
    /// finished at once. Unlimited when left out.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub concurrency: Option<u32>,
    /// At most this many deliveries started per second. Unlimited when left out.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub rate_per_second: Option<u32>,
}

/// Where a job is: `running` until each of its actions has ended
/// (`completed`), or `cancelled` by an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobState {
    Running,
    Completed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [JobState::Running, JobState::Completed, JobState::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many of a job's actions are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobCounts {
    pub queued: u64,
    pub pending: u64,
    pub delivered: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub expired: u64,
    pub rejected: u64,
    pub cancelled: u64,
}

impl JobCounts {
    pub fn get(&self, state: ActionState) -> u64 {
        match state {
            ActionState::Queued => self.queued,
            ActionState::Pending => self.pending,
            ActionState::Delivered => self.delivered,
            ActionState::Succeeded => self.succeeded,
            ActionState::Failed => self.failed,
            ActionState::TimedOut => self.timed_out,
            ActionState::Expired => self.expired,
            ActionState::Rejected => self.rejected,
            ActionState::Cancelled => self.cancelled,
        }
    }

    pub fn add(&mut self, state: ActionState, count: u64) {
        let slot = match state {
            ActionState::Queued => &mut self.queued,
            ActionState::Pending => &mut self.pending,
            ActionState::Delivered => &mut self.delivered,
            ActionState::Succeeded => &mut self.succeeded,
            ActionState::Failed => &mut self.failed,
            ActionState::TimedOut => &mut self.timed_out,
            ActionState::Expired => &mut self.expired,
            ActionState::Rejected => &mut self.rejected,
            ActionState::Cancelled => &mut self.cancelled,
        };
        *slot += count;
    }

    pub fn total(&self) -> u64 {
        ActionState::ALL.into_iter().map(|s| self.get(s)).sum()
    }

    /// Actions that have ended, whatever the outcome.
    pub fn finished(&self) -> u64 {
        ActionState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| self.get(s))
            .sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: String,
    pub label_selector: String,
    pub action: String,
    /// The input as stored: secret-looking fields are redacted.
    pub input: serde_json::Value,
    pub state: JobState,
    /// Devices the selector matched, one action each.
    pub devices: u64,
    pub counts: JobCounts,
    pub concurrency: Option<u32>,
    pub rate_per_second: Option<u32>,
    pub ttl_seconds: u64,
    pub timeout_seconds: u64,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When the last of its actions ended; its counts are final from then.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Something a device reported: an action's event or a change of presence.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: String,
    pub device: String,
    pub correlation_id: Option<String>,
    pub event: String,
    pub status_code: u16,
    pub status_message: String,
    pub response: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// One line of `GET /events/follow`: a device event as it was stored, or
/// the alerts after one was raised, acknowledged or resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FleetChange {
    Event(Event),
    Alerts(ActiveAlerts),
}

/// How many alerts are active, and the newest alert's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActiveAlerts {
    pub firing: u64,
    pub acknowledged: u64,
    pub newest_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogueEntry {
    pub name: String,
    pub title: String,
    pub description: String,
    pub event: String,
    pub input_schema: serde_json::Value,
}

/// The actions a device accepts after enabling or disabling one (its
/// spec's `actions` section applied to the defaults, ADR 0017).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceActionSet {
    pub device: String,
    /// Every action the device accepts, sorted.
    pub accepted: Vec<String>,
    /// The spec version that holds this set.
    pub spec_version: u64,
}

/// One change made through the API, or one login or enrollment attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// A username, or `device:<name>` for an enrollment.
    pub actor: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// More about it: for a tunnel (`method` `TUNNEL`) its `device`,
    /// `kind`, `target`, `startedAt`, `endedAt`, `bytesToDevice` and
    /// `bytesFromDevice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// A login session as an admin sees it; its token is never shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Revoke it with `DELETE /api/v1/sessions/{id}`.
    pub id: String,
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// To the minute.
    pub last_used_at: DateTime<Utc>,
    /// Whether this is the session the listing was requested with.
    pub current: bool,
}

/// One page of a listing, as the Kubernetes API pages: `continue` is there
/// while more items follow; pass it back as the `continue` query parameter
/// (with the same other parameters) for the next page. Each item of the
/// listing appears on exactly one page, also while items are being added.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// An opaque token for the next page; absent on the last one.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// How many devices are online and offline.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceCounts {
    pub online: u64,
    pub offline: u64,
    pub total: u64,
}

/// The devices whose label `by` has one value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SummaryGroup {
    /// The label's value; `null` for the devices without the label.
    pub value: Option<String>,
    pub online: u64,
    pub offline: u64,
    pub total: u64,
}

/// Counts of the fleet (or of the devices a label selector picks) by
/// presence, overall and per value of one label.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetSummary {
    /// The label key the groups are by, if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub total: PresenceCounts,
    /// One group per value of `by`, ordered by value, devices without the
    /// label last; empty without `by`.
    pub groups: Vec<SummaryGroup>,
}

/// A device's log line as the operator reads it (`GET …/logs`, and one per
/// line of a follow stream).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    pub device: String,
    /// The line's number among the device's lines, in the order tetherd
    /// stored them.
    pub pos: u64,
    /// When the device says the line was written.
    pub at: DateTime<Utc>,
    /// Syslog severity, 0 (emergency) to 7 (debug).
    pub priority: u8,
    /// The systemd unit, syslog tag or file the line came from.
    pub unit: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// `POST /api/v1/users/me/ssh-keys`: an SSH public key for the management
/// shell (ADR 0023).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddSshKey {
    /// One line of an OpenSSH public key file (`ssh-ed25519 AAAA… comment`).
    #[cfg_attr(feature = "openapi", schema(max_length = 16384))]
    pub public_key: String,
    /// What to call it; default: the key's comment, else its fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub name: Option<String>,
}

/// One of the caller's registered SSH public keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKey {
    /// Remove it with `DELETE /api/v1/users/me/ssh-keys/{id}`.
    pub id: String,
    pub name: String,
    /// `type base64`.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}

/// `PUT /api/v1/devices/{name}/shell-password`: turn password login to the
/// device's management shell on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetShellPassword {
    /// The password, at least 12 characters; default: a random one, in
    /// the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 12, max_length = 1024))]
    pub password: Option<String>,
}

/// The answer to [`SetShellPassword`]: the password, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShellPassword {
    pub password: String,
}
