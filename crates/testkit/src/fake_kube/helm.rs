//! The Helm controllers a cluster may run, settled at once as the fake
//! settles Deployments: k3s's helm-controller (a `HelmChart` gets its
//! install Job `helm-install-NAME` and the status k3s writes) and Flux's
//! helm-controller (a `HelmRelease` gets the `Ready` condition of its
//! generation). Also a validating admission webhook that refuses chosen
//! writes, as a cluster's policy engine would.

use axum::http::Method;
use chrono::SecondsFormat;
use serde_json::{Value, json};

use super::discovery::{FLUX_HELM, FLUX_SOURCE, HELM_CATTLE, Resource, by_plural};
use super::store::{ApiError, Store};

/// Which Helm controller a fake cluster runs, and so which custom
/// resources it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelmControllers {
    /// None: no Helm custom resources.
    None,
    /// k3s's built-in helm-controller: `helmcharts.helm.cattle.io/v1`.
    K3s,
    /// Flux: `helmreleases.helm.toolkit.fluxcd.io/v2` and
    /// `helmrepositories.source.toolkit.fluxcd.io/v1`, in a `flux-system`
    /// namespace.
    Flux,
}

impl HelmControllers {
    pub(crate) fn groups(self) -> Vec<&'static str> {
        match self {
            Self::None => Vec::new(),
            Self::K3s => vec![HELM_CATTLE],
            Self::Flux => vec![FLUX_HELM, FLUX_SOURCE],
        }
    }
}

/// A write the fake's admission webhook refuses.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The resource (plural).
    pub resource: String,
    /// The object's name.
    pub name: String,
    /// What the webhook says.
    pub message: String,
}

/// The webhook's name in refusals.
pub const WEBHOOK: &str = "policy.fake-kube.test";

