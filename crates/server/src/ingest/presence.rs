//! Writes each device's presence as its MQTT session comes and goes.
//!
//! The link reports session changes without waiting; each device gets a
//! writer task that stores them in order, retrying while the store is
//! unavailable, so every session shows once as online and once as offline
//! and one device's slow write holds up no other device. The queue stays
//! short: a session cannot start while the store is down, because the
//! certificate check reads it.
//!
//! A device that reconnects in a loop must not fill the events table: each
//! device's sessions are recorded as events up to a burst, then one a
//! minute; the presence itself is always written, and the next recorded
//! session says how many were left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tether_proto::{DeviceId, Presence};
use tokio::sync::{Semaphore, mpsc};

use super::rate::TokenBucket;
use crate::store::{EventRecord, Store, StoreError};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sessions of one device recorded as events: a burst, then one a minute.
const SESSION_EVENT_BURST: u64 = 20;
const SESSION_EVENTS_PER_SECOND: f64 = 1.0 / 60.0;

pub(super) struct PresenceWriter {
    store: Store,
    /// Shared with the device's other writes (`super::SQLITE_WRITE_SLOTS`).
    write_slots: Arc<Semaphore>,
    writers: Mutex<HashMap<DeviceId, mpsc::UnboundedSender<Presence>>>,
}

impl PresenceWriter {
    pub fn new(store: Store, write_slots: Arc<Semaphore>) -> Self {
        Self {
            store,
            write_slots,
            writers: Mutex::default(),
        }
    }

    /// Queues `presence` for the device; returns at once.
    pub fn set(&self, device: DeviceId, presence: Presence) {
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = writers.entry(device.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_in_order(
                self.store.clone(),
                self.write_slots.clone(),
                device,
                rx,
            ));
            tx
        });
        // The writer task lives as long as its sender, which the map holds.
        let _ = writer.send(presence);
    }
}

async fn write_in_order(
    store: Store,
    write_slots: Arc<Semaphore>,
    device: DeviceId,
    mut changes: mpsc::UnboundedReceiver<Presence>,
) {
    let mut sessions = SessionEvents {
        budget: TokenBucket::new(
            SESSION_EVENTS_PER_SECOND,
            SESSION_EVENT_BURST,
            Instant::now(),
        ),
        unrecorded: 0,
        recording: false,
    };
    while let Some(presence) = changes.recv().await {
        let mut delay = RETRY_FIRST;
        loop {
            let Ok(slot) = write_slots.acquire().await else {
                return;
            };
            let Err(error) = write(&store, &device, presence, &mut sessions).await else {
                break;
            };
            drop(slot);
            tracing::warn!(%device, presence = presence.as_str(), error = %crate::error_chain(&error), retry_in_ms = delay.as_millis() as u64, "could not record a device's presence; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

/// Which of a device's sessions are recorded as events.
struct SessionEvents {
    budget: TokenBucket,
    /// Sessions not recorded since the last recorded one.
    unrecorded: u64,
    /// Whether the current session's start was recorded, so its end is too.
    recording: bool,
}

/// Stores the presence and, when it changed, an event the operator sees: so
/// each recorded session shows once as `device-online`, its end once as
/// `device-offline`.
async fn write(
    store: &Store,
    device: &DeviceId,
    presence: Presence,
    sessions: &mut SessionEvents,
) -> Result<(), StoreError> {
    let Some(record) = store.get_device(device).await? else {
        return Ok(());
    };
    let now = Utc::now();
    store.set_presence(device, presence, now).await?;
    if record.presence == presence {
        return Ok(());
    }
    let mut reason = match presence {
        Presence::Online => "MQTT session established".to_owned(),
        Presence::Offline => "MQTT session ended".to_owned(),
    };
    if presence == Presence::Online {
        sessions.recording = sessions.budget.take(1, Instant::now());
        if !sessions.recording {
            sessions.unrecorded += 1;
            tracing::debug!(%device, "device connected again; not recorded as an event");
            return Ok(());
        }
        let unrecorded = std::mem::take(&mut sessions.unrecorded);
        if unrecorded > 0 {
            reason.push_str(&format!(
                " ({unrecorded} earlier sessions not recorded: the device reconnects too often)"
            ));
        }
    } else if !std::mem::take(&mut sessions.recording) {
        return Ok(());
    }
    tracing::info!(%device, presence = presence.as_str(), reason, "device presence changed");
    store
        .insert_event(&EventRecord {
            id: uuid::Uuid::now_v7().to_string(),
            device: device.clone(),
            correlation_id: None,
            event: format!("device-{}", presence.as_str()),
            status_code: 200,
            status_message: reason,
            response: serde_json::Value::Null,
            received_at: now,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_device_reconnecting_in_a_loop_records_a_bounded_number_of_sessions() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let device = DeviceId::new("edge-1").expect("valid name");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        let (changes, received) = mpsc::unbounded_channel();
        let sessions = SESSION_EVENT_BURST + 30;
        for _ in 0..sessions {
            changes.send(Presence::Online).expect("writer");
            changes.send(Presence::Offline).expect("writer");
        }
        changes.send(Presence::Online).expect("writer");
        drop(changes);
        write_in_order(
            store.clone(),
            Arc::new(Semaphore::new(1)),
            device.clone(),
            received,
        )
        .await;

        let events = store.list_events(&device, 1000).await.expect("events");
        let count = |name: &str| events.iter().filter(|e| e.event == name).count() as u64;
        // The run takes far less than the minute that would allow one more.
        assert_eq!(count("device-online"), SESSION_EVENT_BURST);
        assert_eq!(count("device-offline"), SESSION_EVENT_BURST);
        let record = store
            .get_device(&device)
            .await
            .expect("read")
            .expect("device");
        assert_eq!(
            record.presence,
            Presence::Online,
            "presence is always written"
        );
    }
}
