//! The Kubernetes actions end to end: each sent through a real tetherd to
//! a real tether-agent managing the fake API server (testkit::fake_kube),
//! `send-kubectl` running the real `kubectl`; every request and answer is
//! checked against seed 000's schema (testkit::seed_schema); restore-command
//! against OpenSSH's own sshd (testkit::sshd).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};
use tether_testkit::seed_schema::{check_event, check_request};
use tether_testkit::sshd::{PASSWORD, PASSWORD_USER, Sshd};
use tether_testkit::{Agent, ApiClient, Database, Tetherd};

use crate::restore::{Writer, rows};
use crate::support::{outcome, request};

struct Cluster {
    api: FakeKubeApi,
    tetherd: Tetherd,
    admin: ApiClient,
    agent: Agent,
    dir: tempfile::TempDir,
}

/// tetherd, the fake API server with a node and a Deployment, and an agent
/// in host mode with an admin kubeconfig for it.
async fn cluster(name: &str) -> anyhow::Result<Cluster> {
    cluster_with(name, &[]).await
}

/// [`cluster`], with more environment for the agent.
async fn cluster_with(name: &str, env: &[(&str, &str)]) -> anyhow::Result<Cluster> {
    let api = FakeKubeApi::start().await?;
    api.add_node(
        "edge-1",
        &[
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "203.0.113.5"),
            ("Hostname", "edge-1"),
        ],
    )?;
    api.seed(
        "deployments",
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": 2,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut all_env = vec![
        ("TETHER_AGENT_KUBERNETES", "host"),
        ("TETHER_AGENT_KUBECONFIG", kubeconfig.as_str()),
        ("TETHER_AGENT_KUBERNETES_CLUSTER", "edge"),
        ("TETHER_AGENT_KUBECTL_TIMEOUT_SECONDS", "3"),
    ];
    all_env.extend_from_slice(env);
    let agent = Agent::enroll_with_env(&tetherd, &admin, name, &all_env).await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    enable_cluster_actions(&admin, name).await?;
    Ok(Cluster {
        api,
        tetherd,
        admin,
        agent,
        dir,
    })
}

/// The cluster actions a device does not accept by default (ADR 0017).
async fn enable_cluster_actions(admin: &ApiClient, device: &str) -> anyhow::Result<()> {
    for action in ["manage-deployment", "copy-resource", "retrieve-kubeconfig"] {
        admin
            .put(&format!("/api/v1/devices/{device}/action-set/{action}"))
            .await?
            .expect_status(200)?;
    }
    Ok(())
}

impl Cluster {
    /// Sends `action` with `input`, waits for its answer; both checked
    /// against the seed's schema.
    async fn act(&self, action: &str, input: Value) -> anyhow::Result<Value> {
        check_request(action, &input)?;
        let id = request(
            &self.admin,
            &self.agent.name,
            json!({"action": action, "input": input}),
        )
        .await?;
        let done = outcome(&self.admin, &id).await?;
        ensure!(
            done["statusCode"].is_u64(),
            "{action} got no answer: {done}\n{}",
            self.agent.log()
        );
        check_event(action, &done)?;
        Ok(done)
    }

    /// tetherd refuses `input` for `action` with a 400 naming `field`.
    async fn refused(&self, action: &str, input: Value, field: &str) -> anyhow::Result<()> {
        ensure!(
            check_request(action, &input).is_err(),
            "{action} {input} is valid"
        );
        let reply = self
            .admin
            .post(
                &format!("/api/v1/devices/{}/actions", self.agent.name),
                json!({"action": action, "input": input}),
            )
            .await?
            .expect_status(400)?;
        ensure!(
            reply.to_string().contains(field),
            "{action} {input}: {reply} does not name {field}"
        );
        Ok(())
    }
}

fn code(done: &Value) -> u64 {
    done["statusCode"].as_u64().unwrap_or_default()
}

