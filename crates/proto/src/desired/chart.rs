//! Helm releases a deployment puts on a device's cluster (seed 002's
//! "Helm chart template" as one device receives it: values already
//! substituted by tetherd).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::SpecError;

/// One Helm release on the device's cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChartRelease {
    /// The release's name on the cluster (unique per device).
    pub release: String,
    /// The chart's name in its repository.
    pub chart: String,
    /// The repository: a Helm repository URL (`https://…`) or an OCI
    /// reference (`oci://…`).
    pub source: String,
    /// The chart version; the newest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The namespace the release goes into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The node a pinned deployment runs on (`kubernetes.io/hostname`);
    /// absent for a floating deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `values.yaml`, substituted.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
}

/// Checks a deployment's releases.
pub fn validate(path: &str, releases: &[ChartRelease]) -> Result<(), SpecError> {
    for (i, release) in releases.iter().enumerate() {
        super::check_name(&format!("{path}[{i}].release"), &release.release)?;
    }
    Ok(())
}
