//! What the agent's integration tests ask tetherd's API, and the agent's
//! pod as the join manifest makes it.

use anyhow::Context;
use serde_json::{Value, json};
use tether_testkit::ApiClient;
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};

pub async fn request(admin: &ApiClient, device: &str, body: Value) -> anyhow::Result<String> {
    let accepted = admin
        .post(&format!("/api/v1/devices/{device}/actions"), body)
        .await?
        .expect_status(202)?;
    Ok(accepted["correlationId"]
        .as_str()
        .context("correlationId")?
        .to_owned())
}

pub async fn outcome(admin: &ApiClient, id: &str) -> anyhow::Result<Value> {
    admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await?
        .expect_status(200)
}

pub async fn newest_sample(admin: &ApiClient, device: &str) -> anyhow::Result<Option<String>> {
    let metrics = admin
        .get(&format!("/api/v1/devices/{device}/metrics?limit=1"))
        .await?
        .expect_status(200)?;
    Ok(metrics["items"][0]["sampledAt"].as_str().map(str::to_owned))
}

/// The agent's pod as tetherd's join manifest makes it on `api`: the
/// namespace `tether-system`, the ServiceAccount `tether-agent` with
/// exactly the manifest's ClusterRole and Role, and a directory holding
/// that account's token, the CA and the namespace, as Kubernetes mounts
/// them (`TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR`).
pub async fn join_manifest_pod(api: &FakeKubeApi) -> anyhow::Result<tempfile::TempDir> {
    api.seed("namespaces", json!({"metadata": {"name": "tether-system"}}))?;
    api.seed(
        "serviceaccounts",
        json!({"metadata": {"name": "tether-agent", "namespace": "tether-system"}}),
    )?;
    api.seed(
        "clusterroles",
        json!({"metadata": {"name": "tether-agent"},
               "rules": tether_server::join::agent_cluster_rules()}),
    )?;
    api.seed(
        "clusterrolebindings",
        json!({"metadata": {"name": "tether-agent"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tether-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "tether-agent", "namespace": "tether-system"}]}),
    )?;
    api.seed(
        "roles",
        json!({"metadata": {"name": "tether-agent", "namespace": "tether-system"},
               "rules": tether_server::join::agent_namespace_rules()}),
    )?;
    api.seed("rolebindings", agent_role_binding())?;
    let token = service_account_token(api, "tether-system", "tether-agent").await?;
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), &token)?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    std::fs::write(account.path().join("namespace"), "tether-system")?;
    Ok(account)
}

/// The RoleBinding giving `tether-agent` the manifest's Role.
pub fn agent_role_binding() -> Value {
    json!({"metadata": {"name": "tether-agent", "namespace": "tether-system"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tether-agent"},
           "subjects": [{"kind": "ServiceAccount", "name": "tether-agent", "namespace": "tether-system"}]})
}

/// A token of the ServiceAccount, as the kubelet requests one for a pod.
pub async fn service_account_token(
    api: &FakeKubeApi,
    namespace: &str,
    account: &str,
) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(api.ca_pem.as_bytes())?)
        .build()?;
    let answer: Value = client
        .post(format!(
            "{}/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            api.url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"spec": {"expirationSeconds": 3600}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .context("a token")
}
