//! Helm releases a deployment puts on a device's cluster (seed 002's
//! "Helm chart template" as one device receives it: values already
//! substituted by tetherd with [`substitute`]).

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
    /// reference (`oci://…`) the chart's name is appended to.
    pub source: String,
    /// The chart version or a semver range; the newest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The namespace the release goes into (created if missing);
    /// `default` when absent.
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

/// Longest chart name.
pub const MAX_CHART_BYTES: usize = 128;
/// Longest `source` URL.
pub const MAX_SOURCE_BYTES: usize = 2048;
/// Longest `version` (a version or a range such as `>=1.2 <2`).
pub const MAX_VERSION_BYTES: usize = 64;
/// Longest node name (an RFC 1123 subdomain, as Kubernetes names nodes).
pub const MAX_HOSTNAME_BYTES: usize = 253;
/// Largest `values`, as JSON: the whole spec has 64 KiB, and the values
/// travel on inside one Kubernetes object.
pub const MAX_VALUES_BYTES: usize = 32 * 1024;

/// The two kinds of chart repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A classic Helm repository (`https://…`, serving `index.yaml`).
    HelmRepository,
    /// An OCI registry (`oci://…`).
    Oci,
}

impl ChartRelease {
    /// Which kind of repository `source` is; `None` for neither (refused
    /// by [`validate`]).
    pub fn source_kind(&self) -> Option<SourceKind> {
        if self.source.starts_with("oci://") {
            Some(SourceKind::Oci)
        } else if self.source.starts_with("https://") {
            Some(SourceKind::HelmRepository)
        } else {
            None
        }
    }

    /// The chart as an OCI reference: `source/chart`.
    pub fn oci_reference(&self) -> String {
        format!("{}/{}", self.source.trim_end_matches('/'), self.chart)
    }
}

/// Checks a deployment's releases: names unique and valid, the chart's
/// name, where it comes from, its version and namespace, the node and the
/// size of the values.
pub fn validate(path: &str, releases: &[ChartRelease]) -> Result<(), SpecError> {
    for (i, release) in releases.iter().enumerate() {
        let at = |field: &str| format!("{path}[{i}].{field}");
        super::check_name(&at("release"), &release.release)?;
        if releases[..i].iter().any(|r| r.release == release.release) {
            return Err(SpecError::new(
                at("release"),
                format!(
                    "{:?} is named twice: each release of a deployment needs its own name",
                    release.release
                ),
            ));
        }
        check_chart(&at("chart"), &release.chart)?;
        check_source(&at("source"), &release.source)?;
        if let Some(version) = &release.version {
            check_version(&at("version"), version)?;
        }
        if let Some(namespace) = &release.namespace {
            super::check_name(&at("namespace"), namespace)?;
        }
        if let Some(hostname) = &release.hostname {
            check_hostname(&at("hostname"), hostname)?;
        }
        let size = serde_json::to_vec(&release.values).map_or(usize::MAX, |json| json.len());
        if size > MAX_VALUES_BYTES {
            return Err(SpecError::new(
                at("values"),
                format!("is {size} bytes of JSON, more than the {MAX_VALUES_BYTES} allowed"),
            ));
        }
    }
    Ok(())
}

/// A chart's name: a directory name in its repository (letters, digits,
/// `-`, `_`, `.`), never a path.
fn check_chart(path: &str, chart: &str) -> Result<(), SpecError> {
    let valid = !chart.is_empty()
        && chart.len() <= MAX_CHART_BYTES
        && chart.starts_with(|c: char| c.is_ascii_alphanumeric())
        && chart
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        return Ok(());
    }
    Err(SpecError::new(
        path,
        format!(
            "{chart:?} is not a chart name: use 1 to {MAX_CHART_BYTES} letters, digits, '-', '_' and '.', starting with a letter or digit"
        ),
    ))
}