#[tokio::test]
async fn send_kubernetes_api_answers_with_the_api_servers_status_and_body() -> anyhow::Result<()> {
    let c = cluster("k8s-api").await?;
    let done = c
        .act("send-kubernetes-api", json!({"href": "/api/v1/nodes"}))
        .await?;
    ensure!(code(&done) == 200, "{done}");
    let body: Value = serde_json::from_str(done["response"].as_str().context("a string")?)?;
    ensure!(body["items"][0]["metadata"]["name"] == "edge-1", "{body}");

    let done = c
        .act(
            "send-kubernetes-api",
            json!({"href": "/api/v1/namespaces/default/configmaps", "requestMethod": "POST",
                   "requestBody": "{\"metadata\":{\"name\":\"settings\"},\"data\":{\"a\":\"1\"}}"}),
        )
        .await?;
    ensure!(code(&done) == 201, "{done}");
    ensure!(
        c.api
            .get("configmaps", Some("default"), "settings")
            .is_some()
    );

    // The API's own error comes back as it is.
    let done = c
        .act(
            "send-kubernetes-api",
            json!({"href": format!("{}/api/v1/namespaces/nope", c.api.url)}),
        )
        .await?;
    ensure!(code(&done) == 404, "{done}");
    ensure!(
        done["response"]
            .as_str()
            .is_some_and(|r| r.contains("\"reason\":\"NotFound\"")),
        "{done}"
    );

    let done = c
        .act(
            "send-kubernetes-api",
            json!({"href": "https://example.com/api"}),
        )
        .await?;
    ensure!(code(&done) == 400, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("$.href")),
        "{done}"
    );
    c.refused(
        "send-kubernetes-api",
        json!({"requestMethod": "GET"}),
        "href",
    )
    .await?;
    c.refused(
        "send-kubernetes-api",
        json!({"href": "/api", "requestMethod": "BREW"}),
        "requestMethod",
    )
    .await?;
    c.refused("send-kubernetes-api", json!({"href": 7}), "href")
        .await?;
    Ok(())
}

