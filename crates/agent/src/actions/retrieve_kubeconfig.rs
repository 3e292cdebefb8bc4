//! `retrieve-kubeconfig`: a kubeconfig for a local client, authenticating
//! as the ServiceAccount `tether-system/tether-kubeconfig` with a token
//! that expires after 7 days (the seed: "regenerated every week").
//!
//! The token comes from the TokenRequest API, so it is bound to the
//! ServiceAccount's uid: `refresh: true` deletes and recreates the account,
//! and the API server then refuses every token issued before, which is how
//! the old kubeconfig is revoked. Without `refresh` a new token is issued
//! and earlier ones stay valid until they expire.
//!
//! The account is bound to the `cluster-admin` ClusterRole: the seed's
//! kubeconfig is for a full local client of the cluster.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;
use crate::kubernetes::client::Body;
use crate::kubernetes::kubeconfig::{Kubeconfig, User};
use crate::kubernetes::{Client, KubeError};

pub const NAMESPACE: &str = "tether-system";
pub const SERVICE_ACCOUNT: &str = "tether-kubeconfig";
/// The cluster-wide role the account is bound to.
pub const CLUSTER_ROLE: &str = "cluster-admin";
/// 7 days.
pub const TOKEN_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    refresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Yaml,
    Json,
}

fn parse(input: &Value) -> Result<(Format, bool), ActionError> {
    let input: Input = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$", e.to_string()))?;
    let format = match input.format.as_deref() {
        None | Some("yaml") => Format::Yaml,
        Some("json") => Format::Json,
        Some(other) => {
            return Err(ActionError::invalid(
                "$.format",
                format!("{other:?} is not yaml or json"),
            ));
        }
    };
    Ok((format, input.refresh))
}

/// Creates `object` at `collection` unless `path` exists already.
async fn ensure(
    client: &Client,
    path: &str,
    collection: &str,
    object: Value,
) -> Result<(), KubeError> {
    match client.json(Method::GET, path, None).await {
        Ok(_) => Ok(()),
        Err(KubeError::Api { status: 404, .. }) => {
            match client
                .json(Method::POST, collection, Some(Body::Json(object)))
                .await
            {
                // Created meanwhile by another client: what was wanted.
                Ok(_) | Err(KubeError::Api { status: 409, .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

pub async fn run(input: &Value, client: &Client) -> Result<Value, ActionError> {
    let (format, refresh) = parse(input)?;
    ensure(
        client,
        &format!("/api/v1/namespaces/{NAMESPACE}"),
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await?;
    let accounts = format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts");
    let account = format!("{accounts}/{SERVICE_ACCOUNT}");
    if refresh {
        match client.json(Method::DELETE, &account, None).await {
            Ok(_) | Err(KubeError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            "recreating ServiceAccount {NAMESPACE}/{SERVICE_ACCOUNT}: tokens issued before are revoked"
        );
    }
    ensure(
        client,
        &account,
        &accounts,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE,
                            "labels": {"app.kubernetes.io/managed-by": "tether"}}}),
    )
    .await?;
    ensure(
        client,
        &format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{SERVICE_ACCOUNT}"),
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": SERVICE_ACCOUNT, "labels": {"app.kubernetes.io/managed-by": "tether"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
               "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]}),
    )
    .await?;
    let issued = client
        .json(
            Method::POST,
            &format!("{account}/token"),
            Some(Body::Json(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": TOKEN_SECONDS}}))),
        )
        .await?;
    let token = issued["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| KubeError::Api {
            status: 502,
            message: "the TokenRequest answer has no status.token".to_owned(),
        })?;
    let access = client.access();
    let kubeconfig = Kubeconfig::single(
        &access.cluster_name,
        access.cluster(),
        User {
            token: Some(token.to_owned()),
            ..User::default()
        },
    );
    let (name, text) = match format {
        Format::Yaml => (
            "yaml",
            serde_yaml::to_string(&kubeconfig).unwrap_or_default(),
        ),
        Format::Json => (
            "json",
            serde_json::to_string_pretty(&kubeconfig).unwrap_or_default(),
        ),
    };
    Ok(json!({
        "format": name,
        "kubeconfig": text,
        "expiresAt": issued["status"]["expirationTimestamp"],
        "serviceAccount": format!("{NAMESPACE}/{SERVICE_ACCOUNT}"),
        "refreshed": refresh,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_yaml_unless_json_is_asked_for() {
        assert_eq!(parse(&json!({})).expect("valid"), (Format::Yaml, false));
        assert_eq!(
            parse(&json!({"format": "json", "refresh": true})).expect("valid"),
            (Format::Json, true)
        );
        let err = parse(&json!({"format": "toml"})).expect_err("refused");
        assert!(err.to_string().starts_with("$.format"), "{err}");
        let err = parse(&json!({"refresh": "yes"})).expect_err("refused");
        assert_eq!(err.status_code(), 400);
    }
}
