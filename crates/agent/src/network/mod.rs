//! The device's network (issue 19, scope 5): reported in the status, and
//! set from the spec's `network` section (a netplan v2 document) the way
//! `netplan try` sets it. Before a change the configuration it touches is
//! saved (the snapshot, kept in the state directory); after it, the agent
//! waits up to `rollbackSeconds` for a TLS handshake with tetherd's device
//! endpoint — proof that the device still reaches tetherd, not only that
//! the kernel took the change. Without that proof the snapshot goes back,
//! and the status says why.
//!
//! Applying sits behind [`Applier`]: [`ip::IpApplier`] (iproute2 and
//! resolv.conf, for devices without netplan running) and
//! [`netplan::NetplanApplier`] (`netplan apply`), chosen in the agent's
//! config.

pub mod ip;
pub mod netplan;
pub mod status;
pub mod trial;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether_proto::network::{ApplyState, LastApply, NetworkPlan, NetworkStatus, SECTION};
use tether_proto::spec::SpecError;
use tokio::sync::watch;

use crate::clock::ServerClock;
use crate::spec::AppliedSpec;
use crate::state::{Credentials, write_atomic};
use trial::{Plan, Trial, Verdict};

/// Where the last document tried, its outcome and an unfinished trial's
/// snapshot are kept in the state directory.
pub const STATE_FILE: &str = "network.json";
/// Longest a single reachability probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two failed probes.
/// Attempts at putting a snapshot back (1 + 2 + 4 + 8 s apart).
const RESTORE_ATTEMPTS: u32 = 5;
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("cannot read the output of {command}: {message}")]
    Output {
        command: &'static str,
        message: String,
    },
    #[error("no interface {0} on this device")]
    NoInterface(String),
    #[error("{0}")]
    NeedsNetplan(String),
    #[error("cannot read or write {path}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the snapshot was taken by the other applier; set the agent's network applier back to restore it"
    )]
    OtherApplier,
}

/// Which tool applies network documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ApplierKind {
    /// iproute2 and resolv.conf: static settings, no netplan needed.
    #[default]
    Ip,
    /// `netplan apply`, with netplan and its renderer on the device.
    Netplan,
}

/// The network part of the agent's config.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub applier: ApplierKind,
    /// Where the ip applier writes nameservers, and status reads them.
    pub resolv_conf: PathBuf,
    /// The netplan file the netplan applier owns.
    pub netplan_file: PathBuf,
    pub netplan_command: PathBuf,
    /// How often the network is read again for the status.
    pub status_interval: Duration,
}

/// Sets a network document and puts a snapshot back. Applying must leave
/// what it does not name as it is.
pub trait Applier: Send + Sync {
    fn name(&self) -> &'static str;
    /// What the document would change, as it is now; refuses a document
    /// this applier cannot set, before anything changed.
    fn snapshot(
        &self,
        plan: &NetworkPlan,
    ) -> impl Future<Output = Result<Snapshot, NetworkError>> + Send;
    fn apply(&self, plan: &NetworkPlan) -> impl Future<Output = Result<(), NetworkError>> + Send;
    fn restore(&self, snapshot: &Snapshot)
    -> impl Future<Output = Result<(), NetworkError>> + Send;
}

/// What a change replaced, to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "applier")]
pub enum Snapshot {
    Ip {
        interfaces: Vec<ip::InterfaceConfig>,
        /// None: the document names no nameservers, resolv.conf untouched.
        resolv_conf: Option<FileSnapshot>,
    },
    Netplan {
        file: FileSnapshot,
    },
}

/// A file's contents, or the link it was, or that it did not exist.
///
/// A link is kept as a link (review L3): `/etc/resolv.conf` is usually a
/// link into another resolver's directory (systemd-resolved's stub,
/// resolvconf's output). Applying a document replaces the link with our
/// own file; putting it back must restore the link, not freeze the
/// contents it pointed at that day into a plain file nobody updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileSnapshot {
    Absent,
    Present(String),
    Link(PathBuf),
}

