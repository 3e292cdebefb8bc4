//! Joining a Kubernetes cluster with one command (ADR 0017): the command
//! tetherd prints, run as printed — curl trusting only tetherd's CA, the
//! real `kubectl apply` — against testkit's fake Kubernetes API server,
//! creates exactly the manifest's objects, and the agent's rights there are
//! what its actions use and nothing more; a real agent started as the
//! manifest's pod acts with them, and its default actions as
//! `tether-operator`, with `view`'s rights only.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::agent::Agent;
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};
use tether_testkit::seed_schema::{check_event, check_request};
use tether_testkit::{Database, Tetherd};

use crate::support::{self, on_both_databases};

on_both_databases!(the_printed_command_joins_the_cluster_with_exactly_the_agent_s_rights);

/// With `[kubernetes] management_shell = true` the printed command also
/// creates the management shell's Service and claim, with the real
/// kubectl against the fake API server (ADR 0023).
#[tokio::test]
async fn a_join_with_the_management_shell_creates_management_pod_and_its_claim()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        "[kubernetes]\nmanagement_shell = true\nmanagement_shell_image = \"registry.example/tether-agent-tools:1\"\n",
    )?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let created = admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    let command = created["enrollment"]["joinCommand"]
        .as_str()
        .context("joinCommand")?;
    let api = FakeKubeApi::start().await?;
    let cluster_admin = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    let run = shell(
        &command.replace("kubectl apply -f -", "kubectl apply --validate=false -f -"),
        &cluster_admin,
    )
    .await?;
    ensure!(run.code == 0, "the join command failed: {}", run.output);
    let writes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        writes[writes.len() - 3..],
        [
            "POST /api/v1/namespaces/tether-system/services",
            "POST /api/v1/namespaces/tether-system/persistentvolumeclaims",
            "POST /apis/apps/v1/namespaces/tether-system/deployments",
        ]
    );
    let listed = kubectl(
        &cluster_admin,
        "get service management-pod -n tether-system -o json",
    )
    .await?;
    ensure!(listed.code == 0, "{}", listed.output);
    let service: Value = serde_json::from_str(&listed.output)?;
    assert_eq!(
        service["spec"]["selector"],
        json!({"app.kubernetes.io/name": "tether-agent"})
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 22);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 2222);
    let deployment = api
        .get("deployments", Some("tether-system"), "tether-agent")
        .context("the agent Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    // As the cluster stored it (ADR 0028): the sessions' container from
    // the tools image, as another user than the agent, with no token
    // mounted (none automounted) and none of the agent's volumes but the
    // socket's directory; the agent's container with the token.
    let (agent_container, shell_container) = (&pod["containers"][0], &pod["containers"][1]);
    assert_eq!(shell_container["name"], "shell");
    assert_eq!(
        shell_container["image"],
        "registry.example/tether-agent-tools:1"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(shell_container["securityContext"]["runAsUser"], 65533);
    let mounts = |container: &Value| -> Vec<String> {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["mountPath"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    assert_eq!(
        mounts(shell_container),
        [
            "shell-socket /run/tether-shell",
            "shell-state /var/lib/tether-agent-shell",
            "work /work",
            "login /etc/tether/management-shell",
            "tmp /tmp",
        ]
    );
    assert_eq!(
        mounts(agent_container),
        [
            "state /var/lib/tether-agent",
            "service-account /var/run/secrets/kubernetes.io/serviceaccount",
            "enrollment /etc/tether/enrollment",
            "shell-socket /run/tether-shell",
        ]
    );
    assert!(
        pod["volumes"].as_array().is_some_and(|volumes| volumes.contains(
            &json!({"name": "work", "persistentVolumeClaim": {"claimName": "tether-management-work"}})
        )),
        "{pod}"
    );

    // The agent as that pod (its listener on a free loopback port, the
    // Secret's password as a file) and its shell container as a second
    // process of another user (65534; the test runs as root), sharing
    // only the socket's directory: a session's kubectl reaches the
    // cluster as tether-operator, with `view`'s rights only, and cannot
    // read the agent's token.
    let minted = kubectl(&cluster_admin, "create token tether-agent -n tether-system").await?;
    ensure!(minted.code == 0, "{}", minted.output);
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), minted.output.trim())?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    std::fs::write(account.path().join("namespace"), "tether-system")?;
    // The agent's user's alone (here root's), as the projected volume
    // the shell container does not even mount.
    std::fs::set_permissions(
        account.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let shell_container = tempfile::tempdir()?;
    let shell_user = 65534;
    std::os::unix::fs::chown(shell_container.path(), Some(shell_user), Some(shell_user))?;
    std::fs::set_permissions(
        shell_container.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let password = shell_container.path().join("password");
    std::fs::write(&password, "in-cluster secret\n")?;
    std::os::unix::fs::chown(&password, Some(shell_user), Some(shell_user))?;
    let work = shell_container.path().join("work");
    let host_key = shell_container.path().join("host_key");
    let socket = shell_container.path().join("shell.sock");
    let _shell =
        tokio::process::Command::new(tether_testkit::binaries::binary("tether-agent-shell")?)
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--agent-uid", "0"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .uid(shell_user)
            .gid(shell_user)
            .kill_on_drop(true)
            .spawn()
            .context("the shell container's process")?;
    tether_testkit::wait_until("the shell's socket", Duration::from_secs(30), || {
        let exists = socket.exists();
        async move { Ok(exists.then_some(())) }
    })
    .await?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (account_dir, password, work_dir) = (path(account.path()), path(&password), path(&work));
    let (socket_path, host_key) = (path(&socket), path(&host_key));
    let agent = Agent::start_enrolling(
        &tetherd,
        "edge-1",
        &created["enrollment"],
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
            ("TETHER_AGENT_SHELL_LISTEN", "127.0.0.1:0"),
            ("TETHER_AGENT_SHELL_SOCKET", &socket_path),
            ("TETHER_AGENT_SHELL_HOST_KEY", &host_key),
            ("TETHER_AGENT_SHELL_PASSWORD_FILE", &password),
            ("TETHER_AGENT_SHELL_WORK_DIR", &work_dir),
        ],
    )?;
    let shell_port = tether_testkit::wait_until("the listener", Duration::from_secs(30), || {
        let log = agent.log();
        async move {
            Ok(log
                .lines()
                .find_map(|l| l.split("the management shell listens on 127.0.0.1:").nth(1))
                .and_then(|p| p.trim().parse::<u16>().ok()))
        }
    })
    .await?;
    api.seed(
        "deployments",
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )?;
    let askpass = account.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'in-cluster secret'\n")?;
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let ssh = format!(
        "SSH_ASKPASS={} SSH_ASKPASS_REQUIRE=force ssh -F /dev/null -p {shell_port} \
         -o UserKnownHostsFile={}/known_hosts -o StrictHostKeyChecking=accept-new \
         -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1 -o LogLevel=ERROR \
         operator@127.0.0.1",
        askpass.display(),
        account.path().display()
    );
    let session = shell(
        &format!(
            "{ssh} 'id -u; cat {}/token || echo no token; stat -c %a .kube/config; \
             kubectl get deployments -n default -o name; \
             kubectl get secret tether-agent-identity -n tether-system' < /dev/null",
            account.path().display()
        ),
        &cluster_admin,
    )
    .await?;
    ensure!(
        session
            .output
            .contains("65534\nno token\n600\ndeployment.apps/web\n")
            && session.output.contains("forbidden")
            && session.code == 1,
        "{}: {}\n{}",
        session.code,
        session.output,
        agent.log()
    );
    let kubeconfig: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join(".kube/config"))?)?;
    ensure!(
        kubeconfig["clusters"][0]["cluster"]["server"] == api.url.as_str(),
        "{kubeconfig}"
    );
    Ok(())
}

