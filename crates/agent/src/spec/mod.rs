//! The device's spec from tetherd: each section checked and applied
//! without a restart, the result persisted and published to the parts of
//! the agent that use it, and reported back.
//!
//! A section the agent cannot apply keeps its previous value and is
//! reported with the reason; the others are applied. The last applied spec
//! is kept in the state directory (`spec.json`, replaced atomically), so a
//! restarted agent works with it before it reaches tetherd again.

pub mod facts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether_proto::desired::updates::{self, UpdateHold, UpdatePolicy};
use tether_proto::desired::{self, Deployments};
use tether_proto::host::{BootReport, WatchdogConfig, WatchdogStatus};
use tether_proto::sealed::PublicKey;
use tether_proto::spec::{
    self, Budgets, DeviceSpec, Facts, LoggingConfig, MetricsConfig, ReportedStatus, SpecError,
    SpecMessage,
};
use tokio::sync::watch;

use crate::deployments::{self, DeploymentReports};
use crate::secrets::SecretFiles;
use crate::state::write_atomic;

/// Where the last applied spec is kept in the state directory.
pub const SPEC_FILE: &str = "spec.json";

/// What the agent runs with now. Other parts subscribe to it through
/// [`SpecHandle::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedSpec {
    /// The spec version last applied (0: none yet, all defaults).
    pub version: u64,
    /// That version as tetherd sent it, sections this agent could not
    /// apply included.
    #[serde(default)]
    pub spec: DeviceSpec,
    pub logging: LoggingConfig,
    pub metrics: MetricsConfig,
    pub budgets: Budgets,
    /// What the device should run; its parts reconcile to it.
    #[serde(default)]
    pub deployments: Deployments,
    /// When the device may take new revisions of its deployments.
    #[serde(default)]
    pub updates: UpdatePolicy,
    /// Whether and which watchdog the agent feeds.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// The sections of that version the agent could not apply.
    pub errors: Vec<SpecError>,
    /// How many times tetherd asked for this spec to be applied again in
    /// full since the agent started ([`SpecHandle::reload`]): the parts
    /// that skip what did not change (the supervisor) redo everything
    /// when it moves. Not saved: a restart applies everything anyway.
    #[serde(skip)]
    pub reloads: u64,
}

/// Applies `message` over `previous`: a section present is checked and
/// taken, or kept as it was with an error; a section absent goes back to
/// its default; a section this agent does not know is an error.
pub fn apply(previous: &AppliedSpec, message: &SpecMessage) -> AppliedSpec {
    let mut applied = AppliedSpec {
        version: message.version,
        spec: message.spec.clone(),
        errors: Vec::new(),
        ..previous.clone()
    };
    for name in message.spec.keys() {
        if !spec::SECTIONS.contains(&name.as_str()) {
            applied.errors.push(SpecError::new(
                format!("spec.{name}"),
                format!(
                    "this agent ({}) cannot apply this section; upgrade it",
                    crate::self_update::agent_version()
                ),
            ));
        }
    }
    let mut take = |name: &str, apply_section: &mut dyn FnMut(&Value) -> Result<(), SpecError>| {
        if let Some(section) = message.spec.get(name)
            && let Err(error) =
                validate_section(name, section).and_then(|()| apply_section(section))
        {
            applied.errors.push(error);
        }
    };
    let mut logging = LoggingConfig::default();
    take(LoggingConfig::NAME, &mut |section| {
        logging = typed(LoggingConfig::NAME, section)?;
        check_units(&logging.units)
    });
    let mut metrics = MetricsConfig::default();
    take(MetricsConfig::NAME, &mut |section| {
        metrics = typed(MetricsConfig::NAME, section)?;
        Ok(())
    });
    let mut budgets = Budgets::default();
    take(Budgets::NAME, &mut |section| {
        budgets = typed(Budgets::NAME, section)?;
        Ok(())
    });
    let mut deployments = Deployments::new();
    take(desired::SECTION, &mut |section| {
        deployments = typed(desired::SECTION, section)?;
        Ok(())
    });
    let mut update_policy = UpdatePolicy::default();
    take(updates::SECTION, &mut |section| {
        update_policy = typed(updates::SECTION, section)?;
        Ok(())
    });
    let mut watchdog = WatchdogConfig::default();
    take(WatchdogConfig::NAME, &mut |section| {
        watchdog = typed(WatchdogConfig::NAME, section)?;
        Ok(())
    });
    // Opened and written by the secret files after the spec is saved
    // (`SpecHandle::apply`); checked here like every section.
    take(tether_proto::secrets::SECTION, &mut |_| Ok(()));
    // Applied by the network part (`crate::network`), which tries it and
    // reports its outcome; checked here like every section.
    take(tether_proto::network::SECTION, &mut |_| Ok(()));
    let failed = |name: &str| {
        applied.errors.iter().any(|e| {
            e.path == format!("spec.{name}") || e.path.starts_with(&format!("spec.{name}."))
        })
    };
    if !failed(LoggingConfig::NAME) {
        applied.logging = logging;
    }
    if !failed(MetricsConfig::NAME) {
        applied.metrics = metrics;
    }
    if !failed(Budgets::NAME) {
        applied.budgets = budgets;
    }
    if !failed(desired::SECTION) {
        applied.deployments = deployments;
    }
    if !failed(updates::SECTION) {
        applied.updates = update_policy;
    }
    if !failed(WatchdogConfig::NAME) {
        applied.watchdog = watchdog;
    }
    applied
}

