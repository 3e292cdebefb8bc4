//! Applies what devices send (through the `DeviceLink`) to the domain:
//! presence, agent status, action answers, metrics.
//!
//! A publish is handled on the device's own session task and acknowledged
//! only once it is committed (`docs/adr/0006-acknowledge-after-commit.md`):
//! one device's messages keep their order, devices never wait for each
//! other, and session changes are queued per device so a connect or
//! disconnect never waits behind a write.

mod checks;
mod counters;
mod last_seen;
mod presence;
pub mod rate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use tether_proto::{DeviceId, DeviceStatus, Presence};
use tokio::sync::Semaphore;

use crate::actions::{ActionService, Answer};
use crate::cluster::bus::{Bus, Channel, Heard, Subscription};
use crate::cluster::presence::SessionOwner;
use crate::desired::DesiredState;
use crate::device_link::{
    BoxFuture, Content, DeviceInbox, DeviceMessage, Inbound, Refusal, SessionChange,
};
use crate::observability::Observability;
use crate::registry::Specs;
use crate::store::{EventRecord, Store, StoreError};
use crate::telemetry::{Limits, Stored, Telemetry, TelemetryError};
use checks::{ClockWindow, Invalid};
pub use counters::IngestCounters;
use counters::{Counters, Outcome};
use last_seen::LastSeenWriter;
use presence::PresenceWriter;
use rate::{Admission, DeviceRate, RateLimits, TokenBucket};

/// Rejection events a device can cause: a burst, then one a minute. The rest
/// are counted, so a hostile device cannot fill the events table.
const REJECTION_EVENT_BURST: u64 = 10;
const REJECTION_EVENTS_PER_SECOND: f64 = 1.0 / 60.0;

/// Metrics samples a device may store: tether-agent samples once a second
/// at most. Each sample is a row kept for the whole metrics retention, so
/// the device's general message rate (100/s) would let one device store a
/// hundred times that; the burst covers a late sampler catching up.
const SAMPLES_PER_SECOND: f64 = 1.0;
const SAMPLE_BURST: u64 = 60;

/// Device-driven writes (publishes, presence, `lastSeen`, rejection events;
/// not answers, which the answer writer records on one connection of its
/// own, `crate::actions`) that may hold a store connection at once. While the store is locked or
/// down each write holds its connection until it gives up; unbounded, they
/// take the whole pool, and a device's CONNECT (its certificate check reads
/// the store) and the API wait behind them. SQLite's pool has 4, PostgreSQL's 11.
const SQLITE_WRITE_SLOTS: usize = 2;
const POSTGRES_WRITE_SLOTS: usize = 8;
/// Telemetry writers on PostgreSQL, each storing a group of batches in a
/// transaction of its own (on SQLite one, as it has one writer anyway).
const POSTGRES_TELEMETRY_WRITERS: usize = 4;
/// How long a publish waits for a write slot: as long as a write waits for
/// a locked store (ADR 0006), then it is not acknowledged.
const WRITE_SLOT_WAIT: Duration = Duration::from_secs(5);

/// Longest refusal reason kept: a parser's message quotes what the device
/// sent (`unknown variant `…``), and the reason goes into the PUBACK, the
/// log and the events table.
const MAX_REASON_BYTES: usize = 512;

/// Largest payload on a topic tetherd does not parse (logs, reported state).
const MAX_UNPARSED_PAYLOAD: usize = 256 * 1024;

/// The device-input settings (`[ingest]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestConfig {
    pub rate: RateLimits,
    /// How far ahead of the server's clock a sample may be dated.
    pub max_clock_ahead: Duration,
    /// Metric series one device may create: one device cannot crowd the
    /// fleet's (`GET /metrics/fleet` serves at most 2,000,000).
    pub max_series_per_device: u64,
    /// `lastSeen` is refreshed at most this often per device: often enough
    /// for an operator and for the monitor's silence check (a quarter of its
    /// interval), rare enough to cost nothing next to the messages.
    pub last_seen_resolution: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            rate: RateLimits::default(),
            max_clock_ahead: Duration::from_secs(300),
            max_series_per_device: 10_000,
            last_seen_resolution: Duration::from_secs(30),
        }
    }
}