/// `https://HOST[:PORT][/PATH]` or `oci://HOST[:PORT]/PATH`: no
/// credentials (they would be stored and shown with the spec), no
/// whitespace, no query or fragment.
fn check_source(path: &str, source: &str) -> Result<(), SpecError> {
    let refuse = |why: &str| Err(SpecError::new(path, format!("{source:?} {why}")));
    let (rest, oci) = if let Some(rest) = source.strip_prefix("https://") {
        (rest, false)
    } else if let Some(rest) = source.strip_prefix("oci://") {
        (rest, true)
    } else {
        return refuse("is not a Helm repository URL (https://…) or an OCI reference (oci://…)");
    };
    if source.len() > MAX_SOURCE_BYTES {
        return refuse(&format!("is longer than {MAX_SOURCE_BYTES} bytes"));
    }
    if source
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
    {
        return refuse("has whitespace, '?', '#' or '\\': give the repository's plain URL");
    }
    let (authority, repository) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return refuse(
            "carries credentials: give the repository without them (the spec is no place for secrets)",
        );
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
        .map_or(authority, |(host, _)| host);
    if host.is_empty() {
        return refuse("names no host");
    }
    if oci && repository.trim_matches('/').is_empty() {
        return refuse("names no repository: oci://REGISTRY/PATH, the chart's name goes after it");
    }
    if repository.split('/').any(|segment| segment == "..") {
        return refuse("has a '..' segment");
    }
    Ok(())
}

/// A version or a range (`1.2.3`, `~1.2`, `>=1.0.0 <2.0.0`, `1.x`).
fn check_version(path: &str, version: &str) -> Result<(), SpecError> {
    let valid = !version.trim().is_empty()
        && version.len() <= MAX_VERSION_BYTES
        && version.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'-'
                        | b'+'
                        | b'~'
                        | b'^'
                        | b'*'
                        | b'<'
                        | b'>'
                        | b'='
                        | b'|'
                        | b','
                        | b' '
                )
        });
    if valid {
        return Ok(());
    }
    Err(SpecError::new(
        path,
        format!(
            "{version:?} is not a chart version or range: up to {MAX_VERSION_BYTES} characters of letters, digits and . - + ~ ^ * < > = | , and spaces"
        ),
    ))
}

/// A node's name: an RFC 1123 subdomain.
fn check_hostname(path: &str, hostname: &str) -> Result<(), SpecError> {
    let valid = !hostname.is_empty()
        && hostname.len() <= MAX_HOSTNAME_BYTES
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= super::MAX_NAME_BYTES
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if valid {
        return Ok(());
    }
    Err(SpecError::new(
        path,
        format!(
            "{hostname:?} is not a node name: lowercase letters, digits, '-' and '.', as Kubernetes names nodes"
        ),
    ))
}

/// What a chart template's placeholders stand for (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placeholders<'a> {
    /// `{{uuid}}`: the id of the object the template is deployed for — the
    /// device (for a deployment) or the cluster.
    pub uuid: &'a str,
    /// `{{name}}`: the deployment's (or cluster's) name.
    pub name: &'a str,
    /// `{{hostname}}`: the node a pinned deployment runs on, `Some("")` for
    /// a floating deployment, and `None` where there is no host at all (a
    /// cluster-level template): then `"{{hostname}}"` stays as it is,
    /// like any placeholder that has no value.
    pub hostname: Option<&'a str>,
}

impl Placeholders<'_> {
    /// The value of a whole-string placeholder, if it is one this knows.
    fn value_of(&self, text: &str) -> Option<&str> {
        match text {
            "{{uuid}}" => Some(self.uuid),
            "{{name}}" => Some(self.name),
            "{{hostname}}" => self.hostname,
            _ => None,
        }
    }
}

