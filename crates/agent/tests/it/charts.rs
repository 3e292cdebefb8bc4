//! Deployments' charts end to end: chart templates and deployments created
//! through tetherd's API and rendered into the device's spec, a real agent
//! managing the fake API server running k3s's or Flux's Helm controller
//! (testkit::fake_kube), and the per-deployment status read back through
//! tetherd.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tether_testkit::fake_kube::{ADMIN_TOKEN, FakeKubeApi, HelmControllers, WEBHOOK};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

const WAIT: Duration = Duration::from_secs(30);

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
    /// Creates a chart template.
    async fn template(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        self.admin
            .post(
                "/api/v1/chart-templates",
                json!({"name": name, "spec": spec}),
            )
            .await?
            .expect_status(201)?;
        Ok(())
    }

    /// A deployment of `charts` (template names) to this device, pinned to
    /// `node-a`, with `values` over the templates'.
    fn deployment(&self, charts: &[&str], values: Value) -> Value {
        json!({"target": {"device": self.agent.name}, "hostname": "node-a",
               "charts": charts, "values": values})
    }

    /// Creates the deployment `name`.
    async fn deploy(&self, name: &str, charts: &[&str], values: Value) -> anyhow::Result<()> {
        self.admin
            .post(
                "/api/v1/deployments",
                json!({"name": name, "spec": self.deployment(charts, values)}),
            )
            .await?
            .expect_status(201)?;
        Ok(())
    }

    /// Waits until tetherd's rollout status shows this device at
    /// `revision` of `deployment` in `state` (failed ones also rolled back).
    async fn reported(
        &self,
        deployment: &str,
        revision: u64,
        state: &str,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/v1/deployments/{deployment}/status");
        let waited = wait_until(
            &format!("{deployment} to be reported {state} at revision {revision}"),
            WAIT,
            || async {
                let status = self.admin.get(&path).await?.expect_status(200)?;
                let device = status["devices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["device"] == self.agent.name.as_str())
                    .cloned()
                    .unwrap_or_default();
                let here = device["revision"] == revision && device["state"] == state;
                // A failed device is rolled back at once; its entry keeps why.
                let rolled_back = state == "failed"
                    && device["rolledBack"] == true
                    && status["revision"] == revision;
                Ok((here || rolled_back).then_some(device))
            },
        )
        .await;
        match waited {
            Ok(device) => Ok(device),
            Err(e) => {
                let status = self.admin.get(&path).await?.expect_status(200)?;
                Err(e.context(format!("the status: {status}\n{}", self.agent.log())))
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

/// A chart template as an operator writes it, with seed 002's placeholders.
fn edge_agent() -> Value {
    json!({"chart": "edge-agent", "source": "https://charts.example.com/stable",
           "version": "1.4.0", "namespace": "factory",
           "values": {"uuid": "{{uuid}}", "nodeId": "{{name}}", "host": "{{hostname}}",
                      "label": "x-{{name}}", "nodeSelector": {"disk": "ssd"}, "replicas": 1}})
}

/// Its values as the device gets them: substituted, the deployment's
/// `replicas` over the template's, and the pinned node's selector.
fn installed_values(device: &str, replicas: u64) -> Value {
    json!({"uuid": device, "nodeId": "line-3", "host": "node-a", "label": "x-{{name}}",
           "replicas": replicas,
           "nodeSelector": {"disk": "ssd", "kubernetes.io/hostname": "node-a"}})
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
    c.template("agent", edge_agent()).await?;
    c.template(
        "monitor",
        json!({"chart": "monitor", "source": "oci://registry.example.com/charts"}),
    )
    .await?;
    c.deploy("line-3", &["agent", "monitor"], json!({"replicas": 2}))
        .await?;
    let status = c.reported("line-3", 1, "ready").await?;
    ensure!(status.get("reason").is_none(), "{status}");

    let chart = c
        .api
        .get("helmcharts", Some("kube-system"), "line-3-agent")
        .context("the HelmChart")?;
    assert_eq!(chart["apiVersion"], "helm.cattle.io/v1");
    assert_eq!(
        chart["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tether", "tether.dev/deployment": "line-3"})
    );
    ensure!(
        chart["metadata"]["annotations"]["tether.dev/version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1-")),
        "the deployment's version: {chart}"
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
    assert_eq!(values, installed_values(&c.agent.name, 2));
    let monitor = c
        .api
        .get("helmcharts", Some("kube-system"), "line-3-monitor")
        .context("the OCI HelmChart")?;
    // The deployment's values and node go to each of its releases.
    assert_eq!(
        values_content(&monitor)?,
        json!({"replicas": 2, "nodeSelector": {"kubernetes.io/hostname": "node-a"}})
    );
    let mut spec = monitor["spec"].clone();
    spec.as_object_mut()
        .context("spec")?
        .remove("valuesContent");
    assert_eq!(
        spec,
        json!({"chart": "oci://registry.example.com/charts/monitor",
               "targetNamespace": "default", "createNamespace": true})
    );
    ensure!(
        c.api
            .get("jobs", Some("kube-system"), "helm-install-line-3-agent")
            .is_some(),
        "k3s's install Job"
    );

    // Edited and deleted by hand: the next resync restores both.
    let mut edited = chart.clone();
    edited["spec"]["version"] = json!("9.9.9");
    edited["spec"]["set"] = json!({"replicas": "5"});
    c.api.replace("helmcharts", edited)?;
    c.api
        .delete("helmcharts", Some("kube-system"), "line-3-monitor")?;
    c.object(
        "the edit undone",
        "helmcharts",
        "kube-system",
        "line-3-agent",
        |o| o.is_some_and(|o| o["spec"]["version"] == "1.4.0" && o["spec"].get("set").is_none()),
    )
    .await?;
    c.object(
        "monitor restored",
        "helmcharts",
        "kube-system",
        "line-3-monitor",
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
        .get("helmcharts", Some("kube-system"), "line-3-agent")
        .context("the HelmChart")?;
    let mut edited = current.clone();
    edited["spec"]["valuesContent"] = json!("replicas: 7\n");
    c.api.replace("helmcharts", edited)?;
    c.api
        .delete("helmcharts", Some("kube-system"), "line-3-monitor")?;
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
        "line-3-agent",
        |o| o.is_some_and(|o| o["spec"]["valuesContent"] == chart["spec"]["valuesContent"]),
    )
    .await?;
    c.object(
        "monitor restored at start",
        "helmcharts",
        "kube-system",
        "line-3-monitor",
        |o| o.is_some(),
    )
    .await?;

    // A new version changes the chart; the deployment is deleted: its
    // charts go, k3s's stays.
    c.admin
        .put_json(
            "/api/v1/deployments/line-3",
            c.deployment(&["agent"], json!({"replicas": 3})),
        )
        .await?
        .expect_status(200)?;
    c.reported("line-3", 2, "ready").await?;
    c.object(
        "monitor removed",
        "helmcharts",
        "kube-system",
        "line-3-monitor",
        |o| o.is_none(),
    )
    .await?;
    let agent = c
        .api
        .get("helmcharts", Some("kube-system"), "line-3-agent")
        .context("the HelmChart")?;
    assert_eq!(values_content(&agent)?, installed_values(&c.agent.name, 3));
    ensure!(
        agent["metadata"]["annotations"]["tether.dev/version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2-")),
        "{agent}"
    );
    c.admin
        .delete("/api/v1/deployments/line-3")
        .await?
        .expect_status(202)?;
    c.object(
        "agent removed",
        "helmcharts",
        "kube-system",
        "line-3-agent",
        |o| o.is_none(),
    )
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
        "refused-denied",
        "charts from this repository are not allowed",
    );
    c.api
        .fail_installs("broken-broken", "unused by k3s: the Job's log has it");
    c.api.seed(
        "helmcharts",
        json!({"metadata": {"name": "traefik", "namespace": "kube-system"},
               "spec": {"chart": "traefik"}}),
    )?;
    // Not k3s's, not the agent's: someone's object by the release's name.
    c.api.seed(
        "helmcharts",
        json!({"metadata": {"name": "taken-traefik", "namespace": "kube-system"},
               "spec": {"chart": "traefik"}}),
    )?;
    for template in ["denied", "broken", "traefik", "fine", "a-fine"] {
        c.template(template, edge_agent()).await?;
    }
    // "good" with "a-fine" and "good-a" with "fine" are both the release
    // good-a-fine: the first deployment by name has it.
    for (deployment, charts) in [
        ("refused", ["denied"]),
        ("broken", ["broken"]),
        ("taken", ["traefik"]),
        ("good", ["a-fine"]),
        ("good-a", ["fine"]),
    ] {
        c.deploy(deployment, &charts, json!({})).await?;
    }
    c.reported("good", 1, "ready").await?;
    let refused = c.reported("refused", 1, "failed").await?;
    let reason = refused["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.starts_with(
            "release refused-denied: cannot create the HelmChart kube-system/refused-denied"
        ) && reason.contains(&format!(
            "admission webhook \"{WEBHOOK}\" denied the request: charts from this repository are not allowed"
        )),
        "{refused}"
    );
    let broken = c.reported("broken", 1, "failed").await?;
    ensure!(
        broken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("without succeeding")
                && r.contains("kube-system/helm-install-broken-broken")),
        "{broken}"
    );
    let taken = c.reported("taken", 1, "failed").await?;
    ensure!(
        taken["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exists and is not tether's")),
        "{taken}"
    );
    let twice = c.reported("good-a", 1, "failed").await?;
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
            .get("helmcharts", Some("kube-system"), "taken-traefik")
            .is_some_and(|o| o["spec"] == json!({"chart": "traefik"})),
        "someone else's object is left alone"
    );
    Ok(())
}