/// The capabilities that take what devices send, besides the store.
pub struct Handlers {
    pub actions: Arc<ActionService>,
    pub specs: Specs,
    pub desired: DesiredState,
    pub secrets: crate::secrets::Secrets,
}

pub struct Ingest {
    store: Store,
    actions: Arc<ActionService>,
    /// Takes the agents' reported status; sends a device its spec when it
    /// is ready for it.
    specs: Specs,
    /// Takes what the agents report of their deployments.
    desired: DesiredState,
    /// Takes the sealing key each agent reports (ADR 0030).
    secrets: crate::secrets::Secrets,
    config: IngestConfig,
    observability: Arc<Observability>,
    /// Samples older than this are refused: retention would delete them.
    metrics_retention: Duration,
    presence: PresenceWriter,
    last_seen: LastSeenWriter,
    telemetry: Telemetry,
    write_slots: Arc<Semaphore>,
    devices: Mutex<HashMap<DeviceId, DeviceState>>,
}

/// What tetherd tracks of each device's input, in memory.
struct DeviceState {
    rate: DeviceRate,
    rejection_events: TokenBucket,
    samples: TokenBucket,
    /// Refusals not recorded since the last recorded one; that one says so.
    unrecorded_refusals: u64,
    last_seen_written: Option<Instant>,
    counters: Counters,
}

impl Ingest {
    pub fn new(
        store: Store,
        owner: SessionOwner,
        Handlers {
            actions,
            specs,
            desired,
            secrets,
        }: Handlers,
        config: IngestConfig,
        metrics_retention: Duration,
        observability: Arc<Observability>,
        bus: Bus,
    ) -> Self {
        let write_slots = Arc::new(Semaphore::new(if store.is_postgres() {
            POSTGRES_WRITE_SLOTS
        } else {
            SQLITE_WRITE_SLOTS
        }));
        let telemetry = Telemetry::new(
            store.clone(),
            observability.clone(),
            bus.clone(),
            Limits {
                max_ahead: config.max_clock_ahead,
                max_series: config.max_series_per_device,
            },
            write_slots.clone(),
            WRITE_SLOT_WAIT,
            if store.is_postgres() {
                POSTGRES_TELEMETRY_WRITERS
            } else {
                1
            },
        );
        Self {
            presence: PresenceWriter::new(store.clone(), owner, write_slots.clone(), bus),
            last_seen: LastSeenWriter::spawn(store.clone(), actions.clone(), write_slots.clone()),
            write_slots,
            telemetry,
            store,
            actions,
            specs,
            desired,
            secrets,
            config,
            observability,
            metrics_retention,
            devices: Mutex::default(),
        }
    }

    /// Marks the sessions this replica holds online again, after its lease
    /// lapsed and another replica took them over; returns how many.
    pub fn reclaim_sessions(&self) -> usize {
        self.presence.reclaim()
    }

