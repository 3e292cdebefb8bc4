//! The fake's state: objects keyed by resource, namespace and name, the
//! global resourceVersion counter, the bearer tokens it accepts and the
//! request log. Writes stamp metadata as the real API server does.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::discovery::{Resource, api_version, by_plural, is_custom, qualified};

/// An error answered as a `kind: Status` object with the real reason and code.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// The Status's `details`: the object's name, group and kind.
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// An error about one object, with the `details` the real API adds.
    fn about(
        code: u16,
        reason: &'static str,
        resource: &Resource,
        name: &str,
        message: String,
    ) -> Self {
        Self {
            details: json!({"name": name, "group": resource.group, "kind": resource.plural}),
            ..Self::new(code, reason, message)
        }
    }

    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self::about(
            404,
            "NotFound",
            resource,
            name,
            format!("{} \"{name}\" not found", qualified(resource)),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 Invalid about `field`; `problem` starts as the real API's field
    /// errors do ("Required value: ...", "Invalid value: ...").
    pub fn invalid(resource: &Resource, name: &str, field: &str, problem: &str) -> Self {
        let kind = match resource.group {
            "" => resource.kind.to_owned(),
            group => format!("{}.{group}", resource.kind),
        };
        let cause = if problem.starts_with("Required value") {
            "FieldValueRequired"
        } else {
            "FieldValueInvalid"
        };
        Self {
            details: json!({"name": name, "group": resource.group, "kind": resource.kind,
                            "causes": [{"reason": cause, "message": problem, "field": field}]}),
            ..Self::new(
                422,
                "Invalid",
                format!("{kind} \"{name}\" is invalid: {field}: {problem}"),
            )
        }
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": self.message,
                                "reason": self.reason, "code": self.code});
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

/// Who a bearer token authenticates.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub user: String,
    pub groups: Vec<String>,
    pub expires: Option<DateTime<Utc>>,
    /// The ServiceAccount (namespace, name, uid) a TokenRequest token is
    /// bound to: deleting the account revokes it, as in the real API.
    pub bound: Option<(String, String, String)>,
}

/// One request as it arrived, for tests to assert what a client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Who its bearer token authenticated as (`system:serviceaccount:NS:NAME`,
    /// `admin`); `None` for no token or one the fake does not know.
    pub user: Option<String>,
}

type Key = (&'static str, String, String);

#[derive(Default)]
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    pub tokens: BTreeMap<String, Token>,
    pub requests: Vec<LoggedRequest>,
    /// Added to the wall clock: tests move the fake's time forward to
    /// expire a token instead of waiting out the real API's 10-minute minimum.
    pub clock_offset: chrono::Duration,
    /// While this file exists the API server is "restarting": every
    /// request is answered 503 (see `FakeKubeApi::down_while_exists`).
    pub down_while: Option<std::path::PathBuf>,
    /// Each pod's log, by (namespace, name): what `pods/{name}/log`
    /// answers, and what a follower is sent as lines are appended.
    pub pod_logs: BTreeMap<(String, String), tokio::sync::watch::Sender<String>>,
    services: u32,
    /// The custom resources' groups this fake serves (its Helm controller's).
    pub custom_groups: Vec<&'static str>,
    /// Writes a validating admission webhook refuses (see `FakeKubeApi::deny`).
    pub denials: Vec<super::helm::Denial>,
    /// Releases whose install fails, with Helm's error (see
    /// `FakeKubeApi::fail_installs`).
    pub failing_installs: BTreeMap<String, String>,
}

/// What a write may change, kept to be put back after a dry run.
pub(crate) struct Snapshot {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    services: u32,
    pod_logs: Vec<(String, String)>,
}

fn namespace_of(resource: &Resource, namespace: Option<&str>) -> String {
    if resource.namespaced {
        namespace.unwrap_or_default().to_owned()
    } else {
        String::new()
    }
}