/// A chart template's values with its placeholders filled in: every string
/// that is exactly `"{{uuid}}"`, `"{{name}}"` or `"{{hostname}}"`, at any
/// depth of objects and arrays, becomes the value. Everything else stays
/// as it is: keys, numbers, booleans, nulls, strings that only contain a
/// placeholder (`"x-{{name}}"`), and placeholders with no value (unknown
/// ones, and `{{hostname}}` without a host).
pub fn substitute(values: &Map<String, Value>, with: &Placeholders<'_>) -> Map<String, Value> {
    values
        .iter()
        .map(|(key, value)| (key.clone(), substitute_value(value, with)))
        .collect()
}

fn substitute_value(value: &Value, with: &Placeholders<'_>) -> Value {
    match value {
        Value::String(text) => match with.value_of(text) {
            Some(replacement) => Value::String(replacement.to_owned()),
            None => value.clone(),
        },
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute_value(v, with)).collect())
        }
        Value::Object(fields) => Value::Object(substitute(fields, with)),
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEVICE: &str = "0d9e3c1e-5f7a-4b8e-9d4c-2a1b3c4d5e6f";

    fn pinned() -> Placeholders<'static> {
        Placeholders {
            uuid: DEVICE,
            name: "line-3",
            hostname: Some("node-a"),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn whole_string_placeholders_are_replaced_at_any_depth() {
        let values = object(json!({
            "uuid": "{{uuid}}",
            "agent": {"nodeId": "{{name}}", "host": {"name": "{{hostname}}"}},
            "list": ["{{name}}", {"deep": ["{{uuid}}"]}],
        }));
        assert_eq!(
            Value::Object(substitute(&values, &pinned())),
            json!({
                "uuid": DEVICE,
                "agent": {"nodeId": "line-3", "host": {"name": "node-a"}},
                "list": ["line-3", {"deep": [DEVICE]}],
            })
        );
    }

    #[test]
    fn other_values_partial_strings_and_keys_are_untouched() {
        let values = object(json!({
            "count": 3, "on": true, "off": null, "ratio": 0.5,
            "prefixed": "x-{{name}}", "spaced": " {{name}}", "upper": "{{NAME}}",
            "{{name}}": "key stays", "nested": {"{{uuid}}": [1, false, "a{{uuid}}"]},
        }));
        assert_eq!(substitute(&values, &pinned()), values);
    }

    #[test]
    fn a_floating_deployment_has_an_empty_hostname() {
        let floating = Placeholders {
            hostname: Some(""),
            ..pinned()
        };
        let values = object(json!({"nodeSelector": {"host": "{{hostname}}"}}));
        assert_eq!(
            Value::Object(substitute(&values, &floating)),
            json!({"nodeSelector": {"host": ""}})
        );
    }

    #[test]
    fn unknown_placeholders_and_a_missing_hostname_stay_as_they_are() {
        let cluster = Placeholders {
            hostname: None,
            ..pinned()
        };
        let values = object(json!({
            "host": "{{hostname}}", "other": "{{cluster}}", "empty": "{{}}", "name": "{{name}}",
        }));
        assert_eq!(
            Value::Object(substitute(&values, &cluster)),
            json!({"host": "{{hostname}}", "other": "{{cluster}}", "empty": "{{}}", "name": "line-3"})
        );
    }

    fn release() -> ChartRelease {
        ChartRelease {
            release: "web".into(),
            chart: "edge-agent".into(),
            source: "https://charts.example.com/stable".into(),
            version: Some("1.2.3".into()),
            namespace: Some("apps".into()),
            hostname: Some("node-a.lan".into()),
            values: object(json!({"a": 1})),
        }
    }

    /// The error of one release changed by `change`, as `spec.d.charts[0].FIELD`.
    fn refused(change: impl FnOnce(&mut ChartRelease)) -> SpecError {
        let mut bad = release();
        change(&mut bad);
        validate("spec.deployments.d.charts", &[bad]).expect_err("refused")
    }

    #[test]
    fn a_release_with_every_field_right_passes() {
        assert_eq!(validate("p", &[release()]), Ok(()));
        let oci = ChartRelease {
            source: "oci://registry.example.com:5000/charts".into(),
            version: Some(">=1.0.0 <2.0.0".into()),
            namespace: None,
            hostname: None,
            ..release()
        };
        assert_eq!(validate("p", std::slice::from_ref(&oci)), Ok(()));
        assert_eq!(oci.source_kind(), Some(SourceKind::Oci));
        assert_eq!(
            oci.oci_reference(),
            "oci://registry.example.com:5000/charts/edge-agent"
        );
        assert_eq!(release().source_kind(), Some(SourceKind::HelmRepository));
    }

    #[test]
    fn sources_other_than_https_and_oci_are_refused_by_field_path() {
        for (source, says) in [
            (
                "http://charts.example.com",
                "is not a Helm repository URL (https://…) or an OCI reference (oci://…)",
            ),
            (
                "git@github.com:x/charts.git",
                "is not a Helm repository URL",
            ),
            ("file:///srv/charts", "is not a Helm repository URL"),
            ("charts.example.com", "is not a Helm repository URL"),
            ("https://", "names no host"),
            ("https://user:pw@charts.example.com", "carries credentials"),
            (
                "https://charts.example.com/?x=1",
                "has whitespace, '?', '#'",
            ),
            ("https://charts.example.com/a b", "has whitespace"),
            ("oci://registry.example.com", "names no repository"),
            ("oci://registry.example.com/", "names no repository"),
            ("https://h/a/../b", "'..'"),
        ] {
            let err = refused(|r| r.source = source.into());
            assert_eq!(err.path, "spec.deployments.d.charts[0].source", "{source}");
            assert!(err.message.contains(says), "{source}: {err}");
        }
        let err = refused(|r| r.source = format!("https://h/{}", "a".repeat(MAX_SOURCE_BYTES)));
        assert!(err.message.contains("longer than"), "{err}");
    }

    type Change = Box<dyn FnOnce(&mut ChartRelease)>;

    #[test]
    fn each_other_field_is_checked_and_named() {
        let cases: [(&str, Change); 9] = [
            ("release", Box::new(|r| r.release = "Web".into())),
            ("chart", Box::new(|r| r.chart = "../etc".into())),
            ("chart", Box::new(|r| r.chart = String::new())),
            ("chart", Box::new(|r| r.chart = "a/b".into())),
            ("version", Box::new(|r| r.version = Some(String::new()))),
            (
                "version",
                Box::new(|r| r.version = Some("1.0; rm -rf /".into())),
            ),
            (
                "namespace",
                Box::new(|r| r.namespace = Some("Kube_System".into())),
            ),
            ("hostname", Box::new(|r| r.hostname = Some("node a".into()))),
            ("hostname", Box::new(|r| r.hostname = Some("-node".into()))),
        ];
        for (field, change) in cases {
            let err = refused(change);
            assert_eq!(
                err.path,
                format!("spec.deployments.d.charts[0].{field}"),
                "{err}"
            );
        }
        let err = refused(|r| {
            r.values = object(json!({"blob": "x".repeat(MAX_VALUES_BYTES)}));
        });
        assert_eq!(err.path, "spec.deployments.d.charts[0].values");
        assert!(err.message.contains("more than"), "{err}");
    }

    #[test]
    fn a_release_name_is_used_once_per_deployment() {
        let err = validate("p", &[release(), release()]).expect_err("twice");
        assert_eq!(err.path, "p[1].release");
        assert!(err.message.contains("named twice"), "{err}");
    }

    #[test]
    fn the_section_refuses_a_bad_chart_by_its_path() {
        let err = super::super::validate(
            "spec.deployments",
            &json!({"web": {"version": "1", "charts": [
                {"release": "web", "chart": "web", "source": "ftp://x"}]}}),
        )
        .expect_err("refused");
        assert_eq!(err.path, "spec.deployments.web.charts[0].source");
    }
}