    /// Closes the sessions here that their devices replaced with one on
    /// another replica, as that replica announces it, so no action goes
    /// into a session nobody reads (ADR 0009). A lost announcement leaves
    /// the stale session until its keepalive runs out. Runs until the bus
    /// is gone.
    pub async fn follow(self: Arc<Self>, mut subscription: Subscription) {
        while let Some(heard) = subscription.next().await {
            let Heard::Notice(notice) = heard else {
                continue;
            };
            if notice.channel != Channel::SessionMoved || notice.from_here {
                continue;
            }
            for key in &notice.keys {
                let Ok(device) = DeviceId::new(key.as_str()) else {
                    continue;
                };
                match self.presence.is_superseded(&device).await {
                    Ok(true) => self.actions.close_superseded(&device),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%device, error = %crate::error_chain(&error), "could not check whether a session here was replaced by one on another replica; it stays until its keepalive runs out");
                    }
                }
            }
        }
    }

    /// The device's input counters since tetherd started.
    pub fn counters(&self, device: &DeviceId) -> IngestCounters {
        self.lock()
            .get(device)
            .map(|state| state.counters.snapshot())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, DeviceState>> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_device<T>(&self, device: &DeviceId, f: impl FnOnce(&mut DeviceState) -> T) -> T {
        let now = Instant::now();
        let mut devices = self.lock();
        let state = devices
            .entry(device.clone())
            .or_insert_with(|| DeviceState {
                rate: DeviceRate::new(self.config.rate, now),
                rejection_events: TokenBucket::new(
                    REJECTION_EVENTS_PER_SECOND,
                    REJECTION_EVENT_BURST,
                    now,
                ),
                samples: TokenBucket::new(SAMPLES_PER_SECOND, SAMPLE_BURST, now),
                unrecorded_refusals: 0,
                last_seen_written: None,
                counters: Counters::default(),
            });
        f(state)
    }

    async fn handle(&self, inbound: &Inbound) -> Result<(), Refusal> {
        let now = Instant::now();
        match self.with_device(&inbound.device, |s| s.rate.admit(inbound.size, now)) {
            Admission::Admit => {}
            Admission::Slow => {
                let reason = format!(
                    "over the device's rate limit ({} messages/s, {} bytes/s); slow down",
                    self.config.rate.messages_per_second, self.config.rate.bytes_per_second
                );
                self.refused(inbound, Outcome::RateLimited, 429, &reason);
                return Err(Refusal::RateLimited(reason));
            }
            Admission::Disconnect => {
                let reason = format!(
                    "over the device's rate limit {} times in a row; disconnected",
                    self.config.rate.strikes_before_disconnect
                );
                tracing::warn!(device = %inbound.device, "disconnecting a device that keeps exceeding its rate limit");
                self.refused(inbound, Outcome::Disconnected, 429, &reason);
                return Err(Refusal::Disconnect(reason));
            }
        }
        let message = match &inbound.content {
            Content::Message(message) => message,
            Content::Malformed(reason) => {
                return Err(self.invalid(inbound, Invalid::Malformed(reason.clone())));
            }
            Content::NotConsumed => {
                return checks::payload(inbound.size, MAX_UNPARSED_PAYLOAD)
                    .map_err(|invalid| self.invalid(inbound, invalid));
            }
        };
        if let DeviceMessage::Event(_) = message {
            self.actions.count_bytes(&inbound.device, 0, inbound.size);
        }
        let window = ClockWindow {
            max_ahead: self.config.max_clock_ahead,
            max_behind: self.metrics_retention,
        };
        if let Err(invalid) = checks::check(message, inbound.size, Utc::now(), window) {
            if let (DeviceMessage::Event(event), Invalid::TooLarge(reason)) = (message, &invalid) {
                self.actions
                    .answer_refused(&inbound.device, &event.correlation_id, reason)
                    .await;
            }
            return Err(self.invalid(inbound, invalid));
        }
        if matches!(message, DeviceMessage::Metrics(_))
            && !self.with_device(&inbound.device, |s| s.samples.take(1, now))
        {
            let reason = format!(
                "more than {SAMPLES_PER_SECOND} metrics sample a second (burst {SAMPLE_BURST}); sample less often"
            );
            self.refused(inbound, Outcome::RateLimited, 429, &reason);
            return Err(Refusal::RateLimited(reason));
        }
        if let DeviceMessage::Status(status) = message {
            self.status(&inbound.device, status).await;
            self.with_device(&inbound.device, |s| s.counters.count(Outcome::Accepted));
            return Ok(());
        }
        if let DeviceMessage::Reported(reported) = message {
            match self.specs.check_reported(&inbound.device, reported).await {
                Ok(Ok(())) => {}
                Ok(Err(lie)) => return Err(self.invalid(inbound, Invalid::Malformed(lie))),
                Err(error) => {
                    tracing::warn!(device = %inbound.device, error = %crate::error_chain(&error), "could not read a device's spec to check its report; not acknowledged, the device sends it again");
                    self.with_device(&inbound.device, |s| s.counters.count(Outcome::NotDurable));
                    return Err(Refusal::Unavailable(
                        "the controller cannot store messages right now; send it again".into(),
                    ));
                }
            }
        }
        let applied = self.apply(&inbound.device, message, inbound.size).await;
        let outcome = match applied {
            Ok(outcome) => outcome,
            // A number the store cannot hold is the device's doing, not an
            // outage: refused for good, or the device would resend it forever.
            Err(NotApplied::Store(error)) if matches!(*error, StoreError::TooLarge { .. }) => {
                return Err(self.invalid(inbound, Invalid::Malformed(error.to_string())));
            }
            Err(error) => {
                let error = match error {
                    NotApplied::Store(error) => crate::error_chain(&*error).to_string(),
                    NotApplied::Other(error) => error,
                };
                tracing::warn!(device = %inbound.device, topic = inbound.topic, error, "could not store a device's message; not acknowledged, the device sends it again");
                self.with_device(&inbound.device, |s| s.counters.count(Outcome::NotDurable));
                return Err(Refusal::Unavailable(
                    "the controller cannot store messages right now; send it again".into(),
                ));
            }
        };
        self.with_device(&inbound.device, |s| s.counters.count(outcome));
        self.touch_last_seen(&inbound.device, false);
        Ok(())
    }

    /// Stores what `message` says, each write but an answer holding a
    /// write slot.
    async fn apply(
        &self,
        device: &DeviceId,
        message: &DeviceMessage,
        size: usize,
    ) -> Result<Outcome, NotApplied> {
        let store = |error| NotApplied::Store(Arc::new(error));
        match message {
            // Births are written by the device's session writer (`handle`).
            DeviceMessage::Status(_) => Ok(Outcome::Accepted),
            DeviceMessage::Event(event) => {
                // No write slot: answers wait for the answer writer instead,
                // which records all that wait with one statement on one
                // connection of its own: a slot each would cap its batches at
                // the slots' count.
                let answer = self.actions.handle_event(device, event.clone()).await;
                Ok(match answer.map_err(store)? {
                    Answer::Recorded => Outcome::Accepted,
                    Answer::AlreadyFinished | Answer::Unknown | Answer::NotYours => {
                        Outcome::Duplicate
                    }
                })
            }
            DeviceMessage::Metrics(metrics) => {
                let _slot = self.write_slot().await?;
                self.store
                    .insert_metrics(device, metrics)
                    .await
                    .map_err(store)?;
                let mut points = Vec::new();
                crate::metrics::flatten::host_metrics(metrics, &mut points);
                self.store
                    .insert_points(
                        device,
                        &points,
                        chrono::Utc::now(),
                        self.config.max_series_per_device,
                    )
                    .await
                    .map_err(store)?;
                Ok(Outcome::Accepted)
            }
            DeviceMessage::Reported(reported) => {
                let _slot = self.write_slot().await?;
                // Before the report is stored: a key the device view shows
                // is one secrets are sealed to.
                if let Some(key) = &reported.sealing_key {
                    self.secrets.record_key(device, key).await.map_err(store)?;
                }
                self.specs
                    .record_reported(device, reported)
                    .await
                    .map_err(store)?;
                crate::provisioning::refresh_identity(&self.store, device, &reported.facts)
                    .await
                    .map_err(store)?;
                self.desired
                    .record_reports(device, &reported.deployments)
                    .await
                    .map_err(store)?;
                Ok(Outcome::Accepted)
            }
            // Its writer takes the slot, for a group of devices' batches.
            DeviceMessage::Telemetry(batch) => {
                match self.telemetry.ingest(device, batch.clone(), size).await {
                    Ok(Stored::New { .. }) => Ok(Outcome::Accepted),
                    Ok(Stored::Duplicate) => Ok(Outcome::Duplicate),
                    Err(TelemetryError::Store(error)) => Err(NotApplied::Store(error)),
                    Err(error) => Err(NotApplied::Other(error.to_string())),
                }
            }
        }
    }

    /// One of the device writes' slots, waited for at most [`WRITE_SLOT_WAIT`].
    async fn write_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, NotApplied> {
        match tokio::time::timeout(WRITE_SLOT_WAIT, self.write_slots.acquire()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(NotApplied::Other(format!(
                "every store write slot stayed busy for {} s",
                WRITE_SLOT_WAIT.as_secs()
            ))),
        }
    }

    /// A birth adds what the operator sees of the agent, written after its
    /// session's start by the device's session writer (see `presence`);
    /// presence itself follows the MQTT session, so a death only goes to
    /// the log.
    async fn status(&self, device: &DeviceId, status: &DeviceStatus) {
        match status.state {
            Presence::Online => self.presence.birth(device, status.clone()).await,
            Presence::Offline => {
                tracing::debug!(%device, boot_id = status.boot_id, seq = status.seq, "device announced its end");
            }
        }
    }

    /// Presence changes write `lastSeen` themselves; other messages refresh
    /// it, throttled, without holding up the acknowledgement: it is not what
    /// the device asked to store, and a failure only leaves it older. The
    /// device's action bytes counted since go with it, and at the session's
    /// `end` too, so none wait for a session that may never come back.
    fn touch_last_seen(&self, device: &DeviceId, end: bool) {
        let now = Instant::now();
        let due = self.with_device(device, |s| match s.last_seen_written {
            Some(at) if now.duration_since(at) < self.config.last_seen_resolution && !end => false,
            _ => {
                s.last_seen_written = Some(now);
                true
            }
        });
        if !due {
            return;
        }
        self.last_seen.seen(device.clone(), end);
    }

    fn invalid(&self, inbound: &Inbound, invalid: Invalid) -> Refusal {
        let outcome = match invalid {
            Invalid::Malformed(_) => Outcome::Malformed,
            Invalid::TooLarge(_) => Outcome::TooLarge,
            Invalid::Clock(_) => Outcome::Clock,
        };
        let reason = bounded(invalid.to_string());
        self.refused(inbound, outcome, invalid.status_code(), &reason);
        Refusal::Invalid(reason)
    }

    /// Counts a refusal and records an event the operator sees, unless the
    /// device has caused too many lately; those are counted and the next
    /// recorded event says how many were left out.
    fn refused(&self, inbound: &Inbound, outcome: Outcome, status_code: u16, reason: &str) {
        let device = &inbound.device;
        let now = Instant::now();
        let suppressed = self.with_device(device, |s| {
            s.counters.count(outcome);
            if s.rejection_events.take(1, now) {
                Some(std::mem::take(&mut s.unrecorded_refusals))
            } else {
                s.unrecorded_refusals += 1;
                s.counters.event_suppressed();
                None
            }
        });
        // The log is throttled like the events, so a hostile device cannot
        // fill the disk through it either.
        let Some(suppressed) = suppressed else {
            tracing::debug!(%device, topic = inbound.topic, reason, "refused a device's message");
            return;
        };
        tracing::info!(%device, topic = inbound.topic, reason, suppressed, "refused a device's message");
        let mut message = format!("refused a publish on {}: {reason}", inbound.topic);
        if suppressed > 0 {
            message.push_str(&format!(" ({suppressed} earlier refusals not recorded)"));
        }
        let record = EventRecord {
            id: uuid::Uuid::now_v7().to_string(),
            device: device.clone(),
            correlation_id: None,
            event: "message-rejected".into(),
            status_code,
            status_message: message,
            response: serde_json::Value::Null,
            received_at: Utc::now(),
        };
        // The device's refusal does not wait for this write.
        let store = self.store.clone();
        let write_slots = self.write_slots.clone();
        tokio::spawn(async move {
            let Ok(_slot) = write_slots.acquire().await else {
                return;
            };
            if let Err(error) = store.insert_event(&record).await {
                tracing::warn!(device = %record.device, error = %crate::error_chain(&error), "could not record a rejection event");
            }
        });
    }
}

