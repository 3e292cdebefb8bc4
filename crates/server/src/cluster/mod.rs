//! What crosses replicas: several tetherd on one PostgreSQL
//! (`docs/adr/0009-replicas-leases-and-singletons.md`).
//!
//! Each replica has an id kept in its data dir and a lease row it renews
//! ([`lease`]); it owns the presence of the devices whose sessions it holds
//! ([`presence`]); work that must run once per cluster runs under an
//! advisory lock ([`singleton`]). Replicas must share the CA and the
//! sealing key, checked at start ([`check_shared_secrets`]). Changes that
//! another replica must act on are announced on the [`bus`] (ADR 0010).

pub mod bus;
pub mod lease;
pub mod presence;
pub mod singleton;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{ReplicaRecord, Store, StoreError};

/// The file in the data dir holding this replica's id.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// Longest replica id accepted from the file.
const MAX_REPLICA_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("could not read or create the replica id file {path}")]
    ReplicaIdFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} does not hold a replica id (1 to {MAX_REPLICA_ID_LEN} of a-z, 0-9, -): delete it and a new id is made at the next start"
    )]
    BadReplicaId { path: PathBuf },
    #[error(
        "this replica's CA (sha256 {mine}) is not the cluster's ({cluster}): copy ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key from an existing replica's data dir"
    )]
    OtherCa { mine: String, cluster: String },
    #[error(
        "this replica's sealing key (fingerprint {mine}) is not the cluster's ({cluster}): copy ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key from an existing replica's data dir"
    )]
    OtherSealingKey { mine: String, cluster: String },
    #[error(
        "this replica's agent release {what} ({mine}) is not the cluster's ({cluster}): copy ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key from an existing replica's data dir"
    )]
    OtherReleaseKey {
        what: &'static str,
        mine: String,
        cluster: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The `[cluster]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How long a replica's devices stay its own without a renewal; it
    /// renews every third of it.
    pub lease: Duration,
    /// The MQTT URL agents are given for this replica, e.g. a DNS name or a
    /// load balancer in front of all replicas. Default: its first public
    /// host and its MQTT port.
    pub advertise_mqtt_url: Option<String>,
    /// The `https://HOST:PORT` devices dial this replica's tunnels at
    /// (ADR 0021), where they reach it under another name than clients do.
    /// Default: the host the tunnel's client used.
    pub advertise_api_url: Option<String>,
    /// How often each replica delivers the pending actions of the devices
    /// it holds, in case the announcement from another replica was lost.
    pub outbox_sweep: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            advertise_mqtt_url: None,
            advertise_api_url: None,
            outbox_sweep: Duration::from_secs(5),
        }
    }
}

/// A replica's id: made once, kept in the data dir, so a restarted tetherd
/// knows which devices it held before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaId(String);

impl ReplicaId {
    pub fn load_or_create(data_dir: &Path) -> Result<Self, ClusterError> {
        let path = data_dir.join(REPLICA_ID_FILE);
        let io_error = |source| ClusterError::ReplicaIdFile {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let id = uuid::Uuid::new_v4().to_string();
            crate::secret_file::write(&path, format!("{id}\n").as_bytes()).map_err(io_error)?;
        }
        let text = std::fs::read_to_string(&path).map_err(io_error)?;
        Self::parse(text.trim()).ok_or(ClusterError::BadReplicaId { path })
    }

