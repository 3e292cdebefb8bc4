//! Device specs at work: updates from the API, delivery to the device's
//! session wherever it is, and the status agents report. The rules are in
//! [`super::spec`]; this is the IO around them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tether_proto::DeviceId;
use tether_proto::host::BootReport;
use tether_proto::spec::{ActionSet, ReportedStatus, SpecError, SpecMessage};

use super::spec::{self, UpdateMask, VersionMismatch};
use crate::cluster::bus::{Bus, Channel, Heard, Subscription};
use crate::device_link::{DeviceLink, ServerMessage};
use crate::store::{EventRecord, SpecRecord, Store, StoreError};

/// An update without `If-Match` that keeps losing to concurrent ones gives
/// up after this many attempts.
const UPDATE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SpecUpdateError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error(transparent)]
    Stale(#[from] VersionMismatch),
    #[error(
        "device {0}'s spec kept changing while this update was applied; read it again and retry"
    )]
    Contended(DeviceId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Specs {
    store: Store,
    link: Arc<dyn DeviceLink>,
    bus: Bus,
}

impl Specs {
    pub fn new(store: Store, link: Arc<dyn DeviceLink>, bus: Bus) -> Self {
        Self { store, link, bus }
    }

    pub async fn get(&self, device: &DeviceId) -> Result<SpecRecord, StoreError> {
        self.store.get_spec(device).await
    }

    /// Applies an update (the request's `spec`, an optional mask, an
    /// optional expected version) and, if it changed anything, sends the
    /// new spec to the device. The device must exist.
    pub async fn update(
        &self,
        device: &DeviceId,
        request: &Value,
        mask: Option<&UpdateMask>,
        expected: Option<u64>,
    ) -> Result<SpecRecord, SpecUpdateError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.store.get_spec(device).await?;
            spec::check_precondition(expected, current.version)?;
            let updated = spec::apply_update(&current.spec, request, mask)?;
            let Some(version) = spec::next_version(current.version, &current.spec, &updated) else {
                return Ok(current);
            };
            if self
                .store
                .write_spec(device, &updated, current.version, version, Utc::now())
                .await?
            {
                tracing::info!(%device, version, "device spec updated");
                self.announce(device).await;
                return Ok(SpecRecord {
                    spec: updated,
                    version,
                    reported: current.reported,
                });
            }
        }
        Err(SpecUpdateError::Contended(device.clone()))
    }

    /// Enables or disables one action in the device's `actions` section
    /// (ADR 0017), as an update of that section made against the version
    /// it was read at, so a concurrent change is never overwritten.
    pub async fn set_action_enabled(
        &self,
        device: &DeviceId,
        action: &str,
        enabled: bool,
    ) -> Result<SpecRecord, SpecUpdateError> {
        let mask = UpdateMask::parse(&format!("spec.{}", ActionSet::NAME))?;
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.store.get_spec(device).await?;
            let mut set = ActionSet::of(&current.spec)?;
            if enabled {
                set.enable(action);
            } else {
                set.disable(action);
            }
            // The defaults alone need no section: the mask removes it.
            let mut request = serde_json::Map::new();
            if set != ActionSet::default() {
                request.insert(ActionSet::NAME.to_owned(), set.to_section());
            }
            match self
                .update(
                    device,
                    &Value::Object(request),
                    Some(&mask),
                    Some(current.version),
                )
                .await
            {
                Err(SpecUpdateError::Stale(_)) => {}
                other => return other,
            }
        }
        Err(SpecUpdateError::Contended(device.clone()))
    }

    /// Puts `deployment` into the device's `deployments` section as
    /// `rendered`, or takes it out (`None`): the desired-state controller's
    /// write, the only one to that section. Other sections are untouched.
    pub async fn set_deployment(
        &self,
        device: &DeviceId,
        deployment: &str,
        rendered: Option<&tether_proto::desired::DeploymentSpec>,
    ) -> Result<SpecRecord, SpecUpdateError> {
        let section = tether_proto::desired::SECTION;
        let mask = UpdateMask::parse(&format!("spec.{section}.{deployment}"))?;
        let mut request = serde_json::Map::new();
        if let Some(rendered) = rendered {
            let value = serde_json::to_value(rendered).map_err(|e| {
                SpecError::new(format!("spec.{section}.{deployment}"), e.to_string())
            })?;
            request.insert(
                section.to_owned(),
                Value::Object([(deployment.to_owned(), value)].into_iter().collect()),
            );
        }
        self.update(device, &Value::Object(request), Some(&mask), None)
            .await
    }

    /// Puts `secret` into the device's `secrets` section sealed to its key,
    /// or takes it out (`None`): the secrets service's write, the only one
    /// to that section (ADR 0030). Other sections are untouched.
    pub async fn set_secret(
        &self,
        device: &DeviceId,
        secret: &str,
        sealed: Option<&tether_proto::secrets::SealedSecret>,
    ) -> Result<SpecRecord, SpecUpdateError> {
        let section = tether_proto::secrets::SECTION;
        let mask = UpdateMask::parse(&format!("spec.{section}.{secret}"))?;
        let mut request = serde_json::Map::new();
        if let Some(sealed) = sealed {
            let value = serde_json::to_value(sealed)
                .map_err(|e| SpecError::new(format!("spec.{section}.{secret}"), e.to_string()))?;
            request.insert(
                section.to_owned(),
                Value::Object([(secret.to_owned(), value)].into_iter().collect()),
            );
        }
        self.update(device, &Value::Object(request), Some(&mask), None)
            .await
    }

    /// After a committed change: sends the spec if the device's session is
    /// here, and tells the other replicas so the one holding it does.
    pub async fn announce(&self, device: &DeviceId) {
        self.send(device).await;
        self.bus.publish(Channel::DeviceSpec, [device.as_str()]);
    }

    /// Sends the device its current spec if its session is on this replica.
    /// A failure is logged: the device gets the spec at its next session.
    pub async fn send(&self, device: &DeviceId) {
        if !self.link.is_connected(device) {
            return;
        }
        let current = match self.store.get_spec(device).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%device, error = %crate::error_chain(&error), "could not read a device's spec to send it; it gets it at its next session");
                return;
            }
        };
        let message = SpecMessage {
            version: current.version,
            spec: current.spec,
        };
        match self
            .link
            .publish_message(device, ServerMessage::Spec(&message))
            .await
        {
            Ok(()) => tracing::debug!(%device, version = message.version, "spec sent"),
            // The empty spec no one wrote: a device that does not take
            // specs (not subscribed) loses nothing, so no warning per birth.
            Err(error) if message.version == 0 => {
                tracing::debug!(%device, error = %crate::error_chain(&error), "did not send the empty spec");
            }
            Err(error) => {
                tracing::warn!(%device, version = message.version, error = %crate::error_chain(&error), "could not send a device its spec; it gets it at its next session");
            }
        }
    }

    /// Sends the specs other replicas changed to the devices whose sessions
    /// are here; after a gap in the announcements, every device here that
    /// has not reported its current spec gets it again. Runs until the bus
    /// is gone.
    pub async fn follow(self, mut subscription: Subscription) {
        while let Some(heard) = subscription.next().await {
            match heard {
                Heard::Notice(notice) => {
                    if notice.channel != Channel::DeviceSpec || notice.from_here {
                        continue;
                    }
                    for key in &notice.keys {
                        if let Ok(device) = DeviceId::new(key.as_str()) {
                            self.send(&device).await;
                        }
                    }
                }
                Heard::MayHaveMissed => match self.store.devices_behind_their_spec().await {
                    Ok(devices) => {
                        for device in devices {
                            self.send(&device).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %crate::error_chain(&error), "could not list the devices behind their spec after missing announcements; they get it at their next session");
                    }
                },
            }
        }
    }

    /// Why a report cannot be stored (a version tetherd never sent), if so.
    pub async fn check_reported(
        &self,
        device: &DeviceId,
        reported: &ReportedStatus,
    ) -> Result<Result<(), String>, StoreError> {
        let current = self.store.get_spec(device).await?;
        Ok(spec::check_reported(current.version, reported))
    }

    /// Stores the report; when it names a boot other than the last
    /// report's, records a [`EVENT_REBOOTED`] event for the operator.
    pub async fn record_reported(
        &self,
        device: &DeviceId,
        reported: &ReportedStatus,
    ) -> Result<(), StoreError> {
        let previous = match &reported.boot {
            Some(_) => self.store.get_spec(device).await?.reported,
            None => None,
        };
        let now = Utc::now();
        self.store.set_reported(device, reported, now).await?;
        let previous_boot = previous.and_then(|(status, _)| status.boot);
        if let Some(event) =
            reboot_event(device, previous_boot.as_ref(), reported.boot.as_ref(), now)
        {
            tracing::info!(%device, boot_id = %event.response["bootId"], "device rebooted");
            self.store.insert_event(&event).await?;
        }
        Ok(())
    }
}

