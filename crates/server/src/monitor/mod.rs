//! The fleet monitor (issue 18, ADR 0032): watches every device for
//! silence and for a configuration left behind, asks it for a rebirth or a
//! reload, and raises alerts when it does not answer. The checks run on one
//! replica at a time; their state is stored, so a new leader goes on where
//! the old one stopped.

pub mod drift;
pub mod link_requests;
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
                let heard = last_seen.max(self.started_at);
                let (watch, step) = silence::check(
                    watched.watch,
                    Some(heard),
                    self.config.silence_interval,
                    now,
                );
                if watch != watched.watch {
                    self.store.save_watch(&watched.device, &watch).await?;
                }
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
                        if self
                            .raise(
                                &watched.device,
                                RULE_DEVICE_SILENT,
                                Severity::Critical,
                                summary_text,
                                now,
                            )
                            .await?
                        {
                            summary.alerts_raised += 1;
                        }
                    }
                    Some(Step::ResolveAlert) => {
                        if self
                            .resolve(&watched.device, RULE_DEVICE_SILENT, now)
                            .await?
                        {
                            summary.alerts_resolved += 1;
                        }
                    }
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
                if watch != drifting.watch {
                    self.store
                        .save_drift_watch(&drifting.device, &watch)
                        .await?;
                }
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
                            if self
                                .raise(
                                    &drifting.device,
                                    RULE_CONFIG_DRIFT,
                                    Severity::Warning,
                                    text,
                                    now,
                                )
                                .await?
                            {
                                summary.alerts_raised += 1;
                            }
                        }
                        DriftStep::ResolveAlert => {
                            if self
                                .resolve(&drifting.device, RULE_CONFIG_DRIFT, now)
                                .await?
                            {
                                summary.alerts_resolved += 1;
                            }
                        }
                    }
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
