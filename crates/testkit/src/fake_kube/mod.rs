//! A fake Kubernetes API server for driving the real `kubectl` (and tether's
//! own client) in tests: HTTPS on loopback with a throwaway CA, bearer
//! tokens, discovery, the resources tether manages, and the verbs kubectl
//! uses — with resourceVersion, generation, 404/409 and `kind: Status`
//! errors as the real API answers them, and RBAC for ServiceAccount tokens
//! (with its escalation check: a binding needs `bind` on its role or the
//! role's permissions held).
//!
//! What it leaves out, and what that means for a client:
//! - No controller loop: what the controllers would do is settled as soon
//!   as a Deployment is written. Its status matches its spec, so `kubectl
//!   rollout status` finishes on its first list, and its pods are there
//!   (`spec.replicas` of them, of the current template, owned by the
//!   ReplicaSet `<name>-<pod-template-hash>`; none at scale 0, none once it
//!   is deleted). A watch (`?watch=true`) is accepted and stays open without
//!   events.
//! - PersistentVolumeClaims are `Bound` once `spec.volumeName` names their
//!   volume, `Pending` before; PersistentVolumes are `Bound` with a
//!   `claimRef`, `Available` without. No provisioner creates either.
//! - No OpenAPI document: `/openapi/v2`, `/openapi/v3` (and kubectl 1.20's
//!   fallback `/swagger-2.0.0.pb-v1`) answer 404. kubectl 1.20 and 1.32
//!   then refuse `apply`/`create`/`replace -f` ("error validating data ...
//!   turn validation off with --validate=false"), so tests pass
//!   `--validate=false`; strategic merge falls back to kubectl's built-in
//!   types and works without it.
//! - Patches: JSON merge and strategic merge (lists of objects merge by
//!   `name`); JSON patch and server-side apply answer 415.
//! - Server-side printing (`as=Table`) has real columns for nodes (with
//!   `-o wide` addresses) and deployments, Name and Age for the rest.
//! - Helm controllers, when the fake is started with one
//!   ([`HelmControllers`]): k3s's serves `helmcharts.helm.cattle.io/v1`,
//!   Flux's `helmreleases.helm.toolkit.fluxcd.io/v2` and
//!   `helmrepositories.source.toolkit.fluxcd.io/v1` (in discovery too). As
//!   their CRDs, they have `metadata.generation` and the status
//!   subresource (writes keep the status), and no strategic merge patch
//!   (415). Their controller is settled at once (see `helm.rs`): k3s's
//!   install Job and status, Flux's `Ready` condition; Flux does not check
//!   that the HelmRepository exists. [`FakeKubeApi::fail_installs`] makes
//!   a release's install fail, [`FakeKubeApi::deny`] makes an admission
//!   webhook refuse writes of one object.
//! - Dry runs (`dryRun=All`, `kubectl apply --dry-run=server`): a create,
//!   update, patch or delete goes through every check, default and
//!   admission as any other and is answered as done (a created object
//!   without a resourceVersion), and nothing is stored.
//! - Names are checked as the real API checks them (DNS-1123 labels for
//!   namespaces, DNS-1035 labels for services, subdomains for the rest but
//!   RBAC's), and a
//!   namespaced object in a namespace that does not exist is 404
//!   (`namespaces "x" not found`).
//! - Query parameters kubectl adds (`fieldManager`, `fieldValidation`,
//!   `limit`, `resourceVersion`, `timeout`) are ignored; label selectors
//!   take equality, inequality and existence terms, field selectors
//!   `metadata.name`/`metadata.namespace`.

mod discovery;
mod handlers;
mod helm;
mod patch;
mod store;
mod table;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

pub use helm::{HelmControllers, WEBHOOK};
pub use store::LoggedRequest;
use store::{Store, Token};

/// The token of the fake's `system:masters` user, which RBAC never limits.
pub const ADMIN_TOKEN: &str = "fake-admin-token";

pub struct FakeKubeApi {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the server certificate, PEM.
    pub ca_pem: String,
    store: Arc<Mutex<Store>>,
    handle: axum_server::Handle,
}