/// The device event recorded when a device reports a new boot.
pub const EVENT_REBOOTED: &str = "rebooted";

/// The `rebooted` event when `current` is another boot than `previous`;
/// none for a device's first report of a boot (an older agent, or a new
/// device: nothing to compare with).
fn reboot_event(
    device: &DeviceId,
    previous: Option<&BootReport>,
    current: Option<&BootReport>,
    now: DateTime<Utc>,
) -> Option<EventRecord> {
    let (previous, current) = (previous?, current?);
    if previous.id == current.id {
        return None;
    }
    let booted = current.booted_at.map_or_else(
        || "at an unknown time".to_owned(),
        |at| {
            format!(
                "at {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        },
    );
    Some(EventRecord {
        id: uuid::Uuid::now_v7().to_string(),
        device: device.clone(),
        correlation_id: None,
        event: EVENT_REBOOTED.to_owned(),
        status_code: 200,
        status_message: format!(
            "the device booted again {booted} (boot {}, previously {})",
            current.id, previous.id
        ),
        response: json!({
            "bootId": current.id,
            "bootedAt": current.booted_at,
            "previousBootId": previous.id,
        }),
        received_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(id: &str) -> BootReport {
        BootReport {
            id: id.to_owned(),
            booted_at: DateTime::from_timestamp(1_764_700_000, 0),
        }
    }

    #[test]
    fn only_a_new_boot_id_after_a_known_one_is_a_reboot() {
        let device = DeviceId::new("edge-1").expect("valid");
        let now = Utc::now();
        let (a, b) = (boot("a"), boot("b"));
        assert_eq!(reboot_event(&device, Some(&a), Some(&a), now), None);
        assert_eq!(reboot_event(&device, None, Some(&a), now), None);
        assert_eq!(reboot_event(&device, Some(&a), None, now), None);
        let event = reboot_event(&device, Some(&a), Some(&b), now).expect("rebooted");
        assert_eq!(event.event, EVENT_REBOOTED);
        assert_eq!(event.response["bootId"], "b");
        assert_eq!(event.response["previousBootId"], "a");
        assert!(
            event.status_message.contains("at 2025-12-02T18:26:40Z"),
            "{}",
            event.status_message
        );
    }
}
