//! Supervised processes and config files a deployment runs on a plain
//! device (seed 003's jobs and config templating).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DeploymentSpec;
use crate::spec::SpecError;

/// One supervised process (seed 003's job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessSpec {
    /// The program: an absolute path, or the name of an artifact.
    pub exec_cmd: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_args: Vec<String>,
}

/// One config file rendered on the device from a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigFileSpec {
    /// Where it is written: an absolute path.
    pub path: String,
    /// The template.
    pub template: String,
}

/// Checks a deployment's processes and config files.
pub fn validate(path: &str, deployment: &DeploymentSpec) -> Result<(), SpecError> {
    check_names(&format!("{path}.processes"), &deployment.processes)?;
    check_names(&format!("{path}.configFiles"), &deployment.config_files)
}

fn check_names<T>(path: &str, named: &BTreeMap<String, T>) -> Result<(), SpecError> {
    named
        .keys()
        .try_for_each(|name| super::check_name(&format!("{path}.{name}"), name))
}
