//! Deployments' charts end to end: a device spec's `deployments` section
//! set through tetherd's API (as tetherd's renderer will put it there),
//! a real agent managing the fake API server running k3s's or Flux's Helm
//! controller (testkit::fake_kube), and the per-deployment status read
//! back through tetherd.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi, HelmControllers, WEBHOOK};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// What tetherd renders for the device: the chart templates' values with
/// `{{uuid}}`, `{{name}}` and `{{hostname}}` already substituted.
const DEVICE_ID: &str = "5b0c6c1e-8a54-4a51-9d1e-3f1f0e2b7c11";

struct Cluster {
    api: FakeKubeApi,
    _tetherd: Tetherd,
    admin: ApiClient,
    agent: Agent,
    /// The kubeconfig (host mode) or the ServiceAccount's files (cluster mode).
    dir: tempfile::TempDir,
}

/// tetherd, the fake API server running `controllers`, and an agent in
/// host mode with an admin kubeconfig, resyncing every second unless
/// `env` says otherwise.
async fn cluster(
    name: &str,
    controllers: HelmControllers,
    env: &[(&str, &str)],
) -> anyhow::Result<Cluster> {
    let api = FakeKubeApi::start_with(controllers).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = api.write_kubeconfig(dir.path(), ADMIN_TOKEN)?;
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut all_env = vec![
        ("TETHER_AGENT_KUBERNETES", "host"),
        ("TETHER_AGENT_KUBECONFIG", kubeconfig.as_str()),
        ("TETHER_AGENT_CHART_RESYNC_SECONDS", "1"),
    ];
    all_env.extend_from_slice(env);
    let agent = Agent::enroll_with_env(&tetherd, &admin, name, &all_env).await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    Ok(Cluster {
        api,
        _tetherd: tetherd,
        admin,
        agent,
        dir,
    })
}

impl Cluster {
    /// Sets the device's `deployments` section through tetherd's API.
    async fn deploy(&self, deployments: Value) -> anyhow::Result<()> {
        self.admin
            .patch(
                &format!(
                    "/api/v1/devices/{}?updateMask=spec.deployments",
                    self.agent.name
                ),
                json!({"spec": {"deployments": deployments}}),
            )
            .await?
            .expect_status(200)?;
        Ok(())
    }

    /// Waits until tetherd shows `deployment` at `version` in `state`.
    async fn reported(
        &self,
        deployment: &str,
        version: &str,
        state: &str,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/v1/devices/{}", self.agent.name);
        let waited = wait_until(
            &format!("{deployment} to be reported {state} at {version}"),
            WAIT,
            || async {
                let device = self.admin.get(&path).await?.expect_status(200)?;
                let status = &device["status"]["deployments"][deployment];
                Ok((status["version"] == version && status["state"] == state)
                    .then(|| status.clone()))
            },
        )
        .await;
        match waited {
            Ok(status) => Ok(status),
            Err(e) => {
                let device = self.admin.get(&path).await?.expect_status(200)?;
                Err(e.context(format!("the device: {device}\n{}", self.agent.log())))
            }
        }
    }

