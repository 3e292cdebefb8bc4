//! Writes each device's presence as its MQTT session comes and goes, as the
//! replica holding that session (`crate::cluster::presence` has the rules),
//! and the births its sessions start with.
//!
//! The link reports session changes without waiting; each device gets a
//! writer task that stores them in order, retrying while the store is
//! unavailable, so every session shows once as online and once as offline
//! and one device's slow write holds up no other device. The queue stays
//! short: a session cannot start while the store is down, because the
//! certificate check reads it.
//!
//! A birth is written by the same task, after its session's start, and its
//! publish is acknowledged once it is written, however long the store takes:
//! refusing it after a deadline (as other publishes are, ADR 0006) closes
//! the session, and when the store is slow because a fleet is connecting,
//! every closed session comes back as another connect, presence write and
//! birth, which keeps it slow (measured: 20,000 sessions over 4 replicas
//! never all came up).
//!
//! A device that reconnects in a loop must not fill the events table: each
//! device's sessions are recorded as events up to a burst, then one a
//! minute; the presence itself is always written, and the next recorded
//! session says how many were left out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tether_proto::{DeviceId, DeviceStatus, Presence};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::rate::TokenBucket;
use crate::cluster::bus::{Bus, Channel};
use crate::cluster::presence::{
    SessionEvent, SessionOwner, on_connected, on_disconnected, on_reclaimed, session_event,
};
use crate::store::{Store, StoreError};

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Sessions of one device recorded as events: a burst, then one a minute.
const SESSION_EVENT_BURST: u64 = 20;
const SESSION_EVENTS_PER_SECOND: f64 = 1.0 / 60.0;

pub(super) struct PresenceWriter {
    store: Store,
    /// Who holds the sessions this replica reports: it owns their presence.
    owner: SessionOwner,
    /// Shared with the device's other writes (`super::SQLITE_WRITE_SLOTS`).
    write_slots: Arc<Semaphore>,
    writers: Mutex<HashMap<DeviceId, Writer>>,
    /// Tells the other replicas when a device's session moved here.
    bus: Bus,
}

/// What a device's writer stores.
#[derive(Debug)]
enum Change {
    /// A session here started or ended.
    Session(Presence),
    /// A session held here is claimed again after a takeover.
    Reclaim,
    /// The agent's birth; `written` hears when it is stored. Boxed: the
    /// queue allocates 32 changes at a time for every device, so its size
    /// is paid per session (inline, 3 KiB of the 40 KiB budget).
    Birth(Box<Birth>),
}

#[derive(Debug)]
struct Birth {
    status: DeviceStatus,
    written: oneshot::Sender<()>,
}

impl Change {
    fn describe(&self) -> &'static str {
        match self {
            Change::Session(presence) => presence.as_str(),
            Change::Reclaim => "reclaimed",
            Change::Birth(_) => "birth",
        }
    }
}

struct Writer {
    changes: mpsc::UnboundedSender<Change>,
    /// The last change queued: whether this replica holds a session.
    last: Presence,
    /// Changes queued and not yet written.
    pending: Arc<AtomicUsize>,
}

impl PresenceWriter {
    pub fn new(store: Store, owner: SessionOwner, write_slots: Arc<Semaphore>, bus: Bus) -> Self {
        Self {
            store,
            owner,
            write_slots,
            writers: Mutex::default(),
            bus,
        }
    }