    fn parse(id: &str) -> Option<Self> {
        let valid = (1..=MAX_REPLICA_ID_LEN).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then(|| Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const CA_SETTING: &str = "ca_sha256";
const SEALING_KEY_SETTING: &str = "sealing_key_fingerprint";

/// Refuses to join a cluster whose CA or sealing key differs from this
/// replica's: its devices' certificates would be refused elsewhere, and
/// actions sealed elsewhere could not be opened here. The first replica to
/// start records both.
pub async fn check_shared_secrets(
    store: &Store,
    ca_sha256: &str,
    sealing_key_fingerprint: &str,
) -> Result<(), ClusterError> {
    let cluster = store.claim_cluster_setting(CA_SETTING, ca_sha256).await?;
    if cluster != ca_sha256 {
        return Err(ClusterError::OtherCa {
            mine: ca_sha256.to_owned(),
            cluster,
        });
    }
    let cluster = store
        .claim_cluster_setting(SEALING_KEY_SETTING, sealing_key_fingerprint)
        .await?;
    if cluster != sealing_key_fingerprint {
        return Err(ClusterError::OtherSealingKey {
            mine: sealing_key_fingerprint.to_owned(),
            cluster,
        });
    }
    Ok(())
}

const RELEASE_SIGNING_KEY_SETTING: &str = "release_signing_key";
const RELEASE_TOKEN_KEY_SETTING: &str = "release_token_key_fingerprint";

/// Refuses to join a cluster whose agent release keys differ from this
/// replica's: agents pin the signing key, and a download token made by one
/// replica is checked by whichever serves the download. The first replica
/// to start records both.
pub async fn check_release_keys(
    store: &Store,
    signing_key: &str,
    token_key_fingerprint: &str,
) -> Result<(), ClusterError> {
    for (setting, what, mine) in [
        (RELEASE_SIGNING_KEY_SETTING, "signing key", signing_key),
        (
            RELEASE_TOKEN_KEY_SETTING,
            "download-token key",
            token_key_fingerprint,
        ),
    ] {
        let cluster = store.claim_cluster_setting(setting, mine).await?;
        if cluster != mine {
            return Err(ClusterError::OtherReleaseKey {
                what,
                mine: mine.to_owned(),
                cluster,
            });
        }
    }
    Ok(())
}

/// `scheme://host:port` with an IPv6 address in brackets.
pub fn url(scheme: &str, host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The cluster's MQTT endpoints for an agent: `first` (the one it should
/// use now), then every other live replica's, each once.
pub fn mqtt_urls(first: &str, me: &ReplicaId, live: &[ReplicaRecord]) -> Vec<String> {
    let mut urls = vec![first.to_owned()];
    for replica in live.iter().filter(|r| r.id != me.as_str()) {
        if !urls.contains(&replica.mqtt_url) {
            urls.push(replica.mqtt_url.clone());
        }
    }
    urls
}

/// This replica's place in the cluster, for the services that answer
/// agents.
#[derive(Clone)]
pub struct Membership {
    store: Store,
    replica: ReplicaId,
    advertised_mqtt_url: Option<String>,
}

impl Membership {
    pub fn new(store: Store, replica: ReplicaId, config: &ClusterConfig) -> Self {
        Self {
            store,
            replica,
            advertised_mqtt_url: config.advertise_mqtt_url.clone(),
        }
    }

    pub fn replica(&self) -> &ReplicaId {
        &self.replica
    }

    /// The MQTT endpoints an agent is given: this replica's (as configured,
    /// else `requested`, the address the agent reached it by) first, then
    /// the other live replicas'.
    pub async fn mqtt_urls(
        &self,
        requested: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let first = self.advertised_mqtt_url.as_deref().unwrap_or(requested);
        let live = self.store.live_replicas(now).await?;
        Ok(mqtt_urls(first, &self.replica, &live))
    }
}

/// What `/readyz` reports; each part names itself when it is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub store_answers: bool,
    pub lease_current: bool,
    pub mqtt_listening: bool,
}

impl Readiness {
    /// What is not ready, in words for an operator; empty when ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        [
            (self.store_answers, "the database does not answer"),
            (
                self.lease_current,
                "this replica's lease is not current (it could not renew it)",
            ),
            (self.mqtt_listening, "the MQTT endpoint is not listening"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what)
        .collect()
    }
}

/// How long the readiness check waits for the database.
const READINESS_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers `/readyz` from the store, the lease and the MQTT listener.
pub struct Health {
    store: Store,
    lease: Arc<lease::Lease>,
    mqtt_listening: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Health {
    pub fn new(
        store: Store,
        lease: Arc<lease::Lease>,
        mqtt_listening: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            lease,
            mqtt_listening: Box::new(mqtt_listening),
        }
    }

    pub async fn readiness(&self) -> Readiness {
        let store_answers = matches!(
            tokio::time::timeout(READINESS_STORE_TIMEOUT, self.store.ping()).await,
            Ok(Ok(()))
        );
        Readiness {
            store_answers,
            lease_current: self.lease.is_current(std::time::Instant::now()),
            mqtt_listening: (self.mqtt_listening)(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, mqtt_url: &str) -> ReplicaRecord {
        let now = Utc::now();
        ReplicaRecord {
            id: id.into(),
            api_url: String::new(),
            mqtt_url: mqtt_url.into(),
            started_at: now,
            renewed_at: now,
            lease_expires_at: now,
        }
    }

    #[test]
    fn agents_get_the_answering_replica_first_then_each_other_endpoint_once() {
        let me = ReplicaId::parse("a").expect("id");
        let live = [
            replica("a", "mqtts://localhost:1"),
            replica("b", "mqtts://b.example:8883"),
            replica("c", "mqtts://lb.example:8883"),
            replica("d", "mqtts://lb.example:8883"),
        ];
        assert_eq!(
            mqtt_urls("mqtts://127.0.0.1:1", &me, &live),
            [
                "mqtts://127.0.0.1:1",
                "mqtts://b.example:8883",
                "mqtts://lb.example:8883"
            ]
        );
        assert_eq!(
            mqtt_urls("mqtts://127.0.0.1:1", &me, &live[..1]),
            ["mqtts://127.0.0.1:1"],
            "one replica is one URL, whatever name it advertises"
        );
        assert_eq!(
            mqtt_urls("mqtts://lb.example:8883", &me, &live),
            ["mqtts://lb.example:8883", "mqtts://b.example:8883"]
        );
    }

    #[test]
    fn urls_put_ipv6_addresses_in_brackets() {
        assert_eq!(url("mqtts", "::1", 8883), "mqtts://[::1]:8883");
        assert_eq!(
            url("mqtts", "edge.example", 8883),
            "mqtts://edge.example:8883"
        );
    }

    #[test]
    fn a_replica_id_is_made_once_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ReplicaId::load_or_create(dir.path()).expect("created");
        let again = ReplicaId::load_or_create(dir.path()).expect("read back");
        assert_eq!(first, again);
        let path = dir.path().join(REPLICA_ID_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, "Not An Id!").expect("write");
        let error = ReplicaId::load_or_create(dir.path()).expect_err("damaged");
        assert!(error.to_string().contains("replica-id"), "{error}");
    }

    #[test]
    fn readiness_names_what_is_not_ready() {
        let ready = Readiness {
            store_answers: true,
            lease_current: true,
            mqtt_listening: true,
        };
        assert!(ready.not_ready().is_empty());
        let down = Readiness {
            store_answers: false,
            lease_current: false,
            ..ready
        };
        assert_eq!(
            down.not_ready(),
            [
                "the database does not answer",
                "this replica's lease is not current (it could not renew it)"
            ]
        );
    }

    #[tokio::test]
    async fn the_first_replica_records_the_ca_and_another_ca_is_refused() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        check_shared_secrets(&store, "aa", "k1")
            .await
            .expect("first");
        check_shared_secrets(&store, "aa", "k1")
            .await
            .expect("same secrets");
        let error = check_shared_secrets(&store, "bb", "k1")
            .await
            .expect_err("other CA");
        assert_eq!(
            error.to_string(),
            "this replica's CA (sha256 bb) is not the cluster's (aa): copy ca.pem, ca-key.pem, sealing.key, release-signing-key.pk8 and release-token.key from an existing replica's data dir"
        );
        let error = check_shared_secrets(&store, "aa", "k2")
            .await
            .expect_err("other sealing key");
        assert!(error.to_string().contains("sealing key"), "{error}");
    }
}