impl FakeKubeApi {
    /// Serves on a free loopback port, with the namespaces every cluster has
    /// (`default`, `kube-system`, `kube-public`, `kube-node-lease`), the
    /// `cluster-admin` and `view` ClusterRoles the API server bootstraps,
    /// and no node.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(HelmControllers::None).await
    }

    /// [`Self::start`], running `controllers`: serving their custom
    /// resources, and with Flux its `flux-system` namespace.
    pub async fn start_with(controllers: HelmControllers) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let (ca_pem, cert_pem, key_pem) = certificates()?;
        let mut store = Store::default();
        store.custom_groups = controllers.groups();
        store.tokens.insert(
            ADMIN_TOKEN.to_owned(),
            Token {
                user: "admin".to_owned(),
                groups: vec![
                    "system:masters".to_owned(),
                    "system:authenticated".to_owned(),
                ],
                expires: None,
                bound: None,
            },
        );
        let flux = (controllers == HelmControllers::Flux).then_some("flux-system");
        for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"]
            .into_iter()
            .chain(flux)
        {
            let resource = discovery::by_plural("namespaces").context("namespaces")?;
            store
                .create(resource, None, json!({"metadata": {"name": namespace}}))
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let cluster_roles = discovery::by_plural("clusterroles").context("clusterroles")?;
        store
            .create(
                cluster_roles,
                None,
                json!({"metadata": {"name": "cluster-admin",
                                    "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                       "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                 {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
            )
            .map_err(|e| anyhow::anyhow!(e.message))?;
        store
            .create(cluster_roles, None, view_role())
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let store = Arc::new(Mutex::new(store));
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the fake API")?;
        listener.set_nonblocking(true)?;
        let url = format!("https://{}", listener.local_addr()?);
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the server certificate")?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .context("reading the server key")?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the fake API's TLS config")?;
        // HTTP/1.1 only: the router is built without HTTP/2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        let app = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(store.clone());
        let handle = axum_server::Handle::new();
        // TCP_NODELAY, as Go's net/http (the real API server) sets it: with
        // Nagle's algorithm a response's last small TLS record waits for
        // the client's delayed ACK, 40 ms a request.
        let server = axum_server::from_tcp_rustls(listener, tls)
            .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
            .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        Ok(Self {
            url,
            ca_pem,
            store,
            handle,
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kubeconfig (JSON, which kubectl reads as YAML) for this server,
    /// pinned to its CA, authenticating with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url, "certificate-authority-data": ca}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]
        })
        .to_string()
    }

    /// Writes [`Self::kubeconfig`] to `dir/kubeconfig` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig(token)).context("writing the kubeconfig")?;
        Ok(path)
    }

    /// Stores `object` of `resource` (a plural such as `deployments`) as a
    /// create would, bypassing HTTP: server-set metadata is filled in.
    pub fn seed(&self, resource: &str, object: Value) -> anyhow::Result<Value> {
        let resource = discovery::by_plural(resource).context("no such resource in the fake")?;
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
        self.store()
            .create(resource, namespace.as_deref(), object)
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// A node with these addresses (`InternalIP`, `ExternalIP`, `Hostname`), as k3s registers one.
    pub fn add_node(&self, name: &str, addresses: &[(&str, &str)]) -> anyhow::Result<Value> {
        let addresses: Vec<Value> = addresses
            .iter()
            .map(|(kind, address)| json!({"type": kind, "address": address}))
            .collect();
        self.seed(
            "nodes",
            json!({"metadata": {"name": name, "labels": {
                       "kubernetes.io/hostname": name,
                       "node-role.kubernetes.io/control-plane": "true"}},
                   "status": {"addresses": addresses,
                              "conditions": [{"type": "Ready", "status": "True"}],
                              "nodeInfo": {"kubeletVersion": "v1.29.4+k3s1",
                                           "osImage": "Debian GNU/Linux 12 (bookworm)",
                                           "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.7.15"}}}),
        )
    }

    /// A pod running one container, `app`, as a Deployment's would.
    pub fn add_pod(&self, namespace: &str, name: &str) -> anyhow::Result<Value> {
        self.seed(
            "pods",
            json!({"metadata": {"name": name, "namespace": namespace},
                   "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                   "status": {"phase": "Running", "containerStatuses": [
                       {"name": "app", "ready": true, "restartCount": 0, "image": "app:1"}]}}),
        )
    }

    /// Appends `line` (and a newline) to the pod's log: `pods/{name}/log`
    /// answers it, and followers get it at once.
    pub fn append_log(&self, namespace: &str, pod: &str, line: &str) {
        let mut store = self.store();
        let log = store
            .pod_logs
            .entry((namespace.to_owned(), pod.to_owned()))
            .or_insert_with(|| tokio::sync::watch::channel(String::new()).0);
        log.send_modify(|text| {
            text.push_str(line);
            text.push('\n');
        });
    }

    /// Makes the cluster's admission webhook ([`WEBHOOK`]) refuse every
    /// create, update and patch of the `resource` (plural) named `name`,
    /// saying `message`.
    pub fn deny(&self, resource: &str, name: &str, message: &str) {
        self.store().denials.push(helm::Denial {
            resource: resource.to_owned(),
            name: name.to_owned(),
            message: message.to_owned(),
        });
    }

    /// Makes the Helm controller's install (or upgrade) of the release
    /// `release` fail with Helm's `error`, from its next write on.
    pub fn fail_installs(&self, release: &str, error: &str) {
        self.store()
            .failing_installs
            .insert(release.to_owned(), error.to_owned());
    }

    /// Replaces a stored object as an update would (a person's `kubectl
    /// edit`), bypassing HTTP.
    pub fn replace(&self, resource: &str, object: Value) -> anyhow::Result<Value> {
        let resource = discovery::by_plural(resource).context("no such resource in the fake")?;
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.store()
            .replace(resource, namespace.as_deref(), &name, object)
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// Deletes a stored object as a DELETE would, bypassing HTTP.
    pub fn delete(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> anyhow::Result<()> {
        let resource = discovery::by_plural(resource).context("no such resource in the fake")?;
        self.store()
            .delete(resource, namespace, name)
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// The stored object, as a GET would return it.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let resource = discovery::by_plural(resource)?;
        self.store().get(resource, namespace, name).ok()
    }

    /// All stored objects of `resource`, across namespaces.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        discovery::by_plural(resource)
            .map(|r| self.store().list(r, None))
            .unwrap_or_default()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.store().requests.clone()
    }

    /// Makes the fake answer 503 to every request while `marker` exists: a
    /// restart command in a test creates it to take the "API server" down,
    /// and the test removes it to bring it back when it chooses.
    pub fn down_while_exists(&self, marker: &Path) {
        self.store().down_while = Some(marker.to_owned());
    }

    /// Moves the fake's clock forward, e.g. past a token's expiry.
    pub fn advance_clock(&self, by: std::time::Duration) -> anyhow::Result<()> {
        let by = chrono::Duration::from_std(by).context("clock step")?;
        self.store().clock_offset += by;
        Ok(())
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost it signed.
/// The built-in `view` ClusterRole as Kubernetes 1.32 bootstraps it, for
/// the resources the fake serves and a few beside them: read-only, and
/// no Secrets (the real one is aggregated from `system:aggregate-to-view`,
/// which the fake does not do).
fn view_role() -> serde_json::Value {
    let read = ["get", "list", "watch"];
    json!({"metadata": {"name": "view",
                 "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
    "rules": [
        {"apiGroups": [""], "verbs": read, "resources": [
            "configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status",
            "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
            "services", "services/status"]},
        {"apiGroups": [""], "verbs": read, "resources": [
            "bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
            "replicationcontrollers/status", "resourcequotas", "resourcequotas/status"]},
        {"apiGroups": [""], "verbs": read, "resources": ["namespaces"]},
        {"apiGroups": ["apps"], "verbs": read, "resources": [
            "controllerrevisions", "daemonsets", "daemonsets/status", "deployments",
            "deployments/scale", "deployments/status", "replicasets", "replicasets/scale",
            "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status"]},
        {"apiGroups": ["batch"], "verbs": read, "resources": ["cronjobs", "cronjobs/status", "jobs", "jobs/status"]},
    ]})
}

fn certificates() -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "fake-kube-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    server
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    server
        .distinguished_name
        .push(DnType::CommonName, "fake-kube-apiserver");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Each manifest object as `Kind name`, in order: what a test compares to
/// say which objects a manifest holds.
pub fn kinds_and_names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