impl Store {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// Before a dry-run write (`dryRun=All`): the write then goes through
    /// every check and default as any other, and [`Self::restore`] drops
    /// what it stored, as the real API server stores nothing.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects: self.objects.clone(),
            resource_version: self.resource_version,
            services: self.services,
            pod_logs: self.pod_logs.keys().cloned().collect(),
        }
    }

    pub fn restore(&mut self, snapshot: Snapshot) {
        self.objects = snapshot.objects;
        self.resource_version = snapshot.resource_version;
        self.services = snapshot.services;
        self.pod_logs
            .retain(|key, _| snapshot.pod_logs.contains(key));
    }

    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// The identity behind `bearer`, if the token is known, unexpired and
    /// its ServiceAccount (for a bound token) still the same object.
    pub fn authenticate(&self, bearer: &str) -> Option<Token> {
        let token = self.tokens.get(bearer)?;
        if token.expires.is_some_and(|at| at <= self.now()) {
            return None;
        }
        if let Some((ns, name, uid)) = &token.bound {
            let accounts = by_plural("serviceaccounts")?;
            let account = self.get(accounts, Some(ns), name).ok()?;
            if account["metadata"]["uid"] != uid.as_str() {
                return None;
            }
        }
        Some(token.clone())
    }

    /// `POST .../serviceaccounts/{name}/token`: a token for `account` that
    /// this fake accepts until `spec.expirationSeconds` (default one hour,
    /// at least ten minutes as the real API requires) have passed.
    pub fn token_request(
        &mut self,
        namespace: &str,
        account: &Value,
        request: &Value,
    ) -> Result<(u16, Value), ApiError> {
        let name = account["metadata"]["name"].as_str().unwrap_or_default();
        let seconds = request["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(3600);
        if seconds < 600 {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        let expires = self.now() + chrono::Duration::seconds(seconds);
        let token = format!("fake-sa-{}", uuid::Uuid::new_v4().simple());
        self.tokens.insert(
            token.clone(),
            Token {
                user: format!("system:serviceaccount:{namespace}:{name}"),
                groups: vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".to_owned(),
                ],
                expires: Some(expires),
                bound: Some((
                    namespace.to_owned(),
                    name.to_owned(),
                    account["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )),
            },
        );
        let audiences = request["spec"]
            .get("audiences")
            .cloned()
            .unwrap_or_else(|| json!(["https://kubernetes.default.svc.cluster.local", "k3s"]));
        Ok((
            201,
            json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                   "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
                   "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": null},
                   "status": {"token": token,
                              "expirationTimestamp": expires.to_rfc3339_opts(SecondsFormat::Secs, true)}}),
        ))
    }

    pub fn resource_version(&self) -> String {
        self.resource_version.to_string()
    }

    pub fn get(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&(
                resource.plural,
                namespace_of(resource, namespace),
                name.to_owned(),
            ))
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// Objects of `resource`, in one namespace or all of them.
    pub fn list(&self, resource: &'static Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((plural, ns, _), _)| {
                *plural == resource.plural
                    && (!resource.namespaced || namespace.is_none_or(|n| n == ns))
            })
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// POST: a new object, or 409 AlreadyExists.
    pub fn create(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = check_identity(resource, namespace, None, &object)?;
        let ns = namespace_of(resource, namespace);
        if resource.namespaced && !self.namespace_exists(&ns) {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            ));
        }
        let key = (resource.plural, ns.clone(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::about(
                409,
                "AlreadyExists",
                resource,
                &name,
                format!("{} \"{name}\" already exists", qualified(resource)),
            ));
        }
        validate(resource, &name, &object)?;
        let now = self.now().to_rfc3339_opts(SecondsFormat::Secs, true);
        let version = self.next_version();
        let metadata = &mut object["metadata"];
        if let Some(m) = metadata.as_object_mut() {
            for server_set in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
                m.remove(server_set);
            }
        }
        metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
        metadata["resourceVersion"] = json!(version);
        metadata["creationTimestamp"] = json!(now);
        if resource.namespaced {
            metadata["namespace"] = json!(ns);
        }
        if resource.kind == "Deployment" || is_custom(resource) {
            metadata["generation"] = json!(1);
        }
        if is_custom(resource)
            && let Some(o) = object.as_object_mut()
        {
            // The status subresource: a create's status is dropped.
            o.remove("status");
        }
        self.fill_defaults(resource, &mut object);
        self.objects.insert(key, object.clone());
        if resource.kind == "Deployment" {
            self.settle_pods(&object)?;
        }
        self.settle_helm(resource, &object)?;
        Ok(self.get(resource, namespace, &name).unwrap_or(object))
    }

    /// PUT: replaces an existing object; a stale resourceVersion is 409 Conflict.
    pub fn replace(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        check_identity(resource, namespace, Some(name), &object)?;
        let current = self.get(resource, namespace, name)?;
        let sent = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !sent.is_empty() && sent != current["metadata"]["resourceVersion"] {
            return Err(ApiError::about(
                409,
                "Conflict",
                resource,
                name,
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(resource)
                ),
            ));
        }
        validate(resource, name, &object)?;
        for kept in ["uid", "creationTimestamp", "namespace"] {
            if let Some(value) = current["metadata"].get(kept) {
                object["metadata"][kept] = value.clone();
            }
        }
        if resource.kind == "Service" {
            // The real API keeps an allocated cluster IP an update leaves out.
            for kept in ["clusterIP", "clusterIPs"] {
                if object["spec"].get(kept).is_none()
                    && let Some(value) = current["spec"].get(kept)
                {
                    object["spec"][kept] = value.clone();
                }
            }
        }
        if let Some(generation) = current["metadata"].get("generation") {
            object["metadata"]["generation"] = generation.clone();
        }
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        self.fill_defaults(resource, &mut object);
        if resource.kind == "Deployment" && object["spec"] != current["spec"] {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            object["metadata"]["generation"] = json!(generation);
            object["status"]["observedGeneration"] = json!(generation);
        }
        let custom_spec_changed = is_custom(resource) && object["spec"] != current["spec"];
        if is_custom(resource) {
            // The status subresource: an update keeps the status, and a
            // change of anything but metadata is a new generation.
            match current.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    if let Some(o) = object.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            if custom_spec_changed {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                object["metadata"]["generation"] = json!(generation);
            }
        }
        if object == current {
            // As the real API: an update that changes nothing is not written
            // and keeps the resourceVersion.
            return Ok(current);
        }
        object["metadata"]["resourceVersion"] = json!(self.next_version());
        let key = (
            resource.plural,
            namespace_of(resource, namespace),
            name.to_owned(),
        );
        self.objects.insert(key, object.clone());
        if resource.kind == "Deployment" {
            self.settle_pods(&object)?;
        }
        if custom_spec_changed {
            self.settle_helm(resource, &object)?;
            return self.get(resource, namespace, name);
        }
        Ok(object)
    }

    /// Sets an object's status as its controller does (through the status
    /// subresource): no generation change.
    pub(crate) fn set_status(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let version = self.next_version();
        let key = (
            resource.plural,
            namespace_of(resource, namespace),
            name.to_owned(),
        );
        let object = self
            .objects
            .get_mut(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        object["status"] = status;
        object["metadata"]["resourceVersion"] = json!(version);
        Ok(object.clone())
    }

    pub fn delete(
        &mut self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        if resource.plural == "namespaces"
            && ["default", "kube-system", "kube-public"].contains(&name)
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        let key = (
            resource.plural,
            namespace_of(resource, namespace),
            name.to_owned(),
        );
        let object = self
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if resource.plural == "namespaces" {
            // The real API empties a namespace before it goes; the fake at once.
            self.objects.retain(|(_, ns, _), _| ns != name);
        }
        if resource.kind == "HelmChart" {
            // k3s's uninstall and the garbage collector, at once: the
            // chart's install Job goes with it.
            let ns = namespace_of(resource, namespace);
            self.objects
                .remove(&("jobs", ns, format!("helm-install-{name}")));
        }
        if resource.kind == "Deployment" {
            // The garbage collector's work, at once: its pods go with it.
            let ns = namespace_of(resource, namespace);
            self.objects.retain(|(plural, pod_ns, _), pod| {
                *plural != "pods" || *pod_ns != ns || owner_of(pod).as_deref() != Some(name)
            });
        }
        self.next_version();
        Ok(object)
    }

    /// The Deployment and ReplicaSet controllers' work, settled at once:
    /// the Deployment has `spec.replicas` running pods of its current
    /// template (named and labelled as the controllers name them, owned by
    /// the ReplicaSet `<deployment>-<pod-template-hash>`); pods of an older
    /// template are gone. A scale to 0 leaves no pod.
    fn settle_pods(&mut self, deployment: &Value) -> Result<(), ApiError> {
        let pods = by_plural("pods").expect("pods are served");
        let metadata = &deployment["metadata"];
        let name = metadata["name"].as_str().unwrap_or_default();
        let ns = metadata["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let template = &deployment["spec"]["template"];
        let hash = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            template.to_string().hash(&mut hasher);
            format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
        };
        let replica_set = format!("{name}-{hash}");
        let wanted = deployment["spec"]["replicas"].as_u64().unwrap_or(0) as usize;
        let mut current = Vec::new();
        let mut gone = Vec::new();
        for ((plural, pod_ns, pod), object) in &self.objects {
            if *plural != "pods" || *pod_ns != ns || owner_of(object).as_deref() != Some(name) {
                continue;
            }
            if object["metadata"]["ownerReferences"][0]["name"] == replica_set.as_str() {
                current.push(pod.clone());
            } else {
                gone.push(pod.clone());
            }
        }
        gone.extend(current.iter().skip(wanted).cloned());
        for pod in gone {
            self.objects.remove(&("pods", ns.clone(), pod));
            self.next_version();
        }
        for _ in current.len()..wanted {
            let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = json!(hash);
            let pod = json!({
                "metadata": {
                    "name": format!("{replica_set}-{suffix}"),
                    "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": replica_set, "controller": true,
                                         "blockOwnerDeletion": true}],
                },
                "spec": template["spec"],
            });
            self.create(pods, Some(&ns), pod)?;
        }
        Ok(())
    }

    fn namespace_exists(&self, name: &str) -> bool {
        self.objects
            .contains_key(&("namespaces", String::new(), name.to_owned()))
    }

    /// The defaults and status the real API and its controllers fill in,
    /// settled at once: a Deployment's status matches its spec immediately,
    /// so `kubectl rollout status` finishes.
    fn fill_defaults(&mut self, resource: &Resource, object: &mut Value) {
        object["kind"] = json!(resource.kind);
        object["apiVersion"] = json!(api_version(resource));
        match resource.kind {
            "Namespace" => {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            "Secret" => {
                if let Some(Value::Object(strings)) =
                    object.as_object_mut().and_then(|o| o.remove("stringData"))
                {
                    use base64::Engine as _;
                    for (key, value) in strings {
                        let encoded = base64::engine::general_purpose::STANDARD
                            .encode(value.as_str().unwrap_or_default());
                        object["data"][key] = json!(encoded);
                    }
                }
                if object.get("type").is_none() {
                    object["type"] = json!("Opaque");
                }
            }
            "Service" => {
                let spec = &mut object["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec.get("clusterIP").is_none() {
                    self.services += 1;
                    let ip = format!("10.43.{}.{}", self.services / 250, self.services % 250 + 1);
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                if let Some(ports) = spec["ports"].as_array_mut() {
                    for port in ports {
                        if port.get("protocol").is_none() {
                            port["protocol"] = json!("TCP");
                        }
                        if port.get("targetPort").is_none() {
                            port["targetPort"] = port["port"].clone();
                        }
                    }
                }
            }
            "Pod" => {
                object["status"] = json!({
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                });
            }
            // A claim is bound once it names its volume, as the binder
            // (or the local-path provisioner) leaves it.
            "PersistentVolumeClaim" => {
                let bound = object["spec"]["volumeName"]
                    .as_str()
                    .is_some_and(|v| !v.is_empty());
                if object["spec"].get("volumeMode").is_none() {
                    object["spec"]["volumeMode"] = json!("Filesystem");
                }
                object["status"] = if bound {
                    json!({"phase": "Bound", "accessModes": object["spec"]["accessModes"],
                           "capacity": object["spec"]["resources"]["requests"]})
                } else {
                    json!({"phase": "Pending"})
                };
            }
            "PersistentVolume" => {
                let spec = &mut object["spec"];
                if spec.get("volumeMode").is_none() {
                    spec["volumeMode"] = json!("Filesystem");
                }
                if spec.get("persistentVolumeReclaimPolicy").is_none() {
                    spec["persistentVolumeReclaimPolicy"] = json!("Retain");
                }
                let phase = if spec.get("claimRef").is_some() {
                    "Bound"
                } else {
                    "Available"
                };
                object["status"] = json!({"phase": phase});
            }
            "Deployment" => {
                let spec = &mut object["spec"];
                if spec.get("replicas").is_none() {
                    spec["replicas"] = json!(1);
                }
                let replicas = spec["replicas"].clone();
                let generation = object["metadata"]["generation"].clone();
                object["status"] = json!({
                    "observedGeneration": generation,
                    "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas,
                    "conditions": [{"type": "Available", "status": "True",
                                    "reason": "MinimumReplicasAvailable"},
                                   {"type": "Progressing", "status": "True",
                                    "reason": "NewReplicaSetAvailable"}]
                });
            }
            _ => {}
        }
    }
}

/// The Deployment owning `pod` through its ReplicaSet
/// `<deployment>-<pod-template-hash>`, if any.
fn owner_of(pod: &Value) -> Option<String> {
    let owner = &pod["metadata"]["ownerReferences"][0];
    if owner["kind"] != "ReplicaSet" {
        return None;
    }
    let hash = pod["metadata"]["labels"]["pod-template-hash"].as_str()?;
    owner["name"]
        .as_str()?
        .strip_suffix(hash)?
        .strip_suffix('-')
        .map(str::to_owned)
}

/// The name an object carries, checked against the URL as the real API does.
fn check_identity(
    resource: &Resource,
    namespace: Option<&str>,
    url_name: Option<&str>,
    object: &Value,
) -> Result<String, ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let kind = object["kind"].as_str().unwrap_or(resource.kind);
    if kind != resource.kind {
        return Err(ApiError::bad_request(format!(
            "the kind of the provided object ({kind}) does not match the resource {}",
            qualified(resource)
        )));
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(url_name) = url_name
        && name != url_name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({url_name})"
        )));
    }
    if name.is_empty() {
        return Err(ApiError::invalid(
            resource,
            "",
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    }
    if resource.namespaced
        && let Some(body_ns) = object["metadata"]["namespace"].as_str()
        && Some(body_ns) != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(name.to_owned())
}

/// The few field rules tether can break.
fn validate(resource: &Resource, name: &str, object: &Value) -> Result<(), ApiError> {
    if let Some(problem) = invalid_name(resource, name) {
        return Err(ApiError::invalid(
            resource,
            name,
            "metadata.name",
            &format!("Invalid value: {name:?}: {problem}"),
        ));
    }
    if resource.kind == "Deployment"
        && let Some(replicas) = object["spec"]["replicas"].as_i64()
        && replicas < 0
    {
        return Err(ApiError::invalid(
            resource,
            name,
            "spec.replicas",
            &format!("Invalid value: {replicas}: must be greater than or equal to 0"),
        ));
    }
    Ok(())
}

/// Why the real API server refuses `name` for `resource`, or nothing:
/// namespaces are DNS-1123 labels and services DNS-1035 ones (they
/// become DNS names),
/// RBAC objects any path segment (`system:` roles have colons), the rest
/// DNS-1123 subdomains. The messages are the API server's.
fn invalid_name(resource: &Resource, name: &str) -> Option<String> {
    let label = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    if resource.group == "rbac.authorization.k8s.io" {
        return (name == "." || name == ".." || name.contains('/') || name.contains('%'))
            .then(|| "may not be '.', '..' or contain '/' or '%'".to_owned());
    }
    // A Service's name is a DNS-1035 label: it must start with a letter
    // (it becomes an environment variable's name in every pod).
    if resource.kind == "Service" {
        if name.len() > 63 {
            return Some("must be no more than 63 characters".to_owned());
        }
        return (!(label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()))).then(|| {
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned()
        });
    }
    if resource.kind == "Namespace" {
        if name.len() > 63 {
            return Some("must be no more than 63 characters".to_owned());
        }
        return (!label(name)).then(|| {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_owned()
        });
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_owned());
    }
    (!name.split('.').all(label)).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(plural: &str) -> &'static Resource {
        by_plural(plural).unwrap_or_else(|| panic!("{plural} is served"))
    }

    fn store() -> Store {
        let mut store = Store::default();
        store
            .create(
                resource("namespaces"),
                None,
                json!({"metadata": {"name": "apps"}}),
            )
            .unwrap_or_else(|e| panic!("{}", e.message));
        store
    }

    fn deployment(replicas: i64) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"replicas": replicas,
               "template": {"spec": {"containers": [{"name": "web", "image": "web:1"}]}}}})
    }

    #[test]
    fn writes_bump_the_global_resource_version_and_spec_changes_the_generation() {
        let mut store = store();
        let deployments = resource("deployments");
        let created = store
            .create(deployments, Some("apps"), deployment(1))
            .map_err(|e| e.message);
        let created = created.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(created["metadata"]["resourceVersion"], "2");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["metadata"]["namespace"], "apps");
        assert_eq!(created["status"]["observedGeneration"], 1);

        let same = store.replace(deployments, Some("apps"), "web", created.clone());
        let same = same.unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(same, created, "a no-op update is not written");

        let scaled = store.replace(deployments, Some("apps"), "web", deployment(3));
        let scaled = scaled.unwrap_or_else(|e| panic!("{}", e.message));
        // 3: the deployment's pod; 4: the deployment; 5, 6: its new pods.
        assert_eq!(scaled["metadata"]["resourceVersion"], "4");
        assert_eq!(scaled["metadata"]["generation"], 2);
        assert_eq!(scaled["metadata"]["uid"], created["metadata"]["uid"]);
        assert_eq!(scaled["status"]["updatedReplicas"], 3);
    }

    #[test]
    fn a_deployments_pods_follow_its_replicas_and_template_and_go_with_it() {
        let mut store = store();
        let deployments = resource("deployments");
        let pods = |store: &Store| -> Vec<Value> { store.list(resource("pods"), Some("apps")) };
        let ok =
            |result: Result<Value, ApiError>| result.unwrap_or_else(|e| panic!("{}", e.message));
        ok(store.create(deployments, Some("apps"), deployment(2)));
        let first = pods(&store);
        assert_eq!(first.len(), 2);
        let owner = first[0]["metadata"]["ownerReferences"][0]["name"].clone();
        let hash = first[0]["metadata"]["labels"]["pod-template-hash"].clone();
        assert_eq!(owner, format!("web-{}", hash.as_str().unwrap_or_default()));
        assert_eq!(first[0]["status"]["phase"], "Running");

        ok(store.replace(deployments, Some("apps"), "web", deployment(3)));
        let scaled = pods(&store);
        assert_eq!(scaled.len(), 3);
        assert!(
            first.iter().all(|pod| scaled.contains(pod)),
            "a scale keeps the running pods"
        );

        let mut restarted = deployment(3);
        restarted["spec"]["template"]["metadata"]["annotations"]["at"] = json!("now");
        ok(store.replace(deployments, Some("apps"), "web", restarted.clone()));
        let rolled = pods(&store);
        assert_eq!(rolled.len(), 3);
        assert!(
            rolled.iter().all(|pod| !scaled.contains(pod)),
            "a new template, new pods"
        );

        restarted["spec"]["replicas"] = json!(0);
        ok(store.replace(deployments, Some("apps"), "web", restarted));
        assert!(pods(&store).is_empty(), "scaled to 0: no pod");
        ok(store.replace(deployments, Some("apps"), "web", deployment(1)));
        assert_eq!(pods(&store).len(), 1);
        ok(store.delete(deployments, Some("apps"), "web"));
        assert!(pods(&store).is_empty(), "the pods go with their deployment");
    }

    #[test]
    fn claims_and_volumes_are_bound_once_they_name_each_other() {
        let mut store = store();
        let ok =
            |result: Result<Value, ApiError>| result.unwrap_or_else(|e| panic!("{}", e.message));
        let pending = ok(store.create(
            resource("persistentvolumeclaims"),
            Some("apps"),
            json!({"metadata": {"name": "waiting"}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
        ));
        assert_eq!(pending["status"]["phase"], "Pending");
        let claim = ok(store.create(
            resource("persistentvolumeclaims"),
            Some("apps"),
            json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                   "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pvc-1"}}),
        ));
        assert_eq!(claim["status"]["phase"], "Bound");
        assert_eq!(claim["status"]["capacity"]["storage"], "1Gi");
        let volume = ok(store.create(
            resource("persistentvolumes"),
            Some("apps"),
            json!({"metadata": {"name": "pvc-1"}, "spec": {"hostPath": {"path": "/srv"},
                   "claimRef": {"namespace": "apps", "name": "data"}}}),
        ));
        assert_eq!(volume["status"]["phase"], "Bound");
        assert!(
            volume["metadata"].get("namespace").is_none(),
            "a volume is cluster-wide"
        );
    }

    #[test]
    fn names_are_dns_1123_and_a_dry_run_stores_nothing() {
        let mut store = store();
        let refused = |store: &mut Store, plural: &str, namespace: Option<&str>, name: &str| {
            store
                .create(
                    resource(plural),
                    namespace,
                    json!({"metadata": {"name": name}}),
                )
                .err()
                .map(|e| (e.code, e.message))
        };
        let (code, message) =
            refused(&mut store, "configmaps", Some("apps"), "Bad_Name").expect("refused");
        assert_eq!(code, 422);
        assert!(
            message.starts_with(
                "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
            ),
            "{message}"
        );
        let (_, message) =
            refused(&mut store, "namespaces", None, "a.b").expect("a label, no dots");
        assert!(message.contains("RFC 1123 label"), "{message}");
        let (_, message) =
            refused(&mut store, "services", Some("apps"), "a.b").expect("a label, no dots");
        assert!(message.contains("DNS-1035 label"), "{message}");
        let (_, message) =
            refused(&mut store, "services", Some("apps"), "1tether").expect("from a letter");
        assert!(message.contains("DNS-1035 label"), "{message}");
        assert_eq!(
            refused(&mut store, "services", Some("apps"), "tether-1"),
            None
        );
        assert_eq!(
            refused(&mut store, "configmaps", Some("apps"), "a.b-1"),
            None
        );
        assert_eq!(
            refused(&mut store, "clusterroles", None, "system:tether"),
            None
        );
        assert_eq!(
            refused(&mut store, "configmaps", Some("nowhere"), "x"),
            Some((404, "namespaces \"nowhere\" not found".to_owned()))
        );

        let before = store.resource_version();
        let snapshot = store.snapshot();
        let created = store.create(resource("deployments"), Some("apps"), deployment(2));
        assert!(created.is_ok());
        store.restore(snapshot);
        assert!(
            store
                .get(resource("deployments"), Some("apps"), "web")
                .is_err()
        );
        assert!(store.list(resource("pods"), Some("apps")).is_empty());
        assert_eq!(store.resource_version(), before);
    }

    #[test]
    fn errors_carry_the_real_reasons_and_codes() {
        let mut store = store();
        let configmaps = resource("configmaps");
        let map = json!({"metadata": {"name": "settings"}, "data": {"a": "1"}});
        let first = store.create(configmaps, Some("apps"), map.clone());
        let first = first.unwrap_or_else(|e| panic!("{}", e.message));
        let reason = |result: Result<Value, ApiError>| {
            result.map(|_| ()).map_err(|e| (e.code, e.reason)).err()
        };
        assert_eq!(
            reason(store.create(configmaps, Some("apps"), map.clone())),
            Some((409, "AlreadyExists"))
        );
        assert_eq!(
            reason(store.create(configmaps, Some("nowhere"), map.clone())),
            Some((404, "NotFound"))
        );
        assert_eq!(
            reason(store.replace(configmaps, Some("apps"), "other", map.clone())),
            Some((400, "BadRequest"))
        );
        let mut wrong_namespace = map.clone();
        wrong_namespace["metadata"]["namespace"] = json!("default");
        assert_eq!(
            reason(store.create(configmaps, Some("apps"), wrong_namespace)),
            Some((400, "BadRequest"))
        );
        assert_eq!(
            reason(store.create(configmaps, Some("apps"), json!({"metadata": {}}))),
            Some((422, "Invalid"))
        );

        let mut newer = first.clone();
        newer["data"]["a"] = json!("2");
        let newer = store.replace(configmaps, Some("apps"), "settings", newer);
        assert!(newer.is_ok());
        let mut stale = first;
        stale["data"]["a"] = json!("3");
        assert_eq!(
            reason(store.replace(configmaps, Some("apps"), "settings", stale)),
            Some((409, "Conflict"))
        );
        assert_eq!(
            reason(store.delete(resource("namespaces"), None, "kube-system")),
            Some((403, "Forbidden"))
        );
        assert_eq!(
            reason(store.create(resource("deployments"), Some("apps"), deployment(-1))),
            Some((422, "Invalid"))
        );
    }
}