impl FileSnapshot {
    pub fn read(path: &Path) -> Result<Self, NetworkError> {
        let error = |source| NetworkError::File {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::read_link(path).map(Self::Link).map_err(error)
            }
            Ok(_) => std::fs::read_to_string(path)
                .map(Self::Present)
                .map_err(error),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::Absent),
            Err(source) => Err(error(source)),
        }
    }

    /// Makes `path` hold this (written whole with `mode`, or the link
    /// made beside it, then renamed into place).
    pub fn restore(&self, path: &Path, mode: u32) -> Result<(), NetworkError> {
        let done = match self {
            Self::Present(text) => write_atomic(path, text.as_bytes(), mode),
            Self::Link(target) => link_atomic(target, path),
            Self::Absent => match std::fs::remove_file(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        done.map_err(|source| NetworkError::File {
            path: path.to_owned(),
            source,
        })
    }
}

/// Makes `path` a link to `target`, replacing whatever is there at once.
fn link_atomic(target: &Path, path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the path has no parent directory"))?;
    let temp = dir.join(format!(".tether-link.{}.tmp", rand::random::<u64>()));
    std::os::unix::fs::symlink(target, &temp)?;
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// What the agent keeps of its network changes across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saved {
    /// The `network` section tried last, as the spec had it.
    pub section: Option<Value>,
    /// Present while a change is on trial: what to put back if the agent
    /// stops before the change is proved.
    pub trial: Option<Snapshot>,
    pub last_apply: Option<LastApply>,
}

impl Saved {
    fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "ignoring {}: not written by this agent ({e})", path.display());
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    fn save(&self, path: &Path) -> Result<(), NetworkError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(path, &bytes, 0o600).map_err(|source| NetworkError::File {
            path: path.to_owned(),
            source,
        })
    }
}

/// What the network part adds to the status: the network, and the error
/// of a `network` section that was rolled back or failed, reported at
/// `spec.network` for as long as the spec carries that section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    pub status: Option<NetworkStatus>,
    pub error: Option<SpecError>,
}

/// Proves that the device reaches tetherd: a TLS handshake with one of its
/// device endpoints, tetherd's certificate checked against the CA the
/// device pinned and the device's own certificate presented.
#[derive(Clone)]
pub struct Reach {
    pub credentials: watch::Receiver<Credentials>,
    pub clock: Arc<ServerClock>,
}

impl Reach {
    /// What was reached, or why nothing was.
    pub async fn probe(&self, timeout: Duration) -> Result<String, String> {
        let credentials = self.credentials.borrow().clone();
        let config = crate::session::tls_config(&credentials, self.clock.clone())
            .map_err(|e| tether_proto::error_chain(&e))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut errors = Vec::new();
        for url in &credentials.mqtt_urls {
            let handshake = async {
                let (host, port) =
                    crate::session::parse_mqtt_url(url).map_err(|e| e.to_string())?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| e.to_string())?;
                let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Ok::<_, String>(())
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(())) => {
                    return Ok(format!("completed a TLS handshake with tetherd at {url}"));
                }
                Ok(Err(e)) => errors.push(format!("{url}: {e}")),
                Err(_) => errors.push(format!("{url}: no answer within {} s", timeout.as_secs())),
            }
        }
        Err(errors.join("; "))
    }
}

/// Reports the network and applies the spec's `network` section, with the
/// applier `config` names, until the spec's sender goes.
pub async fn run(
    config: NetworkConfig,
    state_dir: &Path,
    applied: watch::Receiver<AppliedSpec>,
    reach: Reach,
    report: watch::Sender<NetworkReport>,
) {
    let path = state_dir.join(STATE_FILE);
    let applier = match config.applier {
        ApplierKind::Ip => Appliers::Ip(ip::IpApplier {
            resolv_conf: config.resolv_conf.clone(),
        }),
        ApplierKind::Netplan => Appliers::Netplan(netplan::NetplanApplier {
            file: config.netplan_file.clone(),
            command: config.netplan_command.clone(),
        }),
    };
    Network::new(applier, config, path, reach, report)
        .run(applied)
        .await;
}

/// The applier the config chose. One type for [`Network`], so the agent
/// holds its trial and status code once rather than once per applier
/// (ADR 0031: the agent's idle memory is its code).
enum Appliers {
    Ip(ip::IpApplier),
    Netplan(netplan::NetplanApplier),
}

impl Applier for Appliers {
    fn name(&self) -> &'static str {
        match self {
            Self::Ip(applier) => applier.name(),
            Self::Netplan(applier) => applier.name(),
        }
    }

    async fn snapshot(&self, plan: &NetworkPlan) -> Result<Snapshot, NetworkError> {
        match self {
            Self::Ip(applier) => applier.snapshot(plan).await,
            Self::Netplan(applier) => applier.snapshot(plan).await,
        }
    }

    async fn apply(&self, plan: &NetworkPlan) -> Result<(), NetworkError> {
        match self {
            Self::Ip(applier) => applier.apply(plan).await,
            Self::Netplan(applier) => applier.apply(plan).await,
        }
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<(), NetworkError> {
        match self {
            Self::Ip(applier) => applier.restore(snapshot).await,
            Self::Netplan(applier) => applier.restore(snapshot).await,
        }
    }
}