impl Store {
    /// Validating admission: a create, update or patch of an object named
    /// in [`Store::denials`] is refused as the API server relays a
    /// webhook's denial (400, "admission webhook ... denied the request").
    pub(crate) fn admit(
        &self,
        method: &Method,
        target: &super::handlers::Target,
        body: &[u8],
    ) -> Result<(), ApiError> {
        if ![Method::POST, Method::PUT, Method::PATCH].contains(method) || target.sub.is_some() {
            return Ok(());
        }
        let name = match &target.name {
            Some(name) => name.clone(),
            None => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|o| o["metadata"]["name"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        };
        match self
            .denials
            .iter()
            .find(|d| d.resource == target.resource.plural && d.name == name)
        {
            Some(denial) => Err(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "admission webhook \"{WEBHOOK}\" denied the request: {}",
                    denial.message
                ),
            )),
            None => Ok(()),
        }
    }

    /// The controller's answer to a new or changed `HelmChart` or
    /// `HelmRelease`.
    pub(crate) fn settle_helm(
        &mut self,
        resource: &'static Resource,
        object: &Value,
    ) -> Result<(), ApiError> {
        match resource.kind {
            "HelmChart" => self.settle_helm_chart(resource, object),
            "HelmRelease" => self.settle_helm_release(resource, object),
            _ => Ok(()),
        }
    }

    /// k3s: the install Job `helm-install-NAME` is replaced by one for the
    /// new spec, which completes (or fails, for a release in
    /// [`Store::failing_installs`], after its retries); the chart's status
    /// names the Job, with k3s's `JobCreated` and `Failed` conditions.
    fn settle_helm_chart(
        &mut self,
        resource: &'static Resource,
        chart: &Value,
    ) -> Result<(), ApiError> {
        let jobs = by_plural("jobs").expect("jobs are served");
        let name = chart["metadata"]["name"].as_str().unwrap_or_default();
        let ns = chart["metadata"]["namespace"].as_str().unwrap_or_default();
        let job_name = format!("helm-install-{name}");
        let _ = self.delete(jobs, Some(ns), &job_name);
        let hash = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            chart["spec"].to_string().hash(&mut hasher);
            format!("SHA256={:016X}", hasher.finish())
        };
        self.create(
            jobs,
            Some(ns),
            json!({"metadata": {"name": job_name,
                    "labels": {"helmcharts.helm.cattle.io/chart": name},
                    "annotations": {"helmcharts.helm.cattle.io/configHash": hash},
                    "ownerReferences": [{"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
                                         "name": name, "uid": chart["metadata"]["uid"],
                                         "controller": true, "blockOwnerDeletion": true}]},
                   "spec": {"backoffLimit": 1000, "template": {"spec": {
                       "restartPolicy": "OnFailure", "serviceAccountName": format!("helm-{name}"),
                       "containers": [{"name": "helm", "image": "rancher/klipper-helm:v0.9.3",
                                       "args": ["install"]}]}}}}),
        )?;
        let failed = self.failing_installs.contains_key(name);
        let now = self.now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let job_status = if failed {
            json!({"failed": 1, "startTime": now, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}]})
        } else {
            json!({"succeeded": 1, "startTime": now, "completionTime": now, "conditions": [
                {"type": "Complete", "status": "True"}]})
        };
        self.set_status(jobs, Some(ns), &job_name, job_status)?;
        let failed_condition = if failed {
            json!({"type": "Failed", "status": "True", "reason": "Job failed",
                   "message": "Job has reached configured number of retries without succeeding"})
        } else {
            json!({"type": "Failed", "status": "False"})
        };
        self.set_status(
            resource,
            Some(ns),
            name,
            json!({"jobName": job_name, "conditions": [
                {"type": "JobCreated", "status": "True", "reason": "Job created",
                 "message": format!("Applying HelmChart using Job {ns}/{job_name}")},
                failed_condition]}),
        )?;
        Ok(())
    }

    /// Flux: the release of the new generation is installed (or upgraded),
    /// or fails with Helm's error for a release in
    /// [`Store::failing_installs`]; `Ready` and `Released` say so for
    /// `observedGeneration`.
    fn settle_helm_release(
        &mut self,
        resource: &'static Resource,
        release: &Value,
    ) -> Result<(), ApiError> {
        let name = release["metadata"]["name"].as_str().unwrap_or_default();
        let ns = release["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let generation = release["metadata"]["generation"].clone();
        let spec = &release["spec"];
        let release_name = spec["releaseName"].as_str().unwrap_or(name);
        let target = spec["targetNamespace"].as_str().unwrap_or(ns);
        let chart = spec["chart"]["spec"]["chart"].as_str().unwrap_or_default();
        let version = spec["chart"]["spec"]["version"].as_str().unwrap_or("*");
        let installs = release["status"]["history"].as_array().map_or(0, Vec::len);
        let now = self.now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let (status, reason, message) = match self.failing_installs.get(release_name) {
            Some(error) => (
                "False",
                if installs == 0 {
                    "InstallFailed"
                } else {
                    "UpgradeFailed"
                },
                format!(
                    "Helm {} failed for release {target}/{release_name} with chart {chart}@{version}: {error}",
                    if installs == 0 { "install" } else { "upgrade" }
                ),
            ),
            None => (
                "True",
                if installs == 0 {
                    "InstallSucceeded"
                } else {
                    "UpgradeSucceeded"
                },
                format!(
                    "Helm {} succeeded for release {target}/{release_name}.v{} with chart {chart}@{version}",
                    if installs == 0 { "install" } else { "upgrade" },
                    installs + 1
                ),
            ),
        };
        let condition = |kind: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "observedGeneration": generation, "lastTransitionTime": now})
        };
        let mut history = release["status"]["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if status == "True" {
            history.insert(
                0,
                json!({"name": release_name, "namespace": target, "version": installs + 1,
                       "chartName": chart, "chartVersion": version, "status": "deployed"}),
            );
        }
        self.set_status(
            resource,
            Some(ns),
            name,
            json!({"observedGeneration": generation,
                   "lastAttemptedGeneration": generation,
                   "lastAttemptedRevision": version,
                   "conditions": [condition("Ready"), condition("Released")],
                   "history": history}),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(result: Result<Value, ApiError>) -> Value {
        result.unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn store_with(controllers: HelmControllers) -> Store {
        let mut store = Store::default();
        store.custom_groups = controllers.groups();
        for ns in ["kube-system", "flux-system"] {
            ok(store.create(
                by_plural("namespaces").expect("served"),
                None,
                json!({"metadata": {"name": ns}}),
            ));
        }
        store
    }

    #[test]
    fn a_helm_chart_gets_its_install_job_and_k3s_status_and_keeps_it_across_updates() {
        let mut store = store_with(HelmControllers::K3s);
        let charts = by_plural("helmcharts").expect("served");
        let jobs = by_plural("jobs").expect("served");
        let chart = json!({"metadata": {"name": "web", "namespace": "kube-system"},
                           "spec": {"chart": "web", "repo": "https://charts.example.com"},
                           "status": {"jobName": "forged"}});
        let created = ok(store.create(charts, Some("kube-system"), chart.clone()));
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["status"]["jobName"], "helm-install-web");
        assert_eq!(created["status"]["conditions"][1]["status"], "False");
        let job = ok(store.get(jobs, Some("kube-system"), "helm-install-web"));
        assert_eq!(job["status"]["succeeded"], 1);

        // An update's status is ignored; a spec change is a new generation and a new Job.
        let mut changed = created.clone();
        changed["spec"]["version"] = json!("2.0.0");
        changed["status"] = json!({});
        store.failing_installs.insert("web".into(), "boom".into());
        let updated = ok(store.replace(charts, Some("kube-system"), "web", changed));
        assert_eq!(updated["metadata"]["generation"], 2);
        assert_eq!(updated["status"]["conditions"][1]["status"], "True");
        let failed = ok(store.get(jobs, Some("kube-system"), "helm-install-web"));
        assert_ne!(failed["metadata"]["uid"], job["metadata"]["uid"]);
        assert_eq!(failed["status"]["conditions"][0]["type"], "Failed");
        ok(store.delete(charts, Some("kube-system"), "web"));
        assert!(
            store
                .get(jobs, Some("kube-system"), "helm-install-web")
                .is_err()
        );
    }

    #[test]
    fn a_helm_release_is_ready_for_its_generation_or_says_why_not() {
        let mut store = store_with(HelmControllers::Flux);
        let releases = by_plural("helmreleases").expect("served");
        let release = json!({"metadata": {"name": "web", "namespace": "flux-system"},
                             "spec": {"releaseName": "web", "targetNamespace": "apps",
                                      "chart": {"spec": {"chart": "web", "version": "1.0.0"}}}});
        let created = ok(store.create(releases, Some("flux-system"), release));
        assert_eq!(created["status"]["observedGeneration"], 1);
        assert_eq!(created["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(created["status"]["conditions"][0]["status"], "True");
        assert_eq!(
            created["status"]["conditions"][0]["message"],
            "Helm install succeeded for release apps/web.v1 with chart web@1.0.0"
        );
        store
            .failing_installs
            .insert("web".into(), "image not found".into());
        let mut changed = created;
        changed["spec"]["chart"]["spec"]["version"] = json!("2.0.0");
        let updated = ok(store.replace(releases, Some("flux-system"), "web", changed));
        let ready = &updated["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("UpgradeFailed"))
        );
        assert!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(": image not found"))
        );
        assert_eq!(updated["status"]["observedGeneration"], 2);
    }
}
