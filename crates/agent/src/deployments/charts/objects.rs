//! What a chart release becomes on the cluster, and how its state is read
//! back: pure functions of the release and the objects the API returns.
//!
//! - k3s: one `HelmChart` (helm.cattle.io/v1) in `kube-system`, installed
//!   by k3s's helm-controller through the Job `helm-install-NAME`.
//! - Flux: a `HelmRepository` (source.toolkit.fluxcd.io/v1, `type: oci`
//!   for an OCI source) and a `HelmRelease` (helm.toolkit.fluxcd.io/v2)
//!   using it, both in `flux-system`.
//!
//! Every object is named after the release and carries
//! `app.kubernetes.io/managed-by: tether` and `tether.dev/deployment:
//! NAME` (how the agent finds what it made) and the deployment's version
//! as the annotation `tether.dev/version`.

use serde_json::{Map, Value, json};
use tether_proto::desired::chart::{ChartRelease, SourceKind};
use tether_proto::desired::{DeploymentState, DeploymentStatus};

/// The label every object the agent writes carries, with [`MANAGER`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY`]'s value.
pub const MANAGER: &str = "tether";
/// The label naming the deployment an object belongs to.
pub const DEPLOYMENT_LABEL: &str = "tether.dev/deployment";
/// The annotation carrying the deployment's version.
pub const VERSION_ANNOTATION: &str = "tether.dev/version";
/// The node label a pinned deployment's `nodeSelector` names.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Where a release goes when it names no namespace.
pub const DEFAULT_TARGET_NAMESPACE: &str = "default";
/// How often Flux checks the repository and the release for drift.
const FLUX_INTERVAL: &str = "10m";

/// Which Helm controller installs the cluster's releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// k3s's built-in helm-controller (`HelmChart`).
    K3s,
    /// Flux's helm-controller (`HelmRelease` + `HelmRepository`).
    Flux,
}

impl Controller {
    /// The namespace the controller's objects live in.
    pub fn namespace(self) -> &'static str {
        match self {
            Self::K3s => "kube-system",
            Self::Flux => "flux-system",
        }
    }

    /// The kinds the agent writes for one release, in the order written.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Self::K3s => &[HELM_CHART],
            Self::Flux => &[HELM_REPOSITORY, HELM_RELEASE],
        }
    }

    /// The API group whose presence in discovery shows the controller.
    pub fn group(self) -> &'static str {
        match self {
            Self::K3s => HELM_CHART.group,
            Self::Flux => HELM_RELEASE.group,
        }
    }
}

/// A custom resource type the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
}

pub const HELM_CHART: Kind = Kind {
    group: "helm.cattle.io",
    version: "v1",
    plural: "helmcharts",
    kind: "HelmChart",
};
pub const HELM_RELEASE: Kind = Kind {
    group: "helm.toolkit.fluxcd.io",
    version: "v2",
    plural: "helmreleases",
    kind: "HelmRelease",
};
pub const HELM_REPOSITORY: Kind = Kind {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    plural: "helmrepositories",
    kind: "HelmRepository",
};

impl Kind {
    /// `/apis/GROUP/VERSION/namespaces/NS/PLURAL`.
    pub fn collection(&self, namespace: &str) -> String {
        format!(
            "/apis/{}/{}/namespaces/{namespace}/{}",
            self.group, self.version, self.plural
        )
    }

    /// The object's URL path.
    pub fn object(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection(namespace))
    }

    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }
}

/// One object as the agent wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub kind: Kind,
    pub namespace: &'static str,
    pub name: String,
    pub object: Value,
}

/// The release's values as installed: a pinned release's values get
/// `nodeSelector: {kubernetes.io/hostname: NODE}` (the key charts made
/// with `helm create` pass to their pods), merged into a `nodeSelector`
/// object the values already have, the node winning; a `nodeSelector`
/// that is not an object is replaced. A floating release's values are
/// as given.
pub fn values(release: &ChartRelease) -> Map<String, Value> {
    let mut values = release.values.clone();
    if let Some(hostname) = &release.hostname {
        let selector = values
            .entry("nodeSelector")
            .or_insert_with(|| Value::Object(Map::new()));
        if !selector.is_object() {
            *selector = Value::Object(Map::new());
        }
        selector[HOSTNAME_LABEL] = json!(hostname);
    }
    values
}