struct Network<A> {
    applier: A,
    config: NetworkConfig,
    path: PathBuf,
    saved: Saved,
    reach: Reach,
    report: watch::Sender<NetworkReport>,
    /// The applied spec's `network` section now.
    section: Option<Value>,
    /// Why the network could not be read last time, logged once.
    read_error: Option<String>,
}

impl<A: Applier> Network<A> {
    fn new(
        applier: A,
        config: NetworkConfig,
        path: PathBuf,
        reach: Reach,
        report: watch::Sender<NetworkReport>,
    ) -> Self {
        Self {
            saved: Saved::load(&path),
            applier,
            config,
            path,
            reach,
            report,
            section: None,
            read_error: None,
        }
    }

    async fn run(mut self, mut applied: watch::Receiver<AppliedSpec>) {
        let mut interval = tokio::time::interval(self.config.status_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.section = applied.borrow_and_update().spec.get(SECTION).cloned();
            match trial::plan(&self.saved, self.section.as_ref()) {
                Plan::Nothing => {}
                Plan::Forget => {
                    self.saved = Saved::default();
                    if let Err(error) = self.saved.save(&self.path) {
                        tracing::warn!(error = %tether_proto::error_chain(&error), "cannot save that the spec has no network section");
                    }
                }
                Plan::RestoreInterrupted => self.restore_interrupted().await,
                Plan::Try(plan) => self.try_change(&plan).await,
            }
            self.publish().await;
            loop {
                tokio::select! {
                    changed = applied.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = interval.tick() => self.publish().await,
                }
            }
        }
    }

