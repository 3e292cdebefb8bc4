//! Cluster mode: the agent's identity — its private key, certificate, the
//! controller's CA and `agent.toml` — kept in the Secret
//! `tether-agent-identity` of the agent's namespace, so a pod that starts
//! with an empty state directory (an emptyDir) is the same device instead
//! of enrolling again with a token that is spent (ADR 0019). Its sealing
//! key is kept there too, so the secrets sealed to it still open (ADR
//! 0030's amendment): whoever reads that Secret reads the secrets' own
//! Secrets beside it anyway.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;

use super::client::Body;
use super::{Client, KubeError, KubernetesConfig};
use crate::secrets::KEY_FILE as SEALING_KEY_FILE;
use crate::state::{
    AgentConfig, CA_FILE, CERT_FILE, CONFIG_FILE, Credentials, KEY_FILE, StateDir, StateError,
    write_atomic,
};

/// The Secret's name; its namespace is the pod's.
pub const SECRET: &str = "tether-agent-identity";
/// After a failed save, the next attempt.
const RETRY: Duration = Duration::from_secs(10);
/// The state files kept, each under its own name as the Secret's key.
const FILES: [&str; 5] = [KEY_FILE, CERT_FILE, CA_FILE, CONFIG_FILE, SEALING_KEY_FILE];

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {what} the identity Secret {namespace}/{SECRET}")]
    Kube {
        what: &'static str,
        namespace: String,
        #[source]
        source: KubeError,
    },
    #[error(
        "the identity Secret {namespace}/{SECRET} has no usable {key}: delete it to enroll again"
    )]
    Incomplete {
        namespace: String,
        key: &'static str,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

#[derive(Debug, Clone)]
pub struct IdentitySecret {
    config: KubernetesConfig,
    namespace: String,
}

impl IdentitySecret {
    /// The Secret in the pod's namespace (the ServiceAccount's `namespace`
    /// file), else in [`super::DEFAULT_NAMESPACE`].
    pub fn new(config: &KubernetesConfig) -> Self {
        Self {
            config: config.clone(),
            namespace: config.pod_namespace(),
        }
    }

    /// `NAMESPACE/tether-agent-identity`.
    pub fn name(&self) -> String {
        format!("{}/{SECRET}", self.namespace)
    }

    fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/secrets/{SECRET}", self.namespace)
    }

    fn failed(&self, what: &'static str) -> impl Fn(KubeError) -> IdentityError + '_ {
        move |source| IdentityError::Kube {
            what,
            namespace: self.namespace.clone(),
            source,
        }
    }

    fn client(&self) -> Result<Client, KubeError> {
        Client::new(self.config.access()?)
    }

    /// The Secret's data, decoded; `None` if there is no Secret.
    async fn read(
        &self,
        client: &Client,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, IdentityError> {
        let secret = match client.json(Method::GET, &self.path(), None).await {
            Ok(secret) => secret,
            Err(KubeError::Api { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(self.failed("read")(e)),
        };
        let data = secret["data"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str()?)
                    .ok()?;
                Some((key.clone(), bytes))
            })
            .collect();
        Ok(Some(data))
    }

    /// Writes the identity kept in the Secret into `state`, if there is
    /// one; whether there was. The key first and `agent.toml` last, as
    /// enrollment writes them.
    pub async fn restore(&self, state: &StateDir) -> Result<bool, IdentityError> {
        let client = self.client().map_err(self.failed("read"))?;
        let Some(data) = self.read(&client).await? else {
            return Ok(false);
        };
        let text = |key: &'static str| {
            data.get(key)
                .and_then(|bytes| String::from_utf8(bytes.clone()).ok())
                .ok_or_else(|| IdentityError::Incomplete {
                    namespace: self.namespace.clone(),
                    key,
                })
        };
        let config: AgentConfig =
            toml::from_str(&text(CONFIG_FILE)?).map_err(|_| IdentityError::Incomplete {
                namespace: self.namespace.clone(),
                key: CONFIG_FILE,
            })?;
        // Absent from a Secret an agent before ADR 0030's amendment kept:
        // a new key is made, and the secrets are set again.
        if let Some(sealing_key) = data.get(SEALING_KEY_FILE) {
            let path = state.file(SEALING_KEY_FILE);
            write_atomic(&path, sealing_key, 0o600)
                .map_err(|source| StateError::Write { path, source })?;
        }
        state.store_key(&text(KEY_FILE)?)?;
        state.store_enrollment(&text(CERT_FILE)?, &text(CA_FILE)?, &config)?;
        tracing::info!(
            device = config.device,
            "restored the device's identity from the Secret {}/{SECRET}",
            self.namespace
        );
        Ok(true)
    }

    /// Makes the Secret hold the identity in `state`: created if missing,
    /// updated if different.
    pub async fn save(&self, state: &StateDir) -> Result<(), IdentityError> {
        let mut data = BTreeMap::new();
        for name in FILES {
            let path = state.file(name);
            let bytes = std::fs::read(&path).map_err(|source| StateError::Read { path, source })?;
            data.insert(name.to_owned(), bytes);
        }
        let client = self.client().map_err(self.failed("write"))?;
        let stored = self.read(&client).await?;
        if stored.as_ref() == Some(&data) {
            return Ok(());
        }
        let encoded: BTreeMap<&String, String> = data
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "tether-agent"}},
            "data": encoded,
        });
        let (method, path) = match stored {
            Some(_) => (Method::PUT, self.path()),
            None => (
                Method::POST,
                format!("/api/v1/namespaces/{}/secrets", self.namespace),
            ),
        };
        client
            .json(method, &path, Some(Body::Json(secret)))
            .await
            .map_err(self.failed("write"))?;
        tracing::info!(
            "kept the device's identity in the Secret {}/{SECRET}",
            self.namespace
        );
        Ok(())
    }

    /// Saves now and after every certificate renewal, retrying until saved.
    pub async fn keep(self, state: StateDir, mut renewed: watch::Receiver<Credentials>) {
        loop {
            match self.save(&state).await {
                Ok(()) => {
                    if renewed.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "{}; trying again in {} s",
                        crate::actions::chain(&e),
                        RETRY.as_secs()
                    );
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
