//! HTTP mapping: authentication, RBAC for non-admin users, the URL layout
//! `/api/v1/...` and `/apis/{group}/{version}/...`, and the verbs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::discovery::{self, Resource, qualified};
use super::patch;
use super::store::{ApiError, LoggedRequest, Store, Token};
use super::table;

pub(crate) type Shared = Arc<Mutex<Store>>;

fn respond(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    respond(e.code, &e.to_json())
}

fn not_served() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// A request resolved to a resource URL.
pub(crate) struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

enum Route {
    Document(Value),
    TokenReview,
    Resource(Target),
}

fn route(custom: &[&'static str], path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(Route::Document(discovery::core_versions())),
        ["apis"] => return Ok(Route::Document(discovery::groups(custom))),
        ["apis", group] => {
            return discovery::group(custom, group)
                .map(Route::Document)
                .ok_or_else(not_served);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_served()),
    };
    if rest.is_empty() {
        return discovery::resource_list(custom, group, version)
            .map(Route::Document)
            .ok_or_else(not_served);
    }
    if group == "authentication.k8s.io" && version == "v1" && rest == ["tokenreviews"] {
        return Ok(Route::TokenReview);
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..]
            if discovery::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some((*ns).to_owned()), [&[*plural][..], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let resource = discovery::find(group, version, rest[0])
        .filter(|r| !discovery::is_custom(r) || custom.contains(&r.group))
        .ok_or_else(not_served)?;
    if rest.len() > 3 || (resource.namespaced && namespace.is_none() && rest.len() > 1) {
        return Err(not_served());
    }
    Ok(Route::Resource(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    }))
}

/// Who is asking: a known, unexpired bearer token (a TokenRequest token
/// also needs its ServiceAccount to still exist). k3s turns anonymous
/// access off, so a request without a token is 401 too, even `/version`.
fn authenticate(store: &Store, headers: &HeaderMap) -> Result<Token, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|bearer| store.authenticate(bearer))
        .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))
}