#[tokio::test]
async fn flux_gets_a_helm_release_and_its_repository_with_the_agents_cluster_role()
-> anyhow::Result<()> {
    // The agent as the join manifest runs it: in cluster mode, as a
    // ServiceAccount with exactly the ClusterRole tetherd's manifest grants.
    let api = FakeKubeApi::start_with(HelmControllers::Flux).await?;
    let account = crate::support::join_manifest_pod(&api).await?;
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
    let mut template = edge_agent();
    template["source"] = json!("oci://registry.example.com/charts");
    c.template("agent", template).await?;
    c.deploy("line-3", &["agent"], json!({"replicas": 2}))
        .await?;
    c.reported("line-3", 1, "ready").await?;
    let repository = c
        .api
        .get("helmrepositories", Some("flux-system"), "line-3-agent")
        .context("the HelmRepository")?;
    assert_eq!(repository["apiVersion"], "source.toolkit.fluxcd.io/v1");
    assert_eq!(
        repository["spec"],
        json!({"url": "oci://registry.example.com/charts", "interval": "10m", "type": "oci"})
    );
    let helm_release = c
        .api
        .get("helmreleases", Some("flux-system"), "line-3-agent")
        .context("the HelmRelease")?;
    assert_eq!(helm_release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    assert_eq!(
        helm_release["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tether", "tether.dev/deployment": "line-3"})
    );
    assert_eq!(
        helm_release["spec"],
        json!({"interval": "10m", "releaseName": "line-3-agent", "targetNamespace": "factory",
               "install": {"createNamespace": true},
               "chart": {"spec": {"chart": "edge-agent", "version": "1.4.0",
                                  "reconcileStrategy": "ChartVersion",
                                  "sourceRef": {"kind": "HelmRepository", "name": "line-3-agent"}}},
               "values": installed_values(&c.agent.name, 2)})
    );

    // A failed upgrade is the deployment's failure, with Flux's message.
    c.api
        .fail_installs("line-3-agent", "image edge-agent:1.5.0 not found");
    c.admin
        .put_json(
            "/api/v1/deployments/line-3",
            c.deployment(
                &["agent"],
                json!({"replicas": 2, "image": {"tag": "1.5.0"}}),
            ),
        )
        .await?
        .expect_status(200)?;
    let failed = c.reported("line-3", 2, "failed").await?;
    ensure!(
        failed["reason"].as_str().is_some_and(|r| r.contains(
            "Helm upgrade failed for release factory/line-3-agent with chart edge-agent@1.4.0: image edge-agent:1.5.0 not found"
        ) && r.contains("UpgradeFailed")),
        "{failed}"
    );

    c.api
        .delete("helmrepositories", Some("flux-system"), "line-3-agent")?;
    c.object(
        "the repository restored",
        "helmrepositories",
        "flux-system",
        "line-3-agent",
        |o| o.is_some(),
    )
    .await?;
    c.admin
        .delete("/api/v1/deployments/line-3")
        .await?
        .expect_status(202)?;
    c.object(
        "the release removed",
        "helmreleases",
        "flux-system",
        "line-3-agent",
        |o| o.is_none(),
    )
    .await?;
    c.object(
        "the repository removed",
        "helmrepositories",
        "flux-system",
        "line-3-agent",
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

#[tokio::test]
async fn a_device_without_a_cluster_reports_its_charts_failed() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll(&tetherd, &admin, "plain-charts").await?;
    agent
        .wait_presence(&admin, "online")
        .await
        .with_context(|| agent.log())?;
    let c = Cluster {
        api: FakeKubeApi::start().await?,
        _tetherd: tetherd,
        admin,
        agent,
        dir: tempfile::tempdir()?,
    };
    c.template("agent", edge_agent()).await?;
    c.deploy("line-3", &["agent"], json!({})).await?;
    let status = c.reported("line-3", 1, "failed").await?;
    ensure!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("this device manages no Kubernetes cluster")),
        "{status}"
    );
    Ok(())
}