/// Checks a section as tetherd does, but for config file templates' syntax:
/// the render helper compiles them (`deployments::supervisor::render`), and
/// a template it cannot compile fails its deployment, naming the file. The
/// template engine stays out of the agent's binary and idle memory.
fn validate_section(name: &str, section: &Value) -> Result<(), SpecError> {
    spec::validate_section_with(name, section, tether_proto::template::check_size)
}

fn typed<T: serde::de::DeserializeOwned>(name: &str, section: &Value) -> Result<T, SpecError> {
    serde_json::from_value(section.clone())
        .map_err(|e| SpecError::new(format!("spec.{name}"), e.to_string()))
}

/// Unit types systemd knows (`systemd.unit(5)`).
const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];

/// Every entry must be a name systemd could have given a unit, or the
/// filter would silently match nothing.
fn check_units(units: &[String]) -> Result<(), SpecError> {
    for (i, unit) in units.iter().enumerate() {
        if !is_unit_name(unit) {
            return Err(SpecError::new(
                format!("spec.loggingConfig.units[{i}]"),
                format!(
                    "{unit:?} is not a systemd unit name: use NAME.TYPE with TYPE one of {} (e.g. ssh.service)",
                    UNIT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn is_unit_name(unit: &str) -> bool {
    let Some((name, kind)) = unit.rsplit_once('.') else {
        return false;
    };
    !name.is_empty()
        && UNIT_TYPES.contains(&kind)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// What the agent reports: the applied version with the sections it could
/// not apply, and why the last spec tetherd sent could not be applied at
/// all (`unapplied`), if it could not, and what keeping its secrets as
/// Kubernetes Secrets could not do (`secret_errors`, cluster mode).
pub fn report(
    applied: &AppliedSpec,
    unapplied: Option<&SpecError>,
    secret_errors: &[SpecError],
    facts: &Facts,
    deployments: BTreeMap<String, desired::DeploymentStatus>,
    update_holds: Vec<UpdateHold>,
    sealing_key: Option<&str>,
) -> ReportedStatus {
    ReportedStatus {
        spec_version: applied.version,
        errors: applied
            .errors
            .iter()
            .chain(unapplied)
            .chain(secret_errors)
            .cloned()
            .collect(),
        facts: facts.clone(),
        deployments,
        update_holds,
        sealing_key: sealing_key.map(str::to_owned),
        ..ReportedStatus::default()
    }
}

/// The applied spec and the machine's facts: what the `reported` topic
/// carries. [`StatusSource::view`] gives a read-only view of it.
#[derive(Clone)]
pub struct StatusSource {
    pub spec: SpecHandle,
    /// Gathered once at start.
    facts: Arc<Facts>,
    /// Why the last spec message could not be applied at all; reported
    /// until a spec message applies.
    unapplied: watch::Sender<Option<SpecError>>,
    /// How each deployment is doing, as the parts running them report it.
    pub deployments: DeploymentReports,
    /// Why the device takes no new revision now ([`crate::updates`]).
    pub update_holds: watch::Sender<Vec<UpdateHold>>,
    /// What keeping the secrets as Kubernetes Secrets could not do
    /// ([`crate::secrets::cluster`]); in file mode those errors are in the
    /// applied spec's.
    pub secret_errors: watch::Sender<Vec<SpecError>>,
    /// The device's network, and why its last change was not kept
    /// ([`crate::network`]).
    pub network: watch::Sender<crate::network::NetworkReport>,
    /// The public half of the device's sealing key (ADR 0030).
    sealing_key: Option<Arc<str>>,
    /// The machine's boot, read once at start.
    boot: Option<Arc<BootReport>>,
    /// Whether the watchdog is fed ([`crate::watchdog`]).
    pub watchdog: watch::Sender<Option<WatchdogStatus>>,
    /// The device's clock, its condition and the `time` section's errors
    /// ([`crate::time`]).
    pub host_time: watch::Sender<crate::time::TimeReport>,
}

impl StatusSource {
    pub fn new(spec: SpecHandle, facts: Facts) -> Self {
        Self {
            spec,
            facts: Arc::new(facts),
            unapplied: watch::channel(None).0,
            deployments: DeploymentReports::default(),
            update_holds: watch::channel(Vec::new()).0,
            secret_errors: watch::channel(Vec::new()).0,
            network: watch::channel(crate::network::NetworkReport::default()).0,
            sealing_key: None,
            boot: None,
            watchdog: watch::channel(None).0,
            host_time: watch::channel(Default::default()).0,
        }
    }

    /// Reports `boot` as the machine's current boot.
    pub fn with_boot(mut self, boot: Option<BootReport>) -> Self {
        self.boot = boot.map(Arc::new);
        self
    }

    /// Reports `key`, the public half of the device's sealing key, so
    /// tetherd can seal secrets to it (ADR 0030).
    pub fn with_sealing_key(mut self, key: &PublicKey) -> Self {
        self.sealing_key = Some(Arc::from(key.encode()));
        self
    }

    /// The status to report now.
    pub fn report(&self) -> ReportedStatus {
        self.view().report()
    }

    /// Follows the status without a way to change it (the local API's).
    pub fn view(&self) -> StatusView {
        StatusView {
            applied: self.spec.subscribe(),
            unapplied: self.unapplied.subscribe(),
            facts: self.facts.clone(),
            deployments: self.deployments.subscribe(),
            update_holds: self.update_holds.subscribe(),
            secret_errors: self.secret_errors.subscribe(),
            network: self.network.subscribe(),
            sealing_key: self.sealing_key.clone(),
            boot: self.boot.clone(),
            watchdog: self.watchdog.subscribe(),
            host_time: self.host_time.subscribe(),
        }
    }

    /// Applies a spec message as tetherd sent it (`None`: applied already,
    /// the status unchanged); what could not be applied at all is returned
    /// as an error to report, and kept in the status until a spec message
    /// applies.
    pub fn apply_payload(&self, payload: &[u8]) -> Result<Option<AppliedSpec>, SpecError> {
        let applied = serde_json::from_slice::<SpecMessage>(payload)
            .map_err(|e| {
                SpecError::new(
                    "spec",
                    format!("not applied: the message is not a spec ({e})"),
                )
            })
            .and_then(|message| {
                self.spec.apply(&message).map_err(|error| {
                    SpecError::new(
                        "spec",
                        format!("not applied: {}", crate::actions::chain(&error)),
                    )
                })
            });
        let cleared = self
            .unapplied
            .send_replace(applied.as_ref().err().cloned())
            .is_some();
        match applied {
            // The spec was applied before, but the status loses an error.
            Ok(None) if cleared => Ok(Some(self.spec.current())),
            applied => applied,
        }
    }
}

/// A read-only view of the status: the applied spec, why the last spec
/// message could not be applied, and the facts. Reading it takes each
/// value's lock only long enough to copy it.
#[derive(Clone)]
pub struct StatusView {
    applied: watch::Receiver<AppliedSpec>,
    unapplied: watch::Receiver<Option<SpecError>>,
    facts: Arc<Facts>,
    deployments: watch::Receiver<deployments::PartReports>,
    update_holds: watch::Receiver<Vec<UpdateHold>>,
    secret_errors: watch::Receiver<Vec<SpecError>>,
    network: watch::Receiver<crate::network::NetworkReport>,
    sealing_key: Option<Arc<str>>,
    boot: Option<Arc<BootReport>>,
    watchdog: watch::Receiver<Option<WatchdogStatus>>,
    host_time: watch::Receiver<crate::time::TimeReport>,
}

impl StatusView {
    /// What the agent reports now (or would, offline).
    pub fn report(&self) -> ReportedStatus {
        let unapplied = self.unapplied.borrow().clone();
        let deployments = deployments::merged(&self.deployments.borrow());
        let secret_errors = self.secret_errors.borrow().clone();
        let mut status = ReportedStatus {
            boot: self.boot.as_deref().cloned(),
            watchdog: self.watchdog.borrow().clone(),
            ..report(
                &self.applied.borrow(),
                unapplied.as_ref(),
                &secret_errors,
                &self.facts,
                deployments,
                self.update_holds.borrow().clone(),
                self.sealing_key.as_deref(),
            )
        };
        self.host_time.borrow().add_to(&mut status);
        // The network part reports its own outcome (`crate::network`).
        let network = self.network.borrow().clone();
        status.errors.extend(network.error);
        status.network = network.status;
        status
    }

    /// The spec applied last.
    pub fn applied(&self) -> AppliedSpec {
        self.applied.borrow().clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecStoreError {
    #[error("could not save the applied spec to {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `error` is about `section` or a field of it.
pub(crate) fn is_under(error: &SpecError, section: &str) -> bool {
    error
        .path
        .strip_prefix("spec.")
        .and_then(|rest| rest.strip_prefix(section))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// `current`'s errors with its `secrets` section opened into files anew
/// by `files`: the errors of that section are the new ones.
fn open_secrets(current: &AppliedSpec, files: &SecretFiles) -> Vec<SpecError> {
    let section = tether_proto::secrets::SECTION;
    let mut errors: Vec<SpecError> = current
        .errors
        .iter()
        .filter(|e| !is_under(e, section))
        .cloned()
        .collect();
    let sealed = current.spec.get(section);
    match sealed.map(|s| validate_section(section, s)) {
        Some(Err(error)) => errors.push(error),
        _ => errors.extend(files.apply(sealed)),
    }
    errors
}

/// The applied spec, shared with the parts that use it.
#[derive(Clone)]
pub struct SpecHandle {
    path: PathBuf,
    applied: watch::Sender<AppliedSpec>,
    /// Opens the `secrets` section into files; none in tests that do not
    /// need it.
    secrets: Option<Arc<SecretFiles>>,
}

impl SpecHandle {
    /// Loads the spec last applied from the state directory; a missing or
    /// unreadable file means defaults (logged), never a failed start.
    pub fn load(state_dir: &Path) -> Self {
        let path = state_dir.join(SPEC_FILE);
        let applied = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring {}: not a spec this agent wrote ({e}); using defaults until tetherd sends the spec", path.display());
                AppliedSpec::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppliedSpec::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}; using defaults until tetherd sends the spec", path.display());
                AppliedSpec::default()
            }
        };
        let (applied, _) = watch::channel(applied);
        Self {
            path,
            applied,
            secrets: None,
        }
    }

    /// Opens the spec's secrets with `files` from now on, and now: at
    /// start the files are rewritten from the applied spec, so a file
    /// removed by hand comes back and a key made anew is reported as not
    /// opening what was sealed to the old one.
    pub fn with_secrets(mut self, files: SecretFiles) -> Self {
        let errors = open_secrets(&self.current(), &files);
        self.applied.send_modify(|applied| applied.errors = errors);
        self.secrets = Some(Arc::new(files));
        self
    }

    /// Applies the spec applied last again in full, as at start (tetherd's
    /// `reload` request, [`crate::control`]): the secrets' files are
    /// written again, and every part that follows the spec is woken, with
    /// [`AppliedSpec::reloads`] moved so that none skips what it thinks
    /// unchanged: config files edited by hand are rendered again, logging,
    /// metrics and budgets are set again, charts and Kubernetes Secrets
    /// reconciled. Only the session calls this and [`SpecHandle::apply`],
    /// so the spec cannot change between the read and the write.
    pub fn reload(&self) -> AppliedSpec {
        let errors = self
            .secrets
            .as_ref()
            .map(|files| open_secrets(&self.current(), files));
        self.applied.send_modify(|applied| {
            if let Some(errors) = errors {
                applied.errors = errors;
            }
            applied.reloads += 1;
        });
        self.current()
    }

    pub fn current(&self) -> AppliedSpec {
        self.applied.borrow().clone()
    }

    /// Follows the applied spec: the current value at once, then every change.
    pub fn subscribe(&self) -> watch::Receiver<AppliedSpec> {
        self.applied.subscribe()
    }

    /// Applies a spec message: saves the result, then publishes it to the
    /// subscribers. The spec already applied (tetherd sends it at every
    /// session start) is left alone, so a reconnect writes nothing: `None`.
    pub fn apply(&self, message: &SpecMessage) -> Result<Option<AppliedSpec>, SpecStoreError> {
        let current = self.current();
        if current.version == message.version && current.spec == message.spec {
            return Ok(None);
        }
        let mut applied = apply(&current, message);
        let section = tether_proto::secrets::SECTION;
        if let Some(secrets) = &self.secrets
            && !applied.errors.iter().any(|e| is_under(e, section))
        {
            applied
                .errors
                .extend(secrets.apply(message.spec.get(section)));
        }
        let bytes = serde_json::to_vec_pretty(&applied).unwrap_or_default();
        write_atomic(&self.path, &bytes, 0o600).map_err(|source| SpecStoreError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.applied.send_replace(applied.clone());
        Ok(Some(applied))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(version: u64, spec: Value) -> SpecMessage {
        SpecMessage {
            version,
            spec: spec.as_object().cloned().expect("object"),
        }
    }

    #[test]
    fn every_known_section_is_applied_and_absent_ones_go_back_to_defaults() {
        let first = apply(
            &AppliedSpec::default(),
            &message(
                1,
                json!({
                    "loggingConfig": {"priority": 3, "units": ["ssh.service", "getty@tty1.service"]},
                    "metricsConfig": {"intervalSeconds": 5},
                    "budgets": {"logs": 1000},
                }),
            ),
        );
        assert_eq!(first.version, 1);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.logging.priority, 3);
        assert_eq!(first.metrics.interval_seconds, 5);
        assert_eq!(first.budgets.logs, Some(1000));

        let second = apply(
            &first,
            &message(2, json!({"metricsConfig": {"intervalSeconds": 7}})),
        );
        assert_eq!(second.metrics.interval_seconds, 7);
        assert_eq!(second.logging, LoggingConfig::default());
        assert_eq!(second.budgets, Budgets::default());
    }

    #[test]
    fn a_section_that_cannot_be_applied_keeps_its_value_and_is_reported() {
        let first = apply(
            &AppliedSpec::default(),
            &message(
                1,
                json!({"loggingConfig": {"priority": 3, "units": ["ssh.service"]}}),
            ),
        );
        let second = apply(
            &first,
            &message(
                2,
                json!({
                    "loggingConfig": {"priority": 5, "units": ["ssh.service", "not a unit!"]},
                    "metricsConfig": {"intervalSeconds": 9},
                    "firmware": {},
                }),
            ),
        );
        assert_eq!(second.version, 2);
        assert_eq!(
            second.logging, first.logging,
            "the old logging config stays"
        );
        assert_eq!(
            second.metrics.interval_seconds, 9,
            "the other sections apply"
        );
        let paths: Vec<&str> = second.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.firmware", "spec.loggingConfig.units[1]"]);
        assert!(second.errors[1].message.contains("not a systemd unit name"));
    }

    #[test]
    fn unit_names_follow_systemd() {
        for ok in [
            "ssh.service",
            "getty@tty1.service",
            "dev-sda1.device",
            "a_b:c.timer",
            "x.y.mount",
        ] {
            assert!(is_unit_name(ok), "{ok}");
        }
        for bad in [
            "ssh",
            ".service",
            "ssh.daemon",
            "a b.service",
            "ssh.service/x",
            "ü.service",
        ] {
            assert!(!is_unit_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_applied_spec_survives_a_restart_and_reaches_subscribers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let handle = SpecHandle::load(dir.path());
        assert_eq!(handle.current(), AppliedSpec::default());
        let mut watching = handle.subscribe();
        handle
            .apply(&message(
                4,
                json!({"metricsConfig": {"intervalSeconds": 15}}),
            ))
            .expect("applied");
        assert!(watching.has_changed().expect("sender alive"));
        assert_eq!(watching.borrow_and_update().metrics.interval_seconds, 15);

        let restarted = SpecHandle::load(dir.path());
        assert_eq!(restarted.current().version, 4);
        assert_eq!(restarted.current().metrics.interval_seconds, 15);

        // The same spec again (a reconnect) changes nothing and writes nothing.
        let watching = restarted.subscribe();
        std::fs::remove_file(dir.path().join(SPEC_FILE)).expect("remove");
        restarted
            .apply(&message(
                4,
                json!({"metricsConfig": {"intervalSeconds": 15}}),
            ))
            .expect("applied");
        assert!(!watching.has_changed().expect("sender alive"));
        assert!(!dir.path().join(SPEC_FILE).exists());
    }

    #[test]
    fn a_reload_wakes_every_follower_with_the_same_spec_and_is_not_saved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let handle = SpecHandle::load(dir.path());
        handle
            .apply(&message(
                3,
                json!({"metricsConfig": {"intervalSeconds": 15}}),
            ))
            .expect("applied");
        let saved = std::fs::read(dir.path().join(SPEC_FILE)).expect("saved");
        let mut watching = handle.subscribe();
        watching.borrow_and_update();

        let reloaded = handle.reload();
        assert!(watching.has_changed().expect("sender alive"), "woken");
        assert_eq!(reloaded.reloads, 1);
        assert_eq!(
            AppliedSpec {
                reloads: 0,
                ..reloaded
            },
            SpecHandle::load(dir.path()).current(),
            "the same spec, as a restart would load it"
        );
        assert_eq!(
            std::fs::read(dir.path().join(SPEC_FILE)).expect("saved"),
            saved,
            "nothing new to save"
        );
        // A new spec keeps the count: it says how often tetherd asked.
        handle
            .apply(&message(4, json!({})))
            .expect("applied")
            .expect("new");
        assert_eq!(handle.current().reloads, 1);
    }

    #[test]
    fn a_spec_message_that_cannot_be_applied_stays_in_the_status_until_one_applies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = StatusSource::new(SpecHandle::load(dir.path()), Facts::default());
        let view = status.view();
        let good = serde_json::to_vec(&message(
            1,
            json!({"metricsConfig": {"intervalSeconds": 5}}),
        ))
        .expect("serializes");
        assert!(status.apply_payload(&good).expect("applies").is_some());
        let refused = status.apply_payload(b"{not a spec").expect_err("refused");
        assert!(refused.message.contains("not a spec"), "{refused}");
        let reported = view.report();
        assert_eq!(reported.spec_version, 1, "the applied spec stays");
        assert_eq!(reported.errors, [refused]);
        assert_eq!(status.report(), reported, "one status, two readers");

        // The applied spec again: nothing new to apply, but the error goes.
        assert!(status.apply_payload(&good).expect("applies").is_some());
        assert!(view.report().errors.is_empty());
        assert!(status.apply_payload(&good).expect("applies").is_none());
        assert_eq!(view.applied().metrics.interval_seconds, 5);
    }

    #[test]
    fn an_unreadable_spec_file_means_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(SPEC_FILE), b"{not json").expect("write");
        assert_eq!(
            SpecHandle::load(dir.path()).current(),
            AppliedSpec::default()
        );
    }
}
