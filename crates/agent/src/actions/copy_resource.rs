//! `copy-resource`: a Secret, ConfigMap, Deployment or Service copied to
//! another namespace and/or name, without what the API server set on the
//! original (so the copy is a new object, not a clash with the source).

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;
use crate::kubernetes::client::Body;
use crate::kubernetes::{Client, check_name};

/// The types that can be copied, and the API path prefix of each.
const TYPES: [(&str, &str); 4] = [
    ("secrets", "/api/v1"),
    ("configmaps", "/api/v1"),
    ("deployments", "/apis/apps/v1"),
    ("services", "/api/v1"),
];

/// Metadata the API server sets; a create carrying them is refused or
/// would tie the copy to the original.
const SERVER_SET_METADATA: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "ownerReferences",
    "generation",
    "selfLink",
];

#[derive(Debug, Deserialize)]
struct Input {
    command: String,
    parameters: Parameters,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(rename = "type")]
    kind: String,
    from: Place,
    #[serde(default)]
    to: Place,
}

#[derive(Debug, Default, Deserialize)]
struct Place {
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Debug, PartialEq)]
struct Copy {
    kind: &'static str,
    prefix: &'static str,
    from: (String, String),
    to: (String, String),
}

fn parse(input: &Value) -> Result<Copy, ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    if input.command != "copy" {
        return Err(ActionError::invalid(
            "$.command",
            format!("{:?} is not copy", input.command),
        ));
    }
    let p = input.parameters;
    let (kind, prefix) = TYPES
        .iter()
        .find(|(kind, _)| *kind == p.kind)
        .copied()
        .ok_or_else(|| {
            ActionError::invalid(
                "$.parameters.type",
                format!(
                    "{:?} cannot be copied: only secrets, configmaps, deployments and services",
                    p.kind
                ),
            )
        })?;
    let field = |value: Option<String>, path: &str| {
        let value = value.ok_or_else(|| ActionError::invalid(path, "missing"))?;
        check_name(&value).map_err(|e| ActionError::invalid(path, e))?;
        Ok::<_, ActionError>(value)
    };
    let from_namespace = field(p.from.namespace, "$.parameters.from.namespace")?;
    let from_name = field(p.from.name, "$.parameters.from.name")?;
    let to_namespace = field(
        p.to.namespace.or_else(|| Some(from_namespace.clone())),
        "$.parameters.to.namespace",
    )?;
    let to_name = field(
        p.to.name.or_else(|| Some(from_name.clone())),
        "$.parameters.to.name",
    )?;
    // tether's own namespace holds the device's key and sealing key (the
    // identity Secret): an operator copying them out would get the
    // device's identity and every secret sealed to it.
    for (namespace, path) in [
        (&from_namespace, "$.parameters.from.namespace"),
        (&to_namespace, "$.parameters.to.namespace"),
    ] {
        if namespace == crate::kubernetes::admin::NAMESPACE {
            return Err(ActionError::invalid(
                path,
                format!(
                    "{namespace} is tether's own namespace (it holds the device's keys): copy from and to other namespaces"
                ),
            ));
        }
    }
    Ok(Copy {
        kind,
        prefix,
        from: (from_namespace, from_name),
        to: (to_namespace, to_name),
    })
}

/// `object` as a new object named `namespace/name`: server-set metadata,
/// status and a Service's allocated cluster IPs left out.
fn as_new(mut object: Value, namespace: &str, name: &str) -> Value {
    if let Some(metadata) = object["metadata"].as_object_mut() {
        for field in SERVER_SET_METADATA {
            metadata.remove(field);
        }
        metadata.insert("namespace".into(), json!(namespace));
        metadata.insert("name".into(), json!(name));
    }
    if let Some(fields) = object.as_object_mut() {
        fields.remove("status");
    }
    if object["kind"] == "Service"
        && let Some(spec) = object["spec"].as_object_mut()
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    object
}

pub async fn run(input: &Value, client: &Client) -> Result<Value, ActionError> {
    let copy = parse(input)?;
    let (from_ns, from_name) = &copy.from;
    let (to_ns, to_name) = &copy.to;
    let source = client
        .json(
            Method::GET,
            &format!(
                "{}/namespaces/{from_ns}/{}/{from_name}",
                copy.prefix, copy.kind
            ),
            None,
        )
        .await?;
    let created = client
        .json(
            Method::POST,
            &format!("{}/namespaces/{to_ns}/{}", copy.prefix, copy.kind),
            Some(Body::Json(as_new(source, to_ns, to_name))),
        )
        .await?;
    // Only names: the copy of a Secret holds its data, which must not end
    // up in the action's stored record.
    tracing::info!(kind = copy.kind, from = %format!("{from_ns}/{from_name}"), to = %format!("{to_ns}/{to_name}"), "copied");
    Ok(Value::String(format!(
        "{} {from_ns}/{from_name} copied to {to_ns}/{to_name} (resourceVersion {})",
        copy.kind,
        created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("?")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_four_types_copy_and_the_target_defaults_to_the_source() {
        let copy = parse(&json!({"command": "copy", "parameters": {
            "type": "deployments", "from": {"namespace": "a", "name": "web"}, "to": {"namespace": "b"}}}))
        .expect("valid");
        assert_eq!(copy.prefix, "/apis/apps/v1");
        assert_eq!(copy.to, ("b".to_owned(), "web".to_owned()));
        for (bad, path) in [
            (
                json!({"command": "copy", "parameters": {"type": "pods", "from": {"namespace": "a", "name": "x"}}}),
                "$.parameters.type",
            ),
            (
                json!({"command": "move", "parameters": {"type": "secrets", "from": {"namespace": "a", "name": "x"}}}),
                "$.command",
            ),
            (
                json!({"command": "copy", "parameters": {"type": "secrets", "from": {"namespace": "a"}}}),
                "$.parameters.from.name",
            ),
            (
                json!({"command": "copy", "parameters": {"type": "secrets", "from": {"namespace": "a", "name": "x"}, "to": {"name": "A/b"}}}),
                "$.parameters.to.name",
            ),
            (
                json!({"command": "copy", "parameters": {"type": "secrets", "from": {"namespace": "tether-system", "name": "tether-agent-identity"}, "to": {"namespace": "a"}}}),
                "$.parameters.from.namespace",
            ),
            (
                json!({"command": "copy", "parameters": {"type": "secrets", "from": {"namespace": "a", "name": "x"}, "to": {"namespace": "tether-system"}}}),
                "$.parameters.to.namespace",
            ),
            (json!({"command": "copy"}), "$"),
        ] {
            let err = parse(&bad).expect_err("refused");
            assert_eq!(err.status_code(), 400);
            assert!(err.to_string().starts_with(path), "{bad}: {err}");
        }
    }

    #[test]
    fn server_set_fields_status_and_cluster_ips_are_left_out() {
        let service = json!({"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "a", "uid": "u", "resourceVersion": "7",
                         "creationTimestamp": "t", "managedFields": [], "ownerReferences": [],
                         "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}});
        assert_eq!(
            as_new(service, "b", "web2"),
            json!({"kind": "Service", "apiVersion": "v1",
                   "metadata": {"name": "web2", "namespace": "b", "labels": {"app": "web"}},
                   "spec": {"ports": [{"port": 80}]}})
        );
    }
}
