//! Helm releases on the device's cluster (issue 17, seed 002's Edge Sync
//! operator): each deployment's charts written as the cluster's Helm
//! controller takes them ([`objects`]), kept so, and reported per
//! deployment.
//!
//! Every round — at start (seed 002: a restart "will force a full
//! reconcile"), on every spec change, and every `resync` (every `poll`
//! while a release is still progressing) — the agent:
//! 1. chooses the controller: the configured one, or from discovery
//!    (Flux where `helm.toolkit.fluxcd.io` is served, else k3s where
//!    `helm.cattle.io` is);
//! 2. for each release, reads each object, creates it when missing and
//!    updates it when its spec, labels or version differ (so an object
//!    edited or deleted by hand is restored), then reads its status;
//! 3. deletes the objects carrying its labels that no deployment has any
//!    more.
//!
//! One release's failure (an API refusal, a failed install) is that
//! deployment's `failed` with the reason; the others go on. On a device
//! that manages no cluster, a deployment with charts is `failed`, saying so.

pub mod objects;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tether_proto::desired::{ChartRelease, DeploymentStatus, Deployments};
use tokio::sync::watch;

use super::{DeploymentReports, Part};
use crate::actions::chain;
use crate::kubernetes::client::Body;
use crate::kubernetes::{Client, KubeError, KubernetesConfig};
use crate::spec::AppliedSpec;
use objects::{Controller, DEPLOYMENT_LABEL, Desired, MANAGED_BY, MANAGER, ReleaseState};

/// Which Helm controller the agent writes for (`--chart-controller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControllerChoice {
    /// Flux where the cluster serves its API, else k3s's.
    Auto,
    /// k3s's built-in helm-controller (`HelmChart`).
    K3s,
    /// Flux (`HelmRelease` and `HelmRepository`).
    Flux,
}

/// How the charts part runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartsConfig {
    pub controller: ControllerChoice,
    /// Between full reconciles when everything is settled.
    pub resync: Duration,
    /// Between rounds while a release is still progressing.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("cannot reach the cluster's API")]
    Kube(#[from] KubeError),
    #[error(
        "the cluster runs no Helm controller the agent knows: it serves neither helm.toolkit.fluxcd.io (Flux) nor helm.cattle.io (k3s); install one or set --chart-controller"
    )]
    NoController,
}

