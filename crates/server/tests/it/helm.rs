//! The Helm charts (ADR 0037), rendered by Helm v4's own engine
//! (`scripts/helm-template`, PyPI's helm-python-sdk) and applied with the
//! real `kubectl apply --dry-run=server` to testkit's fake API server: it
//! accepts every object and stores none. Values that cannot work are
//! refused at render time, naming the value and what to set. The agent's
//! chart renders exactly the objects tetherd's join manifest has, so the
//! two cannot drift apart.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi, kinds_and_names};
use tether_testkit::{Database, Tetherd};
use tokio::io::AsyncWriteExt;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart(name: &str) -> String {
    repository()
        .join("deploy/helm")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The venv `scripts/test` installs helm-python-sdk into.
fn python() -> anyhow::Result<PathBuf> {
    let python = repository().join("target/helm-venv/bin/python");
    ensure!(
        python.exists(),
        "helm-python-sdk is not installed: run ./scripts/test once (it installs \
         helm-python-sdk==0.2.2 from PyPI into target/helm-venv)"
    );
    Ok(python)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut command: tokio::process::Command, stdin: &str) -> anyhow::Result<Run> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the command")?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .context("the command did not finish in a minute")??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `scripts/helm-template ARGS`.
async fn helm_template(args: &[&str]) -> anyhow::Result<Run> {
    let mut command = tokio::process::Command::new(python()?);
    command
        .arg(repository().join("scripts/helm-template"))
        .args(args);
    run(command, "").await
}

/// Renders, failing the test with Helm's message if it refuses.
async fn render(args: &[&str]) -> anyhow::Result<String> {
    let rendered = helm_template(args).await?;
    ensure!(
        rendered.code == 0,
        "helm-template {args:?} failed: {}",
        rendered.stderr
    );
    Ok(rendered.stdout)
}

/// The real `kubectl apply --dry-run=server -f -` against the fake. The
/// fake serves no OpenAPI document, without which kubectl refuses to
/// validate on its side (fake_kube's documentation): `--validate=false`.
async fn dry_run(api: &FakeKubeApi, dir: &Path, manifests: &str) -> anyhow::Result<Run> {
    let kubeconfig = api.write_kubeconfig(dir, ADMIN_TOKEN)?;
    let mut command = tokio::process::Command::new("kubectl");
    command
        .args(["apply", "--dry-run=server", "--validate=false", "-f", "-"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", dir);
    run(command, manifests).await
}

/// The YAML documents as JSON values.
fn objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).context("a YAML document")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .with_context(|| format!("no {kind} in {:?}", kinds_and_names(objects)))
}

/// Asserts the dry run stored nothing: every write kubectl sent was a dry
/// run, and no object of these kinds is in the namespace.
fn assert_stored_nothing(api: &FakeKubeApi, namespace: &str, plurals: &[&str]) {
    let writes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(!writes.is_empty(), "kubectl sent no write");
    for write in &writes {
        assert!(
            write.query.split('&').any(|p| p == "dryRun=All"),
            "{} {}?{} was not a dry run",
            write.method,
            write.path,
            write.query
        );
    }
    for plural in plurals {
        let stored: Vec<_> = api
            .list(plural)
            .into_iter()
            .filter(|o| o["metadata"]["namespace"] == namespace)
            .collect();
        assert!(stored.is_empty(), "the dry run stored {plural}: {stored:?}");
    }
}

/// The chart's defaults: one replica on SQLite in a claimed volume, its own
/// CA, locked down, its config one tetherd reads; accepted by the API
/// server, which stores nothing; and refused where the namespace is
/// missing, as a real API server refuses it.
#[tokio::test]
async fn the_tetherd_chart_with_its_defaults_is_accepted_by_a_dry_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rendered = render(&["tetherd", &chart("tetherd"), "--namespace", "tether"]).await?;
    let objects = objects(&rendered)?;
    assert_eq!(
        kinds_and_names(&objects),
        [
            "ServiceAccount tetherd",
            "ConfigMap tetherd",
            "PersistentVolumeClaim tetherd",
            "Service tetherd",
            "Deployment tetherd",
        ]
    );
    assert_eq!(
        of_kind(&objects, "ServiceAccount")?["automountServiceAccountToken"],
        false
    );
    let deployment = of_kind(&objects, "Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
               "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert!(pod["initContainers"].is_null(), "no Secret to copy: {pod}");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "tetherd:0.1.0");
    assert_eq!(
        container["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // tetherd migrates its database before it listens: an upgrade over a
    // large one is not killed after the three minutes it used to get.
    let startup = &container["startupProbe"];
    assert_eq!(
        startup["periodSeconds"].as_u64().context("periodSeconds")?
            * startup["failureThreshold"]
                .as_u64()
                .context("failureThreshold")?,
        600
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert!(container["env"].is_null(), "no database URL: SQLite");
    // The claim holds the CA's key and SQLite: `helm uninstall`, or an
    // upgrade to replicas (which stops rendering it), must not delete it.
    assert_eq!(
        of_kind(&objects, "PersistentVolumeClaim")?["metadata"]["annotations"],
        json!({"helm.sh/resource-policy": "keep"})
    );
    assert_eq!(
        pod["volumes"][1],
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "tetherd"}})
    );
    let ports: Vec<_> = of_kind(&objects, "Service")?["spec"]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .map(|p| (p["name"].clone(), p["port"].clone()))
        .collect();
    assert_eq!(
        ports,
        [(json!("https"), json!(8443)), (json!("mqtt"), json!(8883))]
    );

    // The ConfigMap's file is one tetherd reads, with the Service's names.
    let toml = of_kind(&objects, "ConfigMap")?["data"]["tetherd.toml"]
        .as_str()
        .context("tetherd.toml")?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, toml)?;
    let printed = tokio::process::Command::new(tether_testkit::binaries::binary("tetherd")?)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--print-config")
        .output()
        .await?;
    ensure!(
        printed.status.success(),
        "tetherd refused the chart's config: {}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains(
            r#"public_hosts = ["tetherd.tether.svc", "tetherd.tether.svc.cluster.local"]"#
        ),
        "{printed}"
    );

    let api = FakeKubeApi::start().await?;
    let missing = dry_run(&api, dir.path(), &rendered).await?;
    assert_ne!(missing.code, 0, "{}", missing.stdout);
    assert!(
        missing.stderr.contains(r#"namespaces "tether" not found"#),
        "{}",
        missing.stderr
    );
    api.seed("namespaces", json!({"metadata": {"name": "tether"}}))?;
    let applied = dry_run(&api, dir.path(), &rendered).await?;
    ensure!(applied.code == 0, "kubectl refused: {}", applied.stderr);
    assert_eq!(
        applied.stdout.lines().collect::<Vec<_>>(),
        [
            "serviceaccount/tetherd created (server dry run)",
            "configmap/tetherd created (server dry run)",
            "persistentvolumeclaim/tetherd created (server dry run)",
            "service/tetherd created (server dry run)",
            "deployment.apps/tetherd created (server dry run)",
        ]
    );
    assert_stored_nothing(
        &api,
        "tether",
        &[
            "serviceaccounts",
            "configmaps",
            "persistentvolumeclaims",
            "services",
            "deployments",
            "pods",
        ],
    );
    Ok(())
}