pub(crate) async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut store = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let user = authenticate(&store, &headers);
    store.requests.push(LoggedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_owned(),
        user: user.as_ref().ok().map(|token| token.user.clone()),
    });
    if store
        .down_while
        .as_ref()
        .is_some_and(|marker| marker.exists())
    {
        // What a k3s server that is starting answers at /readyz, and the
        // like for any request until it is up.
        return error(&ApiError::new(
            503,
            "ServiceUnavailable",
            "the fake API server is restarting",
        ));
    }
    let user = match user {
        Ok(user) => user,
        Err(e) => return error(&e),
    };
    match path.as_str() {
        "/version" => return respond(200, &discovery::version()),
        "/healthz" | "/livez" | "/readyz" => return "ok".into_response(),
        _ => {}
    }
    let query: BTreeMap<String, String> =
        Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let custom = store.custom_groups.clone();
    let result = match route(&custom, &path) {
        Ok(Route::Document(document)) => Ok((200, document)),
        Ok(Route::TokenReview) if method == Method::POST => token_review(&store, &body),
        Ok(Route::TokenReview) => Err(method_not_allowed()),
        Ok(Route::Resource(target)) => {
            let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let verb = if watching {
                "watch"
            } else {
                verb(&method, &target)
            };
            match store
                .authorize(&user, verb, &target)
                .and_then(|()| store.check_escalation(&user, verb, &target, &body))
            {
                Ok(()) if watching => return watch(),
                Ok(())
                    if method == Method::GET
                        && target.resource.plural == "pods"
                        && target.sub.as_deref() == Some("log") =>
                {
                    return pod_log(&mut store, &target, &query);
                }
                Ok(()) => store.admit(&method, &target, &body).and_then(|()| {
                    match dry_run(&method, &query) {
                        Ok(false) => serve(&mut store, &method, &headers, &query, &target, &body),
                        Ok(true) => {
                            let snapshot = store.snapshot();
                            let served =
                                serve(&mut store, &method, &headers, &query, &target, &body);
                            store.restore(snapshot);
                            served.map(|(code, object)| (code, as_dry_run(&method, object)))
                        }
                        Err(e) => Err(e),
                    }
                }),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((code, value)) => respond(code, &value),
        Err(e) => error(&e),
    }
}

/// `GET pods/{name}/log`: the pod's log as text, and with `follow=true`
/// the lines appended after it too, streamed (chunked) until the client
/// leaves, as the kubelet streams a running container's log.
fn pod_log(store: &mut Store, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    if let Err(e) = store.get(target.resource, Some(&namespace), &name) {
        return error(&e);
    }
    let mut log = store
        .pod_logs
        .entry((namespace, name))
        .or_insert_with(|| tokio::sync::watch::channel(String::new()).0)
        .subscribe();
    let text = log.borrow_and_update().clone();
    let plain = [(header::CONTENT_TYPE, "text/plain")];
    if query.get("follow").is_none_or(|f| f != "true") {
        return (plain, text).into_response();
    }
    let first = futures::stream::once(std::future::ready(Ok(Bytes::from(text.clone()))));
    let appended = futures::stream::unfold((log, text.len()), |(mut log, sent)| async move {
        log.changed().await.ok()?;
        let text = log.borrow_and_update().clone();
        let new = Bytes::from(text.get(sent..).unwrap_or_default().to_owned());
        Some((Ok::<_, std::convert::Infallible>(new), (log, text.len())))
    });
    use futures::StreamExt as _;
    (plain, Body::from_stream(first.chain(appended))).into_response()
}

/// A watch that reports nothing: the fake settles every change at once, so
/// a client (`kubectl rollout status`) decides on its initial list and the
/// stream only has to stay open until the client leaves.
fn watch() -> Response {
    let stream = futures::stream::pending::<Result<Bytes, std::convert::Infallible>>();
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

fn verb(method: &Method, target: &Target) -> &'static str {
    match *method {
        Method::GET if target.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// A delete's `DeleteOptions.preconditions` (`uid`, `resourceVersion`):
/// the object must still be that one, else 409 as the real API answers.
fn check_preconditions(object: &Value, resource: &Resource, body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let options = parse(body)?;
    for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let wanted = &options["preconditions"][field];
        let actual = &object["metadata"][field];
        if let Some(wanted) = wanted.as_str()
            && actual.as_str() != Some(wanted)
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {}",
                    qualified(resource),
                    object["metadata"]["name"].as_str().unwrap_or_default(),
                    actual.as_str().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn serve(
    store: &mut Store,
    method: &Method,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    target: &Target,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let resource = target.resource;
    let ns = target.namespace.as_deref();
    let wants_table = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let now = store.now();
    match (
        method.clone(),
        target.name.as_deref(),
        target.sub.as_deref(),
    ) {
        (Method::GET, None, None) => {
            let items: Vec<Value> = store
                .list(resource, ns)
                .into_iter()
                .filter(|o| selects(query.get("labelSelector"), &o["metadata"]["labels"], |k| k))
                .filter(|o| {
                    selects(query.get("fieldSelector"), &o["metadata"], |k| {
                        k.strip_prefix("metadata.").unwrap_or(k)
                    })
                })
                .collect();
            let version = store.resource_version();
            if wants_table {
                return Ok((200, table::table(resource.kind, &items, &version, now)));
            }
            let items: Vec<Value> = items
                .into_iter()
                .map(|mut item| {
                    if let Some(o) = item.as_object_mut() {
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    item
                })
                .collect();
            Ok((
                200,
                json!({"kind": format!("{}List", resource.kind),
                            "apiVersion": discovery::api_version(resource),
                            "metadata": {"resourceVersion": version}, "items": items}),
            ))
        }
        (Method::GET, Some(name), None) => {
            let object = store.get(resource, ns, name)?;
            if wants_table {
                return Ok((
                    200,
                    table::table(resource.kind, &[object], &store.resource_version(), now),
                ));
            }
            Ok((200, object))
        }
        (Method::POST, None, None) => Ok((201, store.create(resource, ns, parse(body)?)?)),
        (Method::PUT, Some(name), None) => {
            Ok((200, store.replace(resource, ns, name, parse(body)?)?))
        }
        (Method::PATCH, Some(name), None) => {
            let mut object = store.get(resource, ns, name)?;
            if discovery::is_custom(resource) && is_strategic(headers) {
                // The real API has no strategic merge for custom resources.
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                ));
            }
            apply_patch(headers, &mut object, &parse(body)?)?;
            Ok((200, store.replace(resource, ns, name, object)?))
        }
        (Method::DELETE, Some(name), None) => {
            check_preconditions(&store.get(resource, ns, name)?, resource, body)?;
            Ok((200, store.delete(resource, ns, name)?))
        }
        (Method::GET, Some(name), Some("scale")) if resource.kind == "Deployment" => {
            Ok((200, scale(&store.get(resource, ns, name)?)))
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale"))
            if resource.kind == "Deployment" =>
        {
            let mut deployment = store.get(resource, ns, name)?;
            let mut wanted = scale(&deployment);
            if *method == Method::PUT {
                wanted = parse(body)?;
            } else {
                apply_patch(headers, &mut wanted, &parse(body)?)?;
            }
            let replicas = wanted["spec"]["replicas"].as_i64().unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                ));
            }
            deployment["spec"]["replicas"] = json!(replicas);
            deployment["metadata"]["resourceVersion"] =
                wanted["metadata"]["resourceVersion"].clone();
            let updated = store.replace(resource, ns, name, deployment)?;
            Ok((200, scale(&updated)))
        }
        (Method::POST, Some(name), Some("token")) if resource.kind == "ServiceAccount" => {
            let namespace = ns.unwrap_or_default();
            let account = store.get(resource, ns, name)?;
            store.token_request(namespace, &account, &parse(body)?)
        }
        (_, _, Some(_)) => Err(not_served()),
        _ => Err(method_not_allowed()),
    }
}

/// Whether a write is a dry run (`?dryRun=All`, what `kubectl apply
/// --dry-run=server` sends): checked, defaulted and admitted as any
/// write, answered as if done, and not stored. Any other value is refused
/// as the real API server refuses it.
fn dry_run(method: &Method, query: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    let writes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method);
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") if writes => Ok(true),
        Some("All") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dryRun parameter value {other:?}: supported values: \"All\""
        ))),
    }
}