#[tokio::test]
async fn send_kubectl_runs_the_real_kubectl_with_the_agents_credentials() -> anyhow::Result<()> {
    let c = cluster("k8s-kubectl").await?;
    let done = c
        .act(
            "send-kubectl",
            json!({"command": "kubectl", "arguments": ["get", "nodes", "-o", "name"]}),
        )
        .await?;
    ensure!(code(&done) == 200, "{done}\n{}", c.agent.log());
    ensure!(done["response"] == "node/edge-1\n", "{done}");
    let kubeconfig = c.agent.state_dir().join("kubectl/kubeconfig");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&kubeconfig)?.permissions().mode();
    ensure!(mode & 0o777 == 0o600, "kubectl's kubeconfig is {mode:o}");

    // Arguments are an argv: a shell's metacharacters are kubectl's problem.
    let done = c
        .act(
            "send-kubectl",
            json!({"command": "kubectl", "arguments": ["get", "deployment", "nope; id"]}),
        )
        .await?;
    ensure!(code(&done) == 500, "{done}");
    let message = done["statusMessage"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("kubectl exited 1: ") && message.contains("not found"),
        "{done}"
    );

    // More than 1 MiB of output: the first MiB, and the cut said.
    for name in ["big-1", "big-2"] {
        c.api.seed(
            "configmaps",
            json!({"metadata": {"name": name, "namespace": "default"}, "data": {"blob": "x".repeat(600 * 1024)}}),
        )?;
    }
    let done = c
        .act(
            "send-kubectl",
            json!({"command": "kubectl", "arguments": ["get", "configmaps", "-o", "json"]}),
        )
        .await?;
    ensure!(code(&done) == 200, "{}", done["statusMessage"]);
    ensure!(
        done["statusMessage"] == "OK (output cut to its first MiB)",
        "{}",
        done["statusMessage"]
    );
    // Counted as it goes on the wire, JSON-escaped (as send-api's body).
    let encoded = serde_json::to_string(&done["response"])?.len() - 2;
    ensure!(
        (1024 * 1024 - 8..=1024 * 1024).contains(&encoded),
        "{encoded}"
    );

    // A watch never ends: killed at the timeout (3 s here).
    let done = c
        .act(
            "send-kubectl",
            json!({"command": "kubectl", "arguments": ["get", "deployments", "--watch"]}),
        )
        .await?;
    ensure!(code(&done) == 504, "{done}");

    c.refused(
        "send-kubectl",
        json!({"command": "sh", "arguments": ["-c", "id"]}),
        "command",
    )
    .await?;
    c.refused("send-kubectl", json!({"command": "kubectl"}), "arguments")
        .await?;
    c.refused(
        "send-kubectl",
        json!({"command": "kubectl", "arguments": "get pods"}),
        "arguments",
    )
    .await?;
    c.refused(
        "send-kubectl",
        json!({"command": "kubectl", "arguments": ["get", 3]}),
        "arguments",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn manage_deployment_restarts_and_scales_and_names_what_is_wrong() -> anyhow::Result<()> {
    let c = cluster("k8s-deploy").await?;
    let done = c
        .act(
            "manage-deployment",
            json!({"command": "restart", "parameters": {"deployment": "web", "namespace": "default"}}),
        )
        .await?;
    ensure!(code(&done) == 200, "{done}");
    let response = &done["response"];
    ensure!(
        response["generation"] == 2 && response["rolloutStatus"] == "complete",
        "{done}"
    );
    let stored = c
        .api
        .get("deployments", Some("default"), "web")
        .context("web")?;
    let restarted =
        &stored["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
    ensure!(
        restarted.is_string() && *restarted == response["restartedAt"],
        "{stored}"
    );

    let done = c
        .act(
            "manage-deployment",
            json!({"command": "scale", "parameters": {"deployment": "web", "replicas": 0}}),
        )
        .await?;
    ensure!(code(&done) == 200, "{done}");
    ensure!(
        done["response"]["replicas"] == 0 && done["response"]["generation"] == 3,
        "{done}"
    );
    let stored = c
        .api
        .get("deployments", Some("default"), "web")
        .context("web")?;
    ensure!(stored["spec"]["replicas"] == 0, "{stored}");

    let done = c
        .act(
            "manage-deployment",
            json!({"command": "restart", "parameters": {"deployment": "nope"}}),
        )
        .await?;
    ensure!(code(&done) == 404, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("deployments.apps \"nope\" not found")),
        "{done}"
    );
    let done = c
        .act(
            "manage-deployment",
            json!({"command": "scale", "parameters": {"deployment": "web", "replicas": -1}}),
        )
        .await?;
    ensure!(code(&done) == 400, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("$.parameters.replicas: -1 is negative")),
        "{done}"
    );
    c.refused(
        "manage-deployment",
        json!({"command": "delete", "parameters": {"deployment": "web"}}),
        "command",
    )
    .await?;
    c.refused(
        "manage-deployment",
        json!({"command": "scale", "parameters": {"deployment": "web", "replicas": "two"}}),
        "replicas",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn copy_resource_copies_four_types_as_new_objects_and_never_over_one() -> anyhow::Result<()> {
    let c = cluster("k8s-copy").await?;
    c.api
        .seed("namespaces", json!({"metadata": {"name": "staging"}}))?;
    c.api.seed(
        "secrets",
        json!({"metadata": {"name": "db", "namespace": "default"}, "stringData": {"password": "s3cret"}}),
    )?;
    let original = c.api.seed(
        "services",
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )?;
    let copy = |kind: &str, name: &str| {
        json!({"command": "copy", "parameters": {"type": kind,
               "from": {"namespace": "default", "name": name},
               "to": {"namespace": "staging"}}})
    };
    for (kind, name) in [
        ("secrets", "db"),
        ("services", "web"),
        ("deployments", "web"),
    ] {
        let done = c.act("copy-resource", copy(kind, name)).await?;
        ensure!(code(&done) == 200, "{kind}: {done}");
        ensure!(
            done["response"].as_str().is_some_and(
                |r| r.starts_with(&format!("{kind} default/{name} copied to staging/{name}"))
            ),
            "{done}"
        );
        ensure!(!done.to_string().contains("s3cret"), "{done}");
    }
    let secret = c
        .api
        .get("secrets", Some("staging"), "db")
        .context("copied secret")?;
    ensure!(secret["data"]["password"] == "czNjcmV0", "{secret}");
    let service = c
        .api
        .get("services", Some("staging"), "web")
        .context("copied service")?;
    ensure!(
        service["metadata"]["uid"] != original["metadata"]["uid"]
            && service["spec"]["clusterIP"] != original["spec"]["clusterIP"],
        "the copy got its own uid and cluster IP: {service}"
    );

    let done = c.act("copy-resource", copy("secrets", "db")).await?;
    ensure!(code(&done) == 409, "{done}");
    ensure!(
        c.api.get("secrets", Some("staging"), "db") == Some(secret),
        "the existing target is untouched"
    );
    let done = c.act("copy-resource", copy("configmaps", "absent")).await?;
    ensure!(code(&done) == 404, "{done}");
    // The catalogue limits the type (ADR 0017): tetherd refuses it, nothing is sent.
    let reply = c
        .admin
        .post(
            &format!("/api/v1/devices/{}/actions", c.agent.name),
            json!({"action": "copy-resource", "input": copy("pods", "web")}),
        )
        .await?
        .expect_status(400)?;
    ensure!(reply.to_string().contains("$.parameters.type"), "{reply}");
    c.refused("copy-resource", json!({"command": "move"}), "command")
        .await?;
    c.refused(
        "copy-resource",
        json!({"command": "copy", "parameters": {"type": 1}}),
        "type",
    )
    .await?;
    Ok(())
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_extension("cache"))
        .args(args)
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(60), output).await??)
}