/// Three replicas on PostgreSQL, the CA from a TLS Secret and the shared
/// files from another, behind a LoadBalancer: the URL only by reference
/// to its Secret, the Secrets' files copied into the data dir, a
/// PodDisruptionBudget, no claim; accepted by the API server, which
/// stores nothing.
#[tokio::test]
async fn the_tetherd_chart_with_replicas_postgres_and_tls_secrets_is_accepted() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "replicas: 3\n\
         publicHosts: [tether.example, 192.0.2.10]\n\
         database: {existingSecret: tetherd-database, urlKey: url}\n\
         tls: {existingSecret: tetherd-ca}\n\
         sharedSecrets: {existingSecret: tetherd-shared}\n\
         service: {type: LoadBalancer}\n",
    )?;
    let values = values.to_string_lossy().into_owned();
    let rendered = render(&[
        "fleet",
        &chart("tetherd"),
        "-f",
        &values,
        "--namespace",
        "tether",
    ])
    .await?;
    let objects = objects(&rendered)?;
    assert_eq!(
        kinds_and_names(&objects),
        [
            "PodDisruptionBudget fleet",
            "ServiceAccount fleet",
            "ConfigMap fleet",
            "Service fleet",
            "Deployment fleet",
        ]
    );
    assert!(!rendered.contains("postgres"), "{rendered}");
    let toml = of_kind(&objects, "ConfigMap")?["data"]["tetherd.toml"]
        .as_str()
        .context("tetherd.toml")?;
    assert!(
        toml.contains(r#"public_hosts = ["tether.example","192.0.2.10","fleet.tether.svc","#),
        "{toml}"
    );
    assert_eq!(
        of_kind(&objects, "PodDisruptionBudget")?["spec"]["maxUnavailable"],
        1
    );
    assert_eq!(
        of_kind(&objects, "Service")?["spec"]["type"],
        "LoadBalancer"
    );
    let deployment = of_kind(&objects, "Deployment")?;
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["env"],
        json!([{"name": "TETHER_DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": "tetherd-database", "key": "url"}}}])
    );
    let volumes = pod["volumes"].as_array().context("volumes")?;
    assert!(volumes.contains(&json!({"name": "data", "emptyDir": {}})));
    let secrets = volumes
        .iter()
        .find(|v| v["name"] == "secrets")
        .context("the Secrets' volume")?;
    assert_eq!(
        secrets["projected"]["sources"],
        json!([
            {"secret": {"name": "tetherd-ca", "items": [
                {"key": "tls.crt", "path": "ca.pem"}, {"key": "tls.key", "path": "ca-key.pem"}]}},
            {"secret": {"name": "tetherd-shared", "items": [
                {"key": "sealing.key", "path": "sealing.key"},
                {"key": "release-signing-key.pk8", "path": "release-signing-key.pk8"},
                {"key": "release-token.key", "path": "release-token.key"}]}},
        ])
    );
    let copy = &pod["initContainers"][0];
    assert_eq!(copy["name"], "copy-secrets");
    assert_eq!(
        copy["securityContext"]["readOnlyRootFilesystem"], true,
        "{copy}"
    );

    let api = FakeKubeApi::start().await?;
    api.seed("namespaces", json!({"metadata": {"name": "tether"}}))?;
    let applied = dry_run(&api, dir.path(), &rendered).await?;
    ensure!(applied.code == 0, "kubectl refused: {}", applied.stderr);
    assert_eq!(
        applied.stdout.lines().collect::<Vec<_>>(),
        [
            "poddisruptionbudget.policy/fleet created (server dry run)",
            "serviceaccount/fleet created (server dry run)",
            "configmap/fleet created (server dry run)",
            "service/fleet created (server dry run)",
            "deployment.apps/fleet created (server dry run)",
        ]
    );
    assert_stored_nothing(
        &api,
        "tether",
        &[
            "poddisruptionbudgets",
            "serviceaccounts",
            "configmaps",
            "services",
            "deployments",
            "pods",
        ],
    );
    Ok(())
}

