//! Cluster mode (ADR 0030's amendment): each secret of the spec as the
//! Kubernetes Secret `tether-secret-<name>` in the agent's namespace, where
//! the cluster's workloads mount it, instead of a file in the pod's state
//! directory, which no workload sees.
//!
//! Every round — at start, on every spec change and every `resync` (every
//! `retry` after a failure) — the agent lists the Secrets carrying its
//! labels (`app.kubernetes.io/managed-by: tether`, `tether.dev/secret:
//! <name>`), creates the missing ones, brings back the ones edited by hand
//! and deletes those of secrets no longer in the spec. A Secret without its
//! labels is never written or deleted, even with a name it would use.
//!
//! What stops a secret (one sealed to another key, the API server
//! unreachable, a 403) is reported at `spec.secrets.<name>` and its Secret
//! left as it was: a workload keeps the last value it had.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};
use tether_proto::sealed::SecretKey;
use tether_proto::secrets::{SECTION, SealedSecrets};
use tether_proto::spec::SpecError;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::actions::chain;
use crate::deployments::charts::objects::{MANAGED_BY, MANAGER};
use crate::kubernetes::client::Body;
use crate::kubernetes::{Client, KubeError, KubernetesConfig};
use crate::spec::AppliedSpec;

/// Before a secret's name in its Secret's name.
pub const NAME_PREFIX: &str = "tether-secret-";
/// The label naming the secret a Secret holds.
pub const SECRET_LABEL: &str = "tether.dev/secret";
/// The annotation with the secret's version (it goes up with every set),
/// so a workload's tooling can see which one it has.
pub const VERSION_ANNOTATION: &str = "tether.dev/secret-version";
/// The Secret's one key.
pub const VALUE_KEY: &str = "value";
/// After a failed round, the next one at the latest.
const RETRY: Duration = Duration::from_secs(10);

/// The Secret holding the secret `name`. tetherd's names (1 to 63
/// lowercase letters, digits and '-') make valid Secret names (up to 253)
/// and label values (up to 63) as they are: no mapping is needed.
pub fn object_name(name: &str) -> String {
    format!("{NAME_PREFIX}{name}")
}

/// The Secret as the agent writes it.
fn desired(namespace: &str, name: &str, version: u64, value: &[u8]) -> Value {
    let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(value));
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": object_name(name), "namespace": namespace,
            "labels": {MANAGED_BY: MANAGER, SECRET_LABEL: name},
            "annotations": {VERSION_ANNOTATION: version.to_string()},
        },
        "data": {VALUE_KEY: encoded.as_str()},
    })
}

/// Whether `current` has what the agent writes: its type, data, and the
/// agent's own labels and annotations as `desired` has them. Labels and
/// annotations other tools add (a reloader, a tracker) are theirs: they
/// neither make the Secret stale nor are taken away.
fn is_current(current: &Value, desired: &Value) -> bool {
    let type_of = |o: &Value| o["type"].as_str().unwrap_or("Opaque").to_owned();
    let ours_kept = |field: &str| {
        desired["metadata"][field].as_object().is_none_or(|ours| {
            ours.iter()
                .all(|(key, value)| current["metadata"][field][key] == *value)
        })
    };
    type_of(current) == type_of(desired)
        && current["data"] == desired["data"]
        && ours_kept("labels")
        && ours_kept("annotations")
}