fn written(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

#[tokio::test]
async fn node_addresses_and_a_kubeconfig_that_kubectl_uses_until_it_is_refreshed()
-> anyhow::Result<()> {
    let c = cluster("k8s-nodes").await?;
    let done = c.act("get-node-ip", json!({})).await?;
    ensure!(code(&done) == 200, "{done}");
    ensure!(
        done["response"]
            == json!({"cluster": "edge", "nodes": [{"name": "edge-1", "addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "Hostname", "address": "edge-1"}]}]}),
        "{done}"
    );

    // The device reports which cluster it manages, and how.
    let device = c
        .admin
        .get(&format!("/api/v1/devices/{}", c.agent.name))
        .await?
        .expect_status(200)?;
    ensure!(
        device["status"]["facts"]["kubernetes"]
            == json!({"mode": "host", "cluster": "edge", "server": c.api.url}),
        "{device}"
    );

    let done = c.act("retrieve-kubeconfig", json!({})).await?;
    ensure!(code(&done) == 200, "{done}");
    let response = &done["response"];
    ensure!(
        response["format"] == "yaml"
            && response["serviceAccount"] == "tether-system/tether-kubeconfig",
        "{done}"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(response["expiresAt"].clone())?;
    let week = chrono::Utc::now() + chrono::Duration::days(7);
    ensure!(
        (expires - week).num_seconds().abs() < 120,
        "expires {expires}"
    );
    let first = written(
        c.dir.path(),
        "first.yaml",
        response["kubeconfig"].as_str().context("text")?,
    )?;
    let nodes = kubectl(&first, &["get", "nodes", "-o", "name"]).await?;
    ensure!(
        nodes.status.success() && nodes.stdout == b"node/edge-1\n",
        "{nodes:?}"
    );

    let done = c
        .act(
            "retrieve-kubeconfig",
            json!({"format": "json", "refresh": true}),
        )
        .await?;
    ensure!(code(&done) == 200, "{done}");
    let text = done["response"]["kubeconfig"].as_str().context("text")?;
    let parsed: Value = serde_json::from_str(text).context("json format")?;
    ensure!(parsed["current-context"] == "edge", "{parsed}");
    let second = written(c.dir.path(), "second.json", text)?;
    let nodes = kubectl(&second, &["get", "nodes", "-o", "name"]).await?;
    ensure!(nodes.status.success(), "{nodes:?}");
    let refused = kubectl(&first, &["get", "nodes"]).await?;
    ensure!(!refused.status.success(), "the old kubeconfig still works");
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthorized")
            || String::from_utf8_lossy(&refused.stderr).contains("provide credentials"),
        "{refused:?}"
    );
    c.refused("retrieve-kubeconfig", json!({"format": "toml"}), "format")
        .await?;
    c.refused("retrieve-kubeconfig", json!({"refresh": "yes"}), "refresh")
        .await?;
    drop(c.tetherd);
    Ok(())
}

#[tokio::test]
async fn in_cluster_mode_uses_the_pods_service_account() -> anyhow::Result<()> {
    let api = FakeKubeApi::start().await?;
    api.add_node("edge-1", &[("InternalIP", "10.0.0.5")])?;
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), format!("{ADMIN_TOKEN}\n"))?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let account_dir = account.path().to_string_lossy().into_owned();
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "k8s-pod",
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
        ],
    )
    .await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    let id = request(&admin, &agent.name, json!({"action": "get-node-ip"})).await?;
    let done = outcome(&admin, &id).await?;
    check_event("get-node-ip", &done)?;
    ensure!(done["statusCode"] == 200, "{done}\n{}", agent.log());
    ensure!(
        done["response"]["cluster"] == "in-cluster"
            && done["response"]["nodes"][0]["name"] == "edge-1",
        "{done}"
    );
    let device = admin
        .get(&format!("/api/v1/devices/{}", agent.name))
        .await?
        .expect_status(200)?;
    ensure!(
        device["status"]["facts"]["kubernetes"]
            == json!({"mode": "cluster", "cluster": "in-cluster", "server": api.url}),
        "{device}"
    );
    Ok(())
}

/// An executable shell script `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = written(dir, name, &format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.to_string_lossy().into_owned())
}

impl Cluster {
    async fn authorization_id(&self) -> anyhow::Result<String> {
        let done = self.act("get-authorization-id", json!({})).await?;
        Ok(done["response"]["authorizationId"]
            .as_str()
            .context("an authorizationId")?
            .to_owned())
    }
}

