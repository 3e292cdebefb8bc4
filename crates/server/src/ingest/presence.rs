//! Writes each device's presence as its MQTT session comes and goes.
//!
//! The link reports session changes without waiting; each device gets a
//! writer task that stores the latest one, retrying while the store is
//! unavailable. A change that arrives meanwhile replaces the one being
//! retried, so a device's presence ends as its last session change says and
//! one device's slow write holds up no other device.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tether_proto::{DeviceId, Presence};
use tokio::sync::watch;

use crate::store::{EventRecord, Store, StoreError};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) struct PresenceWriter {
    store: Store,
    writers: Mutex<HashMap<DeviceId, watch::Sender<Presence>>>,
}

impl PresenceWriter {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            writers: Mutex::default(),
        }
    }

    /// Records `presence` as the device's latest; returns at once.
    pub fn set(&self, device: DeviceId, presence: Presence) {
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(writer) = writers.get(&device) {
            writer.send_replace(presence);
            return;
        }
        let (tx, rx) = watch::channel(presence);
        tokio::spawn(write_forever(self.store.clone(), device.clone(), rx));
        writers.insert(device, tx);
    }
}

async fn write_forever(store: Store, device: DeviceId, mut wanted: watch::Receiver<Presence>) {
    loop {
        let presence = *wanted.borrow_and_update();
        let mut delay = RETRY_FIRST;
        loop {
            match write(&store, &device, presence).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%device, presence = presence.as_str(), error = %crate::error_chain(&error), retry_in_ms = delay.as_millis() as u64, "could not record a device's presence; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
        if wanted.has_changed().unwrap_or(false) {
            continue;
        }
        if wanted.changed().await.is_err() {
            return;
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