/// Why a message was not stored.
enum NotApplied {
    Store(Arc<StoreError>),
    Other(String),
}

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary.
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

impl DeviceInbox for Ingest {
    fn session(&self, change: SessionChange) {
        match change {
            SessionChange::Connected(device) => {
                self.with_device(&device, |s| s.last_seen_written = None);
                self.presence.set(device, Presence::Online);
            }
            SessionChange::Disconnected(device) => {
                self.actions.device_gone(&device);
                self.touch_last_seen(&device, true);
                self.presence.set(device, Presence::Offline);
            }
            SessionChange::SubscribedToActions(device) => {
                // Each subscription re-sends the device's open actions; it
                // counts against the device's rate like a publish, so
                // subscribing in a loop cannot make tetherd work for nothing.
                let now = Instant::now();
                if self.with_device(&device, |s| s.rate.admit(0, now)) != Admission::Admit {
                    tracing::debug!(%device, "not redelivering actions to a device over its rate");
                    return;
                }
                let actions = self.actions.clone();
                let specs = self.specs.clone();
                tokio::spawn(async move {
                    specs.send(&device).await;
                    actions.device_ready(&device).await;
                });
            }
        }
    }

    fn publish(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), Refusal>> {
        Box::pin(async move {
            let arrived = Instant::now();
            let handled = self.handle(&inbound).await;
            if handled.is_ok() {
                self.observability.ingested(arrived.elapsed());
            }
            handled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ActionsConfig;
    use crate::device_link::{DeviceLink, LinkError};
    use crate::sealing::Sealer;
    use crate::store::NewAction;
    use tether_proto::metrics::HostMetrics;
    use tether_proto::{ActionEvent, ActionState, Catalogue};

    /// A link with no device connected.
    struct NoDevices;

    impl DeviceLink for NoDevices {
        fn publish_action<'a>(
            &'a self,
            device: &'a DeviceId,
            _request: &'a tether_proto::ActionRequest,
        ) -> BoxFuture<'a, Result<usize, LinkError>> {
            Box::pin(async move { Err(LinkError::NotConnected(device.clone())) })
        }

        fn publish_message<'a>(
            &'a self,
            device: &'a DeviceId,
            _message: crate::device_link::ServerMessage<'a>,
        ) -> BoxFuture<'a, Result<(), LinkError>> {
            Box::pin(async move { Err(LinkError::NotConnected(device.clone())) })
        }