/// The objects `release` of `deployment` (at `version`) becomes.
pub fn desired(
    controller: Controller,
    deployment: &str,
    version: &str,
    release: &ChartRelease,
) -> Vec<Desired> {
    let namespace = controller.namespace();
    let metadata = json!({
        "name": release.release,
        "namespace": namespace,
        "labels": {MANAGED_BY: MANAGER, DEPLOYMENT_LABEL: deployment},
        "annotations": {VERSION_ANNOTATION: version},
    });
    let target = release
        .namespace
        .as_deref()
        .unwrap_or(DEFAULT_TARGET_NAMESPACE);
    let values = values(release);
    let object = |kind: Kind, spec: Value| Desired {
        kind,
        namespace,
        name: release.release.clone(),
        object: json!({"apiVersion": kind.api_version(), "kind": kind.kind,
                       "metadata": metadata, "spec": spec}),
    };
    let oci = release.source_kind() == Some(SourceKind::Oci);
    match controller {
        Controller::K3s => {
            let mut spec = json!({"targetNamespace": target, "createNamespace": true});
            if oci {
                spec["chart"] = json!(release.oci_reference());
            } else {
                spec["chart"] = json!(release.chart);
                spec["repo"] = json!(release.source);
            }
            if let Some(version) = &release.version {
                spec["version"] = json!(version);
            }
            if !values.is_empty() {
                // YAML, as the field is named; what serde_yaml writes of
                // a JSON object reads back as the same object.
                spec["valuesContent"] = json!(serde_yaml::to_string(&values).unwrap_or_default());
            }
            vec![object(HELM_CHART, spec)]
        }
        Controller::Flux => {
            let mut repository = json!({"url": release.source, "interval": FLUX_INTERVAL});
            if oci {
                repository["type"] = json!("oci");
            }
            let mut spec = json!({
                "interval": FLUX_INTERVAL,
                "releaseName": release.release,
                "targetNamespace": target,
                "install": {"createNamespace": true},
                "chart": {"spec": {
                    "chart": release.chart,
                    "version": release.version.as_deref().unwrap_or("*"),
                    "reconcileStrategy": "ChartVersion",
                    "sourceRef": {"kind": HELM_REPOSITORY.kind, "name": release.release},
                }},
            });
            if !values.is_empty() {
                spec["values"] = Value::Object(values);
            }
            vec![
                object(HELM_REPOSITORY, repository),
                object(HELM_RELEASE, spec),
            ]
        }
    }
}

/// Whether `current` (as the API returns it) is the agent's.
pub fn is_ours(current: &Value) -> bool {
    current["metadata"]["labels"][MANAGED_BY] == MANAGER
}

/// `current` with `desired`'s spec, labels and annotations: what an update
/// sends. The rest of `current` stays (the resourceVersion, so a
/// concurrent change is a conflict rather than lost; the controller's
/// finalizers; others' labels). `None` when nothing would change.
pub fn updated(current: &Value, desired: &Value) -> Option<Value> {
    let mut next = current.clone();
    next["spec"] = desired["spec"].clone();
    for field in ["labels", "annotations"] {
        if let Some(wanted) = desired["metadata"][field].as_object() {
            if !next["metadata"][field].is_object() {
                next["metadata"][field] = json!({});
            }
            for (key, value) in wanted {
                next["metadata"][field][key] = value.clone();
            }
        }
    }
    (next != *current).then_some(next)
}

/// How one release stands, as its controller's objects say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseState {
    pub state: DeploymentState,
    pub reason: Option<String>,
}

impl ReleaseState {
    fn ready() -> Self {
        Self {
            state: DeploymentState::Ready,
            reason: None,
        }
    }