#[tokio::test]
async fn restart_k3s_answers_when_k3s_is_ready_again_and_one_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The restart takes the fake API server down; the test brings it back.
    let down = dir.path().join("down");
    let restart = script(
        dir.path(),
        "restart-k3s",
        &format!("touch '{}'", down.display()),
    )?;
    // The agent's wall clock follows this file, so the test can let an
    // authorization id expire without waiting two minutes.
    let clock = written(dir.path(), "clock", "+0")?;
    let mut env: Vec<(String, String)> = tether_testkit::faketime_env("+0")?
        .into_iter()
        .filter(|(k, _)| k != "FAKETIME")
        .collect();
    env.push((
        "FAKETIME_TIMESTAMP_FILE".into(),
        clock.to_string_lossy().into_owned(),
    ));
    env.push(("FAKETIME_NO_CACHE".into(), "1".into()));
    env.push(("TETHER_AGENT_K3S_RESTART_COMMAND".into(), restart));
    env.push(("TETHER_AGENT_K3S_READY_TIMEOUT_SECONDS".into(), "60".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let c = cluster_with("k8s-restart", &env).await?;
    c.api.down_while_exists(&down);
    // Destructive: never enabled by default (ADR 0017).
    c.admin
        .put(&format!(
            "/api/v1/devices/{}/action-set/restart-k3s",
            c.agent.name
        ))
        .await?
        .expect_status(200)?;

    let id = request(
        &c.admin,
        &c.agent.name,
        json!({"action": "restart-k3s", "input": {"authorizationId": c.authorization_id().await?}}),
    )
    .await?;
    // The agent waits for /readyz while the API server is down ...
    let asked = || {
        c.api
            .requests()
            .iter()
            .filter(|r| r.path == "/readyz")
            .count()
    };
    tether_testkit::wait_until("the agent asking /readyz", Duration::from_secs(30), || {
        let seen = down.exists() && asked() >= 2;
        async move { Ok(seen.then_some(())) }
    })
    .await
    .with_context(|| c.agent.log())?;
    let pending = c
        .admin
        .get(&format!("/api/v1/actions/{id}"))
        .await?
        .expect_status(200)?;
    ensure!(
        pending["statusCode"].is_null(),
        "answered too early: {pending}"
    );
    // ... a second restart meanwhile is refused, other actions are answered ...
    let second = c
        .act(
            "restart-k3s",
            json!({"authorizationId": c.authorization_id().await?}),
        )
        .await?;
    ensure!(code(&second) == 409, "{second}\n{}", c.agent.log());
    ensure!(
        second["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("already running") && m.contains(&id)),
        "{second}"
    );
    // ... and the event comes once k3s answers again.
    std::fs::remove_file(&down)?;
    let done = outcome(&c.admin, &id).await?;
    check_event("restart-k3s", &done)?;
    ensure!(code(&done) == 200, "{done}\n{}", c.agent.log());
    ensure!(done["response"]["readyAfterMs"].is_u64(), "{done}");
    // From here on the restart command leaves the API server up.
    c.api.down_while_exists(&dir.path().join("never"));

    // Without an id, with a used one and with an expired one: 401.
    let done = c.act("restart-k3s", json!({})).await?;
    ensure!(code(&done) == 401, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("get-authorization-id")),
        "{done}"
    );
    let used = c.authorization_id().await?;
    let done = c
        .act("restart-k3s", json!({"authorizationId": used}))
        .await?;
    ensure!(code(&done) == 200, "{done}");
    let done = c
        .act("restart-k3s", json!({"authorizationId": used}))
        .await?;
    ensure!(code(&done) == 401, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("already used")),
        "{done}"
    );
    std::fs::remove_file(&down)?;
    let old = c.authorization_id().await?;
    std::fs::write(&clock, "+3m")?;
    let done = c
        .act("restart-k3s", json!({"authorizationId": old}))
        .await?;
    ensure!(code(&done) == 401, "{done}");
    ensure!(
        done["statusMessage"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{done}"
    );
    ensure!(!down.exists(), "a refused restart ran the command");
    Ok(())
}

#[tokio::test]
async fn a_pod_restarted_with_an_empty_state_dir_is_the_same_device() -> anyhow::Result<()> {
    let api = FakeKubeApi::start().await?;
    api.seed("namespaces", json!({"metadata": {"name": "tether-system"}}))?;
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), format!("{ADMIN_TOKEN}\n"))?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    std::fs::write(account.path().join("namespace"), "tether-system")?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let account_dir = account.path().to_string_lossy().into_owned();
    let mut agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "k8s-pod-identity",
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
        ],
    )
    .await?;
    agent.wait_presence(&admin, "online").await?;
    let kept = tether_testkit::wait_until("the identity Secret", Duration::from_secs(15), || {
        let secret = api.get("secrets", Some("tether-system"), "tether-agent-identity");
        async move { Ok(secret) }
    })
    .await
    .with_context(|| agent.log())?;
    let mut keys: Vec<&String> = kept["data"].as_object().context("data")?.keys().collect();
    keys.sort();
    ensure!(
        keys == ["agent.toml", "ca.pem", "cert.pem", "key.pem", "sealing.key"],
        "{kept}"
    );
    let cert = std::fs::read_to_string(agent.state_file("cert.pem"))?;
    let key = std::fs::read_to_string(agent.state_file("key.pem"))?;
    let sealing_key = std::fs::read(agent.state_file("sealing.key"))?;
    let identity = async |agent: &Agent| {
        tether_testkit::local_api(&agent.local_api_socket(), "GET", "/v1/identity", "")
            .await
            .map(|(_, identity)| identity)
    };
    let before = identity(&agent).await?;
    ensure!(before["certificate"]["serial"].is_string(), "{before}");
    agent.stop().await?;
    agent.wait_presence(&admin, "offline").await?;

    // A new pod: nothing on disk, the enrollment token of the first start.
    agent.start_with_empty_state()?;
    agent.wait_presence(&admin, "online").await?;
    ensure!(std::fs::read_to_string(agent.state_file("cert.pem"))? == cert);
    ensure!(std::fs::read_to_string(agent.state_file("key.pem"))? == key);
    ensure!(std::fs::read(agent.state_file("sealing.key"))? == sealing_key);
    let log = agent.log();
    ensure!(
        log.contains("restored the device's identity")
            && log.matches("enrolling with").count() == 1,
        "{log}"
    );
    let after = identity(&agent).await?;
    ensure!(
        after["certificate"] == before["certificate"] && after["device"] == before["device"],
        "{before}\n{after}"
    );
    let devices = admin.get("/api/v1/devices").await?.expect_status(200)?;
    ensure!(
        devices["items"].as_array().map(Vec::len) == Some(1),
        "{devices}"
    );
    Ok(())
}

