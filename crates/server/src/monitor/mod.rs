//! The fleet monitor (issue 18, ADR 0032): watches every device for
//! silence and for a configuration left behind, asks it for a rebirth or a
//! reload, and raises alerts when it does not answer. The checks run on one
//! replica at a time; their state is stored, so a new leader goes on where
//! the old one stopped.

pub mod control;
pub mod delivery;
pub mod drift;
pub mod rules;
pub mod silence;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tether_proto::DeviceId;
use tether_proto::alerts::{RULE_CONFIG_DRIFT, RULE_DEVICE_SILENT, Severity};
use tether_proto::control::ControlMessage;

use crate::store::{EventRecord, NewAlert, Store, StoreError};
use drift::{Applied, DriftStep};
use silence::Step;

/// The device event recorded with each rebirth request.
pub const EVENT_REBIRTH_REQUESTED: &str = "rebirth-requested";
/// The device event recorded with each reload request.
pub const EVENT_RELOAD_REQUESTED: &str = "reload-requested";

/// Devices read per query of a pass.
const PAGE: u32 = 500;

/// `[monitor]`: how long devices may stay silent or behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// A device that sent nothing for this long is asked for a rebirth
    /// (seed 002: 3 minutes).
    pub silence_interval: Duration,
    /// A device that has not applied its current spec this long after it
    /// changed is asked to reload; as long again after that, an alert.
    pub drift_grace: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            silence_interval: Duration::from_secs(180),
            drift_grace: Duration::from_secs(120),
        }
    }
}

impl MonitorConfig {
    /// How often the checks run: a quarter of the shortest interval (a
    /// request goes out at most a quarter late), at most every 30 s.
    pub fn pass_interval(&self) -> Duration {
        (self.silence_interval.min(self.drift_grace) / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(30))
    }

    /// How often a device's `lastSeen` may be written: a quarter of the
    /// silence interval, so a device that talks is never judged silent
    /// between two writes; at most every 30 s.
    pub fn last_seen_resolution(&self) -> Duration {
        (self.silence_interval / 4).min(Duration::from_secs(30))
    }
}

/// How the monitor reaches devices: requests on their `control` topic,
/// through whichever replica holds each session.
pub trait DeviceRequests: Send + Sync + 'static {
    /// Sends `message` to the device; a device offline or a request lost
    /// counts as unanswered, which the checks expect.
    fn request(
        &self,
        device: &DeviceId,
        message: ControlMessage,
    ) -> impl Future<Output = ()> + Send;

    /// Sends the device its current spec again.
    fn resend_spec(&self, device: &DeviceId) -> impl Future<Output = ()> + Send;
}

/// What one pass did, for its log line and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub devices_checked: u64,
    pub rebirths_requested: u64,
    pub reloads_requested: u64,
    pub alerts_raised: u64,
    pub alerts_resolved: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the monitor's pass stopped early")]
