//! Applies what devices report (through the `DeviceLink`) to the domain:
//! presence, action answers, metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tether_proto::{DeviceId, DeviceStatus, Presence};
use tokio::sync::mpsc;

use crate::actions::ActionService;
use crate::device_link::{DeviceLink, DeviceMessage};
use crate::store::{EventRecord, Store, StoreError};

/// `lastSeen` is refreshed at most this often per device: often enough for
/// an operator, rare enough to cost nothing next to the messages themselves.
const LAST_SEEN_RESOLUTION: Duration = Duration::from_secs(30);

pub struct Ingest {
    pub store: Store,
    pub actions: Arc<ActionService>,
    pub link: Arc<dyn DeviceLink>,
}

/// When each device's `lastSeen` was last written.
#[derive(Default)]
struct LastSeen(HashMap<DeviceId, Instant>);

impl LastSeen {
    /// Whether `device` heard from now should be written, and notes it.
    fn due(&mut self, device: &DeviceId, now: Instant) -> bool {
        match self.0.get(device) {
            Some(written) if now.duration_since(*written) < LAST_SEEN_RESOLUTION => false,
            _ => {
                self.0.insert(device.clone(), now);
                true
            }
        }
    }

    fn forget(&mut self, device: &DeviceId) {
        self.0.remove(device);
    }
}

impl Ingest {
    /// Handles messages until the link closes the channel.
    pub async fn run(self, mut messages: mpsc::Receiver<DeviceMessage>) {
        let mut last_seen = LastSeen::default();
        while let Some(message) = messages.recv().await {
            if let Err(error) = self.last_seen(&mut last_seen, &message).await {
                tracing::warn!(error = %crate::error_chain(&error), "could not record when a device was last seen");
            }
            if let Err(error) = self.handle(message).await {
                tracing::error!(error = %crate::error_chain(&error), "could not record a device message");
            }
        }
    }

    /// Presence changes write `lastSeen` themselves; every other message
    /// refreshes it, throttled.
    async fn last_seen(
        &self,
        last_seen: &mut LastSeen,
        message: &DeviceMessage,
    ) -> Result<(), StoreError> {
        match message {
            DeviceMessage::Connected { device }
            | DeviceMessage::Disconnected { device }
            | DeviceMessage::Status { device, .. } => {
                last_seen.forget(device);
                Ok(())
            }
            DeviceMessage::Event { device, .. } | DeviceMessage::Metrics { device, .. } => {
                if last_seen.due(device, Instant::now()) {
                    self.store.touch_last_seen(device, Utc::now()).await?;
                }
                Ok(())
            }
        }
    }

    async fn handle(&self, message: DeviceMessage) -> Result<(), StoreError> {
        match message {
            DeviceMessage::Connected { device } => {
                tracing::debug!(%device, "device session established");
                Ok(())
            }
            DeviceMessage::Disconnected { device } => {
                self.actions.device_gone(&device);
                self.presence(&device, Presence::Offline, "session closed")
                    .await
            }
            DeviceMessage::Status { device, status } => self.status(&device, status).await,
            DeviceMessage::Event { device, event } => {
                self.actions.handle_event(&device, event).await
            }
            DeviceMessage::Metrics { device, metrics } => {
                self.store.insert_metrics(&device, &metrics).await
            }
        }
    }

    async fn status(&self, device: &DeviceId, status: DeviceStatus) -> Result<(), StoreError> {
        let Some(record) = self.store.get_device(device).await? else {
            return Ok(());
        };
        match status.state {
            Presence::Online => {
                self.store
                    .set_agent_status(device, &status.agent_version, &status.boot_id, status.seq)
                    .await?;
                let reason = format!("agent {} connected", status.agent_version);
                self.presence(device, Presence::Online, &reason).await?;
                self.actions.device_ready(device).await;
                Ok(())
            }
            Presence::Offline => {
                // A death can come from a session a newer one already took
                // over (a restarted agent on a half-open connection); boot ids
                // have no order, so the link's view of the current session
                // decides. The current session's end also arrives as
                // `Disconnected`, so nothing is lost by ignoring this one.
                let current_boot = record.boot_id.as_deref().unwrap_or_default();
                if self.link.is_connected(device)
                    || !status.supersedes(current_boot, record.status_seq)
                {
                    tracing::debug!(%device, "ignoring the death of an older session");
                    return Ok(());
                }
                self.actions.device_gone(device);
                self.presence(device, Presence::Offline, "agent went offline")
                    .await
            }
        }
    }

    /// Records presence and, when it changed, an event the operator sees.
    async fn presence(
        &self,
        device: &DeviceId,
        presence: Presence,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(record) = self.store.get_device(device).await? else {
            return Ok(());
        };
        let now = Utc::now();
        self.store.set_presence(device, presence, now).await?;
        if record.presence != presence {
            tracing::info!(%device, presence = presence.as_str(), reason, "device presence changed");
            self.store
                .insert_event(&EventRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    device: device.clone(),
                    correlation_id: None,
                    event: format!("device-{}", presence.as_str()),
                    status_code: 200,
                    status_message: reason.to_owned(),
                    response: serde_json::Value::Null,
                    received_at: now,
                })
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_seen_is_written_at_most_every_resolution() {
        let device = DeviceId::new("edge-1").expect("valid name");
        let start = Instant::now();
        let mut last_seen = LastSeen::default();
        assert!(last_seen.due(&device, start));
        assert!(!last_seen.due(&device, start + Duration::from_secs(1)));
        assert!(last_seen.due(&device, start + LAST_SEEN_RESOLUTION));
        last_seen.forget(&device);
        assert!(last_seen.due(
            &device,
            start + LAST_SEEN_RESOLUTION + Duration::from_secs(1)
        ));
    }
}