/// A dry run's answer: the object as it would be stored, but a created one
/// has no resourceVersion, since only storing it would give it one.
fn as_dry_run(method: &Method, mut object: Value) -> Value {
    if *method == Method::POST
        && let Some(metadata) = object["metadata"].as_object_mut()
    {
        metadata.remove("resourceVersion");
    }
    object
}

fn is_strategic(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .is_some_and(|c| c.starts_with("application/strategic-merge-patch+json"))
}

fn apply_patch(headers: &HeaderMap, object: &mut Value, body: &Value) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default();
    match content_type.split(';').next().unwrap_or_default() {
        "application/merge-patch+json" => patch::merge(object, body),
        "application/strategic-merge-patch+json" => patch::strategic(object, body),
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (the fake's); got {other:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// A Deployment's `autoscaling/v1` Scale.
fn scale(deployment: &Value) -> Value {
    let metadata = &deployment["metadata"];
    let selector: Vec<String> = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
           "metadata": {"name": metadata["name"], "namespace": metadata["namespace"],
                        "uid": metadata["uid"], "resourceVersion": metadata["resourceVersion"],
                        "creationTimestamp": metadata["creationTimestamp"]},
           "spec": {"replicas": deployment["spec"]["replicas"]},
           "status": {"replicas": deployment["status"]["replicas"], "selector": selector.join(",")}})
}

fn token_review(store: &Store, body: &[u8]) -> Result<(u16, Value), ApiError> {
    let mut review = parse(body)?;
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    review["status"] = match store.authenticate(token) {
        Some(t) => json!({"authenticated": true, "user": {"username": t.user, "groups": t.groups}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    Ok((201, review))
}

/// Label or field selector terms joined by commas: `k=v`, `k==v`, `k!=v`,
/// `k` (exists) and `!k` (absent). Set-based terms (`in`, `notin`) are
/// refused by matching nothing, so a test using them fails loudly.
fn selects(selector: Option<&String>, fields: &Value, key: impl Fn(&str) -> &str) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let value = |k: &str| fields.get(key(k.trim())).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            value(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            value(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            value(k).is_none()
        } else if term.contains(' ') {
            false
        } else {
            value(term).is_some()
        }
    })
}

/// Whether an RBAC list (`verbs`, `resources`, ...) names `wanted` or `*`.
fn has(list: &Value, wanted: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == wanted))
}

