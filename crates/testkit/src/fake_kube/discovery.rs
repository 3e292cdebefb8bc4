//! The resources the fake serves and the discovery documents kubectl reads
//! to map a kind or a short name to a URL (`/api`, `/apis`, `/api/v1`,
//! `/apis/{group}/{version}`), shaped as the real API server's.

use serde_json::{Value, json};

/// One resource type, as an `APIResourceList` entry names it.
pub(crate) struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
}

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        short_names: &["no"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "services",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short_names: &["sa"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        namespaced: true,
        short_names: &["pvc"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "persistentvolumes",
        kind: "PersistentVolume",
        namespaced: false,
        short_names: &["pv"],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "deployments",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
    },
    Resource {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        kind: "PodDisruptionBudget",
        namespaced: true,
        short_names: &["pdb"],
    },
    Resource {
        group: "batch",
        version: "v1",
        plural: "jobs",
        kind: "Job",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        kind: "Role",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
    },
];

/// Custom resources, served only by a fake that runs their controller
/// ([`super::HelmControllers`]): k3s's HelmChart, Flux's HelmRelease and
/// HelmRepository. All have the status subresource, as their CRDs do.
pub(crate) const CUSTOM: &[Resource] = &[
    Resource {
        group: HELM_CATTLE,
        version: "v1",
        plural: "helmcharts",
        kind: "HelmChart",
        namespaced: true,
        short_names: &[],
    },
    Resource {
        group: FLUX_HELM,
        version: "v2",
        plural: "helmreleases",
        kind: "HelmRelease",
        namespaced: true,
        short_names: &["hr"],
    },
    Resource {
        group: FLUX_SOURCE,
        version: "v1",
        plural: "helmrepositories",
        kind: "HelmRepository",
        namespaced: true,
        short_names: &["helmrepo"],
    },
];

/// k3s's helm-controller's group.
pub(crate) const HELM_CATTLE: &str = "helm.cattle.io";
/// Flux's helm-controller's group.
pub(crate) const FLUX_HELM: &str = "helm.toolkit.fluxcd.io";
/// Flux's source-controller's group.
pub(crate) const FLUX_SOURCE: &str = "source.toolkit.fluxcd.io";

/// The API groups besides the core one (`/api/v1`), each with one version.
/// `authentication.k8s.io` holds no stored resource: only TokenReview.
const GROUPS: &[&str] = &[
    "apps",
    "batch",
    "policy",
    "rbac.authorization.k8s.io",
    "authentication.k8s.io",
];

/// The groups a fake serves: the built-in ones and its custom ones.
fn served<'a>(custom: &'a [&'static str]) -> impl Iterator<Item = &'static str> + 'a {
    GROUPS.iter().copied().chain(custom.iter().copied())
}

/// The one version a group is served at.
fn version_of(group: &str) -> &'static str {
    RESOURCES
        .iter()
        .chain(CUSTOM)
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version)
}

/// Whether the resource is a custom one (a CRD's, with generation and the
/// status subresource).
pub(crate) fn is_custom(resource: &Resource) -> bool {
    CUSTOM.iter().any(|r| std::ptr::eq(r, resource))
}

/// The version kubectl sees; kubectl warns past one minor version of skew,
/// and k3s releases of this age run on the devices tether targets.
pub(crate) fn version() -> Value {
    json!({
        "major": "1", "minor": "29", "gitVersion": "v1.29.4+k3s1",
        "gitCommit": "fake", "gitTreeState": "clean",
        "buildDate": "2024-04-25T00:00:00Z", "goVersion": "go1.21.9",
        "compiler": "gc", "platform": "linux/amd64"
    })
}

/// The resource at `group/version/plural`, built-in or custom; whether
/// this fake serves a custom one is the caller's check.
pub(crate) fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .chain(CUSTOM)
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub(crate) fn by_plural(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().chain(CUSTOM).find(|r| r.plural == plural)
}

/// `GET /api`.
pub(crate) fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]
    })
}

fn group_doc(group: &str) -> Value {
    let v = version_of(group);
    let version = json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
           "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /apis`.
pub(crate) fn groups(custom: &[&'static str]) -> Value {
    let groups: Vec<Value> = served(custom)
        .map(|g| {
            let mut doc = group_doc(g);
            if let Some(object) = doc.as_object_mut() {
                object.remove("kind");
                object.remove("apiVersion");
            }
            doc
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`.
pub(crate) fn group(custom: &[&'static str], group: &str) -> Option<Value> {
    served(custom).any(|g| g == group).then(|| group_doc(group))
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`: the `APIResourceList`,
/// with the subresources kubectl looks up (`deployments/scale` names the
/// autoscaling/v1 Scale kind `kubectl scale` sends).
pub(crate) fn resource_list(custom: &[&'static str], group: &str, version: &str) -> Option<Value> {
    if version != version_of(group) || !(group.is_empty() || served(custom).any(|g| g == group)) {
        return None;
    }
    let mut resources: Vec<Value> = RESOURCES
        .iter()
        .chain(CUSTOM)
        .filter(|r| r.group == group)
        .map(|r| {
            json!({"name": r.plural, "singularName": "", "namespaced": r.namespaced,
                   "kind": r.kind, "verbs": CRUD, "shortNames": r.short_names})
        })
        .collect();
    let sub = |name: &str, group: &str, kind: &str, verbs: &[&str]| {
        json!({"name": name, "singularName": "", "namespaced": true, "group": group,
               "version": "v1", "kind": kind, "verbs": verbs})
    };
    match group {
        "" => resources.push(sub(
            "serviceaccounts/token",
            "authentication.k8s.io",
            "TokenRequest",
            &["create"],
        )),
        "apps" => resources.push(sub(
            "deployments/scale",
            "autoscaling",
            "Scale",
            &["get", "patch", "update"],
        )),
        "authentication.k8s.io" => resources.push(json!({
            "name": "tokenreviews", "singularName": "", "namespaced": false,
            "kind": "TokenReview", "verbs": ["create"]
        })),
        _ => {}
    }
    if CUSTOM.iter().any(|r| r.group == group) {
        for r in CUSTOM.iter().filter(|r| r.group == group) {
            resources.push(
                json!({"name": format!("{}/status", r.plural), "singularName": "",
                                  "namespaced": r.namespaced, "kind": r.kind,
                                  "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    let group_version = if group.is_empty() {
        "v1".to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources}))
}

/// `{plural}` for the core group, `{plural}.{group}` otherwise, as the
/// real API names a resource in its error messages.
pub(crate) fn qualified(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.plural.to_owned()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

pub(crate) fn api_version(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.version.to_owned()
    } else {
        format!("{}/{}", resource.group, resource.version)
    }
}