        fn is_connected(&self, _device: &DeviceId) -> bool {
            false
        }

        fn disconnect(&self, _device: &DeviceId) {}
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        ingest: Ingest,
        device: DeviceId,
    }

    impl Fixture {
        /// An open `get-node-ip` for the fixture's device, due in a minute.
        async fn open_action(&self, correlation_id: &str) {
            let now = Utc::now();
            self.store
                .insert_action(&NewAction {
                    correlation_id: correlation_id.into(),
                    device: self.device.clone(),
                    action: "get-node-ip".into(),
                    input: serde_json::json!({}),
                    sealed_input: String::new(),
                    created_at: now,
                    expires_at: now + chrono::Duration::minutes(1),
                    timeout_seconds: 60,
                })
                .await
                .expect("action");
        }
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::connect("sqlite::memory:").await.expect("store");
        fixture_with(dir, store).await
    }

    async fn fixture_with(dir: tempfile::TempDir, store: Store) -> Fixture {
        let device = DeviceId::new("edge-1").expect("valid name");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("device");
        let actions = Arc::new(ActionService::new(
            store.clone(),
            Arc::new(NoDevices),
            Arc::new(Catalogue::builtin()),
            Arc::new(Sealer::load_or_create(dir.path()).expect("sealer")),
            ActionsConfig::default(),
            Arc::default(),
            crate::cluster::bus::Bus::in_process(),
        ));
        let specs = Specs::new(
            store.clone(),
            Arc::new(NoDevices),
            crate::cluster::bus::Bus::in_process(),
        );
        let ingest = Ingest::new(
            store.clone(),
            SessionOwner::Replica(
                crate::cluster::ReplicaId::load_or_create(dir.path()).expect("replica id"),
            ),
            Handlers {
                actions,
                specs: specs.clone(),
                desired: crate::desired::DesiredState::new(
                    store.clone(),
                    specs.clone(),
                    crate::releases::Releases::new(
                        store.clone(),
                        Arc::new(crate::releases::ReleaseKeys::generate()),
                        Default::default(),
                        dir.path(),
                    ),
                ),
                secrets: crate::secrets::Secrets::new(store.clone(), specs),
            },
            IngestConfig::default(),
            Duration::from_secs(30 * 86_400),
            Arc::default(),
            crate::cluster::bus::Bus::in_process(),
        );
        Fixture {
            _dir: dir,
            store,
            ingest,
            device,
        }
    }

    fn inbound(device: &DeviceId, kind: &str, content: Content) -> Inbound {
        Inbound {
            device: device.clone(),
            topic: format!("tether/v1/devices/{device}/{kind}"),
            size: 100,
            content,
        }
    }

    async fn rejections(store: &Store, device: &DeviceId) -> usize {
        let events = store.list_events(device, 1000).await.expect("events");
        events
            .iter()
            .filter(|e| e.event == "message-rejected")
            .count()
    }

    #[tokio::test]
    async fn refusals_are_recorded_up_to_a_burst_and_the_rest_counted() {
        let fx = fixture().await;
        for _ in 0..25 {
            let refused = fx
                .ingest
                .publish(inbound(
                    &fx.device,
                    "events",
                    Content::Malformed("malformed events payload".into()),
                ))
                .await;
            assert!(matches!(refused, Err(Refusal::Invalid(_))), "{refused:?}");
        }
        // The event writes do not hold up the refusals; wait for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while rejections(&fx.store, &fx.device).await < REJECTION_EVENT_BURST as usize
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            rejections(&fx.store, &fx.device).await,
            REJECTION_EVENT_BURST as usize
        );
        let counters = fx.ingest.counters(&fx.device);
        assert_eq!(counters.rejected_malformed, 25);
        assert_eq!(counters.rejection_events_suppressed, 15);
    }

    #[tokio::test]
    async fn a_number_the_store_cannot_hold_is_refused_not_taken_for_an_outage() {
        let fx = fixture().await;
        let sample = HostMetrics {
            sampled_at: Utc::now(),
            cpu_percent: 1.0,
            memory_used_bytes: u64::MAX,
            memory_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            network_rx_bytes: 5,
            network_tx_bytes: 6,
        };
        let refused = fx
            .ingest
            .publish(inbound(
                &fx.device,
                "metrics",
                Content::Message(DeviceMessage::Metrics(sample)),
            ))
            .await;
        assert!(
            matches!(refused, Err(Refusal::Invalid(ref r)) if r.contains("memory_used_bytes")),
            "{refused:?}"
        );
        let counters = fx.ingest.counters(&fx.device);
        assert_eq!(counters.rejected_malformed, 1);
        assert_eq!(counters.not_acknowledged_store_unavailable, 0);
    }

    #[tokio::test]
    async fn a_device_stores_no_more_samples_than_one_a_second_after_a_burst() {
        let fx = fixture().await;
        let start = Utc::now() - chrono::Duration::hours(1);
        let mut refused = 0;
        for i in 0..SAMPLE_BURST + 40 {
            let sample = HostMetrics {
                sampled_at: start + chrono::Duration::milliseconds(i as i64),
                cpu_percent: 1.0,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                disk_used_bytes: 3,
                disk_total_bytes: 4,
                network_rx_bytes: 5,
                network_tx_bytes: 6,
            };
            let result = fx
                .ingest
                .publish(inbound(
                    &fx.device,
                    "metrics",
                    Content::Message(DeviceMessage::Metrics(sample)),
                ))
                .await;
            if let Err(refusal) = result {
                assert!(
                    matches!(refusal, Refusal::RateLimited(ref r) if r.contains("metrics sample")),
                    "{refusal:?}"
                );
                refused += 1;
            }
        }
        // The run takes well under the 40 s that would refill 40 tokens.
        assert!(refused >= 30, "only {refused} samples refused");
        let stored = fx
            .store
            .list_metrics(&fx.device, 1000)
            .await
            .expect("metrics")
            .len();
        assert_eq!(stored as u64, SAMPLE_BURST + 40 - refused);
        assert_eq!(fx.ingest.counters(&fx.device).rate_limited, refused);
    }

    #[tokio::test]
    async fn a_refusal_quoting_what_the_device_sent_is_kept_short() {
        let fx = fixture().await;
        // What serde_json says of `{"state":"éééé…"}`: it quotes the value.
        let quoted = format!(
            "malformed status payload: unknown variant `{}`, expected `online` or `offline`",
            "é".repeat(512 * 1024)
        );
        let refused = fx
            .ingest
            .publish(inbound(&fx.device, "status", Content::Malformed(quoted)))
            .await;
        let Err(Refusal::Invalid(reason)) = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        assert!(reason.starts_with("malformed status payload"), "{reason}");
        assert!(
            reason.len() <= MAX_REASON_BYTES + '…'.len_utf8(),
            "{}",
            reason.len()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while rejections(&fx.store, &fx.device).await == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let events = fx.store.list_events(&fx.device, 10).await.expect("events");
        let recorded = events
            .iter()
            .find(|e| e.event == "message-rejected")
            .expect("a rejection event");
        assert!(
            recorded.status_message.len() < 1024,
            "{} bytes recorded",
            recorded.status_message.len()
        );
    }

    fn sample_now() -> HostMetrics {
        HostMetrics {
            sampled_at: Utc::now(),
            cpu_percent: 1.0,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_used_bytes: 3,
            disk_total_bytes: 4,
            network_rx_bytes: 5,
            network_tx_bytes: 6,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn devices_waiting_for_a_locked_store_leave_connections_for_connects_and_the_api() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("tether.db");
        let store = Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("store");
        let fx = Arc::new(fixture_with(dir, store).await);
        let mut devices = Vec::new();
        for n in 0..6 {
            let device = DeviceId::new(format!("busy-{n}")).expect("valid name");
            fx.store
                .create_device(&device, &Default::default(), Utc::now())
                .await
                .expect("device");
            devices.push(device);
        }
        // Another process holds the write lock, as in issue 11.
        let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("second connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut lock)
            .await
            .expect("write lock");
        let publishes: Vec<_> = devices
            .iter()
            .map(|device| {
                let fx = fx.clone();
                let device = device.clone();
                tokio::spawn(async move {
                    fx.ingest
                        .publish(inbound(
                            &device,
                            "metrics",
                            Content::Message(DeviceMessage::Metrics(sample_now())),
                        ))
                        .await
                })
            })
            .collect();
        // Not a synchronisation: it only gives the writers time to take
        // connections, which without a bound is all of them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A device's CONNECT reads its certificate like this; WAL readers
        // are not blocked by the write lock, only by a pool with no
        // connection left. The writers wait 5 s for the lock.
        let started = Instant::now();
        fx.store
            .certificate_serials(&fx.device)
            .await
            .expect("read while the writers wait");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(2),
            "a read waited {waited:?} behind the devices' writes"
        );
        for publish in publishes {
            let result = publish.await.expect("publish task");
            assert!(matches!(result, Err(Refusal::Unavailable(_))), "{result:?}");
        }
        sqlx::query("ROLLBACK")
            .execute(&mut lock)
            .await
            .expect("release");
    }

    #[tokio::test]
    async fn an_answer_for_a_finished_action_is_acknowledged_dropped_and_counted() {
        let fx = fixture().await;
        fx.open_action("c-1").await;
        let answer = |message: &str| {
            inbound(
                &fx.device,
                "events",
                Content::Message(DeviceMessage::Event(ActionEvent {
                    correlation_id: "c-1".into(),
                    event: "get-node-ip".into(),
                    status_code: 200,
                    status_message: message.into(),
                    response: serde_json::json!({}),
                })),
            )
        };
        fx.ingest.publish(answer("first")).await.expect("stored");
        fx.ingest
            .publish(answer("again"))
            .await
            .expect("acknowledged");
        let action = fx
            .store
            .get_action("c-1")
            .await
            .expect("read")
            .expect("action");
        assert_eq!(action.state, ActionState::Succeeded);
        assert_eq!(action.status_message.as_deref(), Some("first"));
        let answers = fx.store.list_events(&fx.device, 100).await.expect("events");
        assert_eq!(
            answers
                .iter()
                .filter(|e| e.correlation_id.is_some())
                .count(),
            1
        );
        let counters = fx.ingest.counters(&fx.device);
        assert_eq!((counters.accepted, counters.duplicates_dropped), (1, 1));
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_and_fails_its_action_at_once() {
        let fx = fixture().await;
        fx.open_action("c-2").await;
        let long = "m".repeat(ActionEvent::MAX_STATUS_MESSAGE_BYTES + 1);
        let refused = fx
            .ingest
            .publish(inbound(
                &fx.device,
                "events",
                Content::Message(DeviceMessage::Event(ActionEvent {
                    correlation_id: "c-2".into(),
                    event: "get-node-ip".into(),
                    status_code: 200,
                    status_message: long,
                    response: serde_json::json!({}),
                })),
            ))
            .await;
        assert!(
            matches!(refused, Err(Refusal::Invalid(ref r)) if r.contains("statusMessage")),
            "{refused:?}"
        );
        let action = fx
            .store
            .get_action("c-2")
            .await
            .expect("read")
            .expect("action");
        assert_eq!(action.state, ActionState::Failed);
        assert!(
            action
                .status_message
                .as_deref()
                .is_some_and(|m| m.contains("answer was refused") && m.contains("statusMessage")),
            "{action:?}"
        );
        assert_eq!(fx.ingest.counters(&fx.device).rejected_too_large, 1);
    }
}
