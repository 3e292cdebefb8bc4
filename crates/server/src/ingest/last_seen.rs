//! Writes when devices were last seen, with the action bytes counted since
//! the last write, for many devices in one statement.
//!
//! Each device is due at most once per `IngestConfig::last_seen_resolution`; a fleet-wide
//! job's answers make thousands of devices due within a second, and one
//! statement each doubled the job's writes (every answer is a statement of
//! its own). The writer takes what is queued when it is free (no timer: a
//! lone device is written at once) and writes the lot in one statement.
//! The queue holds at most a device per resolution and one per session end,
//! so it is bounded by the fleet, not by what devices send.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tether_proto::DeviceId;
use tokio::sync::{Semaphore, mpsc};

use crate::actions::ActionService;
use crate::store::{SeenDevice, Store};

/// Devices written by one statement at most (4 parameters each).
const MAX_BATCH: usize = 500;

pub(super) struct LastSeenWriter {
    queue: mpsc::UnboundedSender<Due>,
}

struct Due {
    device: DeviceId,
    /// Written at a session's end only to store action bytes still counted.
    session_ended: bool,
}

impl LastSeenWriter {
    /// Starts the writer; it shares `write_slots` with the other writes.
    pub(super) fn spawn(
        store: Store,
        actions: Arc<ActionService>,
        write_slots: Arc<Semaphore>,
    ) -> Self {
        let (queue, mut due) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while due.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let Ok(_slot) = write_slots.acquire().await else {
                    return;
                };
                write(&store, &actions, batch.drain(..)).await;
            }
        });
        Self { queue }
    }

    pub(super) fn seen(&self, device: DeviceId, session_ended: bool) {
        // Only fails once the runtime is shutting down.
        let _ = self.queue.send(Due {
            device,
            session_ended,
        });
    }
}

async fn write(store: &Store, actions: &ActionService, batch: impl Iterator<Item = Due>) {
    // A device queued twice is written once; only its session's end alone
    // is written just for the bytes.
    let mut only_ended: HashMap<DeviceId, bool> = HashMap::new();
    for Due {
        device,
        session_ended,
    } in batch
    {
        *only_ended.entry(device).or_insert(true) &= session_ended;
    }
    let at = Utc::now();
    let seen: Vec<SeenDevice> = only_ended
        .into_iter()
        .filter_map(|(device, only_ended)| {
            let actions = actions.take_bytes(&device);
            (!(only_ended && actions.is_zero())).then_some(SeenDevice {
                device,
                at,
                actions,
            })
        })
        .collect();
    if seen.is_empty() {
        return;
    }
    if let Err(error) = store.touch_last_seen(&seen).await {
        tracing::warn!(devices = seen.len(), error = %crate::error_chain(&error), "could not record when devices were last seen");
        // Counted again with their next write.
        for SeenDevice {
            device,
            actions: bytes,
            ..
        } in &seen
        {
            actions.put_back_bytes(device, *bytes);
        }
    }
}