struct Run {
    code: i32,
    output: String,
}

/// Runs `command` with `sh`, kubectl using `kubeconfig` (and its own
/// discovery cache under the same directory).
async fn shell(command: &str, kubeconfig: &Path) -> anyhow::Result<Run> {
    let home = kubeconfig.parent().context("kubeconfig dir")?;
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running sh")?;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("{command:?} did not finish"))??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

async fn kubectl(kubeconfig: &Path, args: &str) -> anyhow::Result<Run> {
    shell(&format!("kubectl {args}"), kubeconfig).await
}

async fn the_printed_command_joins_the_cluster_with_exactly_the_agent_s_rights(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let created = admin
        .post("/api/v1/devices", json!({"name": "edge-1"}))
        .await?
        .expect_status(201)?;
    let command = created["enrollment"]["joinCommand"]
        .as_str()
        .context("joinCommand")?;
    let token = created["enrollment"]["token"].as_str().context("token")?;
    ensure!(command.ends_with(" | kubectl apply -f -"), "{command}");

    let api = FakeKubeApi::start().await?;
    let dir = tempfile::tempdir()?;
    let cluster_admin = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    // The fake serves no OpenAPI document, without which kubectl refuses
    // to validate (its module documentation); nothing else is changed.
    let run = shell(
        &command.replace("kubectl apply -f -", "kubectl apply --validate=false -f -"),
        &cluster_admin,
    )
    .await?;
    ensure!(run.code == 0, "the join command failed: {}", run.output);
    let writes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        writes,
        [
            "POST /api/v1/namespaces",
            "POST /api/v1/namespaces/tether-system/serviceaccounts",
            "POST /api/v1/namespaces/tether-system/serviceaccounts",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterroles",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/tether-system/roles",
            "POST /apis/rbac.authorization.k8s.io/v1/namespaces/tether-system/rolebindings",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "POST /api/v1/namespaces/tether-system/secrets",
            "POST /apis/apps/v1/namespaces/tether-system/deployments",
        ]
    );
    let secret = api
        .get("secrets", Some("tether-system"), "tether-enrollment")
        .context("the enrollment Secret")?;
    use base64::Engine as _;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().context("token data")?)?;
    assert_eq!(stored, token.as_bytes());
    let deployment = api
        .get("deployments", Some("tether-system"), "tether-agent")
        .context("the agent Deployment")?;
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array().is_some_and(
            |env| env.contains(&json!({"name": "TETHER_SERVER", "value": tetherd.api_url}))
        ),
        "{env}"
    );
    // Fetching the manifest left the token for the agent; a wrong one is refused.
    let anonymous = tetherd.anonymous()?;
    let again = anonymous.get_text(&format!("/api/v1/join/{token}")).await?;
    assert_eq!(again.0, 200);
    let wrong = anonymous.get_text("/api/v1/join/not-a-token").await?;
    assert_eq!(wrong.0, 401, "{}", wrong.1);

    // The ClusterRole as the cluster lists it: exactly the actions' needs.
    let listed = kubectl(&cluster_admin, "get clusterrole tether-agent -o json").await?;
    ensure!(listed.code == 0, "{}", listed.output);
    let role: Value = serde_json::from_str(&listed.output)?;
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch", "create"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["secrets", "configmaps", "services"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"], "resourceNames": ["tether-system"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterrolebindings"], "verbs": ["get"], "resourceNames": ["tether-kubeconfig"]},
            {"apiGroups": ["helm.cattle.io"], "resources": ["helmcharts"], "verbs": ["get", "list", "create", "update", "delete"]},
            {"apiGroups": ["helm.toolkit.fluxcd.io"], "resources": ["helmreleases"], "verbs": ["get", "list", "create", "update", "delete"]},
            {"apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["helmrepositories"], "verbs": ["get", "list", "create", "update", "delete"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
        ])
    );

    // And as the agent's ServiceAccount: what the actions do is allowed,
    // anything else forbidden.
    let minted = kubectl(&cluster_admin, "create token tether-agent -n tether-system").await?;
    ensure!(minted.code == 0, "{}", minted.output);
    let agent_dir = tempfile::tempdir()?;
    let agent = api.write_kubeconfig(agent_dir.path(), minted.output.trim())?;
    for allowed in [
        "get nodes",
        "get namespace tether-system",
        "get secret tether-enrollment -n tether-system",
        // The sealed secrets' Secrets (ADR 0030), found by label.
        "get secrets -n tether-system",
        "create configmap copied -n default --from-literal=a=b",
        "create serviceaccount tether-kubeconfig -n tether-system",
        "create token tether-kubeconfig -n tether-system",
        "create token tether-operator -n tether-system",
        "get clusterrolebinding tether-kubeconfig",
    ] {
        let run = kubectl(&agent, allowed).await?;
        assert_eq!(run.code, 0, "{allowed}: {}", run.output);
    }
    for forbidden in [
        "get secrets -A",
        "get configmaps -A",
        "get deployments -n default",
        "get namespaces",
        "delete deployment tether-agent -n tether-system",
        "create namespace other",
        "get serviceaccount tether-agent -n tether-system",
        "create token tether-agent -n tether-system",
        "get clusterrolebinding tether-agent",
        "create clusterrolebinding root --clusterrole=cluster-admin --serviceaccount=tether-system:tether-agent",
        "delete configmap copied -n default",
        "delete secret db -n default",
        "get secrets -n default",
    ] {
        let run = kubectl(&agent, forbidden).await?;
        assert!(
            run.code != 0 && run.output.contains("forbidden"),
            "{forbidden}: {}",
            run.output
        );
    }

    // The agent in its pod, with the manifest's ServiceAccount and token.
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), minted.output.trim())?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    std::fs::write(account.path().join("namespace"), "tether-system")?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let account_dir = account.path().to_string_lossy().into_owned();
    let agent = Agent::start_enrolling(
        &tetherd,
        "edge-1",
        &created["enrollment"],
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
        ],
    )?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    api.seed(
        "deployments",
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )?;
    let act = |action: &'static str, input: Value| {
        let admin = admin.clone();
        async move {
            check_request(action, &input)?;
            let done = support::run(&admin, "edge-1", action, input).await?;
            check_event(action, &done)?;
            anyhow::Ok(done)
        }
    };
    api.seed(
        "secrets",
        json!({"metadata": {"name": "db", "namespace": "default"}, "data": {}}),
    )?;
    api.add_node("edge-1", &[("InternalIP", "10.0.0.5")])?;
    // Every cluster action but send-* acts with the agent's own rights:
    // the manifest's are enough for each.
    for action in ["manage-deployment", "copy-resource", "retrieve-kubeconfig"] {
        admin
            .put(&format!("/api/v1/devices/edge-1/action-set/{action}"))
            .await?
            .expect_status(200)?;
    }
    for (action, input) in [
        ("get-node-ip", json!({})),
        (
            "manage-deployment",
            json!({"command": "scale", "parameters": {"deployment": "web", "replicas": 2}}),
        ),
        (
            "manage-deployment",
            json!({"command": "restart", "parameters": {"deployment": "web"}}),
        ),
        (
            "copy-resource",
            json!({"command": "copy", "parameters": {"type": "secrets",
            "from": {"namespace": "default", "name": "db"}, "to": {"name": "db-copy"}}}),
        ),
        ("retrieve-kubeconfig", json!({"refresh": true})),
    ] {
        let done = act(action, input).await?;
        ensure!(
            done["statusCode"] == 200,
            "{action}: {done}\n{}",
            agent.log()
        );
    }
    // The default actions act as tether-operator: what `view` reads, and
    // none of the agent's rights (its identity, the admin kubeconfig's
    // token, writes).
    let kubectl_as_operator =
        |arguments: &[&str]| json!({"command": "kubectl", "arguments": arguments});
    let pods = act(
        "send-kubectl",
        kubectl_as_operator(&["get", "deployments", "-n", "default"]),
    )
    .await?;
    ensure!(pods["statusCode"] == 200, "{pods}\n{}", agent.log());
    ensure!(
        pods["response"].as_str().is_some_and(|r| r.contains("web")),
        "{pods}"
    );
    for arguments in [
        &[
            "get",
            "secret",
            "tether-agent-identity",
            "-n",
            "tether-system",
        ][..],
        &[
            "create",
            "token",
            "tether-kubeconfig",
            "-n",
            "tether-system",
        ],
        &[
            "scale",
            "deployment",
            "web",
            "-n",
            "default",
            "--replicas=0",
        ],
    ] {
        let refused = act("send-kubectl", kubectl_as_operator(arguments)).await?;
        ensure!(
            refused["statusCode"] == 500
                && refused["statusMessage"]
                    .as_str()
                    .is_some_and(|m| m.contains("forbidden")),
            "{arguments:?}: {refused}"
        );
    }
    let secret = act(
        "send-kubernetes-api",
        json!({"href": "/api/v1/namespaces/tether-system/secrets/tether-agent-identity"}),
    )
    .await?;
    ensure!(secret["statusCode"] == 403, "{secret}");
    let listed = act(
        "send-kubernetes-api",
        json!({"href": "/apis/apps/v1/namespaces/default/deployments"}),
    )
    .await?;
    ensure!(listed["statusCode"] == 200, "{listed}");

    // A sealed secret becomes the Secret tether-secret-NAME with the
    // manifest's rights, and goes with the secret.
    tether_testkit::wait_until("edge-1's sealing key", WAIT, || async {
        let device = admin
            .get("/api/v1/devices/edge-1")
            .await?
            .expect_status(200)?;
        Ok(device["status"]["sealingKey"].as_str().map(drop))
    })
    .await?;
    let set = admin
        .put_json(
            "/api/v1/secrets/db-password",
            json!({"target": {"device": "edge-1"}, "value": "hunter2"}),
        )
        .await?
        .expect_status(200)?;
    ensure!(set["sealed"] == json!(["edge-1"]), "{set}");
    let kept = |present: bool| {
        let api = &api;
        move || {
            let secret = api.get(
                "secrets",
                Some("tether-system"),
                "tether-secret-db-password",
            );
            let done = secret.is_some() == present
                && secret
                    .as_ref()
                    .is_none_or(|s| s["data"]["value"] == "aHVudGVyMg==");
            async move { Ok(done.then_some(())) }
        }
    };
    tether_testkit::wait_until("the secret's Secret", WAIT, kept(true))
        .await
        .with_context(|| agent.log())?;
    admin
        .delete("/api/v1/secrets/db-password")
        .await?
        .expect_status(204)?;
    tether_testkit::wait_until("the Secret deleted", WAIT, kept(false))
        .await
        .with_context(|| agent.log())?;
    Ok(())
}

const WAIT: Duration = Duration::from_secs(30);