pub struct PassError(#[from] StoreError);

pub struct Monitor<R> {
    store: Store,
    requests: R,
    config: MonitorConfig,
    /// Nothing was heard while this process was not running: a device is
    /// judged silent from this time at the earliest.
    started_at: DateTime<Utc>,
}

impl<R: DeviceRequests> Monitor<R> {
    pub fn new(
        store: Store,
        requests: R,
        config: MonitorConfig,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            store,
            requests,
            config,
            started_at,
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Checks every device once at `now`.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<PassSummary, PassError> {
        let mut summary = PassSummary::default();
        self.check_silence(now, &mut summary).await?;
        self.check_drift(now, &mut summary).await?;
        Ok(summary)
    }

    async fn check_silence(
        &self,
        now: DateTime<Utc>,
        summary: &mut PassSummary,
    ) -> Result<(), StoreError> {
        let mut after: Option<DeviceId> = None;
        loop {
            let devices = self.store.watched_devices(after.as_ref(), PAGE).await?;
            let Some(last) = devices.last() else {
                return Ok(());
            };
            after = Some(last.device.clone());
            for watched in devices {
                // A device never heard from is not enrolled yet: nothing to miss.
                let Some(last_seen) = watched.last_seen else {
                    continue;
                };
                summary.devices_checked += 1;
                // The monitor's start only delays the first request: once a device
                // was asked, only data it sent answers (a restart is no answer).
                let heard = if watched.watch.rebirths_sent > 0 {
                    last_seen
                } else {
                    last_seen.max(self.started_at)
                };
                let (watch, step) = silence::check(
                    watched.watch,
                    Some(heard),
                    self.config.silence_interval,
                    now,
                );
                match step {
                    None => {}
                    Some(Step::RequestRebirth) => {
                        tracing::info!(device = %watched.device, rebirths_sent = watch.rebirths_sent, "device silent: asked for a rebirth");
                        self.record(
                            &watched.device,
                            EVENT_REBIRTH_REQUESTED,
                            format!(
                                "nothing heard since {}: rebirth request {} of {}",
                                last_seen.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                                watch.rebirths_sent,
                                silence::REBIRTHS_BEFORE_ALERT
                            ),
                            now,
                        )
                        .await?;
                        self.requests
                            .request(&watched.device, ControlMessage::Rebirth)
                            .await;
                        summary.rebirths_requested += 1;
                    }
                    Some(Step::RaiseAlert) => {
                        let summary_text = format!(
                            "nothing heard since {} and {} rebirth requests unanswered",
                            last_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            watch.rebirths_sent
                        );
                        summary.alerts_raised += u64::from(
                            self.raise(
                                &watched.device,
                                RULE_DEVICE_SILENT,
                                Severity::Critical,
                                summary_text,
                                now,
                            )
                            .await?,
                        );
                    }
                    Some(Step::ResolveAlert) => {
                        summary.alerts_resolved += u64::from(
                            self.resolve(&watched.device, RULE_DEVICE_SILENT, now)
                                .await?,
                        );
                    }
                }
                // Saved once the step is carried out: a step that failed
                // (the database, a request) is taken again at the next pass.
                if watch != watched.watch {
                    self.store.save_watch(&watched.device, &watch).await?;
                }
            }
        }
    }

    async fn check_drift(
        &self,
        now: DateTime<Utc>,
        summary: &mut PassSummary,
    ) -> Result<(), StoreError> {
        let mut after: Option<DeviceId> = None;
        loop {
            let devices = self.store.drifting_devices(after.as_ref(), PAGE).await?;
            let Some(last) = devices.last() else {
                return Ok(());
            };
            after = Some(last.device.clone());
            for drifting in devices {
                let applied = match (drifting.online, drifting.current) {
                    (_, true) => Applied::Current,
                    (false, false) => Applied::Unknown,
                    // A version written before tetherd recorded when: as
                    // old as can be.
                    (true, false) => Applied::Behind {
                        since: drifting.spec_updated_at.unwrap_or(DateTime::UNIX_EPOCH),
                    },
                };
                let (watch, steps) =
                    drift::check(drifting.watch, applied, self.config.drift_grace, now);
                for step in steps {
                    match step {
                        DriftStep::Reload => {
                            tracing::info!(device = %drifting.device, reloads_sent = watch.reloads_sent, "device behind its spec: sent it again and asked for a reload");
                            self.record(
                                &drifting.device,
                                EVENT_RELOAD_REQUESTED,
                                format!(
                                    "has not applied its current spec: sent it again with reload request {}",
                                    watch.reloads_sent
                                ),
                                now,
                            )
                            .await?;
                            self.requests.resend_spec(&drifting.device).await;
                            self.requests
                                .request(&drifting.device, ControlMessage::Reload)
                                .await;
                            summary.reloads_requested += 1;
                        }
                        DriftStep::RaiseAlert => {
                            let text = format!(
                                "has not applied its current spec after {} reload requests",
                                watch.reloads_sent
                            );
                            summary.alerts_raised += u64::from(
                                self.raise(
                                    &drifting.device,
                                    RULE_CONFIG_DRIFT,
                                    Severity::Warning,
                                    text,
                                    now,
                                )
                                .await?,
                            );
                        }
                        DriftStep::ResolveAlert => {
                            summary.alerts_resolved += u64::from(
                                self.resolve(&drifting.device, RULE_CONFIG_DRIFT, now)
                                    .await?,
                            );
                        }
                    }
                }
                // Saved once the steps are carried out, as above.
                if watch != drifting.watch {
                    self.store
                        .save_drift_watch(&drifting.device, &watch)
                        .await?;
                }
            }
        }
    }

    /// Leaves a request in the device's events, where an operator looking
    /// at the device sees what the monitor asked of it.
    async fn record(
        &self,
        device: &DeviceId,
        event: &str,
        message: String,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.store
            .insert_event(&EventRecord {
                id: uuid::Uuid::now_v7().to_string(),
                device: device.clone(),
                correlation_id: None,
                event: event.to_owned(),
                status_code: 202,
                status_message: message,
                response: serde_json::Value::Null,
                received_at: now,
            })
            .await
    }

    /// Raises the rule's alert on the device with its labels; `false` when
    /// it was raised already (another leader's pass got there first).
    async fn raise(
        &self,
        device: &DeviceId,
        rule: &str,
        severity: Severity,
        summary: String,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let labels: BTreeMap<String, String> = match self.store.get_device(device).await? {
            Some(record) => record.labels.into_iter().collect(),
            // Deleted meanwhile: its watch went with it.
            None => return Ok(false),
        };
        let raised = self
            .store
            .raise_alert(
                &NewAlert {
                    rule: rule.to_owned(),
                    device: device.clone(),
                    severity,
                    summary,
                    labels,
                },
                now,
            )
            .await?;
        if let Some(alert) = &raised {
            tracing::warn!(%device, rule, alert = alert.id, summary = %alert.summary, "alert raised");
        }
        Ok(raised.is_some())
    }

    async fn resolve(
        &self,
        device: &DeviceId,
        rule: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let resolved = self.store.resolve_alert(rule, device, now).await?;
        if let Some(alert) = &resolved {
            tracing::info!(%device, rule, alert = alert.id, "alert resolved");
        }
        Ok(resolved.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tether_proto::Presence;
    use tether_proto::alerts::AlertState;
    use tether_proto::spec::ReportedStatus;

    use super::*;
    use crate::store::{AlertFilter, AlertStates};

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(String, &'static str)>>);

    impl DeviceRequests for Arc<Recorded> {
        async fn request(&self, device: &DeviceId, message: ControlMessage) {
            let kind = match message {
                ControlMessage::Rebirth => "rebirth",
                ControlMessage::Reload => "reload",
            };
            self.0
                .lock()
                .expect("lock")
                .push((device.to_string(), kind));
        }

        async fn resend_spec(&self, device: &DeviceId) {
            self.0
                .lock()
                .expect("lock")
                .push((device.to_string(), "spec"));
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    const CONFIG: MonitorConfig = MonitorConfig {
        silence_interval: Duration::from_secs(10),
        drift_grace: Duration::from_secs(10),
    };

    async fn fleet(names: &[&str]) -> (Store, Monitor<Arc<Recorded>>, Arc<Recorded>) {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        for name in names {
            let device = DeviceId::new(*name).expect("name");
            store
                .create_device(&device, &Default::default(), at(0))
                .await
                .expect("device");
            store
                .set_presence(&device, Presence::Online, at(0))
                .await
                .expect("seen");
        }
        let recorded = Arc::new(Recorded::default());
        let monitor = Monitor::new(store.clone(), recorded.clone(), CONFIG, at(0));
        (store, monitor, recorded)
    }

    fn taken(recorded: &Recorded) -> Vec<(String, &'static str)> {
        std::mem::take(&mut *recorded.0.lock().expect("lock"))
    }

    async fn active(store: &Store, rule: &str) -> Vec<(String, AlertState)> {
        let filter = AlertFilter {
            states: AlertStates::Active,
            device: None,
            rule: Some(rule.to_owned()),
        };
        store
            .list_alerts(&filter, None, 100)
            .await
            .expect("alerts")
            .into_iter()
            .map(|alert| (alert.device, alert.state))
            .collect()
    }

    #[tokio::test]
    async fn a_silent_device_gets_three_rebirth_requests_then_one_alert_resolved_when_heard() {
        let (store, monitor, recorded) = fleet(&["quiet", "talking"]).await;
        let talking = DeviceId::new("talking").expect("name");
        let mut raised = 0;
        for second in (0..=45).step_by(5) {
            store
                .set_presence(&talking, Presence::Online, at(second))
                .await
                .expect("seen");
            raised += monitor.pass(at(second)).await.expect("pass").alerts_raised;
            if second == 30 {
                assert_eq!(
                    taken(&recorded),
                    [
                        ("quiet".to_owned(), "rebirth"),
                        ("quiet".to_owned(), "rebirth"),
                        ("quiet".to_owned(), "rebirth"),
                    ],
                    "at 10, 20 and 30 s; never the device that talks"
                );
                assert_eq!(raised, 0);
            }
        }
        assert_eq!(raised, 1, "at 40 s, once");
        assert_eq!(
            active(&store, RULE_DEVICE_SILENT).await,
            [("quiet".to_owned(), AlertState::Firing)]
        );
        assert!(
            taken(&recorded).is_empty(),
            "no more requests once alerting"
        );

        let quiet = DeviceId::new("quiet").expect("name");
        store
            .set_presence(&quiet, Presence::Online, at(47))
            .await
            .expect("heard");
        let summary = monitor.pass(at(50)).await.expect("pass");
        assert_eq!(summary.alerts_resolved, 1);
        assert!(active(&store, RULE_DEVICE_SILENT).await.is_empty());
        let events = store.list_events(&quiet, 100).await.expect("events");
        assert_eq!(
            events
                .iter()
                .filter(|event| event.event == EVENT_REBIRTH_REQUESTED)
                .count(),
            3
        );
    }

    #[tokio::test]
    async fn a_new_leader_goes_on_from_the_stored_watch_and_never_alerts_twice() {
        let (store, first, _) = fleet(&["quiet"]).await;
        for second in [10, 20] {
            first.pass(at(second)).await.expect("pass");
        }
        let recorded = Arc::new(Recorded::default());
        let second = Monitor::new(store.clone(), recorded.clone(), CONFIG, at(0));
        second.pass(at(30)).await.expect("pass");
        assert_eq!(
            taken(&recorded),
            [("quiet".to_owned(), "rebirth")],
            "the third"
        );
        // Both leaders' passes overlap at 40 s: one alert.
        let a = first.pass(at(40)).await.expect("pass").alerts_raised;
        let b = second.pass(at(40)).await.expect("pass").alerts_raised;
        assert_eq!(a + b, 1);
        assert_eq!(active(&store, RULE_DEVICE_SILENT).await.len(), 1);
    }

    #[tokio::test]
    async fn silence_counts_from_the_monitors_start_at_the_earliest() {
        let (store, _, _) = fleet(&["quiet"]).await;
        let recorded = Arc::new(Recorded::default());
        // tetherd was down from 0 to 100 s: nobody could hear the device.
        let monitor = Monitor::new(store, recorded.clone(), CONFIG, at(100));
        monitor.pass(at(105)).await.expect("pass");
        assert!(taken(&recorded).is_empty());
        monitor.pass(at(110)).await.expect("pass");
        assert_eq!(taken(&recorded), [("quiet".to_owned(), "rebirth")]);
    }

    #[tokio::test]
    async fn a_device_behind_its_spec_is_sent_it_asked_to_reload_then_alerts_until_it_catches_up() {
        let (store, monitor, recorded) = fleet(&["behind", "offline"]).await;
        let behind = DeviceId::new("behind").expect("name");
        let offline = DeviceId::new("offline").expect("name");
        for device in [&behind, &offline] {
            store
                .write_spec(device, &Default::default(), 0, 1, at(0))
                .await
                .expect("spec");
        }
        store
            .set_presence(&offline, Presence::Offline, at(0))
            .await
            .expect("offline");
        // Keep both talking: only drift is at stake.
        let heard = |second| {
            let store = store.clone();
            let (behind, offline) = (behind.clone(), offline.clone());
            async move {
                store
                    .set_presence(&behind, Presence::Online, at(second))
                    .await
                    .expect("seen");
                store
                    .set_presence(&offline, Presence::Offline, at(second))
                    .await
                    .expect("seen");
            }
        };
        heard(5).await;
        monitor.pass(at(5)).await.expect("pass");
        assert!(taken(&recorded).is_empty(), "within the grace");
        heard(10).await;
        monitor.pass(at(10)).await.expect("pass");
        assert_eq!(
            taken(&recorded),
            [
                ("behind".to_owned(), "spec"),
                ("behind".to_owned(), "reload")
            ],
            "never the offline device"
        );
        heard(20).await;
        let summary = monitor.pass(at(20)).await.expect("pass");
        assert_eq!(summary.alerts_raised, 1);
        assert_eq!(
            active(&store, RULE_CONFIG_DRIFT).await,
            [("behind".to_owned(), AlertState::Firing)]
        );
        store
            .set_reported(
                &behind,
                &ReportedStatus {
                    spec_version: 1,
                    ..Default::default()
                },
                at(21),
            )
            .await
            .expect("reported");
        heard(25).await;
        let summary = monitor.pass(at(25)).await.expect("pass");
        assert_eq!(summary.alerts_resolved, 1);
        assert!(active(&store, RULE_CONFIG_DRIFT).await.is_empty());
        taken(&recorded);
        heard(40).await;
        monitor.pass(at(40)).await.expect("pass");
        assert!(taken(&recorded).is_empty(), "caught up: nothing more asked");
    }

    /// A restarted tetherd (or a freshly started new leader) does not
    /// resolve a silence alert that nothing answered: only a device not yet
    /// asked is judged from tetherd's start.
    #[tokio::test]
    async fn a_restart_does_not_resolve_a_silent_devices_alert() {
        let (store, first, _) = fleet(&["quiet"]).await;
        let mut raised = 0;
        for second in [10, 20, 30, 40] {
            raised += first.pass(at(second)).await.expect("pass").alerts_raised;
        }
        assert_eq!(raised, 1);
        // tetherd restarts at 100 s; the device is still silent.
        let recorded = Arc::new(Recorded::default());
        let restarted = Monitor::new(store.clone(), recorded, CONFIG, at(100));
        let summary = restarted.pass(at(101)).await.expect("pass");
        assert_eq!(summary.alerts_resolved, 0, "resolved by a restart");
        assert_eq!(active(&store, RULE_DEVICE_SILENT).await.len(), 1);
    }

    /// A deleted device's alerts are resolved with it, not left active.
    #[tokio::test]
    async fn deleting_a_device_resolves_its_alerts() {
        let (store, monitor, _) = fleet(&["quiet"]).await;
        for second in [10, 20, 30, 40] {
            monitor.pass(at(second)).await.expect("pass");
        }
        let quiet = DeviceId::new("quiet").expect("name");
        assert!(store.delete_device(&quiet).await.expect("delete"));
        monitor.pass(at(50)).await.expect("pass");
        assert!(active(&store, RULE_DEVICE_SILENT).await.is_empty());
    }
}