/// `desired` carrying what `current` has beyond the agent's own metadata:
/// others' labels and annotations, finalizers and owners, so a rewrite
/// takes none of them away.
fn keeping_others(mut desired: Value, current: &Value) -> Value {
    for field in ["labels", "annotations"] {
        if let Some(theirs) = current["metadata"][field].as_object() {
            let merged = desired["metadata"][field]
                .as_object_mut()
                .expect("the agent writes labels and annotations");
            for (key, value) in theirs {
                merged.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    for field in ["finalizers", "ownerReferences"] {
        if !current["metadata"][field].is_null() {
            desired["metadata"][field] = current["metadata"][field].clone();
        }
    }
    desired
}

/// The secret a listed Secret holds, if it is one the agent wrote: its
/// labels and its name agree. A copy carrying the labels under another
/// name is someone else's.
fn secret_of(object: &Value) -> Option<&str> {
    let metadata = &object["metadata"];
    let name = metadata["labels"][SECRET_LABEL].as_str()?;
    (metadata["labels"][MANAGED_BY] == MANAGER
        && metadata["name"].as_str() == Some(object_name(name).as_str()))
    .then_some(name)
}

/// What one round could not do, and whether trying again soon may help.
#[derive(Debug, Default)]
struct Round {
    errors: Vec<SpecError>,
    /// The API refused or failed (not a secret sealed to another key).
    retry: bool,
}

/// Keeps the spec's secrets as Secrets in the agent's namespace.
pub struct ClusterSecrets {
    kubernetes: KubernetesConfig,
    namespace: String,
    key: Arc<SecretKey>,
}

impl ClusterSecrets {
    /// In the pod's namespace (the ServiceAccount's `namespace` file),
    /// else in [`crate::kubernetes::DEFAULT_NAMESPACE`].
    pub fn new(kubernetes: &KubernetesConfig, key: Arc<SecretKey>) -> Self {
        Self {
            kubernetes: kubernetes.clone(),
            namespace: kubernetes.pod_namespace(),
            key,
        }
    }

    /// Reconciles until the task is dropped, reporting what could not be
    /// done in `errors`.
    pub async fn run(
        self,
        resync: Duration,
        mut spec: watch::Receiver<AppliedSpec>,
        errors: watch::Sender<Vec<SpecError>>,
    ) {
        loop {
            // Read apart from the match: the watch's lock must not be
            // held across the round's requests.
            let secrets = wanted(&spec.borrow_and_update());
            let round = match secrets {
                Some(secrets) => self.round(&secrets).await,
                None => Round::default(),
            };
            let wait = if round.retry {
                resync.min(RETRY)
            } else {
                resync
            };
            errors.send_if_modified(|reported| {
                let changed = *reported != round.errors;
                *reported = round.errors;
                changed
            });
            tokio::select! {
                changed = spec.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn collection(&self) -> String {
        format!("/api/v1/namespaces/{}/secrets", self.namespace)
    }

    fn object(&self, object_name: &str) -> String {
        format!("{}/{object_name}", self.collection())
    }

    /// One full reconcile of `secrets`.
    async fn round(&self, secrets: &SealedSecrets) -> Round {
        let (client, listed) = match self.list().await {
            Ok(listed) => listed,
            Err(error) => {
                let reason = chain(&error);
                tracing::warn!(namespace = %self.namespace, "cannot reconcile the secrets' Secrets: {reason}");
                let errors = secrets
                    .keys()
                    .map(|name| {
                        SpecError::new(
                            format!("spec.{SECTION}.{name}"),
                            format!("cannot list the Secrets in {}: {reason}", self.namespace),
                        )
                    })
                    .collect();
                return Round {
                    errors,
                    retry: true,
                };
            }
        };
        let mut round = Round::default();
        for (name, sealed) in secrets {
            let path = format!("spec.{SECTION}.{name}");
            let value = match super::open(&self.key, name, sealed) {
                Ok(value) => value,
                Err(error) => {
                    round.errors.push(error);
                    continue;
                }
            };
            let desired = desired(&self.namespace, name, sealed.version, &value);
            drop(value);
            let current = listed.get(name.as_str());
            if let Err(problem) = self.write(&client, name, current, desired).await {
                round.retry = true;
                round.errors.push(SpecError::new(path, problem));
            } else {
                tracing::debug!(secret = %name, version = sealed.version, "secret's Secret current");
            }
        }
        for (name, current) in &listed {
            if secrets.contains_key(name) {
                continue;
            }
            if let Err(problem) = self.delete(&client, name, current).await {
                round.retry = true;
                round
                    .errors
                    .push(SpecError::new(format!("spec.{SECTION}"), problem));
            }
        }
        round
    }

    /// A client and the Secrets the agent wrote, by secret.
    async fn list(&self) -> Result<(Client, BTreeMap<String, Value>), KubeError> {
        let client = Client::new(self.kubernetes.access()?)?;
        // `MANAGED_BY=MANAGER,SECRET_LABEL`, escaped for the query.
        let selector = format!("{MANAGED_BY}={MANAGER},{SECRET_LABEL}")
            .replace('/', "%2F")
            .replace('=', "%3D")
            .replace(',', "%2C");
        let listed = client
            .json(
                Method::GET,
                &format!("{}?labelSelector={selector}", self.collection()),
                None,
            )
            .await?;
        let by_secret = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| Some((secret_of(item)?.to_owned(), item.clone())))
            .collect();
        Ok((client, by_secret))
    }

    /// Creates the Secret of `name` or brings it back to `desired`; what
    /// stopped it, said for the operator.
    async fn write(
        &self,
        client: &Client,
        name: &str,
        current: Option<&Value>,
        desired: Value,
    ) -> Result<(), String> {
        let object = object_name(name);
        let what = format!("the Secret {}/{object}", self.namespace);
        match current {
            Some(current) if is_current(current, &desired) => Ok(()),
            Some(current) => {
                let mut desired = keeping_others(desired, current);
                // The version read: a write in between is a 409, retried.
                desired["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                client
                    .json(
                        Method::PUT,
                        &self.object(&object),
                        Some(Body::Json(desired)),
                    )
                    .await
                    .map_err(|e| format!("cannot update {what}: {}", chain(&e)))?;
                tracing::info!(secret = %name, "updated {what}");
                Ok(())
            }
            None => match client
                .json(Method::POST, &self.collection(), Some(Body::Json(desired)))
                .await
            {
                Ok(_) => {
                    tracing::info!(secret = %name, "created {what}");
                    Ok(())
                }
                Err(KubeError::Api { status: 409, .. }) => Err(format!(
                    "{what} exists and is not tether's (no {MANAGED_BY}: {MANAGER} and {SECRET_LABEL}: {name} labels): delete it or give the secret another name"
                )),
                Err(e) => Err(format!("cannot create {what}: {}", chain(&e))),
            },
        }
    }

    /// Deletes the Secret of a secret no longer in the spec.
    async fn delete(&self, client: &Client, name: &str, current: &Value) -> Result<(), String> {
        let object = object_name(name);
        let what = format!("the Secret {}/{object}", self.namespace);
        // Only the object listed, as listed: one made anew, or changed
        // meanwhile (its labels taken off to keep it), is a 409.
        let precondition = json!({
            "apiVersion": "v1", "kind": "DeleteOptions",
            "preconditions": {"uid": current["metadata"]["uid"],
                              "resourceVersion": current["metadata"]["resourceVersion"]},
        });
        match client
            .json(
                Method::DELETE,
                &self.object(&object),
                Some(Body::Json(precondition)),
            )
            .await
        {
            Ok(_) | Err(KubeError::Api { status: 404, .. }) => {
                tracing::info!(secret = %name, "deleted {what}: the secret is no longer in the spec");
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot delete {what} of a secret no longer in the spec: {}",
                chain(&e)
            )),
        }
    }
}

/// The secrets to keep as Secrets, or `None` to leave them as they are:
/// before the first spec (a new pod's state directory is empty: deleting
/// the Secrets then would take them from the workloads until tetherd's
/// spec comes) and while the section is refused (reported by the spec).
fn wanted(applied: &AppliedSpec) -> Option<SealedSecrets> {
    if applied.version == 0
        || applied
            .errors
            .iter()
            .any(|e| crate::spec::is_under(e, SECTION))
    {
        return None;
    }
    super::parse(applied.spec.get(SECTION)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_tetherd_allows_makes_a_kubernetes_name() {
        let longest = "a".repeat(tether_proto::desired::MAX_NAME_BYTES);
        for name in ["a", "db-1", longest.as_str()] {
            assert_eq!(crate::kubernetes::check_name(&object_name(name)), Ok(()));
            // A label value: at most 63 characters.
            assert!(name.len() <= 63);
        }
    }

    #[test]
    fn a_secret_is_current_only_with_its_value_labels_and_version() {
        let wanted = desired("tether-system", "db", 2, b"hunter2");
        assert_eq!(wanted["data"]["value"], "aHVudGVyMg==");
        assert_eq!(wanted["metadata"]["name"], "tether-secret-db");
        let mut current = wanted.clone();
        current["metadata"]["resourceVersion"] = json!("7");
        current["metadata"]["uid"] = json!("u");
        assert!(is_current(&current, &wanted));
        assert_eq!(secret_of(&current), Some("db"));

        let mut edited = current.clone();
        edited["data"]["value"] = json!("eA==");
        assert!(!is_current(&edited, &wanted));
        let mut extra = current.clone();
        extra["data"]["other"] = json!("eA==");
        assert!(!is_current(&extra, &wanted));
        let older = desired("tether-system", "db", 1, b"hunter2");
        assert!(!is_current(&current, &older));
        // Another tool's label or annotation is no change; ours changed is.
        let mut tracked = current.clone();
        tracked["metadata"]["labels"]["argocd.argoproj.io/instance"] = json!("apps");
        tracked["metadata"]["annotations"]["reloader/match"] = json!("true");
        tracked["metadata"]["finalizers"] = json!(["example.com/keep"]);
        assert!(is_current(&tracked, &wanted));
        let mut relabelled = tracked.clone();
        relabelled["metadata"]["labels"][SECRET_LABEL] = json!("other");
        assert!(!is_current(&relabelled, &wanted));
        // A rewrite keeps them.
        let rewritten = keeping_others(older.clone(), &tracked);
        assert_eq!(
            rewritten["metadata"]["labels"]["argocd.argoproj.io/instance"],
            "apps"
        );
        assert_eq!(rewritten["metadata"]["labels"][SECRET_LABEL], "db");
        assert_eq!(
            rewritten["metadata"]["annotations"]["reloader/match"],
            "true"
        );
        assert_eq!(
            rewritten["metadata"]["annotations"][VERSION_ANNOTATION],
            "1"
        );
        assert_eq!(
            rewritten["metadata"]["finalizers"],
            json!(["example.com/keep"])
        );

        // A copy with the labels under another name is not the agent's.
        let mut copy = current.clone();
        copy["metadata"]["name"] = json!("db-backup");
        assert_eq!(secret_of(&copy), None);
        let mut foreign = current;
        foreign["metadata"]["labels"][MANAGED_BY] = json!("helm");
        assert_eq!(secret_of(&foreign), None);
    }

    #[test]
    fn nothing_is_kept_or_deleted_before_the_first_spec_or_while_the_section_is_refused() {
        assert!(wanted(&AppliedSpec::default()).is_none());
        let mut applied = AppliedSpec {
            version: 3,
            ..AppliedSpec::default()
        };
        assert_eq!(wanted(&applied), Some(SealedSecrets::new()));
        applied
            .errors
            .push(SpecError::new("spec.secrets.DB", "bad name"));
        assert!(wanted(&applied).is_none());
    }
}