/// Values that cannot work are refused before anything reaches a cluster,
/// with Helm's message naming the value and what to set.
#[tokio::test]
async fn bad_chart_values_are_refused_naming_the_value() -> anyhow::Result<()> {
    let tetherd = chart("tetherd");
    let refused = [
        (
            vec!["--set", "replicas=two"],
            "at '/replicas': got string, want integer",
        ),
        (
            vec!["--set", "replicas=0"],
            "at '/replicas': minimum: got 0, want 1",
        ),
        (
            vec!["--set", "replicas=2"],
            "replicas: 2 needs PostgreSQL: set database.existingSecret",
        ),
        (
            vec!["--set", "replicas=2", "--set", "database.existingSecret=db"],
            "replicas: 2 needs the files every replica shares: set sharedSecrets.existingSecret",
        ),
        (vec!["--set", "service.type=Ingress"], "at '/service/type'"),
        // The chart's own annotation: a second one is a duplicate key.
        (
            vec!["--set", "podAnnotations.checksum/config=x"],
            "invalid propertyName 'checksum/config'",
        ),
        (
            vec!["--set", "startupTimeoutSeconds=5"],
            "at '/startupTimeoutSeconds': minimum: got 5, want 10",
        ),
        (
            vec!["--set", "service.mqttPort=8443"],
            "service.apiPort and service.mqttPort are both 8443",
        ),
        // Devices outside would be given only in-cluster names.
        (
            vec!["--set", "service.type=LoadBalancer"],
            "service.type LoadBalancer is for devices outside the cluster: set publicHosts",
        ),
        // A password in a ConfigMap, and keys the chart writes (a second
        // one is a TOML error tetherd would crash-loop on).
        (
            vec![
                "--set-string",
                "config=database_url = \"postgres://tether:hunter2@db:5432/tether\"",
            ],
            "config sets database_url: the URL holds a password",
        ),
        (
            vec!["--set-string", "config=log_level = \"debug\""],
            "config sets log_level, which the chart writes",
        ),
    ];
    for (values, message) in refused {
        let mut args = vec!["tetherd", tetherd.as_str()];
        args.extend(values.iter().copied());
        let run = helm_template(&args).await?;
        assert_ne!(run.code, 0, "{values:?} rendered: {}", run.stdout);
        assert!(
            run.stderr.contains(message),
            "{values:?}: {:?} is not in {}",
            message,
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{values:?}: {}", run.stdout);
        assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    }
    // Helm allows release names a Service may not have.
    for release in ["tether.prod", "1tether"] {
        let run = helm_template(&[release, &tetherd]).await?;
        assert_ne!(run.code, 0, "{release} rendered: {}", run.stdout);
        assert!(
            run.stderr.contains(&format!(
                "the release name \"{release}\" names the Service and its in-cluster host names, which must be a DNS label"
            )),
            "{release}: {}",
            run.stderr
        );
    }
    // Keys of a table are the table's: `[retention]` may have any.
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "config: |\n  [retention]\n  log_level = 1\n  events_days = 30\n",
    )?;
    let tables = render(&["tetherd", &tetherd, "-f", &values.to_string_lossy()]).await?;
    assert!(tables.contains("events_days = 30"), "{tables}");
    let agent = helm_template(&["tether-agent", &chart("tether-agent")]).await?;
    assert_ne!(agent.code, 0);
    for value in ["/device", "/enrollmentToken", "/server", "/caSha256"] {
        assert!(agent.stderr.contains(value), "{value}: {}", agent.stderr);
    }
    // A name tetherd would not have given (DeviceId): a label value the
    // API server refuses, or an agent that never enrolls.
    let misnamed = helm_template(&[
        "tether-agent",
        &chart("tether-agent"),
        "--set-string",
        "device=Edge 1",
    ])
    .await?;
    assert_ne!(misnamed.code, 0, "{}", misnamed.stdout);
    assert!(
        misnamed
            .stderr
            .contains("at '/device': 'Edge 1' does not match pattern"),
        "{}",
        misnamed.stderr
    );
    let in_its_namespace = helm_template(&[
        "tether-agent",
        &chart("tether-agent"),
        "--namespace",
        "tether-system",
        "--set-string",
        "device=edge-1",
        "--set-string",
        "enrollmentToken=t",
        "--set-string",
        "server=https://tether.example:8443",
        "--set-string",
        &format!("caSha256={}", "0".repeat(64)),
    ])
    .await?;
    assert_ne!(in_its_namespace.code, 0, "{}", in_its_namespace.stdout);
    assert!(
        in_its_namespace
            .stderr
            .contains("install the release from another namespace"),
        "{}",
        in_its_namespace.stderr
    );
    Ok(())
}

