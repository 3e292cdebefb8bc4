//! The ServiceAccount `tether-system/tether-kubeconfig`, bound to
//! `cluster-admin`: the identity `retrieve-kubeconfig` hands out (ADR 0016)
//! and the one `kube` tunnels act as (ADR 0022). Both are opt-in through
//! `retrieve-kubeconfig` in the device's action set.
//!
//! Its tokens come from the TokenRequest API, so they are bound to the
//! account's uid: recreating the account (`refresh`) revokes every token
//! issued before.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::client::Body;
use super::token_cache::TokenCache;
use super::{Access, Auth, Client, KubeError, KubernetesConfig};

pub const NAMESPACE: &str = "tether-system";
pub const SERVICE_ACCOUNT: &str = "tether-kubeconfig";
/// The cluster-wide role the account is bound to.
pub const CLUSTER_ROLE: &str = "cluster-admin";
/// A tunnel's token's life; the API server's minimum is 10 minutes.
const TUNNEL_TOKEN_LIFE: Duration = Duration::from_secs(3600);

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

/// Makes sure the namespace, the account and its binding exist, with the
/// agent's own credentials (`client`); `recreate` deletes the account
/// first, revoking its tokens.
pub async fn ensure_account(client: &Client, recreate: bool) -> Result<(), KubeError> {
    ensure(
        client,
        &format!("/api/v1/namespaces/{NAMESPACE}"),
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await?;
    let accounts = format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts");
    let account = format!("{accounts}/{SERVICE_ACCOUNT}");
    if recreate {
        match client.json(Method::DELETE, &account, None).await {
            Ok(_) | Err(KubeError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e),
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
    .await
}

/// A token issued now: the token and the TokenRequest's
/// `expirationTimestamp`.
pub async fn issue_token(client: &Client, seconds: u64) -> Result<(String, Value), KubeError> {
    let issued = client
        .json(
            Method::POST,
            &format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token"),
            Some(Body::Json(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds}}))),
        )
        .await?;
    let token = issued["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| KubeError::Api {
            status: 502,
            message: "the TokenRequest answer has no status.token".to_owned(),
        })?;
    Ok((
        token.to_owned(),
        issued["status"]["expirationTimestamp"].clone(),
    ))
}

/// The token `kube` tunnels present, shared by them; cheap to clone. One
/// is requested on first use and kept until two thirds of its life are
/// gone, so a burst of kubectl requests costs one TokenRequest.
#[derive(Debug, Clone, Default)]
pub struct AdminToken(TokenCache);

impl AdminToken {
    /// The cluster's API server, with the account's token.
    pub async fn access(&self, config: &KubernetesConfig) -> Result<Access, KubeError> {
        let mut access = config.access()?;
        let issue = async {
            let agent = Client::new(access.clone())?;
            // Where retrieve-kubeconfig never ran, the account is not
            // there yet.
            let issued = match issue_token(&agent, TUNNEL_TOKEN_LIFE.as_secs()).await {
                Err(KubeError::Api { status: 404, .. }) => {
                    ensure_account(&agent, false).await?;
                    issue_token(&agent, TUNNEL_TOKEN_LIFE.as_secs()).await?
                }
                other => other?,
            };
            Ok(issued.0)
        };
        let token = self.0.get_or_issue(TUNNEL_TOKEN_LIFE, issue).await?;
        access.auth = Auth::Token(token);
        Ok(access)
    }

    /// Forgets the token: the account was recreated, which revoked it.
    pub fn forget(&self) {
        self.0.forget();
    }
}
