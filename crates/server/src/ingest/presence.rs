//! Writes each device's presence as its MQTT session comes and goes.
//!
//! The link reports session changes without waiting; each device gets a
//! writer task that stores them in order, retrying while the store is
//! unavailable, so every session shows once as online and once as offline
//! and one device's slow write holds up no other device. The queue stays
//! short: a session cannot start while the store is down, because the
//! certificate check reads it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tether_proto::{DeviceId, Presence};
use tokio::sync::mpsc;

use crate::store::{EventRecord, Store, StoreError};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) struct PresenceWriter {
    store: Store,
    writers: Mutex<HashMap<DeviceId, mpsc::UnboundedSender<Presence>>>,
}

impl PresenceWriter {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            writers: Mutex::default(),
        }
    }

    /// Queues `presence` for the device; returns at once.
    pub fn set(&self, device: DeviceId, presence: Presence) {
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = writers.entry(device.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_in_order(self.store.clone(), device, rx));
            tx
        });
        // The writer task lives as long as its sender, which the map holds.
        let _ = writer.send(presence);
    }
}

async fn write_in_order(
    store: Store,
    device: DeviceId,
    mut changes: mpsc::UnboundedReceiver<Presence>,
) {
    while let Some(presence) = changes.recv().await {
        let mut delay = RETRY_FIRST;
        while let Err(error) = write(&store, &device, presence).await {
            tracing::warn!(%device, presence = presence.as_str(), error = %crate::error_chain(&error), retry_in_ms = delay.as_millis() as u64, "could not record a device's presence; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// Stores the presence and, when it changed, an event the operator sees: so
/// each session shows once as `device-online`, its end once as `device-offline`.
async fn write(store: &Store, device: &DeviceId, presence: Presence) -> Result<(), StoreError> {
    let Some(record) = store.get_device(device).await? else {
        return Ok(());
    };
    let now = Utc::now();
    store.set_presence(device, presence, now).await?;
    if record.presence == presence {
        return Ok(());
    }
    let reason = match presence {
        Presence::Online => "MQTT session established",
        Presence::Offline => "MQTT session ended",
    };
    tracing::info!(%device, presence = presence.as_str(), reason, "device presence changed");
    store
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
        .await
}
