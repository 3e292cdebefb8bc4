//! The identity the default cluster actions act as (ADR 0017, amendment).
//!
//! `send-kubectl` and `send-kubernetes-api` are enabled on every device,
//! so in cluster mode they do not act with the agent's own rights, which
//! include what the opt-in actions need (a token of the `cluster-admin`
//! bound `tether-kubeconfig`, creating Deployments, the agent's identity
//! Secret). They act as the ServiceAccount `tether-operator` of the
//! agent's namespace, which the join manifest binds to the built-in
//! `view` ClusterRole; an operator who wants them to do more binds more
//! to that account. The agent requests the account's tokens (TokenRequest,
//! one hour) and keeps one until two thirds of its life are gone.
//!
//! In host mode the kubeconfig the operator gave the agent is the
//! identity: it was chosen for this agent, and a host may have no such
//! ServiceAccount.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::client::Body;
use super::token_cache::TokenCache;
use super::{Access, Auth, Client, KubeError, KubernetesConfig, Mode};

/// The ServiceAccount, in the agent's namespace.
pub const OPERATOR_ACCOUNT: &str = "tether-operator";
/// A requested token's life; the API server's minimum is 10 minutes.
const TOKEN_LIFE: Duration = Duration::from_secs(3600);

/// The current token, shared by the actions; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OperatorToken(TokenCache);

impl OperatorToken {
    /// How the default actions reach the cluster: as `tether-operator` in
    /// cluster mode, with the kubeconfig's credentials in host mode.
    pub async fn access(&self, config: &KubernetesConfig) -> Result<Access, KubeError> {
        let mut access = config.access()?;
        if config.mode == Mode::Host {
            return Ok(access);
        }
        let issue = async { request(Client::new(access.clone())?, &config.pod_namespace()).await };
        let token = self.0.get_or_issue(TOKEN_LIFE, issue).await?;
        access.auth = Auth::Token(token);
        Ok(access)
    }
}

/// A new token of `namespace/tether-operator`, requested with the agent's
/// own credentials.
async fn request(agent: Client, namespace: &str) -> Result<String, KubeError> {
    let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{OPERATOR_ACCOUNT}/token");
    let issued = agent
        .json(
            Method::POST,
            &path,
            Some(Body::Json(json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": TOKEN_LIFE.as_secs()}}))),
        )
        .await
        .map_err(|e| match e {
            // Said plainly: the fix is the manifest, not the request.
            KubeError::Api {
                status: status @ (403 | 404),
                message,
            } => KubeError::Api {
                status,
                message: format!(
                    "send-kubectl and send-kubernetes-api act as the ServiceAccount \
                     {namespace}/{OPERATOR_ACCOUNT}, and the agent cannot get its token \
                     ({message}): apply the manifest of `tether devices add --kubernetes` again"
                ),
            },
            other => other,
        })?;
    issued["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| KubeError::Api {
            status: 502,
            message: "the TokenRequest answer has no status.token".to_owned(),
        })
}
