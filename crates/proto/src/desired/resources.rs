//! The desired-state resources of tetherd's API (issue 17): chart
//! templates (seed 002's "Helm chart template"), deployments (seed 002's
//! "Edge deployment", with seed 003's supervised processes and config
//! files) and how a deployment's rollout stands.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::agent_release::AgentBinary;
use super::{ConfigFileSpec, DeploymentState, ProcessSpec};

/// A chart that can be deployed, with the values it is deployed with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChartTemplateSpec {
    /// The chart's name in its repository.
    pub chart: String,
    /// A Helm repository URL (`https://…`) or an OCI reference (`oci://…`).
    pub source: String,
    /// The chart version; the newest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The namespace releases go into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `values.yaml` as an object; whole strings `"{{uuid}}"`, `"{{name}}"`
    /// and `"{{hostname}}"` are replaced per deployment and device.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
}

/// The body of `POST /api/v1/chart-templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateChartTemplate {
    pub name: String,
    pub spec: ChartTemplateSpec,
}

/// A chart template as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChartTemplate {
    pub name: String,
    pub spec: ChartTemplateSpec,
    /// Deployments that use it.
    #[serde(default)]
    pub used_by: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which devices a deployment runs on: one device, or every device a
/// label selector picks (now and later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `key=value,key!=value,key in (a,b),key,!key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// How a change reaches many devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutPolicy {
    /// Devices per batch; `batchPercent` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Per cent of the targeted devices per batch (at least one device).
    #[serde(default = "RolloutPolicy::default_batch_percent")]
    pub batch_percent: u8,
    /// The rollout pauses, and the failed devices go back to the version
    /// they had, once more than this per cent of the devices updated so
    /// far failed.
    #[serde(default = "RolloutPolicy::default_max_failure_percent")]
    pub max_failure_percent: u8,
    /// A device that has not reported the new version ready or failed
    /// within this many seconds counts as failed.
    #[serde(default = "RolloutPolicy::default_progress_deadline_seconds")]
    pub progress_deadline_seconds: u32,
}

impl RolloutPolicy {
    fn default_batch_percent() -> u8 {
        25
    }
    fn default_max_failure_percent() -> u8 {
        10
    }
    fn default_progress_deadline_seconds() -> u32 {
        600
    }
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            batch_size: None,
            batch_percent: Self::default_batch_percent(),
            max_failure_percent: Self::default_max_failure_percent(),
            progress_deadline_seconds: Self::default_progress_deadline_seconds(),
        }
    }
}

/// What a deployment runs and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSpecification {
    pub target: Target,
    /// The node the charts run on (a pinned deployment); any node when
    /// absent (a floating one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Chart templates by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<String>,
    /// Merged over every chart template's values (objects key by key);
    /// config templates see them as `values`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, ProcessSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_files: BTreeMap<String, ConfigFileSpec>,
    #[serde(default)]
    pub rollout: RolloutPolicy,
    /// The agent release (issue 19) the targeted devices run: its
    /// version, as published with `tether releases publish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_release: Option<String>,
    /// Lets `agentRelease` be older than the version a device runs: off,
    /// the agent refuses a downgrade, so an old signed release cannot be
    /// rolled out again by mistake (`tether releases rollout
    /// --allow-downgrade`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_agent_downgrade: bool,
}

/// The body of `POST /api/v1/deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDeployment {
    pub name: String,
    pub spec: DeploymentSpecification,
}

/// A deployment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub name: String,
    pub spec: DeploymentSpecification,
    /// Goes up by one with every change of the deployment or of a chart
    /// template it uses.
    pub revision: u64,
    pub rollout: RolloutPhase,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where the rollout of a deployment's revision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RolloutPhase {
    /// Batches are being updated.
    Progressing,
    /// Every targeted device has the revision (or was rolled back).
    Complete,
    /// Too many devices failed: the failed ones went back, the rest wait
    /// for `tether deployments resume` or a new revision.
    Paused,
    /// Being removed from its devices.
    Deleting,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Complete => "complete",
            Self::Paused => "paused",
            Self::Deleting => "deleting",
        }
    }
}

/// One targeted device in a deployment's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceRollout {
    pub device: String,
    /// The revision in the device's spec; absent while it waits for its
    /// batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The batch that updated it to the current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
    /// As the device reported it for the version it was sent; `None`
    /// before it reported that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeploymentState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It failed the current revision and was put back on `revision`.
    #[serde(default)]
    pub rolled_back: bool,
    pub updated_at: DateTime<Utc>,
}

/// `GET /api/v1/deployments/{name}/status`: the rollout per batch and per
/// device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentRollout {
    pub name: String,
    pub revision: u64,
    pub phase: RolloutPhase,
    /// Why it paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub targeted: u64,
    pub updated: u64,
    pub ready: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub devices: Vec<DeviceRollout>,
    /// Targeted devices that wait for this revision until they take
    /// updates again, with why (their update holds as last reported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldDevice>,
}

/// A device a rollout passes over for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeldDevice {
    pub device: String,
    pub holds: Vec<super::updates::UpdateHold>,
}

/// A published agent release (issue 19) as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishedRelease {
    pub version: String,
    /// Each platform's binary, by platform name.
    pub binaries: BTreeMap<String, PublishedBinary>,
}

/// One platform's binary of a published release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishedBinary {
    #[serde(flatten)]
    pub binary: AgentBinary,
    pub created_at: DateTime<Utc>,
    /// Who published it.
    pub created_by: String,
}

/// The key tetherd signs agent releases with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseSigningKey {
    /// The Ed25519 public key, 32 bytes in base64 (as agents pin it).
    pub signing_key: String,
}