    /// Waits until `check` holds of the object (`None`: absent).
    async fn object(
        &self,
        what: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        check: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<Option<Value>> {
        wait_until(what, WAIT, || async {
            let object = self.api.get(resource, Some(namespace), name);
            Ok(check(object.as_ref()).then_some(object))
        })
        .await
        .with_context(|| self.agent.log())
    }
}

fn release(name: &str) -> Value {
    json!({"release": name, "chart": "edge-agent", "source": "https://charts.example.com/stable",
           "version": "1.4.0", "namespace": "factory", "hostname": "node-a",
           "values": {"uuid": DEVICE_ID, "nodeId": "line-3", "nodeSelector": {"disk": "ssd"},
                      "replicas": 1}})
}

/// `valuesContent` of a HelmChart, read as the YAML it is.
fn values_content(chart: &Value) -> anyhow::Result<Value> {
    Ok(serde_yaml::from_str(
        chart["spec"]["valuesContent"]
            .as_str()
            .context("valuesContent")?,
    )?)
}

#[tokio::test]
async fn a_deployment_becomes_k3s_helm_charts_kept_through_drift_and_restarts_and_removed()
-> anyhow::Result<()> {
    let mut c = cluster("k3s-charts", HelmControllers::K3s, &[]).await?;
    // k3s's own chart, which the agent must leave alone.
    c.api.seed(
        "helmcharts",
        json!({"metadata": {"name": "traefik", "namespace": "kube-system"},
               "spec": {"chart": "https://%{KUBERNETES_API}%/static/charts/traefik.tgz"}}),
    )?;
    c.deploy(json!({"line-3": {"version": "1", "charts": [
        release("agent"),
        {"release": "monitor", "chart": "monitor", "source": "oci://registry.example.com/charts"},
    ]}}))
    .await?;
    let status = c.reported("line-3", "1", "ready").await?;
    ensure!(status.get("reason").is_none(), "{status}");

    let chart = c
        .api
        .get("helmcharts", Some("kube-system"), "agent")
        .context("the HelmChart")?;
    assert_eq!(chart["apiVersion"], "helm.cattle.io/v1");
    assert_eq!(
        chart["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tether", "tether.dev/deployment": "line-3"})
    );
    assert_eq!(
        chart["metadata"]["annotations"],
        json!({"tether.dev/version": "1"})
    );
    let mut spec = chart["spec"].clone();
    let values = values_content(&chart)?;
    spec.as_object_mut()
        .context("spec")?
        .remove("valuesContent");
    assert_eq!(
        spec,
        json!({"chart": "edge-agent", "repo": "https://charts.example.com/stable",
               "version": "1.4.0", "targetNamespace": "factory", "createNamespace": true})
    );
    assert_eq!(
        values,
        json!({"uuid": DEVICE_ID, "nodeId": "line-3", "replicas": 1,
               "nodeSelector": {"disk": "ssd", "kubernetes.io/hostname": "node-a"}})
    );
    let monitor = c
        .api
        .get("helmcharts", Some("kube-system"), "monitor")
        .context("the OCI HelmChart")?;
    assert_eq!(
        monitor["spec"],
        json!({"chart": "oci://registry.example.com/charts/monitor",
               "targetNamespace": "default", "createNamespace": true})
    );
    ensure!(
        c.api
            .get("jobs", Some("kube-system"), "helm-install-agent")
            .is_some(),
        "k3s's install Job"
    );

    // Edited and deleted by hand: the next resync restores both.
    let mut edited = chart.clone();
    edited["spec"]["version"] = json!("9.9.9");
    edited["spec"]["set"] = json!({"replicas": "5"});
    c.api.replace("helmcharts", edited)?;
    c.api.delete("helmcharts", Some("kube-system"), "monitor")?;
    c.object(
        "the edit undone",
        "helmcharts",
        "kube-system",
        "agent",
        |o| o.is_some_and(|o| o["spec"]["version"] == "1.4.0" && o["spec"].get("set").is_none()),
    )
    .await?;
    c.object(
        "monitor restored",
        "helmcharts",
        "kube-system",
        "monitor",
        |o| o.is_some(),
    )
    .await?;

    // Stopped, then started with no periodic resync: the start alone
    // reconciles what changed meanwhile.
    c.agent.stop().await?;
    let kubeconfig = c.dir.path().join("kubeconfig");
    let kubeconfig = kubeconfig.to_string_lossy();
    let current = c
        .api
        .get("helmcharts", Some("kube-system"), "agent")
        .context("the HelmChart")?;
    let mut edited = current.clone();
    edited["spec"]["valuesContent"] = json!("replicas: 7\n");
    c.api.replace("helmcharts", edited)?;
    c.api.delete("helmcharts", Some("kube-system"), "monitor")?;
    c.agent.set_env(&[
        ("TETHER_AGENT_KUBERNETES", "host"),
        ("TETHER_AGENT_KUBECONFIG", &kubeconfig),
        ("TETHER_AGENT_CHART_RESYNC_SECONDS", "86400"),
    ]);
    c.agent.start()?;
    c.object(
        "values restored at start",
        "helmcharts",
        "kube-system",
        "agent",
        |o| o.is_some_and(|o| o["spec"]["valuesContent"] == chart["spec"]["valuesContent"]),
    )
    .await?;
    c.object(
        "monitor restored at start",
        "helmcharts",
        "kube-system",
        "monitor",
        |o| o.is_some(),
    )
    .await?;