/// Where the restore tests' application keeps its database, as the
/// Deployment `notes` sees it.
const NOTES_DB: &str = "/data/notes.db";

/// The Deployment `notes` (2 replicas) naming its SQLite file, on a claim
/// bound to a volume as k3s's local-path provisioner makes them; returns
/// the file's path on the node.
fn seed_notes(api: &FakeKubeApi, dir: &Path) -> anyhow::Result<PathBuf> {
    let volume = "pvc-0b7e4c1d";
    let on_node = dir.join(format!("storage/{volume}_default_notes-data"));
    std::fs::create_dir_all(&on_node)?;
    api.seed(
        "persistentvolumes",
        json!({"metadata": {"name": volume},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": on_node, "type": "DirectoryOrCreate"},
                        "claimRef": {"namespace": "default", "name": "notes-data"},
                        "storageClassName": "local-path",
                        "persistentVolumeReclaimPolicy": "Delete"}}),
    )?;
    api.seed(
        "persistentvolumeclaims",
        json!({"metadata": {"name": "notes-data", "namespace": "default"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                        "resources": {"requests": {"storage": "1Gi"}}, "volumeName": volume}}),
    )?;
    api.seed(
        "deployments",
        json!({"metadata": {"name": "notes", "namespace": "default",
                            "annotations": {"tether.dev/sqlite-path": NOTES_DB}},
               "spec": {"replicas": 2,
                        "selector": {"matchLabels": {"app": "notes"}},
                        "template": {"metadata": {"labels": {"app": "notes"}},
                                     "spec": {"containers": [{"name": "notes", "image": "notes:1",
                                                              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                                              "volumes": [{"name": "data",
                                                           "persistentVolumeClaim": {"claimName": "notes-data"}}]}}}}),
    )?;
    Ok(on_node.join("notes.db"))
}

/// A restore-command's input against `sshd` as its password user.
fn sftp_input(command: &str, sshd: &Sshd, parameters: Value) -> anyhow::Result<Value> {
    let mut all = json!({"deployment": "notes", "host": "127.0.0.1", "port": sshd.port,
                         "user": PASSWORD_USER, "password": PASSWORD,
                         "remotePath": sshd.files_dir().join("notes.db"),
                         "hostKeyFingerprint": sshd.host_key_fingerprint()?});
    for (key, value) in parameters.as_object().into_iter().flatten() {
        all[key] = value.clone();
    }
    Ok(json!({"command": command, "parameters": all}))
}

/// `cluster`, with `notes` and restore-command enabled.
async fn restore_cluster(name: &str) -> anyhow::Result<(Cluster, PathBuf)> {
    restore_cluster_with(name, &[]).await
}

/// [`restore_cluster`], with more environment for the agent.
async fn restore_cluster_with(
    name: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Cluster, PathBuf)> {
    let c = cluster_with(name, env).await?;
    let live = seed_notes(&c.api, c.dir.path())?;
    // Destructive: never enabled by default (ADR 0017).
    c.admin
        .put(&format!(
            "/api/v1/devices/{}/action-set/restore-command",
            c.agent.name
        ))
        .await?
        .expect_status(200)?;
    Ok((c, live))
}

#[tokio::test]
async fn restore_command_backs_up_while_the_application_writes_and_restores_it()
-> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let (c, live) = restore_cluster("k8s-restore").await?;
    let writer = Writer::start(&live).await?;
    let done = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({}))?,
        )
        .await?;
    let written = writer.stop()?;
    ensure!(code(&done) == 200, "{done}\n{}", c.agent.log());
    ensure!(
        done["response"]["database"] == live.display().to_string(),
        "{done}"
    );
    // One consistent state of the database while it was being written.
    let backup = sshd.files_dir().join("notes.db");
    let backed_up = rows(&backup)?;
    ensure!(
        !backed_up.is_empty() && backed_up == (1..=backed_up.len() as i64).collect::<Vec<_>>(),
        "not one state of the database: {} rows",
        backed_up.len()
    );
    ensure!(done["response"]["bytes"] == std::fs::metadata(&backup)?.len());
    // The application changes it afterwards ...
    {
        let connection = rusqlite::Connection::open(&live)?;
        connection.execute("DELETE FROM t WHERE n <= 10", [])?;
        connection.execute("INSERT INTO t VALUES (?1)", [written + 1000])?;
    }
    ensure!(rows(&live)? != backed_up);
    let requests_before = c.api.requests().len();

    // ... and the restore brings back what was backed up.
    let done = c
        .act(
            "restore-command",
            sftp_input("restore-database", &sshd, json!({}))?,
        )
        .await?;
    ensure!(code(&done) == 200, "{done}\n{}", c.agent.log());
    ensure!(
        rows(&live)? == backed_up,
        "the live database is not the backup"
    );
    ensure!(done["response"]["replicas"] == 2, "{done}");
    ensure!(done["response"]["rolloutStatus"] == "complete", "{done}");
    let deployment = c
        .api
        .get("deployments", Some("default"), "notes")
        .context("notes")?;
    ensure!(deployment["spec"]["replicas"] == 2, "{deployment}");
    // Halted, waited for, brought back: scale to 0, the pods listed until
    // none is left, scale back to 2.
    let steps: Vec<String> = c.api.requests()[requests_before..]
        .iter()
        .filter(|r| r.method == "PATCH" || r.path.ends_with("/pods"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let scale = "PATCH /apis/apps/v1/namespaces/default/deployments/notes/scale";
    ensure!(
        steps.first().map(String::as_str) == Some(scale)
            && steps.get(1).map(String::as_str) == Some("GET /api/v1/namespaces/default/pods")
            && steps.last().map(String::as_str) == Some(scale),
        "{steps:?}"
    );
    // The password is in no log line and no stored record.
    ensure!(
        !c.agent.log().contains(PASSWORD),
        "the agent logged the password"
    );
    ensure!(
        !c.tetherd.log().contains(PASSWORD),
        "tetherd logged the password"
    );
    let stored = c
        .admin
        .get(&format!(
            "/api/v1/actions/{}",
            done["correlationId"].as_str().unwrap_or_default()
        ))
        .await?
        .expect_status(200)?;
    ensure!(
        stored["input"]["parameters"]["password"] == "***",
        "{stored}"
    );
    Ok(())
}

#[tokio::test]
async fn restore_command_names_what_is_wrong_and_leaves_the_database_alone() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let (c, live) = restore_cluster("k8s-restore-bad").await?;
    Writer::start(&live).await?.stop()?;
    let before = std::fs::read(&live)?;
    let message = |done: &Value| {
        done["statusMessage"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // A wrong password: 401 naming the user, never the password.
    let done = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"password": "not-it"}))?,
        )
        .await?;
    ensure!(code(&done) == 401, "{done}");
    ensure!(message(&done).contains(PASSWORD_USER) && !message(&done).contains("not-it"));

    // Another host key: 502 naming both, and the password was not sent.
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let done = c
        .act(
            "restore-command",
            sftp_input(
                "backup-database",
                &sshd,
                json!({"hostKeyFingerprint": wrong}),
            )?,
        )
        .await?;
    ensure!(code(&done) == 502, "{done}");
    ensure!(
        message(&done).contains(&wrong) && message(&done).contains(&sshd.host_key_fingerprint()?),
        "{done}"
    );

    // Nobody listening: 502 naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let done = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"port": closed}))?,
        )
        .await?;
    ensure!(code(&done) == 502, "{done}");
    ensure!(
        message(&done).contains(&format!("127.0.0.1:{closed}")),
        "{done}"
    );

    // A corrupt backup: 422, the live database untouched, never halted.
    let garbage = sshd.files_dir().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192])?;
    let requests_before = c.api.requests().len();
    let done = c
        .act(
            "restore-command",
            sftp_input("restore-database", &sshd, json!({"remotePath": garbage}))?,
        )
        .await?;
    ensure!(code(&done) == 422, "{done}");
    ensure!(
        message(&done).contains("not a sound SQLite database"),
        "{done}"
    );
    ensure!(
        std::fs::read(&live)? == before,
        "the live database was touched"
    );
    ensure!(
        c.api.requests()[requests_before..]
            .iter()
            .all(|r| r.method == "GET"),
        "the deployment was changed"
    );

    // An unknown deployment: 404; one that names no file: 422 naming the annotation.
    let done = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"deployment": "nope"}))?,
        )
        .await?;
    ensure!(code(&done) == 404, "{done}");
    let done = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"deployment": "web"}))?,
        )
        .await?;
    ensure!(code(&done) == 422, "{done}");
    ensure!(message(&done).contains("tether.dev/sqlite-path"), "{done}");

    // tetherd refuses what the catalogue does not allow; nothing is sent.
    let mut no_pin = sftp_input("backup-database", &sshd, json!({}))?;
    if let Some(parameters) = no_pin["parameters"].as_object_mut() {
        parameters.remove("hostKeyFingerprint");
    }
    c.refused("restore-command", no_pin, "hostKeyFingerprint")
        .await?;
    c.refused(
        "restore-command",
        sftp_input("backup-database", &sshd, json!({"port": 0}))?,
        "$.parameters.port",
    )
    .await?;
    c.refused(
        "restore-command",
        sftp_input("drop-database", &sshd, json!({}))?,
        "$.command",
    )
    .await?;

    // A server that accepts and never answers: 504 after 20 s; meanwhile a
    // second one for the same deployment is 409, another deployment's runs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    let first = request(
        &c.admin,
        &c.agent.name,
        json!({"action": "restore-command",
               "input": sftp_input("backup-database", &sshd, json!({"port": port}))?}),
    )
    .await?;
    let second = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"port": port}))?,
        )
        .await?;
    ensure!(code(&second) == 409, "{second}");
    ensure!(
        message(&second).contains("deployment default/notes is already running")
            && message(&second).contains(&first),
        "{second}"
    );
    let other = c
        .act(
            "restore-command",
            sftp_input("backup-database", &sshd, json!({"deployment": "web"}))?,
        )
        .await?;
    ensure!(code(&other) == 422, "{other}");
    let done = outcome(&c.admin, &first).await?;
    check_event("restore-command", &done)?;
    ensure!(code(&done) == 504, "{done}");
    ensure!(
        std::fs::read(&live)? == before,
        "the live database was touched"
    );
    ensure!(
        !c.agent.log().contains(PASSWORD),
        "the agent logged the password"
    );
    Ok(())
}

