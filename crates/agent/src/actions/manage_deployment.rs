//! `manage-deployment`: restart a Deployment as `kubectl rollout restart`
//! does (a pod-template annotation, so the controller rolls new pods) or
//! scale it (0 halts it); the event carries the resulting state.

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;
use crate::kubernetes::client::Body;
use crate::kubernetes::{Client, check_name};

/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    command: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Debug, Default, Deserialize)]
struct Parameters {
    deployment: Option<String>,
    namespace: Option<String>,
    replicas: Option<i64>,
}

#[derive(Debug, PartialEq)]
enum Command {
    Restart,
    Scale(i64),
}

#[derive(Debug, PartialEq)]
struct Request {
    namespace: String,
    deployment: String,
    command: Command,
}

fn parse(input: &Value) -> Result<Request, ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    let parameters = input.parameters;
    let deployment = parameters
        .deployment
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ActionError::invalid("$.parameters.deployment", "missing"))?;
    let command = match input.command.as_str() {
        "restart" => Command::Restart,
        "scale" => match parameters.replicas {
            Some(replicas) if replicas >= 0 => Command::Scale(replicas),
            Some(replicas) => {
                return Err(ActionError::invalid(
                    "$.parameters.replicas",
                    format!("{replicas} is negative; 0 halts the deployment"),
                ));
            }
            None => {
                return Err(ActionError::invalid(
                    "$.parameters.replicas",
                    "missing: scale needs a replica count (0 or more)",
                ));
            }
        },
        other => {
            return Err(ActionError::invalid(
                "$.command",
                format!("{other:?} is not restart or scale"),
            ));
        }
    };
    let namespace = parameters
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    check_name(&deployment).map_err(|e| ActionError::invalid("$.parameters.deployment", e))?;
    check_name(&namespace).map_err(|e| ActionError::invalid("$.parameters.namespace", e))?;
    Ok(Request {
        namespace,
        deployment,
        command,
    })
}

pub async fn run(input: &Value, client: &Client, now: DateTime<Utc>) -> Result<Value, ActionError> {
    let request = parse(input)?;
    let path = format!(
        "/apis/apps/v1/namespaces/{}/deployments/{}",
        request.namespace, request.deployment
    );
    match request.command {
        Command::Restart => {
            let at = now.to_rfc3339_opts(SecondsFormat::Secs, true);
            let patch =
                json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}});
            client
                .json(Method::PATCH, &path, Some(Body::StrategicMergePatch(patch)))
                .await?;
        }
        Command::Scale(replicas) => scale(client, &path, replicas).await?,
    }
    let deployment = client.json(Method::GET, &path, None).await?;
    Ok(summary(&deployment))
}

/// Sets the replica count of the Deployment at `path` through its scale
/// subresource, as `kubectl scale` does.
pub(super) async fn scale(client: &Client, path: &str, replicas: i64) -> Result<(), ActionError> {
    let patch = json!({"spec": {"replicas": replicas}});
    client
        .json(
            Method::PATCH,
            &format!("{path}/scale"),
            Some(Body::MergePatch(patch)),
        )
        .await?;
    Ok(())
}

/// The rollout's state, judged as `kubectl rollout status` judges it:
/// [`ROLLOUT_COMPLETE`] or what it waits for.
pub(super) fn rollout_status(deployment: &Value) -> &'static str {
    let number = |v: &Value| v.as_i64().unwrap_or(0);
    let status = &deployment["status"];
    let generation = number(&deployment["metadata"]["generation"]);
    let observed = number(&status["observedGeneration"]);
    let wanted = number(&deployment["spec"]["replicas"]);
    let updated = number(&status["updatedReplicas"]);
    let replicas = number(&status["replicas"]);
    let available = number(&status["availableReplicas"]);
    if observed < generation {
        "waiting for the deployment spec update to be observed"
    } else if updated < wanted {
        "progressing: updating replicas"
    } else if replicas > updated {
        "progressing: old replicas pending termination"
    } else if available < updated {
        "progressing: waiting for updated replicas to become available"
    } else {
        ROLLOUT_COMPLETE
    }
}

pub(super) const ROLLOUT_COMPLETE: &str = "complete";

/// Generation, replicas and the rollout's state ([`rollout_status`]).
pub(super) fn summary(deployment: &Value) -> Value {
    let metadata = &deployment["metadata"];
    let spec = &deployment["spec"];
    let status = &deployment["status"];
    let number = |v: &Value| v.as_i64().unwrap_or(0);
    json!({
        "deployment": metadata["name"],
        "namespace": metadata["namespace"],
        "generation": number(&metadata["generation"]),
        "observedGeneration": number(&status["observedGeneration"]),
        "replicas": number(&spec["replicas"]),
        "readyReplicas": number(&status["readyReplicas"]),
        "updatedReplicas": number(&status["updatedReplicas"]),
        "availableReplicas": number(&status["availableReplicas"]),
        "rolloutStatus": rollout_status(deployment),
        "restartedAt": spec["template"]["metadata"]["annotations"][RESTARTED_AT],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_need_a_deployment_and_scale_a_count_of_zero_or_more() {
        assert_eq!(
            parse(&json!({"command": "scale", "parameters": {"deployment": "web", "replicas": 0}}))
                .expect("valid"),
            Request {
                namespace: "default".into(),
                deployment: "web".into(),
                command: Command::Scale(0)
            }
        );
        for (bad, path) in [
            (
                json!({"command": "scale", "parameters": {"deployment": "web", "replicas": -1}}),
                "$.parameters.replicas",
            ),
            (
                json!({"command": "scale", "parameters": {"deployment": "web"}}),
                "$.parameters.replicas",
            ),
            (
                json!({"command": "restart", "parameters": {}}),
                "$.parameters.deployment",
            ),
            (
                json!({"command": "delete", "parameters": {"deployment": "web"}}),
                "$.command",
            ),
            (json!({"parameters": {"deployment": "web"}}), "$"),
            (
                json!({"command": "restart", "parameters": {"deployment": "../nodes"}}),
                "$.parameters.deployment",
            ),
            (
                json!({"command": "scale", "parameters": {"deployment": "web", "replicas": "two"}}),
                "$",
            ),
        ] {
            let err = parse(&bad).expect_err("refused");
            assert_eq!(err.status_code(), 400);
            assert!(err.to_string().starts_with(path), "{bad}: {err}");
        }
    }

    #[test]
    fn the_rollout_is_complete_only_when_every_replica_is_updated_and_available() {
        let deployment = |generation: i64, observed: i64, available: i64| {
            json!({"metadata": {"name": "web", "namespace": "a", "generation": generation},
                   "spec": {"replicas": 2},
                   "status": {"observedGeneration": observed, "replicas": 2, "updatedReplicas": 2,
                              "readyReplicas": available, "availableReplicas": available}})
        };
        assert_eq!(summary(&deployment(3, 3, 2))["rolloutStatus"], "complete");
        assert_eq!(
            summary(&deployment(3, 2, 2))["rolloutStatus"],
            "waiting for the deployment spec update to be observed"
        );
        assert_eq!(
            summary(&deployment(3, 3, 1))["rolloutStatus"],
            "progressing: waiting for updated replicas to become available"
        );
        assert_eq!(summary(&deployment(3, 3, 2))["generation"], 3);
    }
}
