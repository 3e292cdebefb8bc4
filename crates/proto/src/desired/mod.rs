//! Desired state (issue 17): what a device runs, as its spec's
//! `deployments` section carries it. tetherd renders each deployment that
//! targets the device — chart templates with their values substituted
//! ([`chart`]), supervised processes and config files ([`process`]) — into
//! one [`DeploymentSpec`] with a version; the agent reconciles to it and
//! reports a [`DeploymentStatus`] per deployment in its reported status.
//!
//! A deployment's version is the ETag of what the device should run (seed
//! 002's Edge Agent config ETag): a staged rollout moves a device from one
//! version to the next, and a rollback back, by rewriting this section.

pub mod agent_release;
pub mod chart;
pub mod process;
pub mod resources;
pub mod updates;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use chart::ChartRelease;
pub use process::{ConfigFileSpec, ProcessSpec};

use crate::spec::SpecError;

/// The spec section: deployment name → what it runs on this device.
pub type Deployments = BTreeMap<String, DeploymentSpec>;

/// The section's name in the spec.
pub const SECTION: &str = "deployments";
/// At most this many deployments per device.
pub const MAX_DEPLOYMENTS: usize = 64;
/// Longest deployment, release, process or config file name.
pub const MAX_NAME_BYTES: usize = 63;

/// One deployment as one device runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSpec {
    /// The ETag of this desired state; reported back once applied.
    pub version: String,
    /// Helm releases on the device's cluster (devices that manage one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<ChartRelease>,
    /// Supervised processes on the device, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, ProcessSpec>,
    /// Config files rendered on the device, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_files: BTreeMap<String, ConfigFileSpec>,
    /// The deployment's values, as config templates see them (`values.*`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub values: Map<String, Value>,
    /// The device's labels when tetherd rendered this, as config templates
    /// see them (`labels.*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The agent's own release (issue 19): at most one deployment of a
    /// device carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<agent_release::AgentRelease>,
}

/// Where a deployment is on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DeploymentState {
    /// Everything it runs is up and healthy.
    Ready,
    /// Being applied: starting, waiting for health, installing.
    Progressing,
    /// Could not be applied or stopped working; `reason` says why.
    Failed,
}

impl DeploymentState {
    /// The state's name as the API and the CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Progressing => "progressing",
            Self::Failed => "failed",
        }
    }
}

/// What the agent reports for one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentStatus {
    /// The version the state is about.
    pub version: String,
    pub state: DeploymentState,
    /// Why it is failed or still progressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DeploymentStatus {
    /// Longest `reason` a device may report.
    pub const MAX_REASON_BYTES: usize = 1024;

    /// The status of two parts of one deployment (its charts and its
    /// processes) as one: the worse state, the first reason that explains it.
    pub fn combine(self, other: Self) -> Self {
        if other.state > self.state {
            other
        } else {
            self
        }
    }
}

/// Checks the `deployments` section: names, sizes, and each part's rules.
pub fn validate(path: &str, section: &Value) -> Result<(), SpecError> {
    validate_with(path, section, crate::template::check)
}

/// [`validate`], config file templates checked by `check_template`.
pub fn validate_with(
    path: &str,
    section: &Value,
    check_template: crate::template::TemplateCheck,
) -> Result<(), SpecError> {
    let Value::Object(deployments) = section else {
        return Err(SpecError::new(
            path,
            "must be a JSON object of deployments by name",
        ));
    };
    if deployments.len() > MAX_DEPLOYMENTS {
        return Err(SpecError::new(
            path,
            format!(
                "has {} deployments, more than the {MAX_DEPLOYMENTS} allowed",
                deployments.len()
            ),
        ));
    }
    let mut agent_from: Option<&String> = None;
    for (name, deployment) in deployments {
        let path = format!("{path}.{name}");
        check_name(&path, name)?;
        let deployment: DeploymentSpec = serde_json::from_value(deployment.clone())
            .map_err(|e| SpecError::new(&path, e.to_string()))?;
        if deployment.version.is_empty() || deployment.version.len() > 128 {
            return Err(SpecError::new(
                format!("{path}.version"),
                "must be 1 to 128 bytes",
            ));
        }
        chart::validate(&format!("{path}.charts"), &deployment.charts)?;
        process::validate_with(&path, &deployment, check_template)?;
        if let Some(release) = &deployment.agent {
            if let Some(other) = agent_from.replace(name) {
                return Err(SpecError::new(
                    format!("{path}.agent"),
                    format!("deployment {other:?} already sets the agent's release; only one may"),
                ));
            }
            release.validate(&format!("{path}.agent"))?;
        }
    }
    Ok(())
}

/// A name usable as a Kubernetes object name, a file name and a log
/// source: 1 to 63 lowercase letters, digits and `-`, starting and ending
/// with a letter or digit (RFC 1123 label).
pub fn check_name(path: &str, name: &str) -> Result<(), SpecError> {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() > MAX_NAME_BYTES
        || !edge_ok(bytes.first())
        || !edge_ok(bytes.last())
        || !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(SpecError::new(
            path,
            format!(
                "{name:?} is not a valid name: use 1 to {MAX_NAME_BYTES} lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "web-1", "0x"] {
            assert!(check_name("p", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"x".repeat(64)] {
            let err = check_name("p", bad).expect_err(bad);
            assert_eq!(err.path, "p");
        }
    }

    #[test]
    fn a_deployment_needs_a_version_and_known_fields() {
        let err =
            validate("spec.deployments", &json!({"web": {"charts": []}})).expect_err("no version");
        assert!(err.message.contains("version"), "{err}");
        let err = validate(
            "spec.deployments",
            &json!({"web": {"version": "1", "chartz": []}}),
        )
        .expect_err("unknown field");
        assert!(err.message.contains("chartz"), "{err}");
        assert!(validate("spec.deployments", &json!({"web": {"version": "1"}})).is_ok());
    }

    #[test]
    fn the_worse_state_wins() {
        let ready = DeploymentStatus {
            version: "1".into(),
            state: DeploymentState::Ready,
            reason: None,
        };
        let failed = DeploymentStatus {
            version: "1".into(),
            state: DeploymentState::Failed,
            reason: Some("crashed".into()),
        };
        assert_eq!(ready.clone().combine(failed.clone()), failed);
        assert_eq!(failed.clone().combine(ready), failed);
    }
}