    /// Reads the network and reports it if anything changed.
    async fn publish(&mut self) {
        let network = match status::read(&self.config.resolv_conf).await {
            Ok(network) => {
                self.read_error = None;
                Some(network)
            }
            Err(error) => {
                let error = tether_proto::error_chain(&error);
                if self.read_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot read the network for the status; it keeps what was read last");
                    self.read_error = Some(error);
                }
                self.report.borrow().status.clone()
            }
        };
        let last_apply = self.saved.last_apply.clone();
        let error = last_apply
            .as_ref()
            .filter(|last| matches!(last.state, ApplyState::RolledBack | ApplyState::Failed))
            .filter(|_| self.section.is_some() && self.saved.section == self.section)
            .map(|last| {
                SpecError::new(
                    format!("spec.{SECTION}"),
                    last.reason.clone().unwrap_or_default(),
                )
            });
        let next = NetworkReport {
            status: network.map(|network| NetworkStatus {
                last_apply,
                ..network
            }),
            error,
        };
        self.report.send_if_modified(|report| {
            let changed = *report != next;
            *report = next;
            changed
        });
    }

    fn finish(&mut self, state: ApplyState, reason: String) {
        match state {
            ApplyState::Kept => tracing::info!(
                applier = self.applier.name(),
                "network change kept: {reason}"
            ),
            _ => tracing::warn!(
                applier = self.applier.name(),
                ?state,
                "network change not kept: {reason}"
            ),
        }
        self.saved.trial = None;
        self.saved.last_apply = Some(LastApply {
            state,
            reason: Some(reason),
            at: Utc::now(),
        });
        if let Err(error) = self.saved.save(&self.path) {
            tracing::warn!(error = %tether_proto::error_chain(&error), "cannot save the network change's outcome; a restart may try the document again");
        }
    }

    async fn restore_interrupted(&mut self) {
        let Some(snapshot) = self.saved.trial.clone() else {
            return;
        };
        match self.restore_with_retries(&snapshot).await {
            Ok(()) => self.finish(ApplyState::RolledBack, "the agent stopped before tetherd was reached after the change; the previous network configuration is back".to_owned()),
            Err(error) => self.finish_unrestored(ApplyState::RolledBack, format!(
                "the agent stopped before tetherd was reached after the change, and putting the previous network configuration back failed: {error}"
            ), snapshot),
        }
    }

    /// Snapshot, apply, then keep the change or put the snapshot back.
    async fn try_change(&mut self, plan: &NetworkPlan) {
        self.saved.section = self.section.clone();
        let snapshot = match self.applier.snapshot(plan).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                let reason = format!("not applied: {}", tether_proto::error_chain(&error));
                return self.finish(ApplyState::Failed, reason);
            }
        };
        self.saved.trial = Some(snapshot.clone());
        self.saved.last_apply = Some(LastApply {
            state: ApplyState::Trying,
            reason: None,
            at: Utc::now(),
        });
        // Without the snapshot on disk a crash during the trial could not
        // be undone: no change then.
        if let Err(error) = self.saved.save(&self.path) {
            let reason = format!(
                "not applied: the snapshot could not be saved first: {}",
                tether_proto::error_chain(&error)
            );
            return self.finish(ApplyState::Failed, reason);
        }
        self.publish().await;
        tracing::info!(
            applier = self.applier.name(),
            rollback_seconds = plan.rollback_seconds,
            "applying the spec's network section; waiting up to {} s for tetherd",
            plan.rollback_seconds
        );
        if let Err(error) = self.applier.apply(plan).await {
            let applied = tether_proto::error_chain(&error);
            return match self.restore_with_retries(&snapshot).await {
                Ok(()) => self.finish(
                    ApplyState::Failed,
                    format!("{applied}; the previous network configuration is back"),
                ),
                Err(error) => self.finish_unrestored(
                    ApplyState::Failed,
                    format!("{applied}; putting the previous network configuration back failed too: {error}"),
                    snapshot,
                ),
            };
        }
        let mut trial = Trial::new(
            Instant::now(),
            Duration::from_secs(u64::from(plan.rollback_seconds)),
        );
        let rolled_back = loop {
            let left = trial.deadline().saturating_duration_since(Instant::now());
            let probe = self
                .reach
                .probe(PROBE_TIMEOUT.min(left).max(Duration::from_millis(100)))
                .await;
            match trial.on_probe(probe, Instant::now()) {
                Verdict::Keep { reason } => return self.finish(ApplyState::Kept, reason),
                Verdict::RollBack { reason } => break reason,
                Verdict::Wait => {
                    let next = (Instant::now() + PROBE_INTERVAL).min(trial.deadline());
                    tokio::time::sleep_until(next.into()).await;
                }
            }
        };
        match self.restore_with_retries(&snapshot).await {
            Ok(()) => self.finish(ApplyState::RolledBack, rolled_back),
            Err(error) => self.finish_unrestored(
                ApplyState::RolledBack,
                format!("{rolled_back}, except that putting it back failed: {error}"),
                snapshot,
            ),
        }
    }

    /// Puts `snapshot` back, trying again a few times: each attempt works
    /// out its commands from the network as it is then, so one that
    /// failed half way (a route before its address) completes the next
    /// time (review M4).
    async fn restore_with_retries(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match self.applier.restore(snapshot).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let error = tether_proto::error_chain(&error);
                    if attempt == RESTORE_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::warn!(attempt, %error, "cannot put the previous network configuration back yet; trying again in {} s", delay.as_secs());
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// [`Self::finish`] for a change whose snapshot could not be put back:
    /// the snapshot stays saved, so the agent's next start tries again
    /// rather than forgetting the device is cut off.
    fn finish_unrestored(&mut self, state: ApplyState, reason: String, snapshot: Snapshot) {
        self.finish(state, reason);
        self.saved.trial = Some(snapshot);
        if let Err(error) = self.saved.save(&self.path) {
            tracing::warn!(error = %tether_proto::error_chain(&error), "cannot keep the network snapshot for the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolv_conf_link_is_put_back_as_the_link_not_its_contents() {
        let dir = tempfile::tempdir().expect("dir");
        let stub = dir.path().join("stub-resolv.conf");
        std::fs::write(&stub, "nameserver 127.0.0.53\n").expect("stub");
        let resolv = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&stub, &resolv).expect("link");

        let before = FileSnapshot::read(&resolv).expect("read");
        assert_eq!(before, FileSnapshot::Link(stub.clone()));
        FileSnapshot::Present("nameserver 192.0.2.1\n".into())
            .restore(&resolv, 0o644)
            .expect("applied");
        assert!(!resolv.is_symlink(), "applying writes our own file");
        assert_eq!(
            std::fs::read_to_string(&stub).expect("stub"),
            "nameserver 127.0.0.53\n",
            "the other resolver's file is never written through the link"
        );

        before.restore(&resolv, 0o644).expect("restored");
        assert_eq!(std::fs::read_link(&resolv).expect("a link again"), stub);
        let kept: FileSnapshot =
            serde_json::from_value(serde_json::to_value(&before).expect("json")).expect("back");
        assert_eq!(kept, before, "a snapshot on trial survives a restart");
    }
}