    pub fn progressing(reason: impl Into<String>) -> Self {
        Self {
            state: DeploymentState::Progressing,
            reason: Some(reason.into()),
        }
    }

    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            state: DeploymentState::Failed,
            reason: Some(reason.into()),
        }
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// k3s: a HelmChart is installed when the Job its status names completed.
/// `stale_job` is the uid of the Job that was there before the agent
/// changed the chart: until k3s replaces it, it says nothing of this
/// version.
pub fn k3s_state(chart: &Value, job: Option<&Value>, stale_job: Option<&str>) -> ReleaseState {
    let namespace = text(&chart["metadata"]["namespace"]);
    if let Some(failed) = condition(chart, "Failed").filter(|c| c["status"] == "True") {
        return ReleaseState::failed(format!(
            "k3s's helm-controller: {} ({}; the Job {namespace}/{} has its log)",
            text(&failed["message"]),
            text(&failed["reason"]),
            text(&chart["status"]["jobName"]),
        ));
    }
    let job_name = text(&chart["status"]["jobName"]);
    let Some(job) = job.filter(|_| !job_name.is_empty()) else {
        return ReleaseState::progressing(
            "waiting for k3s's helm-controller to start the install Job",
        );
    };
    if stale_job.is_some_and(|uid| job["metadata"]["uid"] == uid) {
        return ReleaseState::progressing(format!(
            "waiting for k3s's helm-controller to replace the Job {namespace}/{job_name} for this version"
        ));
    }
    if let Some(failed) = condition(job, "Failed").filter(|c| c["status"] == "True") {
        return ReleaseState::failed(format!(
            "the install Job {namespace}/{job_name} failed: {}",
            text(&failed["message"])
        ));
    }
    if job["status"]["succeeded"].as_u64().unwrap_or(0) >= 1 {
        return ReleaseState::ready();
    }
    ReleaseState::progressing(format!("the install Job {namespace}/{job_name} is running"))
}

/// Flux: a HelmRelease is installed when its `Ready` condition is `True`
/// for the generation the agent wrote.
pub fn flux_state(release: &Value) -> ReleaseState {
    let generation = release["metadata"]["generation"].as_i64();
    let observed = release["status"]["observedGeneration"].as_i64();
    if generation.is_none() || observed != generation {
        return ReleaseState::progressing(
            "waiting for Flux's helm-controller to reconcile this version",
        );
    }
    match condition(release, "Ready") {
        Some(ready) if ready["status"] == "True" => ReleaseState::ready(),
        Some(ready) if ready["status"] == "False" => ReleaseState::failed(format!(
            "Flux: {} ({})",
            text(&ready["message"]),
            text(&ready["reason"])
        )),
        Some(ready) => ReleaseState::progressing(format!("Flux: {}", text(&ready["message"]))),
        None => ReleaseState::progressing("waiting for Flux's helm-controller to report"),
    }
}

