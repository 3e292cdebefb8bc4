//! A deployment's revision as one device runs it, without IO: chart
//! templates resolved into Helm releases with the deployment's values
//! merged over the template's and seed 002's placeholders substituted,
//! the processes and config files as given, and a version that changes
//! exactly when what the device gets changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tether_proto::DeviceId;
use tether_proto::api::Labels;
use tether_proto::desired::agent_release::AgentBinary;
use tether_proto::desired::chart::{Placeholders, substitute};
use tether_proto::desired::resources::{ChartTemplateSpec, DeploymentSpecification};
use tether_proto::desired::{ChartRelease, DeploymentSpec};

use crate::releases::{ReleaseKeys, agent_section};

/// Helm's limit on a release name.
pub const MAX_RELEASE_NAME_BYTES: usize = 53;

/// What a revision of a deployment is: its spec and the chart templates it
/// used as they were then, so a rollback sends exactly what ran before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionBody {
    pub spec: DeploymentSpecification,
    pub templates: BTreeMap<String, ChartTemplateSpec>,
    /// The agent release the spec names, with its binaries as published
    /// (issue 19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<ReleaseBinaries>,
}

/// An agent release's binaries by platform, as a revision records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseBinaries {
    pub version: String,
    pub binaries: BTreeMap<String, AgentBinary>,
}

/// The release a deployment's chart template becomes on a device: unique
/// per device, as two deployments may use one template.
pub fn release_name(deployment: &str, template: &str) -> String {
    format!("{deployment}-{template}")
}

/// `deployment`'s `revision` for `device`, whose labels are `labels`; an
/// agent release gets the signing key and this device's download token
/// from `keys`.
pub fn render(
    deployment: &str,
    revision: u64,
    body: &RevisionBody,
    device: &DeviceId,
    labels: &Labels,
    keys: &ReleaseKeys,
) -> DeploymentSpec {
    let spec = &body.spec;
    let charts = spec
        .charts
        .iter()
        .filter_map(|name| body.templates.get(name).map(|t| (name, t)))
        .map(|(name, template)| {
            let mut values = template.values.clone();
            merge(&mut values, &spec.values);
            ChartRelease {
                release: release_name(deployment, name),
                chart: template.chart.clone(),
                source: template.source.clone(),
                version: template.version.clone(),
                namespace: template.namespace.clone(),
                hostname: spec.hostname.clone(),
                values: substitute(
                    &values,
                    &Placeholders {
                        uuid: device.as_str(),
                        name: deployment,
                        // A floating deployment's is "".
                        hostname: Some(spec.hostname.as_deref().unwrap_or_default()),
                    },
                ),
            }
        })
        .collect();
    let mut rendered = DeploymentSpec {
        version: String::new(),
        charts,
        processes: spec.processes.clone(),
        config_files: spec.config_files.clone(),
        values: spec.values.clone(),
        labels: labels.clone(),
        agent: body.agent.as_ref().map(|release| {
            agent_section(
                keys,
                device,
                &release.version,
                &release.binaries,
                spec.allow_agent_downgrade,
            )
        }),
    };
    rendered.version = version(revision, &rendered);
    rendered
}

/// `REVISION-HASH`: the revision for people, and the first 8 bytes of the
/// SHA-256 of what the device gets, so the same revision rendered for two
/// devices (or with a changed template) is told apart.
fn version(revision: u64, rendered: &DeploymentSpec) -> String {
    let json = serde_json::to_vec(rendered).unwrap_or_default();
    let digest = Sha256::digest(&json);
    format!("{revision}-{}", hex::encode(&digest[..8]))
}

/// Merges `over` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Object(base)), Value::Object(over)) => merge(base, over),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(spec: Value, templates: Value) -> RevisionBody {
        serde_json::from_value(json!({"spec": spec, "templates": templates})).expect("body")
    }

    #[test]
    fn an_agent_release_gets_the_key_and_each_device_its_own_token() {
        let mut body = body(json!({"target": {"selector": "site=x"}}), json!({}));
        body.agent = Some(ReleaseBinaries {
            version: "1.2.0".into(),
            binaries: BTreeMap::from([(
                "linux-x86_64".into(),
                AgentBinary {
                    sha256: "ab".repeat(32),
                    size: 10,
                    signature: "s".into(),
                },
            )]),
        });
        let keys = ReleaseKeys::generate();
        let a = render("agent", 1, &body, &device("a"), &Labels::new(), &keys);
        let b = render("agent", 1, &body, &device("b"), &Labels::new(), &keys);
        let (a, b) = (a.agent.expect("a's"), b.agent.expect("b's"));
        assert_eq!(a.signing_key, keys.public_key());
        assert_eq!(a.binaries, body.agent.as_ref().expect("set").binaries);
        assert_ne!(a.download_token, b.download_token);
        assert_eq!(
            crate::releases::token::device_of(&keys, &a.download_token, "1.2.0"),
            Some(device("a"))
        );
        // A downgrade is refused by the agent unless the deployment allows it.
        assert!(!a.allow_downgrade);
        body.spec.allow_agent_downgrade = true;
        let allowed = render("agent", 1, &body, &device("a"), &Labels::new(), &keys);
        assert!(allowed.agent.expect("a's").allow_downgrade);
    }

    fn device(name: &str) -> DeviceId {
        DeviceId::new(name).expect("name")
    }

    #[test]
    fn a_chart_gets_the_templates_values_under_the_deployments_with_placeholders_filled() {
        let body = body(
            json!({"target": {"device": "pi-1"}, "hostname": "node-a", "charts": ["agent"],
                   "values": {"image": {"tag": "2.1"}, "extra": true}}),
            json!({"agent": {"chart": "edge-agent", "source": "https://charts.example/",
                    "values": {"image": {"repo": "r", "tag": "1.0"}, "uuid": "{{uuid}}",
                               "names": ["{{name}}", "x-{{name}}"], "node": "{{hostname}}",
                               "other": "{{cluster}}", "count": 3}}}),
        );
        let keys = ReleaseKeys::generate();
        let rendered = render("line-1", 4, &body, &device("pi-1"), &Labels::new(), &keys);
        assert_eq!(rendered.charts.len(), 1);
        let release = &rendered.charts[0];
        assert_eq!(release.release, "line-1-agent");
        assert_eq!(release.hostname.as_deref(), Some("node-a"));
        assert_eq!(
            Value::Object(release.values.clone()),
            json!({"image": {"repo": "r", "tag": "2.1"}, "extra": true, "uuid": "pi-1",
                   "names": ["line-1", "x-{{name}}"], "node": "node-a",
                   "other": "{{cluster}}", "count": 3})
        );
        assert!(rendered.version.starts_with("4-"), "{}", rendered.version);
    }

    #[test]
    fn a_floating_deployment_fills_an_empty_hostname_and_versions_differ_per_device() {
        let body = body(
            json!({"target": {"selector": "site=x"}, "charts": ["agent"]}),
            json!({"agent": {"chart": "c", "source": "oci://r/c", "values": {"node": "{{hostname}}", "id": "{{uuid}}"}}}),
        );
        let keys = ReleaseKeys::generate();
        let a = render("d", 1, &body, &device("a"), &Labels::new(), &keys);
        let b = render("d", 1, &body, &device("b"), &Labels::new(), &keys);
        assert_eq!(a.charts[0].values["node"], "");
        assert_eq!(a.charts[0].hostname, None);
        assert_ne!(a.version, b.version, "the device's id is in its values");
        assert_eq!(
            a,
            render("d", 1, &body, &device("a"), &Labels::new(), &keys),
            "deterministic"
        );
    }
}