    // A new version changes the chart; the deployment is deleted: its
    // charts go, k3s's stays.
    let mut upgraded = release("agent");
    upgraded["version"] = json!("1.5.0");
    c.deploy(json!({"line-3": {"version": "2", "charts": [upgraded]}}))
        .await?;
    c.reported("line-3", "2", "ready").await?;
    c.object(
        "monitor removed",
        "helmcharts",
        "kube-system",
        "monitor",
        |o| o.is_none(),
    )
    .await?;
    let agent = c
        .api
        .get("helmcharts", Some("kube-system"), "agent")
        .context("the HelmChart")?;
    assert_eq!(agent["spec"]["version"], "1.5.0");
    assert_eq!(agent["metadata"]["annotations"]["tether.dev/version"], "2");
    c.deploy(json!({})).await?;
    c.object("agent removed", "helmcharts", "kube-system", "agent", |o| {
        o.is_none()
    })
    .await?;
    ensure!(
        c.api
            .get("helmcharts", Some("kube-system"), "traefik")
            .is_some(),
        "k3s's own chart is not the agent's to remove"
    );
    Ok(())
}

#[tokio::test]
async fn refusals_and_failed_installs_are_reported_with_their_reasons_and_stop_nothing_else()
-> anyhow::Result<()> {
    let c = cluster("k3s-refusals", HelmControllers::K3s, &[]).await?;
    c.api.deny(
        "helmcharts",
        "denied",
        "charts from this repository are not allowed",
    );
    c.api
        .fail_installs("broken", "unused by k3s: the Job's log has it");
    c.api.seed(
        "helmcharts",
        json!({"metadata": {"name": "traefik", "namespace": "kube-system"},
               "spec": {"chart": "traefik"}}),
    )?;
    c.deploy(json!({
        "refused": {"version": "1", "charts": [release("denied")]},
        "broken": {"version": "1", "charts": [release("broken")]},
        "taken": {"version": "1", "charts": [release("traefik")]},
        "twice": {"version": "1", "charts": [release("good")]},
        "good": {"version": "1", "charts": [release("good"), release("fine")]},
    }))
    .await?;
    c.reported("good", "1", "ready").await?;
    let refused = c.reported("refused", "1", "failed").await?;
    let reason = refused["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.starts_with("release denied: cannot create the HelmChart kube-system/denied")
            && reason.contains(&format!(
                "admission webhook \"{WEBHOOK}\" denied the request: charts from this repository are not allowed"
            )),
        "{refused}"
    );
    let broken = c.reported("broken", "1", "failed").await?;
    ensure!(
        broken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without succeeding")
                && r.contains("kube-system/helm-install-broken")),
        "{broken}"
    );
    let taken = c.reported("taken", "1", "failed").await?;
    ensure!(
        taken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exists and is not tether's")),
        "{taken}"
    );
    let twice = c.reported("twice", "1", "failed").await?;
    ensure!(
        twice["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the deployment good has a release of this name")),
        "{twice}"
    );
    let traefik = c
        .api
        .get("helmcharts", Some("kube-system"), "traefik")
        .context("k3s's chart")?;
    ensure!(
        traefik["spec"] == json!({"chart": "traefik"}),
        "untouched: {traefik}"
    );
    ensure!(
        c.api
            .get("helmcharts", Some("kube-system"), "fine")
            .is_some(),
        "the good deployment's releases are all there"
    );
    Ok(())
}