#[tokio::test]
async fn restore_command_without_its_helper_names_the_path_and_the_flag() -> anyhow::Result<()> {
    let missing = "/nonexistent/tether-agent-restore";
    let (c, live) = restore_cluster_with(
        "k8s-restore-nohelper",
        &[("TETHER_AGENT_RESTORE_HELPER", missing)],
    )
    .await?;
    Writer::start(&live).await?.stop()?;
    let before = std::fs::read(&live)?;
    let requests_before = c.api.requests().len();
    let input = json!({"command": "restore-database",
                       "parameters": {"deployment": "notes", "host": "127.0.0.1", "port": 22,
                                      "user": PASSWORD_USER, "password": PASSWORD,
                                      "remotePath": "/backups/notes.db",
                                      "hostKeyFingerprint": format!("SHA256:{}", "A".repeat(43))}});
    let done = c.act("restore-command", input).await?;
    ensure!(code(&done) == 501, "{done}");
    let message = done["statusMessage"].as_str().unwrap_or_default();
    ensure!(
        message.contains(missing) && message.contains("--restore-helper"),
        "{done}"
    );
    // Nothing was halted or replaced.
    ensure!(
        std::fs::read(&live)? == before,
        "the live database was touched"
    );
    ensure!(
        c.api.requests()[requests_before..]
            .iter()
            .all(|r| r.method == "GET"),
        "the deployment was changed"
    );
    ensure!(
        !c.agent.log().contains(PASSWORD),
        "the agent logged the password"
    );
    Ok(())
}
