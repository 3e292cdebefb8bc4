//! Server-side printing: kubectl asks for `as=Table` and prints the columns
//! the server sends (`-o wide` adds those of priority 1), so `kubectl get
//! nodes -o wide` shows addresses only if the server renders them.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

fn column(name: &str, priority: u8) -> Value {
    json!({"name": name, "type": "string", "format": if name == "Name" { "name" } else { "" },
           "description": "", "priority": priority})
}

fn age(object: &Value, now: DateTime<Utc>) -> String {
    let created = object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    let Some(created) = created else {
        return "<unknown>".to_owned();
    };
    let seconds = (now - created.with_timezone(&Utc)).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn address(node: &Value, kind: &str) -> String {
    node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>")
        .to_owned()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("<none>").to_owned()
}

fn number(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

fn columns_and_cells(kind: &str, object: &Value, now: DateTime<Utc>) -> (Vec<Value>, Vec<Value>) {
    let name = json!(object["metadata"]["name"]);
    match kind {
        "Node" => {
            let info = &object["status"]["nodeInfo"];
            let roles: Vec<&str> = object["metadata"]["labels"]
                .as_object()
                .map(|labels| {
                    labels
                        .keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            (
                vec![
                    column("Name", 0),
                    column("Status", 0),
                    column("Roles", 0),
                    column("Age", 0),
                    column("Version", 0),
                    column("Internal-IP", 1),
                    column("External-IP", 1),
                    column("OS-Image", 1),
                    column("Kernel-Version", 1),
                    column("Container-Runtime", 1),
                ],
                vec![
                    name,
                    json!("Ready"),
                    json!(if roles.is_empty() {
                        "<none>".to_owned()
                    } else {
                        roles.join(",")
                    }),
                    json!(age(object, now)),
                    json!(text(&info["kubeletVersion"])),
                    json!(address(object, "InternalIP")),
                    json!(address(object, "ExternalIP")),
                    json!(text(&info["osImage"])),
                    json!(text(&info["kernelVersion"])),
                    json!(text(&info["containerRuntimeVersion"])),
                ],
            )
        }
        "Deployment" => {
            let status = &object["status"];
            let containers = object["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let join = |field: &str| {
                containers
                    .iter()
                    .map(|c| text(&c[field]))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (
                vec![
                    column("Name", 0),
                    column("Ready", 0),
                    column("Up-to-date", 0),
                    column("Available", 0),
                    column("Age", 0),
                    column("Containers", 1),
                    column("Images", 1),
                ],
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        number(&status["readyReplicas"]),
                        number(&object["spec"]["replicas"])
                    )),
                    json!(number(&status["updatedReplicas"])),
                    json!(number(&status["availableReplicas"])),
                    json!(age(object, now)),
                    json!(join("name")),
                    json!(join("image")),
                ],
            )
        }
        _ => (
            vec![column("Name", 0), column("Age", 0)],
            vec![name, json!(age(object, now))],
        ),
    }
}

/// A `meta.k8s.io/v1` Table of `objects` of `kind`.
pub(crate) fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    now: DateTime<Utc>,
) -> Value {
    let columns = columns_and_cells(kind, &Value::Null, now).0;
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells = columns_and_cells(kind, object, now).1;
            json!({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": object["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
           "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": columns, "rows": rows})
}