    /// Queues `presence` for the device; returns at once.
    pub fn set(&self, device: DeviceId, presence: Presence) {
        let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = writers.entry(device.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            tokio::spawn(write_in_order(
                Context {
                    store: self.store.clone(),
                    owner: self.owner.clone(),
                    write_slots: self.write_slots.clone(),
                    bus: self.bus.clone(),
                    pending: pending.clone(),
                },
                device,
                rx,
            ));
            Writer {
                changes: tx,
                last: presence,
                pending,
            }
        });
        writer.last = presence;
        writer.pending.fetch_add(1, Ordering::SeqCst);
        // The writer task lives as long as its sender, which the map holds.
        let _ = writer.changes.send(Change::Session(presence));
    }

    /// Stores what the agent's birth says, after the start of the session
    /// it came on; returns once it is stored.
    pub async fn birth(&self, device: &DeviceId, status: DeviceStatus) {
        let (written, stored) = oneshot::channel();
        let queued = {
            let writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
            // A publish only arrives on a session the link reported, so the
            // device has a writer; without one the device is gone already.
            writers.get(device).is_some_and(|writer| {
                writer.pending.fetch_add(1, Ordering::SeqCst);
                writer
                    .changes
                    .send(Change::Birth(Box::new(Birth { status, written })))
                    .is_ok()
            })
        };
        if queued {
            let _ = stored.await;
        }
    }

    /// Whether this replica holds a session of the device whose claim is
    /// written, while the store names another replica as the holder: the
    /// device connected there after it connected here, so the session here
    /// is a stale one (half-open, its keepalive not yet run out). A claim
    /// still being written here is the newer one, and wins when written.
    pub async fn is_superseded(&self, device: &DeviceId) -> Result<bool, StoreError> {
        let settled = {
            let writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
            match writers.get(device) {
                Some(writer) => {
                    writer.last == Presence::Online && writer.pending.load(Ordering::SeqCst) == 0
                }
                None => false,
            }
        };
        if !settled {
            return Ok(false);
        }
        Ok(self
            .store
            .device_session(device)
            .await?
            .is_some_and(|stored| {
                stored.presence == Presence::Online
                    && stored.replica.as_deref() != self.owner.stored()
            }))
    }

    /// Writes the sessions this replica holds again, after another replica
    /// took them over while this one could not renew its lease. Returns how
    /// many.
    pub fn reclaim(&self) -> usize {
        let writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
        writers
            .values()
            .filter(|writer| writer.last == Presence::Online)
            .filter(|writer| {
                writer.pending.fetch_add(1, Ordering::SeqCst);
                writer.changes.send(Change::Reclaim).is_ok()
            })
            .count()
    }
}

/// What a device's writer task works with.
struct Context {
    store: Store,
    owner: SessionOwner,
    write_slots: Arc<Semaphore>,
    bus: Bus,
    /// The writer's count of changes queued and not yet written.
    pending: Arc<AtomicUsize>,
}

async fn write_in_order(
    context: Context,
    device: DeviceId,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let Context {
        store,
        owner,
        write_slots,
        bus,
        pending,
    } = context;
    let mut sessions = SessionEvents {
        budget: TokenBucket::new(
            SESSION_EVENTS_PER_SECOND,
            SESSION_EVENT_BURST,
            Instant::now(),
        ),
        unrecorded: 0,
        recording: false,
    };
    while let Some(change) = changes.recv().await {
        let mut delay = RETRY_FIRST;
        let mut recorded = None;
        loop {
            let Ok(slot) = write_slots.acquire().await else {
                return;
            };
            let written = match &change {
                Change::Session(presence) => {
                    let step = SessionStep::Session(*presence);
                    write(&store, &owner, &device, step, &mut sessions, &mut recorded).await
                }
                Change::Reclaim => {
                    let step = SessionStep::Reclaim;
                    write(&store, &owner, &device, step, &mut sessions, &mut recorded).await
                }
                Change::Birth(birth) => store
                    .set_agent_status(
                        &device,
                        &birth.status.agent_version,
                        &birth.status.capabilities,
                        &birth.status.boot_id,
                        birth.status.seq,
                    )
                    .await
                    .map(|()| false)
                    .map_err(WriteError::from),
            };
            let Err(error) = written.map(|moved_here| {
                if moved_here {
                    bus.publish(Channel::SessionMoved, [device.as_str()]);
                }
            }) else {
                break;
            };
            drop(slot);
            tracing::warn!(%device, change = change.describe(), error = %crate::error_chain(&error), retry_in_ms = delay.as_millis() as u64, "could not record a device's session; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
        pending.fetch_sub(1, Ordering::SeqCst);
        if let Change::Birth(birth) = change {
            let _ = birth.written.send(());
        }
    }
}

/// A change of the device's session, as the presence rules see it.
#[derive(Debug, Clone, Copy)]
enum SessionStep {
    Session(Presence),
    Reclaim,
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{0}'s lease lapsed and another replica took its devices over; it re-claims them at its next renewal"
    )]
    LeaseLapsed(SessionOwner),
}