/// One deployment's status from its releases' states: the worst one,
/// with the reasons of the releases in that state.
pub fn deployment_status(version: &str, releases: &[(String, ReleaseState)]) -> DeploymentStatus {
    let worst = releases
        .iter()
        .map(|(_, s)| s.state)
        .max()
        .unwrap_or(DeploymentState::Ready);
    let reasons: Vec<String> = releases
        .iter()
        .filter(|(_, s)| s.state == worst)
        .filter_map(|(name, s)| Some(format!("release {name}: {}", s.reason.as_ref()?)))
        .collect();
    DeploymentStatus {
        version: version.to_owned(),
        state: worst,
        reason: (!reasons.is_empty())
            .then(|| truncate(reasons.join("; "), DeploymentStatus::MAX_REASON_BYTES)),
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> ChartRelease {
        ChartRelease {
            release: "agent".into(),
            chart: "edge-agent".into(),
            source: "https://charts.example.com/stable".into(),
            version: Some("1.4.0".into()),
            namespace: Some("factory".into()),
            hostname: Some("node-a".into()),
            values: json!({"nodeId": "line-3", "nodeSelector": {"disk": "ssd"}})
                .as_object()
                .cloned()
                .expect("object"),
        }
    }

    #[test]
    fn a_pinned_release_selects_its_node_and_a_floating_one_is_left_alone() {
        let values = values(&release());
        assert_eq!(
            values["nodeSelector"],
            json!({"disk": "ssd", "kubernetes.io/hostname": "node-a"})
        );
        let mut odd = release();
        odd.values = json!({"nodeSelector": "node-b"})
            .as_object()
            .cloned()
            .expect("object");
        assert_eq!(
            super::values(&odd)["nodeSelector"],
            json!({"kubernetes.io/hostname": "node-a"})
        );
        let floating = ChartRelease {
            hostname: None,
            ..release()
        };
        assert_eq!(super::values(&floating), floating.values);
    }

    #[test]
    fn k3s_gets_one_helm_chart_with_yaml_values() {
        let [chart] = &desired(Controller::K3s, "line-3", "4-ab", &release())[..] else {
            panic!("one object");
        };
        assert_eq!(chart.kind, HELM_CHART);
        assert_eq!(chart.namespace, "kube-system");
        let object = &chart.object;
        assert_eq!(object["apiVersion"], "helm.cattle.io/v1");
        assert_eq!(
            object["metadata"],
            json!({"name": "agent", "namespace": "kube-system",
                   "labels": {"app.kubernetes.io/managed-by": "tether", "tether.dev/deployment": "line-3"},
                   "annotations": {"tether.dev/version": "4-ab"}})
        );
        let spec = &object["spec"];
        assert_eq!(
            (
                spec["chart"].as_str(),
                spec["repo"].as_str(),
                spec["version"].as_str()
            ),
            (
                Some("edge-agent"),
                Some("https://charts.example.com/stable"),
                Some("1.4.0")
            )
        );
        assert_eq!(spec["targetNamespace"], "factory");
        let values: Value =
            serde_yaml::from_str(spec["valuesContent"].as_str().expect("a string")).expect("YAML");
        assert_eq!(values["nodeSelector"]["kubernetes.io/hostname"], "node-a");
        assert_eq!(values["nodeId"], "line-3");

        let oci = ChartRelease {
            source: "oci://registry.example.com/charts".into(),
            version: None,
            namespace: None,
            values: Map::new(),
            hostname: None,
            ..release()
        };
        let spec = &desired(Controller::K3s, "d", "1", &oci)[0].object["spec"];
        assert_eq!(
            spec,
            &json!({"chart": "oci://registry.example.com/charts/edge-agent",
                    "targetNamespace": "default", "createNamespace": true})
        );
    }

    #[test]
    fn flux_gets_a_repository_and_a_release_using_it() {
        let objects = desired(Controller::Flux, "line-3", "4-ab", &release());
        let [repository, helm_release] = &objects[..] else {
            panic!("two objects");
        };
        assert_eq!(repository.kind, HELM_REPOSITORY);
        assert_eq!(
            repository.object["spec"],
            json!({"url": "https://charts.example.com/stable", "interval": "10m"})
        );
        assert_eq!(
            helm_release.object["apiVersion"],
            "helm.toolkit.fluxcd.io/v2"
        );
        let spec = &helm_release.object["spec"];
        assert_eq!(
            spec["chart"]["spec"],
            json!({"chart": "edge-agent", "version": "1.4.0", "reconcileStrategy": "ChartVersion",
                   "sourceRef": {"kind": "HelmRepository", "name": "agent"}})
        );
        assert_eq!(
            spec["values"]["nodeSelector"]["kubernetes.io/hostname"],
            "node-a"
        );
        assert_eq!(spec["targetNamespace"], "factory");
        let oci = ChartRelease {
            source: "oci://registry.example.com/charts".into(),
            ..release()
        };
        assert_eq!(
            desired(Controller::Flux, "d", "1", &oci)[0].object["spec"]["type"],
            "oci"
        );
    }

    #[test]
    fn an_update_keeps_what_others_set_and_nothing_changed_is_no_update() {
        let want = &desired(Controller::K3s, "d", "2", &release())[0].object;
        let mut current = want.clone();
        current["metadata"]["resourceVersion"] = json!("7");
        current["metadata"]["finalizers"] = json!(["wrangler.cattle.io/on-helm-chart-remove"]);
        current["metadata"]["labels"]["team"] = json!("a");
        current["status"] = json!({"jobName": "helm-install-agent"});
        assert_eq!(updated(&current, want), None);
        current["spec"]["set"] = json!({"replicas": "9"});
        current["metadata"]["annotations"]["tether.dev/version"] = json!("1");
        let next = updated(&current, want).expect("an update");
        assert_eq!(next["spec"], want["spec"]);
        assert_eq!(next["metadata"]["resourceVersion"], "7");
        assert_eq!(
            next["metadata"]["finalizers"],
            current["metadata"]["finalizers"]
        );
        assert_eq!(next["metadata"]["labels"]["team"], "a");
        assert_eq!(next["metadata"]["annotations"]["tether.dev/version"], "2");
        assert!(is_ours(&next));
        assert!(!is_ours(&json!({"metadata": {"name": "traefik"}})));
    }

    #[test]
    fn k3s_is_ready_once_this_versions_job_completed() {
        let chart = |conditions: Value| {
            json!({"metadata": {"namespace": "kube-system"},
                   "status": {"jobName": "helm-install-agent", "conditions": conditions}})
        };
        let job = |status: Value| json!({"metadata": {"uid": "u2"}, "status": status});
        let running = chart(json!([{"type": "JobCreated", "status": "True"}]));
        let done = job(json!({"succeeded": 1}));
        assert_eq!(
            k3s_state(&running, Some(&done), None).state,
            DeploymentState::Ready
        );
        assert_eq!(
            k3s_state(&running, Some(&done), Some("u2")).state,
            DeploymentState::Progressing,
            "the Job from before the change"
        );
        assert_eq!(
            k3s_state(&running, Some(&job(json!({"active": 1}))), Some("u1")).state,
            DeploymentState::Progressing
        );
        assert_eq!(
            k3s_state(&json!({"metadata": {}}), None, None).state,
            DeploymentState::Progressing
        );
        let failed = k3s_state(
            &running,
            Some(&job(
                json!({"conditions": [{"type": "Failed", "status": "True",
                                              "message": "Job has reached the specified backoff limit"}]}),
            )),
            None,
        );
        assert_eq!(failed.state, DeploymentState::Failed);
        assert!(
            failed
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("backoff limit"))
        );
        let refused = k3s_state(
            &chart(
                json!([{"type": "Failed", "status": "True", "reason": "Job failed",
                           "message": "Job has reached configured number of retries without succeeding"}]),
            ),
            Some(&done),
            None,
        );
        assert_eq!(refused.state, DeploymentState::Failed);
        assert!(
            refused
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("without succeeding"))
        );
    }

    #[test]
    fn flux_is_ready_when_ready_is_true_for_the_written_generation() {
        let release = |generation: i64, observed: i64, status: &str| {
            json!({"metadata": {"generation": generation},
                   "status": {"observedGeneration": observed, "conditions": [
                       {"type": "Ready", "status": status, "reason": "InstallFailed", "message": "image not found"}]}})
        };
        assert_eq!(
            flux_state(&release(2, 2, "True")).state,
            DeploymentState::Ready
        );
        assert_eq!(
            flux_state(&release(3, 2, "True")).state,
            DeploymentState::Progressing
        );
        assert_eq!(
            flux_state(&release(2, 2, "Unknown")).state,
            DeploymentState::Progressing
        );
        let failed = flux_state(&release(2, 2, "False"));
        assert_eq!(failed.state, DeploymentState::Failed);
        assert_eq!(
            failed.reason.as_deref(),
            Some("Flux: image not found (InstallFailed)")
        );
    }

    #[test]
    fn a_deployment_is_as_well_as_its_worst_release_and_says_which() {
        let status = deployment_status(
            "3",
            &[
                ("a".into(), ReleaseState::ready()),
                ("b".into(), ReleaseState::failed("x")),
                ("c".into(), ReleaseState::progressing("y")),
                ("d".into(), ReleaseState::failed("z".repeat(2000))),
            ],
        );
        assert_eq!(status.state, DeploymentState::Failed);
        let reason = status.reason.expect("a reason");
        assert!(
            reason.starts_with("release b: x; release d: zzz"),
            "{reason}"
        );
        assert!(reason.len() <= DeploymentStatus::MAX_REASON_BYTES);
        assert_eq!(
            deployment_status("3", &[("a".into(), ReleaseState::ready())]).reason,
            None
        );
    }
}