/// The agent's chart, given a device's values, renders the very objects
/// tetherd's join manifest (`GET /join/{token}`) has, with and without
/// the management shell; compared as parsed objects. The values are what
/// an operator has: the device, its token, tetherd's URL and its CA's
/// SHA-256 by the command values.yaml gives; the images are both sides'
/// defaults. Nothing differs, not even the per-device Secret: it holds
/// the token the values give. The render is then accepted by the API
/// server's dry run, which stores nothing.
#[tokio::test]
async fn the_agent_chart_renders_the_join_manifest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for shell in [false, true] {
        let config = dir.path().join("tetherd.toml");
        std::fs::write(
            &config,
            format!("[kubernetes]\nmanagement_shell = {shell}\n"),
        )?;
        let config = config.to_string_lossy().into_owned();
        let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
        let created = tetherd
            .admin()
            .await?
            .post("/api/v1/devices", json!({"name": "edge-1"}))
            .await?
            .expect_status(201)?;
        let token = created["enrollment"]["token"].as_str().context("token")?;
        let (status, manifest) = tetherd
            .anonymous()?
            .get_text(&format!("/api/v1/join/{token}"))
            .await?;
        ensure!(status == 200, "GET /join: {status} {manifest}");

        let fingerprint = run(
            {
                let mut command = tokio::process::Command::new("sh");
                command.arg("-c").arg(format!(
                    "openssl x509 -in '{}' -outform DER | sha256sum",
                    tetherd.ca_path().display()
                ));
                command
            },
            "",
        )
        .await?;
        let ca_sha256 = fingerprint
            .stdout
            .split_whitespace()
            .next()
            .context("sha256sum's output")?;
        let rendered = render(&[
            "tether-agent",
            &chart("tether-agent"),
            "--set-string",
            "device=edge-1",
            "--set-string",
            &format!("enrollmentToken={token}"),
            "--set-string",
            &format!("server={}", tetherd.api_url),
            "--set-string",
            &format!("caSha256={ca_sha256}"),
            "--set",
            &format!("managementShell.enabled={shell}"),
        ])
        .await?;
        let by_name = |mut objects: Vec<Value>| {
            objects.sort_by_key(|o| format!("{} {}", o["kind"], o["metadata"]["name"]));
            objects
        };
        let served = by_name(objects(&manifest)?);
        let charted = by_name(objects(&rendered)?);
        assert_eq!(
            kinds_and_names(&charted),
            kinds_and_names(&served),
            "management shell {shell}"
        );
        for (charted, served) in charted.iter().zip(&served) {
            assert_eq!(charted, served, "management shell {shell}");
        }

        let api = FakeKubeApi::start().await?;
        // A dry run creates no namespace for the next objects to go in,
        // on a real API server too: it is made first.
        api.seed("namespaces", json!({"metadata": {"name": "tether-system"}}))?;
        let applied = dry_run(&api, dir.path(), &rendered).await?;
        ensure!(applied.code == 0, "kubectl refused: {}", applied.stderr);
        assert!(
            applied
                .stdout
                .contains("namespace/tether-system configured (server dry run)"),
            "{}",
            applied.stdout
        );
        assert!(
            applied
                .stdout
                .contains("deployment.apps/tether-agent created (server dry run)"),
            "{}",
            applied.stdout
        );
        assert_stored_nothing(
            &api,
            "tether-system",
            &[
                "serviceaccounts",
                "secrets",
                "roles",
                "rolebindings",
                "deployments",
                "services",
                "persistentvolumeclaims",
            ],
        );
        assert!(api.get("clusterroles", None, "tether-agent").is_none());
        let namespace = api
            .get("namespaces", None, "tether-system")
            .context("the namespace")?;
        assert!(
            namespace["metadata"]["labels"].is_null(),
            "the dry-run patch was stored: {namespace}"
        );
    }
    Ok(())
}

/// `helm lint` (Helm's own, from the same library) finds no error in
/// either chart given working values: the Chart.yaml fields, the
/// templates and the schema are what Helm expects.
#[tokio::test]
async fn both_charts_pass_helm_lint() -> anyhow::Result<()> {
    let script = r#"
import json, sys
import helm_python as helm
for path, values in json.loads(sys.stdin.read()):
    report = helm.lint(path, values=values, strict=True)
    print(json.dumps([path, report["errors"]]))
"#;
    let charts = json!([
        [chart("tetherd"), {}],
        [chart("tether-agent"), {"device": "edge-1", "enrollmentToken": "t",
                                  "server": "https://tether.example:8443",
                                  "caSha256": "ab".repeat(32)}],
    ]);
    let mut command = tokio::process::Command::new(python()?);
    command.arg("-c").arg(script);
    let linted = run(command, &charts.to_string()).await?;
    ensure!(linted.code == 0, "helm lint failed: {}", linted.stderr);
    let reports: Vec<Value> = linted
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(reports.len(), 2, "{}", linted.stdout);
    for report in reports {
        assert_eq!(report[1], json!([]), "{report}");
    }
    Ok(())
}
