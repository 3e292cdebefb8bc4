//! Sealed secrets in cluster mode (ADR 0030's amendment): a real tetherd
//! seals them, a real agent running as the join manifest's pod (exactly its
//! rights) keeps each as the Secret `tether-secret-NAME` on testkit's fake
//! API server.

use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use tether_testkit::fake_kube::FakeKubeApi;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::{agent_role_binding, join_manifest_pod};

const WAIT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "tether-system";
const VALUE: &str = "correct-horse-battery-staple-5e1c";

fn encoded(value: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

struct Pod {
    api: FakeKubeApi,
    _tetherd: Tetherd,
    admin: ApiClient,
    agent: Agent,
    account: tempfile::TempDir,
}

impl Pod {
    /// The sealing key the device reports.
    async fn sealing_key(&self) -> anyhow::Result<String> {
        let device = format!("/api/v1/devices/{}", self.agent.name);
        wait_until("the device's sealing key", WAIT, || async {
            let device = self.admin.get(&device).await?.expect_status(200)?;
            Ok(device["status"]["sealingKey"].as_str().map(str::to_owned))
        })
        .await
    }

    async fn set(&self, name: &str, value: &str) -> anyhow::Result<Value> {
        self.admin
            .put_json(
                &format!("/api/v1/secrets/{name}"),
                json!({"target": {"device": self.agent.name}, "value": value}),
            )
            .await?
            .expect_status(200)
    }

    /// Waits until the Secret of `name` is as `wanted` says.
    async fn secret(
        &self,
        what: &str,
        name: &str,
        wanted: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<Option<Value>> {
        wait_until(what, WAIT, || {
            let secret = self
                .api
                .get("secrets", Some(NAMESPACE), &format!("tether-secret-{name}"));
            let done = wanted(secret.as_ref());
            async move { Ok(done.then_some(secret)) }
        })
        .await
        .with_context(|| self.agent.log())
    }

    /// Waits until the Secret of `name` holds `value`.
    async fn holds(&self, what: &str, name: &str, value: &str) -> anyhow::Result<Value> {
        self.secret(what, name, |s| {
            s.is_some_and(|s| s["data"]["value"] == encoded(value))
        })
        .await?
        .context("the Secret")
    }

    /// Waits until the device reports (or stops reporting, `None`) an error
    /// at `path` containing `text`.
    async fn reported(&self, path: &str, text: Option<&str>) -> anyhow::Result<Value> {
        let device = format!("/api/v1/devices/{}", self.agent.name);
        wait_until("the reported errors", WAIT, || async {
            let device = self.admin.get(&device).await?.expect_status(200)?;
            let error = device["status"]["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["path"] == path)
                .cloned();
            let done = match (text, &error) {
                (Some(text), Some(error)) => {
                    error["message"].as_str().is_some_and(|m| m.contains(text))
                }
                (None, None) => true,
                _ => false,
            };
            Ok(done.then_some(error.unwrap_or_default()))
        })
        .await
        .with_context(|| self.agent.log())
    }
}

/// The fake API server, tetherd, and an agent in cluster mode as the join
/// manifest's pod, resyncing its secrets every second.
async fn pod(name: &str) -> anyhow::Result<Pod> {
    let api = FakeKubeApi::start().await?;
    let account = join_manifest_pod(&api).await?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let account_dir = account.path().to_string_lossy().into_owned();
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        name,
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
            ("TETHER_AGENT_SECRET_RESYNC_SECONDS", "1"),
        ],
    )
    .await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    let pod = Pod {
        api,
        _tetherd: tetherd,
        admin,
        agent,
        account,
    };
    pod.sealing_key().await?;
    Ok(pod)
}

#[tokio::test]
async fn in_cluster_mode_each_secret_is_a_kubernetes_secret_kept_as_the_spec_says()
-> anyhow::Result<()> {
    let p = pod("pod-secrets").await?;
    // Secrets that are not the agent's: one of the namespace's, and one
    // with the name a secret would use but without the labels.
    let unrelated = p.api.seed(
        "secrets",
        json!({"metadata": {"name": "registry", "namespace": NAMESPACE,
                            "labels": {"app.kubernetes.io/managed-by": "tether"}},
               "data": {"token": encoded("keep me")}}),
    )?;
    let taken = p.api.seed(
        "secrets",
        json!({"metadata": {"name": "tether-secret-taken", "namespace": NAMESPACE},
               "data": {"value": encoded("theirs")}}),
    )?;

    // Set: the Secret appears with the value, labelled, and no file is written.
    p.set("db-password", VALUE).await?;
    let secret = p.holds("the Secret", "db-password", VALUE).await?;
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tether", "tether.dev/secret": "db-password"})
    );
    assert_eq!(
        secret["metadata"]["annotations"]["tether.dev/secret-version"],
        "1"
    );
    assert_eq!(
        secret["data"].as_object().map(|d| d.len()),
        Some(1),
        "{secret}"
    );
    ensure!(
        !p.agent.state_dir().join("secrets").exists(),
        "cluster mode writes no secret files"
    );

    // Changed: updated.
    p.set("db-password", &format!("{VALUE}-2")).await?;
    let updated = p
        .holds("the Secret updated", "db-password", &format!("{VALUE}-2"))
        .await?;
    assert_eq!(
        updated["metadata"]["annotations"]["tether.dev/secret-version"],
        "2"
    );

    // Edited by hand: restored; deleted by hand: back.
    let mut edited = updated.clone();
    edited["data"]["value"] = json!(encoded("tampered"));
    p.api.replace("secrets", edited)?;
    p.holds("the edit undone", "db-password", &format!("{VALUE}-2"))
        .await?;
    p.api
        .delete("secrets", Some(NAMESPACE), "tether-secret-db-password")?;
    p.holds("the Secret back", "db-password", &format!("{VALUE}-2"))
        .await?;

    // Another's Secret under the name a secret would use is not taken over.
    p.set("taken", "ours").await?;
    p.reported("spec.secrets.taken", Some("is not tether's"))
        .await?;
    let still = p
        .api
        .get("secrets", Some(NAMESPACE), "tether-secret-taken")
        .context("theirs")?;
    assert_eq!(still, taken);
    p.admin
        .delete("/api/v1/secrets/taken")
        .await?
        .expect_status(204)?;
    p.reported("spec.secrets.taken", None).await?;

    // Forbidden (the Role's binding gone): reported at the secret, with
    // the API's answer, and retried until the rights are back.
    p.api
        .delete("rolebindings", Some(NAMESPACE), "tether-agent")?;
    p.set("db-password", &format!("{VALUE}-3")).await?;
    let error = p.reported("spec.secrets.db-password", Some("403")).await?;
    ensure!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot list the Secrets in tether-system")
                && m.contains("forbidden")),
        "{error}"
    );
    p.holds("the old value kept", "db-password", &format!("{VALUE}-2"))
        .await?;
    p.api.seed("rolebindings", agent_role_binding())?;
    p.holds("the update retried", "db-password", &format!("{VALUE}-3"))
        .await?;
    p.reported("spec.secrets.db-password", None).await?;

    // Unreachable: the same, until the API server is back.
    let down = p.account.path().join("down");
    p.api.down_while_exists(&down);
    std::fs::write(&down, "")?;
    p.set("db-password", &format!("{VALUE}-4")).await?;
    p.reported("spec.secrets.db-password", Some("503")).await?;
    std::fs::remove_file(&down)?;
    p.holds(
        "written once reachable",
        "db-password",
        &format!("{VALUE}-4"),
    )
    .await?;

    // Deleted: the Secret goes; the others stay as they were.
    p.admin
        .delete("/api/v1/secrets/db-password")
        .await?
        .expect_status(204)?;
    p.secret("the Secret deleted", "db-password", |s| s.is_none())
        .await?;
    assert_eq!(
        p.api.get("secrets", Some(NAMESPACE), "registry"),
        Some(unrelated)
    );
    assert_eq!(
        p.api.get("secrets", Some(NAMESPACE), "tether-secret-taken"),
        Some(taken)
    );

    // The value is in no log line.
    let log = p.agent.log();
    for value in [VALUE.to_owned(), encoded(VALUE)] {
        ensure!(!log.contains(&value), "the log shows the value");
    }
    Ok(())
}

#[tokio::test]
async fn a_new_pod_keeps_its_key_and_the_secrets_it_wrote() -> anyhow::Result<()> {
    let mut p = pod("pod-restarted").await?;
    p.set("api-token", VALUE).await?;
    let before = p.holds("the Secret", "api-token", VALUE).await?;
    let key = p.sealing_key().await?;
    p.agent.stop().await?;
    p.agent.wait_presence(&p.admin, "offline").await?;

    // A new pod: an empty state directory, its identity and sealing key
    // from their Secret, so what tetherd sealed still opens.
    p.agent.start_with_empty_state()?;
    p.agent.wait_presence(&p.admin, "online").await?;
    ensure!(p.sealing_key().await? == key, "the pod made a new key");
    p.set("api-token", &format!("{VALUE}-2")).await?;
    let after = p
        .holds("the Secret updated", "api-token", &format!("{VALUE}-2"))
        .await?;
    // Kept, not deleted while the new pod had no spec and made again.
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    let deletes: Vec<String> = p
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.contains("/secrets/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(deletes, Vec::<String>::new());
    Ok(())
}