impl Store {
    /// RBAC as the real authorizer evaluates it: `system:masters` may do
    /// anything; others need a rule, from a ClusterRoleBinding or from a
    /// RoleBinding in the request's namespace, granting the verb on the
    /// resource (`deployments/scale` for the subresource) in its group.
    fn authorize(&self, user: &Token, verb: &str, target: &Target) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(());
        }
        let resource = target.resource;
        let name_of_resource = match &target.sub {
            Some(sub) => format!("{}/{sub}", resource.plural),
            None => resource.plural.to_owned(),
        };
        let rules = self.rules_of(user, target.namespace.as_deref());
        let allowed = rules.iter().any(|rule| {
            has(&rule["apiGroups"], resource.group)
                && has(&rule["resources"], &name_of_resource)
                && has(&rule["verbs"], verb)
                && match (rule["resourceNames"].as_array(), &target.name) {
                    (Some(names), Some(name)) if !names.is_empty() => {
                        names.iter().any(|n| n == name.as_str())
                    }
                    (Some(names), None) => names.is_empty(),
                    _ => true,
                }
        });
        if allowed {
            return Ok(());
        }
        let object = match &target.name {
            Some(name) => format!("{} \"{name}\"", qualified(resource)),
            None => qualified(resource),
        };
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{object} is forbidden: User \"{}\" cannot {verb} resource \"{name_of_resource}\" in API group \"{}\" {scope}",
                user.user, resource.group
            ),
        ))
    }

    /// Every RBAC rule that applies to `user` in `namespace` (cluster-wide
    /// rules from ClusterRoleBindings, plus the namespace's RoleBindings).
    fn rules_of(&self, user: &Token, namespace: Option<&str>) -> Vec<Value> {
        let subject_matches = |binding: &Value| {
            binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| match s["kind"].as_str() {
                    Some("ServiceAccount") => {
                        user.user
                            == format!(
                                "system:serviceaccount:{}:{}",
                                s["namespace"].as_str().unwrap_or_default(),
                                s["name"].as_str().unwrap_or_default()
                            )
                    }
                    Some("User") => s["name"] == user.user.as_str(),
                    Some("Group") => user.groups.iter().any(|g| s["name"] == g.as_str()),
                    _ => false,
                })
            })
        };
        let cluster_role = discovery::by_plural("clusterroles");
        let role = discovery::by_plural("roles");
        let mut roles = Vec::new();
        if let Some(bindings) = discovery::by_plural("clusterrolebindings") {
            for binding in self
                .list(bindings, None)
                .iter()
                .filter(|b| subject_matches(b))
            {
                roles
                    .extend(cluster_role.and_then(|r| {
                        self.get(r, None, binding["roleRef"]["name"].as_str()?).ok()
                    }));
            }
        }
        if let (Some(bindings), Some(ns)) = (discovery::by_plural("rolebindings"), namespace) {
            for binding in self
                .list(bindings, Some(ns))
                .iter()
                .filter(|b| subject_matches(b))
            {
                let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
                let found = match binding["roleRef"]["kind"].as_str() {
                    Some("ClusterRole") => cluster_role.and_then(|r| self.get(r, None, name).ok()),
                    _ => role.and_then(|r| self.get(r, Some(ns), name).ok()),
                };
                roles.extend(found);
            }
        }
        roles
            .iter()
            .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// RBAC's escalation prevention: creating or updating a (Cluster)RoleBinding
    /// needs the `bind` verb on the role it names, or every permission that
    /// role grants already held (per rule: each group, resource and verb,
    /// and each non-resource URL).
    fn check_escalation(
        &self,
        user: &Token,
        verb: &str,
        target: &Target,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let binding_kind = target.resource.kind;
        if user.groups.iter().any(|g| g == "system:masters")
            || !matches!(verb, "create" | "update")
            || !matches!(binding_kind, "ClusterRoleBinding" | "RoleBinding")
        {
            return Ok(());
        }
        let binding: Value = parse(body)?;
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let (plural, namespace) = match role_kind {
            "ClusterRole" => ("clusterroles", None),
            _ => ("roles", target.namespace.as_deref()),
        };
        let held = self.rules_of(user, target.namespace.as_deref());
        let may_bind = held.iter().any(|rule| {
            has(&rule["apiGroups"], "rbac.authorization.k8s.io")
                && has(&rule["resources"], plural)
                && has(&rule["verbs"], "bind")
                && rule["resourceNames"]
                    .as_array()
                    .is_none_or(|names| names.is_empty() || names.iter().any(|n| n == role_name))
        });
        if may_bind {
            return Ok(());
        }
        let granted = discovery::by_plural(plural)
            .and_then(|r| self.get(r, namespace, role_name).ok())
            .map(|role| role["rules"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let missing: Vec<&Value> = granted
            .iter()
            .filter(|rule| {
                let covered_by = |held: &Value| {
                    if rule.get("nonResourceURLs").is_some() {
                        return strings(&rule["nonResourceURLs"])
                            .iter()
                            .all(|url| has(&held["nonResourceURLs"], url))
                            && strings(&rule["verbs"])
                                .iter()
                                .all(|v| has(&held["verbs"], v));
                    }
                    strings(&rule["apiGroups"])
                        .iter()
                        .all(|g| has(&held["apiGroups"], g))
                        && strings(&rule["resources"])
                            .iter()
                            .all(|r| has(&held["resources"], r))
                        && strings(&rule["verbs"])
                            .iter()
                            .all(|v| has(&held["verbs"], v))
                        && held["resourceNames"].as_array().is_none_or(Vec::is_empty)
                };
                !held.iter().any(covered_by)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let name = binding["metadata"]["name"].as_str().unwrap_or_default();
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held: {}",
                qualified(target.resource),
                user.user,
                user.groups,
                missing
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_unknown_token_is_401_and_a_known_one_is_its_user() {
        let mut store = Store::default();
        let token = |user: &str| Token {
            user: user.to_owned(),
            groups: Vec::new(),
            expires: None,
            bound: None,
        };
        store.tokens.insert("known".to_owned(), token("someone"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            if let Ok(value) = value.parse() {
                headers.insert(header::AUTHORIZATION, value);
            }
            authenticate(&store, &headers)
                .map(|t| t.user)
                .map_err(|e| (e.code, e.reason))
        };
        assert_eq!(
            authenticate(&store, &HeaderMap::new())
                .map(|t| t.user)
                .map_err(|e| e.code),
            Err(401)
        );
        assert_eq!(with("Bearer unknown"), Err((401, "Unauthorized")));
        assert_eq!(with("Basic known"), Err((401, "Unauthorized")));
        assert_eq!(with("Bearer known"), Ok("someone".to_owned()));
    }

    #[test]
    fn namespaced_and_cluster_urls_resolve_to_their_resource() {
        let target = |path: &str| match route(&[], path) {
            Ok(Route::Resource(t)) => Some((t.resource.plural, t.namespace, t.name, t.sub)),
            _ => None,
        };
        assert_eq!(
            target("/apis/apps/v1/namespaces/a/deployments/web/scale"),
            Some((
                "deployments",
                Some("a".to_owned()),
                Some("web".to_owned()),
                Some("scale".to_owned())
            ))
        );
        assert_eq!(
            target("/api/v1/namespaces/a"),
            Some(("namespaces", None, Some("a".to_owned()), None))
        );
        assert_eq!(
            target("/api/v1/configmaps"),
            Some(("configmaps", None, None, None))
        );
        assert_eq!(
            target("/api/v1/configmaps/x"),
            None,
            "a namespaced object needs its namespace"
        );
        assert_eq!(target("/apis/apps/v2/deployments"), None);
        assert_eq!(
            target("/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts"),
            None,
            "a custom resource the fake does not serve"
        );
        assert!(matches!(
            route(&["helm.cattle.io"], "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts"),
            Ok(Route::Resource(Target { resource, .. })) if resource.kind == "HelmChart"
        ));
        assert!(matches!(
            route(&[], "/apis/authentication.k8s.io/v1/tokenreviews"),
            Ok(Route::TokenReview)
        ));
    }

    #[test]
    fn a_delete_with_preconditions_only_takes_that_object() {
        let secrets = discovery::by_plural("secrets").expect("served");
        let secret = json!({"metadata": {"name": "x", "uid": "u-1", "resourceVersion": "5"}});
        let options = |preconditions: Value| {
            json!({"kind": "DeleteOptions", "preconditions": preconditions}).to_string()
        };
        assert!(check_preconditions(&secret, secrets, b"").is_ok());
        assert!(
            check_preconditions(&secret, secrets, options(json!({"uid": "u-1"})).as_bytes())
                .is_ok()
        );
        let refused =
            check_preconditions(&secret, secrets, options(json!({"uid": "u-2"})).as_bytes())
                .expect_err("another object");
        assert_eq!((refused.code, refused.reason), (409, "Conflict"));
        assert_eq!(
            refused.message,
            "Operation cannot be fulfilled on secrets \"x\": Precondition failed: UID in precondition: u-2, UID in object meta: u-1"
        );
        let stale = check_preconditions(
            &secret,
            secrets,
            options(json!({"resourceVersion": "4"})).as_bytes(),
        )
        .expect_err("changed since");
        assert_eq!(stale.code, 409);
    }
}