#[tokio::test]
async fn flux_gets_a_helm_release_and_its_repository_with_the_agents_cluster_role()
-> anyhow::Result<()> {
    // The agent as the join manifest runs it: in cluster mode, as a
    // ServiceAccount with exactly the ClusterRole tetherd's manifest grants.
    let api = FakeKubeApi::start_with(HelmControllers::Flux).await?;
    let rules = tether_server::join::agent_cluster_rules();
    api.seed("namespaces", json!({"metadata": {"name": "tether-system"}}))?;
    api.seed(
        "serviceaccounts",
        json!({"metadata": {"name": "tether-agent", "namespace": "tether-system"}}),
    )?;
    api.seed(
        "clusterroles",
        json!({"metadata": {"name": "tether-agent"}, "rules": rules}),
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
    api.seed(
        "rolebindings",
        json!({"metadata": {"name": "tether-agent", "namespace": "tether-system"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tether-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "tether-agent", "namespace": "tether-system"}]}),
    )?;
    let token = service_account_token(&api, "tether-system", "tether-agent").await?;
    let account = tempfile::tempdir()?;
    std::fs::write(account.path().join("token"), &token)?;
    std::fs::write(account.path().join("ca.crt"), &api.ca_pem)?;
    std::fs::write(account.path().join("namespace"), "tether-system")?;
    let port = api.url.rsplit(':').next().context("port")?.to_owned();
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let account_dir = account.path().to_string_lossy().into_owned();
    let agent = Agent::enroll_with_env(
        &tetherd,
        &admin,
        "flux-charts",
        &[
            ("TETHER_AGENT_KUBERNETES", "cluster"),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", &port),
            ("TETHER_AGENT_KUBERNETES_SERVICE_ACCOUNT_DIR", &account_dir),
            ("TETHER_AGENT_CHART_RESYNC_SECONDS", "1"),
        ],
    )
    .await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    let c = Cluster {
        api,
        _tetherd: tetherd,
        admin,
        agent,
        dir: account,
    };
    let mut oci = release("agent");
    oci["source"] = json!("oci://registry.example.com/charts");
    c.deploy(json!({"line-3": {"version": "7", "charts": [oci]}}))
        .await?;
    c.reported("line-3", "7", "ready").await?;
    let repository = c
        .api
        .get("helmrepositories", Some("flux-system"), "agent")
        .context("the HelmRepository")?;
    assert_eq!(repository["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(
        repository["spec"],
        json!({"url": "oci://registry.example.com/charts", "interval": "10m", "type": "oci"})
    );
    let helm_release = c
        .api
        .get("helmreleases", Some("flux-system"), "agent")
        .context("the HelmRelease")?;
    assert_eq!(helm_release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    assert_eq!(
        helm_release["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tether", "tether.dev/deployment": "line-3"})
    );
    assert_eq!(
        helm_release["spec"],
        json!({"interval": "10m", "releaseName": "agent", "targetNamespace": "factory",
               "install": {"createNamespace": true},
               "chart": {"spec": {"chart": "edge-agent", "version": "1.4.0",
                                  "reconcileStrategy": "ChartVersion",
                                  "sourceRef": {"kind": "HelmRepository", "name": "agent"}}},
               "values": {"uuid": DEVICE_ID, "nodeId": "line-3", "replicas": 1,
                          "nodeSelector": {"disk": "ssd", "kubernetes.io/hostname": "node-a"}}})
    );

    // A failed upgrade is the deployment's failure, with Flux's message.
    c.api
        .fail_installs("agent", "image edge-agent:1.5.0 not found");
    let mut upgraded = release("agent");
    upgraded["version"] = json!("1.5.0");
    c.deploy(json!({"line-3": {"version": "8", "charts": [upgraded]}}))
        .await?;
    let failed = c.reported("line-3", "8", "failed").await?;
    ensure!(
        failed["reason"].as_str().is_some_and(|r| r.contains(
            "Helm upgrade failed for release factory/agent with chart edge-agent@1.5.0: image edge-agent:1.5.0 not found"
        ) && r.contains("UpgradeFailed")),
        "{failed}"
    );

    c.api
        .delete("helmrepositories", Some("flux-system"), "agent")?;
    c.object(
        "the repository restored",
        "helmrepositories",
        "flux-system",
        "agent",
        |o| o.is_some(),
    )
    .await?;
    c.deploy(json!({})).await?;
    c.object(
        "the release removed",
        "helmreleases",
        "flux-system",
        "agent",
        |o| o.is_none(),
    )
    .await?;
    c.object(
        "the repository removed",
        "helmrepositories",
        "flux-system",
        "agent",
        |o| o.is_none(),
    )
    .await?;
    let forbidden: Vec<_> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some("system:serviceaccount:tether-system:tether-agent"))
        .collect();
    ensure!(
        !forbidden.is_empty(),
        "the agent acted as its ServiceAccount"
    );
    ensure!(
        !c.agent.log().contains("forbidden"),
        "the ClusterRole allows all it does:\n{}",
        c.agent.log()
    );
    Ok(())
}

/// A TokenRequest token for the ServiceAccount, as `kubectl create token` gets one.
async fn service_account_token(
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

#[tokio::test]
async fn a_device_without_a_cluster_reports_its_charts_failed() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll(&tetherd, &admin, "plain-charts").await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    admin
        .patch(
            "/api/v1/devices/plain-charts?updateMask=spec.deployments",
            json!({"spec": {"deployments": {"line-3": {"version": "1", "charts": [release("agent")]}}}}),
        )
        .await?
        .expect_status(200)?;
    let status = wait_until("the charts reported failed", WAIT, || async {
        let device = admin
            .get("/api/v1/devices/plain-charts")
            .await?
            .expect_status(200)?;
        let status = &device["status"]["deployments"]["line-3"];
        Ok((status["state"] == "failed").then(|| status.clone()))
    })
    .await
    .with_context(|| agent.log())?;
    ensure!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("this device manages no Kubernetes cluster")),
        "{status}"
    );
    Ok(())
}