/// Keeps the cluster's Helm releases at the applied spec's until the task
/// is dropped.
pub async fn run(
    kubernetes: KubernetesConfig,
    config: ChartsConfig,
    mut spec: watch::Receiver<AppliedSpec>,
    reports: DeploymentReports,
) {
    let mut reconciler = Reconciler {
        kubernetes,
        config,
        stale_jobs: HashMap::new(),
    };
    loop {
        let deployments = spec.borrow_and_update().deployments.clone();
        let statuses = reconciler.round(&deployments).await;
        let progressing = statuses
            .values()
            .any(|s| s.state == tether_proto::desired::DeploymentState::Progressing);
        reports.set(Part::Charts, statuses);
        let wait = if progressing {
            reconciler.config.poll
        } else {
            reconciler.config.resync
        };
        tokio::select! {
            changed = spec.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// On a device that manages no cluster: each deployment with charts is
/// reported failed, saying why, until the spec drops them.
pub async fn refuse_without_cluster(
    mut spec: watch::Receiver<AppliedSpec>,
    reports: DeploymentReports,
) {
    loop {
        let statuses = without_cluster(&spec.borrow_and_update().deployments);
        reports.set(Part::Charts, statuses);
        if spec.changed().await.is_err() {
            return;
        }
    }
}

/// What [`refuse_without_cluster`] reports.
fn without_cluster(deployments: &Deployments) -> BTreeMap<String, DeploymentStatus> {
    deployments
        .iter()
        .filter(|(_, d)| !d.charts.is_empty())
        .map(|(name, d)| {
            let releases: Vec<(String, ReleaseState)> = d
                .charts
                .iter()
                .map(|c| {
                    (
                        c.release.clone(),
                        ReleaseState::failed(
                            "this device manages no Kubernetes cluster (its agent runs without --kubernetes): Helm charts need one",
                        ),
                    )
                })
                .collect();
            (name.clone(), objects::deployment_status(&d.version, &releases))
        })
        .collect()
}

struct Reconciler {
    kubernetes: KubernetesConfig,
    config: ChartsConfig,
    /// k3s: for a release whose chart the agent changed, the uid of the
    /// install Job that was there before, which says nothing of the new
    /// version (forgotten once k3s replaced it).
    stale_jobs: HashMap<String, String>,
}

impl Reconciler {
    /// One full reconcile: each deployment with charts gets a status.
    async fn round(&mut self, deployments: &Deployments) -> BTreeMap<String, DeploymentStatus> {
        let with_charts = deployments.iter().filter(|(_, d)| !d.charts.is_empty());
        let client = match self.connect().await {
            Ok(connected) => connected,
            Err(e) => {
                let reason = chain(&e);
                tracing::warn!("cannot reconcile the Helm releases: {reason}");
                return with_charts
                    .map(|(name, d)| {
                        let state = ReleaseState::failed(reason.clone());
                        let releases: Vec<(String, ReleaseState)> = d
                            .charts
                            .iter()
                            .map(|c| (c.release.clone(), state.clone()))
                            .collect();
                        (
                            name.clone(),
                            objects::deployment_status(&d.version, &releases),
                        )
                    })
                    .collect();
            }
        };
        let (client, controller) = client;
        // A release name is the objects' name: the first deployment (by
        // name) to use it has it.
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        let mut statuses = BTreeMap::new();
        for (name, deployment) in with_charts {
            let mut releases = Vec::new();
            for release in &deployment.charts {
                let state = match owners.get(release.release.as_str()) {
                    Some(owner) => ReleaseState::failed(format!(
                        "the deployment {owner} has a release of this name on this device: release names are per device"
                    )),
                    None => {
                        owners.insert(&release.release, name);
                        self.release(&client, controller, name, &deployment.version, release)
                            .await
                    }
                };
                releases.push((release.release.clone(), state));
            }
            statuses.insert(
                name.clone(),
                objects::deployment_status(&deployment.version, &releases),
            );
        }
        self.remove_others(&client, controller, &owners).await;
        statuses
    }

    /// A client for the cluster as its credentials are now, and the
    /// controller to write for.
    async fn connect(&self) -> Result<(Client, Controller), RoundError> {
        let access = self.kubernetes.access().map_err(KubeError::from)?;
        let client = Client::new(access)?;
        let controller = match self.config.controller {
            ControllerChoice::K3s => Controller::K3s,
            ControllerChoice::Flux => Controller::Flux,
            ControllerChoice::Auto => {
                let groups = client.json(Method::GET, "/apis", None).await?;
                let serves = |group: &str| {
                    groups["groups"]
                        .as_array()
                        .is_some_and(|g| g.iter().any(|g| g["name"] == group))
                };
                if serves(Controller::Flux.group()) {
                    Controller::Flux
                } else if serves(Controller::K3s.group()) {
                    Controller::K3s
                } else {
                    return Err(RoundError::NoController);
                }
            }
        };
        Ok((client, controller))
    }

    /// Writes one release's objects and reads how it stands.
    async fn release(
        &mut self,
        client: &Client,
        controller: Controller,
        deployment: &str,
        version: &str,
        release: &ChartRelease,
    ) -> ReleaseState {
        let mut last = Value::Null;
        for desired in objects::desired(controller, deployment, version, release) {
            if controller == Controller::K3s {
                let job = self.install_job(client, &desired.name).await;
                match self.apply(client, &desired).await {
                    Ok((object, changed)) => {
                        if changed && let Some(uid) = job.as_ref().and_then(uid) {
                            self.stale_jobs.insert(desired.name.clone(), uid);
                        }
                        last = object;
                    }
                    Err(reason) => return ReleaseState::failed(reason),
                }
            } else {
                match self.apply(client, &desired).await {
                    Ok((object, _)) => last = object,
                    Err(reason) => return ReleaseState::failed(reason),
                }
            }
        }
        match controller {
            Controller::Flux => objects::flux_state(&last),
            Controller::K3s => {
                let job = self.install_job(client, &release.release).await;
                let stale = self.stale_jobs.get(&release.release).map(String::as_str);
                let state = objects::k3s_state(&last, job.as_ref(), stale);
                if stale.is_some() && job.as_ref().and_then(uid).as_deref() != stale {
                    self.stale_jobs.remove(&release.release);
                }
                state
            }
        }
    }

    /// The install Job of a k3s release, if there is one to read.
    async fn install_job(&self, client: &Client, release: &str) -> Option<Value> {
        let path = format!(
            "/apis/batch/v1/namespaces/{}/jobs/helm-install-{release}",
            Controller::K3s.namespace()
        );
        match client.json(Method::GET, &path, None).await {
            Ok(job) => Some(job),
            Err(KubeError::Api { status: 404, .. }) => None,
            Err(e) => {
                tracing::debug!("cannot read {path}: {}", chain(&e));
                None
            }
        }
    }

    /// Creates `desired` or brings it back to what it should be; the
    /// object as the API has it now, and whether the agent changed it.
    async fn apply(&self, client: &Client, desired: &Desired) -> Result<(Value, bool), String> {
        let path = desired.kind.object(desired.namespace, &desired.name);
        let what = format!(
            "{} {}/{}",
            desired.kind.kind, desired.namespace, desired.name
        );
        let failed = |verb: &str, e: KubeError| format!("cannot {verb} the {what}: {}", chain(&e));
        match client.json(Method::GET, &path, None).await {
            Err(KubeError::Api { status: 404, .. }) => {
                tracing::info!("creating the {what}");
                let created = client
                    .json(
                        Method::POST,
                        &desired.kind.collection(desired.namespace),
                        Some(Body::Json(desired.object.clone())),
                    )
                    .await
                    .map_err(|e| failed("create", e))?;
                Ok((created, true))
            }
            Err(e) => Err(failed("read", e)),
            Ok(current) if !objects::is_ours(&current) => Err(format!(
                "the {what} exists and is not tether's (no {MANAGED_BY}: {MANAGER} label): choose another release name or delete it"
            )),
            Ok(current) => match objects::updated(&current, &desired.object) {
                None => Ok((current, false)),
                Some(next) => {
                    tracing::info!("updating the {what}");
                    let updated = client
                        .json(Method::PUT, &path, Some(Body::Json(next)))
                        .await
                        .map_err(|e| failed("update", e))?;
                    Ok((updated, true))
                }
            },
        }
    }

    /// Deletes the objects the agent made that no release has any more:
    /// those with its labels whose name `kept` does not list.
    async fn remove_others(
        &mut self,
        client: &Client,
        controller: Controller,
        kept: &BTreeMap<&str, &str>,
    ) {
        let namespace = controller.namespace();
        // `MANAGED_BY=MANAGER,DEPLOYMENT_LABEL`, escaped for the query.
        let selector = format!("{MANAGED_BY}={MANAGER},{DEPLOYMENT_LABEL}")
            .replace('/', "%2F")
            .replace('=', "%3D")
            .replace(',', "%2C");
        for kind in controller.kinds() {
            let path = format!("{}?labelSelector={selector}", kind.collection(namespace));
            let listed = match client.json(Method::GET, &path, None).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(
                        "cannot list the {}s in {namespace}: {}",
                        kind.kind,
                        chain(&e)
                    );
                    continue;
                }
            };
            for item in listed["items"].as_array().into_iter().flatten() {
                let Some(name) = item["metadata"]["name"].as_str() else {
                    continue;
                };
                if kept.contains_key(name) {
                    continue;
                }
                tracing::info!(
                    "deleting the {} {namespace}/{name}: no deployment has it",
                    kind.kind
                );
                match client
                    .json(Method::DELETE, &kind.object(namespace, name), None)
                    .await
                {
                    Ok(_) | Err(KubeError::Api { status: 404, .. }) => {
                        self.stale_jobs.remove(name);
                    }
                    Err(e) => tracing::warn!(
                        "cannot delete the {} {namespace}/{name}: {}",
                        kind.kind,
                        chain(&e)
                    ),
                }
            }
        }
    }
}

fn uid(object: &Value) -> Option<String> {
    object["metadata"]["uid"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::desired::{DeploymentSpec, DeploymentState};

    #[test]
    fn without_a_cluster_only_deployments_with_charts_fail_and_say_why() {
        let charts = DeploymentSpec {
            version: "2".into(),
            charts: vec![ChartRelease {
                release: "web".into(),
                ..ChartRelease::default()
            }],
            ..DeploymentSpec::default()
        };
        let plain = DeploymentSpec {
            version: "1".into(),
            ..DeploymentSpec::default()
        };
        let statuses =
            without_cluster(&[("web".to_owned(), charts), ("jobs".to_owned(), plain)].into());
        assert_eq!(statuses.len(), 1);
        let web = &statuses["web"];
        assert_eq!(
            (web.state, web.version.as_str()),
            (DeploymentState::Failed, "2")
        );
        assert!(
            web.reason.as_deref().is_some_and(
                |r| r.starts_with("release web: this device manages no Kubernetes cluster")
            ),
            "{web:?}"
        );
    }
}