/// Which of a device's sessions are recorded as events.
struct SessionEvents {
    budget: TokenBucket,
    /// Sessions not recorded since the last recorded one.
    unrecorded: u64,
    /// Whether the current session's start was recorded, so its end is too.
    recording: bool,
}

impl SessionEvents {
    /// Whether this change's events are recorded and, for a start, how many
    /// sessions before it were not.
    fn decide(&mut self, presence: Presence) -> Option<u64> {
        match presence {
            Presence::Online => {
                self.recording = self.budget.take(1, Instant::now());
                if self.recording {
                    Some(std::mem::take(&mut self.unrecorded))
                } else {
                    self.unrecorded += 1;
                    None
                }
            }
            Presence::Offline => std::mem::take(&mut self.recording).then_some(0),
        }
    }
}

/// Stores the presence as the replica holding the session and, when it
/// changed, the events the operator sees: so each recorded session shows
/// once as `device-online`, its end once as `device-offline`. `recorded`
/// keeps the event decision for this change across retries. Returns whether
/// the session moved here from another replica's, which that replica must
/// hear: it may still hold the old session.
async fn write(
    store: &Store,
    owner: &SessionOwner,
    device: &DeviceId,
    step: SessionStep,
    sessions: &mut SessionEvents,
    recorded: &mut Option<Option<u64>>,
) -> Result<bool, WriteError> {
    loop {
        let Some(stored) = store.device_session(device).await? else {
            return Ok(false);
        };
        let (presence, decided) = match step {
            SessionStep::Session(Presence::Online) => {
                (Presence::Online, Some(on_connected(&stored, owner)))
            }
            SessionStep::Session(Presence::Offline) => {
                (Presence::Offline, on_disconnected(&stored, owner))
            }
            SessionStep::Reclaim => (Presence::Online, on_reclaimed(&stored, owner)),
        };
        let Some(change) = decided else {
            return Ok(false);
        };
        let now = Utc::now();
        let events = if change.events.is_empty() {
            Vec::new()
        } else {
            match *recorded.get_or_insert_with(|| sessions.decide(presence)) {
                Some(unrecorded) => {
                    let suffix = if unrecorded > 0 && presence == Presence::Online {
                        format!(
                            " ({unrecorded} earlier sessions not recorded: the device reconnects too often)"
                        )
                    } else {
                        String::new()
                    };
                    change
                        .events
                        .iter()
                        .map(|event| {
                            let suffix = if *event == SessionEvent::Started {
                                suffix.as_str()
                            } else {
                                ""
                            };
                            session_event(device, event, owner, now, suffix)
                        })
                        .collect()
                }
                None => {
                    tracing::debug!(%device, "device connected again; not recorded as an event");
                    Vec::new()
                }
            }
        };
        if store
            .move_device_session(device, &stored, &change.session, now, &events)
            .await?
        {
            for event in &events {
                tracing::info!(%device, event = event.event, reason = event.status_message, "device presence changed");
            }
            // Through a broker no replica holds sessions, so none moved.
            let moved_here = presence == Presence::Online
                && stored.presence == Presence::Online
                && owner.stored().is_some()
                && stored.replica.as_deref() != owner.stored();
            return Ok(moved_here);
        }
        // Nothing was written: either the row changed meanwhile (decide
        // again on what it says now), or this replica has no lease row.
        if change.session.replica.is_some()
            && store.device_session(device).await?.as_ref() == Some(&stored)
        {
            return Err(WriteError::LeaseLapsed(owner.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ReplicaId;

    /// A registered replica named `id` (with a lease) on `store`.
    async fn replica(store: &Store, dir: &std::path::Path, id: &str) -> ReplicaId {
        std::fs::write(dir.join(crate::cluster::REPLICA_ID_FILE), id).expect("write the id");
        let replica = ReplicaId::load_or_create(dir).expect("replica id");
        crate::cluster::lease::Lease::acquire(
            store.clone(),
            &replica,
            String::new(),
            String::new(),
            Duration::from_secs(60),
        )
        .await
        .expect("lease");
        replica
    }

    /// Replicas `a` and `b` registered on one store, and device `edge-1`.
    struct TwoReplicas {
        store: Store,
        a: ReplicaId,
        b: ReplicaId,
        device: DeviceId,
        /// The replicas' data dirs, kept as long as the test runs.
        _dirs: (tempfile::TempDir, tempfile::TempDir),
    }

    async fn two_replicas() -> TwoReplicas {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let dirs = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let a = replica(&store, dirs.0.path(), "a").await;
        let b = replica(&store, dirs.1.path(), "b").await;
        let device = DeviceId::new("edge-1").expect("valid name");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        TwoReplicas {
            store,
            a,
            b,
            device,
            _dirs: dirs,
        }
    }

    /// Runs one replica's writer over `changes` to the end.
    async fn write_all(
        store: &Store,
        replica: &ReplicaId,
        device: &DeviceId,
        changes: &[Presence],
    ) {
        let (sender, received) = mpsc::unbounded_channel();
        for change in changes {
            sender.send(Change::Session(*change)).expect("writer");
        }
        drop(sender);
        write_in_order(
            Context {
                store: store.clone(),
                owner: SessionOwner::Replica(replica.clone()),
                write_slots: Arc::new(Semaphore::new(1)),
                bus: Bus::in_process(),
                pending: Arc::new(AtomicUsize::new(changes.len())),
            },
            device.clone(),
            received,
        )
        .await;
    }

    #[tokio::test]
    async fn a_device_failing_over_shows_its_old_session_ended_once_and_the_old_replica_changes_nothing()
     {
        let TwoReplicas {
            store,
            a,
            b,
            device,
            _dirs,
        } = two_replicas().await;

        write_all(&store, &a, &device, &[Presence::Online]).await;
        // The device reconnects to b before a notices its session ended.
        write_all(&store, &b, &device, &[Presence::Online]).await;
        write_all(&store, &a, &device, &[Presence::Offline]).await;

        let mut events = store.list_events(&device, 10).await.expect("events");
        events.reverse();
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.event.as_str(), e.status_message.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("device-online", "MQTT session established on replica a"),
                (
                    "device-offline",
                    "session on replica a ended: the device connected to replica b"
                ),
                ("device-online", "MQTT session established on replica b"),
            ]
        );
        assert_eq!(
            store.device_session(&device).await.expect("session"),
            Some(crate::store::DeviceSession {
                presence: Presence::Online,
                replica: Some("b".into()),
            }),
            "a's late disconnect leaves the device online on b"
        );
    }

    #[tokio::test]
    async fn a_reclaim_leaves_a_device_that_connected_elsewhere_meanwhile_where_it_is() {
        let TwoReplicas {
            store,
            a,
            b,
            device,
            _dirs,
        } = two_replicas().await;
        write_all(&store, &a, &device, &[Presence::Online]).await;
        // a cannot renew; b takes it over, then the device connects to b
        // while a still holds a (half-open) session of it.
        store
            .end_replica_sessions("a", None, Utc::now(), |device, at| {
                crate::cluster::presence::replica_ended_event(
                    device,
                    "a",
                    crate::cluster::presence::EndOfReplica::LeaseLapsed,
                    at,
                    at,
                )
            })
            .await
            .expect("take over")
            .expect("a's row");
        write_all(&store, &b, &device, &[Presence::Online]).await;

        // a reaches the database again, registers and re-claims.
        let a = replica(&store, _dirs.0.path(), "a").await;
        let (sender, received) = mpsc::unbounded_channel();
        sender.send(Change::Reclaim).expect("writer");
        drop(sender);
        write_in_order(
            Context {
                store: store.clone(),
                owner: SessionOwner::Replica(a),
                write_slots: Arc::new(Semaphore::new(1)),
                bus: Bus::in_process(),
                pending: Arc::new(AtomicUsize::new(1)),
            },
            device.clone(),
            received,
        )
        .await;

        assert_eq!(
            store.device_session(&device).await.expect("session"),
            Some(crate::store::DeviceSession {
                presence: Presence::Online,
                replica: Some("b".into()),
            }),
            "the device stays on b, where it connected last"
        );
        let events = store.list_events(&device, 10).await.expect("events");
        // (The takeover's event is dated at a's last renewal, so by time it
        // may sort first.)
        let mut names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["device-offline", "device-online", "device-online"],
            "no session of b is recorded as ended, and a's is not started again"
        );
    }

    #[tokio::test]
    async fn a_session_is_superseded_once_another_replica_claimed_the_device_after_it() {
        let TwoReplicas {
            store,
            a,
            b,
            device,
            _dirs,
        } = two_replicas().await;
        let writer_a = PresenceWriter::new(
            store.clone(),
            SessionOwner::Replica(a.clone()),
            Arc::new(Semaphore::new(1)),
            Bus::in_process(),
        );
        let held_by = |replica: &ReplicaId| {
            let (store, device, replica) = (store.clone(), device.clone(), replica.clone());
            async move {
                for _ in 0..500 {
                    let stored = store.device_session(&device).await.expect("session");
                    if stored.and_then(|s| s.replica).as_deref() == Some(replica.as_str()) {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                panic!("the device never showed as held by {replica}");
            }
        };

        writer_a.set(device.clone(), Presence::Online);
        held_by(&a).await;
        assert!(!writer_a.is_superseded(&device).await.expect("check"));

        // The device connects to b while a still holds its old session.
        write_all(&store, &b, &device, &[Presence::Online]).await;
        assert!(writer_a.is_superseded(&device).await.expect("check"));

        // It comes back to a: the claim being written is the newer one.
        writer_a.set(device.clone(), Presence::Online);
        assert!(!writer_a.is_superseded(&device).await.expect("check"));
        held_by(&a).await;
        assert!(!writer_a.is_superseded(&device).await.expect("check"));
    }

    #[tokio::test]
    async fn a_birth_waits_for_a_busy_store_instead_of_failing_and_lands_after_its_session() {
        let TwoReplicas {
            store,
            a,
            device,
            _dirs,
            ..
        } = two_replicas().await;
        let slots = Arc::new(Semaphore::new(1));
        let writer = Arc::new(PresenceWriter::new(
            store.clone(),
            SessionOwner::Replica(a.clone()),
            slots.clone(),
            Bus::in_process(),
        ));
        // Every write slot is taken, as while a fleet connects.
        let busy = slots.clone().acquire_owned().await.expect("slot");
        writer.set(device.clone(), Presence::Online);
        let birth = tokio::spawn({
            let (writer, device) = (writer.clone(), device.clone());
            async move {
                let status = DeviceStatus {
                    state: Presence::Online,
                    agent_version: "1.2.3".to_owned(),
                    capabilities: vec!["get-node-ip".to_owned()],
                    boot_id: "boot-1".to_owned(),
                    seq: 1,
                };
                writer.birth(&device, status).await;
            }
        });
        // Not a synchronisation: the birth must still be waiting, not refused.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !birth.is_finished(),
            "the birth gave up while the store was busy"
        );
        drop(busy);
        birth.await.expect("birth");
        let stored = store
            .get_device(&device)
            .await
            .expect("read")
            .expect("device");
        assert_eq!(stored.presence, Presence::Online);
        assert_eq!(stored.agent_version.as_deref(), Some("1.2.3"));
    }

    #[tokio::test]
    async fn a_birth_from_a_session_already_gone_returns_at_once() {
        let TwoReplicas {
            store,
            a,
            device,
            _dirs,
            ..
        } = two_replicas().await;
        let writer = PresenceWriter::new(
            store.clone(),
            SessionOwner::Replica(a),
            Arc::new(Semaphore::new(1)),
            Bus::in_process(),
        );
        let status = DeviceStatus {
            state: Presence::Online,
            agent_version: "1.2.3".to_owned(),
            capabilities: vec![],
            boot_id: "boot-1".to_owned(),
            seq: 1,
        };
        tokio::time::timeout(Duration::from_secs(5), writer.birth(&device, status))
            .await
            .expect("a birth without a session writer must not wait");
    }

    #[tokio::test]
    async fn a_device_reconnecting_in_a_loop_records_a_bounded_number_of_sessions() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let dir = tempfile::tempdir().expect("tempdir");
        let device = DeviceId::new("edge-1").expect("valid name");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        let mut changes = Vec::new();
        for _ in 0..SESSION_EVENT_BURST + 30 {
            changes.extend([Presence::Online, Presence::Offline]);
        }
        changes.push(Presence::Online);
        let replica = replica(&store, dir.path(), "a").await;
        write_all(&store, &replica, &device, &changes).await;

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
