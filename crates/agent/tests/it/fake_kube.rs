//! The fake Kubernetes API server (testkit::fake_kube) driven by the real
//! `kubectl`, so what the Kubernetes actions build on answers as a cluster does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Run> {
    kubectl_in(kubeconfig, args, None).await
}

async fn kubectl_in(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        // kubectl caches discovery under $HOME; a shared cache would mix servers.
        .env("HOME", kubeconfig.parent().context("kubeconfig dir")?)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl (Debian: apt-get install kubernetes-client)")?;
    let mut input = child.stdin.take().context("kubectl stdin")?;
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await?;
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("kubectl {args:?} did not finish"))??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let run = kubectl(kubeconfig, args).await?;
    ensure!(
        run.code == 0,
        "kubectl {args:?} exited {}: {}{}",
        run.code,
        run.stdout,
        run.stderr
    );
    Ok(run.stdout)
}

async fn fake() -> anyhow::Result<(FakeKubeApi, tempfile::TempDir, PathBuf)> {
    let api = FakeKubeApi::start().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    Ok((api, dir, kubeconfig))
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: tether-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: tether-agent
  namespace: tether-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tether-agent
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tether-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: tether-agent
subjects:
- kind: ServiceAccount
  name: tether-agent
  namespace: tether-system
---
apiVersion: v1
kind: Secret
metadata:
  name: tether-enrollment
  namespace: tether-system
stringData:
  token: one-time
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: tether-agent
  namespace: tether-system
  labels:
    app: tether-agent
spec:
  replicas: 1
  selector:
    matchLabels:
      app: tether-agent
  template:
    metadata:
      labels:
        app: tether-agent
    spec:
      serviceAccountName: tether-agent
      containers:
      - name: agent
        image: tether-agent:dev
"#;

fn writes(api: &FakeKubeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn apply_creates_exactly_the_manifest_objects_and_a_second_apply_changes_nothing()
-> anyhow::Result<()> {
    let (api, _dir, config) = fake().await?;
    let run = kubectl_in(
        &config,
        &["apply", "--validate=false", "-f", "-"],
        Some(MANIFEST),
    )
    .await?;
    ensure!(run.code == 0, "apply failed: {}{}", run.stdout, run.stderr);
    assert_eq!(
        writes(&api),
        [
            "POST /api/v1/namespaces",
            "POST /api/v1/namespaces/tether-system/serviceaccounts",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterroles",
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "POST /api/v1/namespaces/tether-system/secrets",
            "POST /apis/apps/v1/namespaces/tether-system/deployments",
        ]
    );
    let in_system = |resource: &str| -> Vec<String> {
        api.list(resource)
            .iter()
            .filter(|o| o["metadata"]["namespace"] == "tether-system")
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(in_system("serviceaccounts"), ["tether-agent"]);
    assert_eq!(in_system("secrets"), ["tether-enrollment"]);
    assert_eq!(in_system("deployments"), ["tether-agent"]);
    let secret = api
        .get("secrets", Some("tether-system"), "tether-enrollment")
        .context("secret")?;
    assert_eq!(
        secret["data"]["token"], "b25lLXRpbWU=",
        "stringData is stored base64 in data"
    );
    assert!(secret.get("stringData").is_none());
    assert!(api.get("clusterroles", None, "tether-agent").is_some());
    assert!(
        api.get("clusterrolebindings", None, "tether-agent")
            .is_some()
    );
    let deployment = api
        .get("deployments", Some("tether-system"), "tether-agent")
        .context("deployment")?;
    assert_eq!(deployment["metadata"]["generation"], 1);
    assert!(
        deployment["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    let versions = |api: &FakeKubeApi| -> Vec<serde_json::Value> {
        [
            "namespaces",
            "serviceaccounts",
            "clusterroles",
            "clusterrolebindings",
            "secrets",
            "deployments",
        ]
        .iter()
        .flat_map(|r| api.list(r))
        .map(|o| o["metadata"]["resourceVersion"].clone())
        .collect()
    };
    let selected = ok(
        &config,
        &[
            "get",
            "deployments",
            "-A",
            "-l",
            "app=tether-agent",
            "-o",
            "name",
        ],
    )
    .await?;
    assert_eq!(selected.trim(), "deployment.apps/tether-agent");
    let selected = ok(
        &config,
        &[
            "get",
            "deployments",
            "-A",
            "-l",
            "app!=tether-agent",
            "-o",
            "name",
        ],
    )
    .await?;
    assert_eq!(selected.trim(), "");

    let before = (writes(&api).len(), versions(&api));
    let run = kubectl_in(
        &config,
        &["apply", "--validate=false", "-f", "-"],
        Some(MANIFEST),
    )
    .await?;
    ensure!(
        run.code == 0,
        "second apply failed: {}{}",
        run.stdout,
        run.stderr
    );
    // kubectl always re-sends a Secret's stringData, which the API keeps only
    // as data (so the real kubectl says "configured" too); the write changes
    // nothing and keeps every resourceVersion, as the real API does.
    assert_eq!(run.stdout.matches("unchanged").count(), 5, "{}", run.stdout);
    assert_eq!(
        writes(&api)[before.0..],
        ["PATCH /api/v1/namespaces/tether-system/secrets/tether-enrollment"]
    );
    assert_eq!(
        versions(&api),
        before.1,
        "the second apply changed an object"
    );
    Ok(())
}

#[tokio::test]
async fn get_nodes_wide_shows_the_node_addresses() -> anyhow::Result<()> {
    let (api, _dir, config) = fake().await?;
    api.add_node(
        "edge-1",
        &[
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "203.0.113.7"),
            ("Hostname", "edge-1"),
        ],
    )?;
    let out = ok(&config, &["get", "nodes", "-o", "wide"]).await?;
    let header = out.lines().next().context("a header")?;
    assert!(
        header.contains("INTERNAL-IP") && header.contains("EXTERNAL-IP"),
        "{out}"
    );
    let row = out.lines().nth(1).context("a row")?;
    assert!(
        row.starts_with("edge-1") && row.contains("10.0.0.5") && row.contains("203.0.113.7"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&config, &["get", "nodes", "-o", "json"]).await?)?;
    assert_eq!(
        json["items"][0]["status"]["addresses"][2],
        json!({"type": "Hostname", "address": "edge-1"})
    );
    Ok(())
}

#[tokio::test]
async fn scale_and_rollout_restart_bump_the_generation_and_rollout_status_finishes()
-> anyhow::Result<()> {
    let (api, _dir, config) = fake().await?;
    let run = kubectl_in(
        &config,
        &["apply", "--validate=false", "-f", "-"],
        Some(MANIFEST),
    )
    .await?;
    ensure!(run.code == 0, "apply failed: {}", run.stderr);
    let deployment = |api: &FakeKubeApi| {
        api.get("deployments", Some("tether-system"), "tether-agent")
            .context("deployment")
    };
    let ns = ["-n", "tether-system"];

    ok(
        &config,
        &[
            &ns[..],
            &["scale", "deployment", "tether-agent", "--replicas=0"],
        ]
        .concat(),
    )
    .await?;
    let scaled = deployment(&api)?;
    assert_eq!(scaled["spec"]["replicas"], 0);
    assert_eq!(scaled["metadata"]["generation"], 2);
    assert_eq!(scaled["status"]["replicas"], 0);

    ok(
        &config,
        &[
            &ns[..],
            &["rollout", "restart", "deployment", "tether-agent"],
        ]
        .concat(),
    )
    .await?;
    let restarted = deployment(&api)?;
    assert_eq!(restarted["metadata"]["generation"], 3);
    assert!(restarted["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string());
    assert_eq!(
        restarted["spec"]["template"]["spec"]["containers"][0]["image"], "tether-agent:dev",
        "the patch merged, not replaced"
    );

    let out = ok(
        &config,
        &[
            &ns[..],
            &[
                "rollout",
                "status",
                "deployment",
                "tether-agent",
                "--timeout=30s",
            ],
        ]
        .concat(),
    )
    .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    let writes = writes(&api);
    assert_eq!(
        writes,
        [
            "POST /api/v1/namespaces".to_owned(),
            "POST /api/v1/namespaces/tether-system/serviceaccounts".to_owned(),
            "POST /apis/rbac.authorization.k8s.io/v1/clusterroles".to_owned(),
            "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_owned(),
            "POST /api/v1/namespaces/tether-system/secrets".to_owned(),
            "POST /apis/apps/v1/namespaces/tether-system/deployments".to_owned(),
            "PATCH /apis/apps/v1/namespaces/tether-system/deployments/tether-agent/scale"
                .to_owned(),
            "PATCH /apis/apps/v1/namespaces/tether-system/deployments/tether-agent".to_owned(),
        ]
    );

    // kubectl refuses a negative --replicas itself; the API refuses it too.
    let run = kubectl(
        &config,
        &[
            &ns[..],
            &[
                "patch",
                "deployment",
                "tether-agent",
                "--type=merge",
                "-p",
                r#"{"spec":{"replicas":-1}}"#,
            ],
        ]
        .concat(),
    )
    .await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("is invalid: spec.replicas: Invalid value: -1"),
        "{}",
        run.stderr
    );
    assert_eq!(deployment(&api)?["metadata"]["generation"], 3);
    Ok(())
}

#[tokio::test]
async fn errors_are_status_objects_kubectl_reports() -> anyhow::Result<()> {
    let (api, dir, config) = fake().await?;
    let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  a: \"1\"\n";
    ok(
        &config,
        &[
            "create",
            "--validate=false",
            "-f",
            &write(dir.path(), "cm.yaml", configmap)?,
        ],
    )
    .await?;
    let run = kubectl(
        &config,
        &[
            "create",
            "--validate=false",
            "-f",
            &write(dir.path(), "cm.yaml", configmap)?,
        ],
    )
    .await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("(AlreadyExists)")
            && run
                .stderr
                .contains("configmaps \"settings\" already exists"),
        "{}",
        run.stderr
    );

    let run = kubectl(&config, &["get", "deployment", "missing"]).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("(NotFound)")
            && run
                .stderr
                .contains("deployments.apps \"missing\" not found"),
        "{}",
        run.stderr
    );

    let stale = api
        .get("configmaps", Some("default"), "settings")
        .context("configmap")?;
    ok(
        &config,
        &[
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ],
    )
    .await?;
    let mut replacement = stale.clone();
    replacement["data"]["a"] = json!("3");
    let run = kubectl(
        &config,
        &[
            "replace",
            "--validate=false",
            "-f",
            &write(dir.path(), "stale.json", &replacement.to_string())?,
        ],
    )
    .await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("(Conflict)") && run.stderr.contains("the object has been modified"),
        "{}",
        run.stderr
    );
    assert_eq!(
        api.get("configmaps", Some("default"), "settings")
            .context("configmap")?["data"]["a"],
        "2"
    );

    let bad = api.write_kubeconfig(&tempdir_in(dir.path(), "bad")?, "not-a-token")?;
    let run = kubectl(&bad, &["get", "namespaces"]).await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("You must be logged in to the server"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test]
async fn a_token_request_token_works_under_rbac_until_it_expires() -> anyhow::Result<()> {
    let (api, dir, config) = fake().await?;
    api.add_node("edge-1", &[("InternalIP", "10.0.0.5")])?;
    let run = kubectl_in(
        &config,
        &["apply", "--validate=false", "-f", "-"],
        Some(MANIFEST),
    )
    .await?;
    ensure!(run.code == 0, "apply failed: {}", run.stderr);
    let path = "/api/v1/namespaces/tether-system/serviceaccounts/tether-agent/token";
    let request = |seconds: i64| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": seconds}})
        .to_string()
    };
    let run = kubectl(
        &config,
        &[
            "create",
            "--raw",
            path,
            "-f",
            &write(dir.path(), "short.json", &request(10))?,
        ],
    )
    .await?;
    assert_ne!(run.code, 0, "the real API's 10-minute minimum holds");
    // kubectl 1.20 prints only "The request is invalid" for a raw 422.
    assert!(
        run.stderr.contains("less than 10 minutes")
            || run.stderr.contains("The request is invalid"),
        "{}",
        run.stderr
    );

    let issued: serde_json::Value = serde_json::from_str(
        &ok(
            &config,
            &[
                "create",
                "--raw",
                path,
                "-f",
                &write(dir.path(), "req.json", &request(600))?,
            ],
        )
        .await?,
    )?;
    assert!(issued["status"]["expirationTimestamp"].is_string());
    let token = issued["status"]["token"].as_str().context("token")?;
    let agent = api.write_kubeconfig(&tempdir_in(dir.path(), "agent")?, token)?;
    assert!(ok(&agent, &["get", "nodes"]).await?.contains("edge-1"));
    let run = kubectl(&agent, &["get", "secrets", "-n", "tether-system"]).await?;
    assert!(
        run.stderr.contains("(Forbidden)")
            && run
                .stderr
                .contains("system:serviceaccount:tether-system:tether-agent"),
        "{}",
        run.stderr
    );

    api.advance_clock(Duration::from_secs(601))?;
    let run = kubectl(&agent, &["get", "nodes"]).await?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("You must be logged in to the server"),
        "{}",
        run.stderr
    );

    // A token is bound to its ServiceAccount: a recreated account is a new
    // object, and the old account's tokens stop working.
    let issued: serde_json::Value = serde_json::from_str(
        &ok(
            &config,
            &[
                "create",
                "--raw",
                path,
                "-f",
                &write(dir.path(), "req.json", &request(600))?,
            ],
        )
        .await?,
    )?;
    let token = issued["status"]["token"].as_str().context("token")?;
    let agent = api.write_kubeconfig(&tempdir_in(dir.path(), "again")?, token)?;
    ok(&agent, &["get", "nodes"]).await?;
    ok(
        &config,
        &[
            "delete",
            "serviceaccount",
            "tether-agent",
            "-n",
            "tether-system",
        ],
    )
    .await?;
    ok(
        &config,
        &[
            "create",
            "serviceaccount",
            "tether-agent",
            "-n",
            "tether-system",
        ],
    )
    .await?;
    let run = kubectl(&agent, &["get", "nodes"]).await?;
    assert!(
        run.stderr.contains("You must be logged in to the server"),
        "{}",
        run.stderr
    );
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

fn tempdir_in(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::create_dir_all(&path)?;
    Ok(path)
}
