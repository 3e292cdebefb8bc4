//! The notification bus between replicas.
//!
//! A replica commits a state change, then announces it here on a channel
//! named for what changed (a device's outbox, an action's end, a session to
//! close), with the keys it touched. Every replica hears every announcement,
//! its own included, and the one holding the device session or the waiting
//! client acts on it by reading the database. Announcements can be lost (a
//! dropped connection), so subscribers are told "you may have missed some"
//! after a reconnect and resync from the database, and each use keeps a
//! periodic safety net. See `docs/adr/0010-crossing-replicas-with-listen-notify.md`.
//!
//! On PostgreSQL the bus is `NOTIFY` (through the store's pool) and one
//! `LISTEN` connection per process; on SQLite, which one process uses, it is
//! a broadcast channel in memory, with the same interface.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{broadcast, mpsc};

use crate::observability::Observability;
use crate::store::{Announcement, Store};

/// PostgreSQL refuses `NOTIFY` payloads of 8000 bytes or more; stay clear.
pub const MAX_PAYLOAD_BYTES: usize = 7_900;

/// How many heard announcements a slow subscriber may fall behind before it
/// is told it missed some (and resyncs) instead.
const SUBSCRIBER_BACKLOG: usize = 4096;

/// Longest wait between attempts to listen again after the connection dropped.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(10);

/// A failed `NOTIFY` is tried again this often before it is given up (the
/// periodic safety nets then cover it).
const NOTIFY_ATTEMPTS: u32 = 10;

/// What changed, as a channel every replica listens on. The keys of an
/// announcement say which devices or actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// These devices have actions to deliver: the replica holding a ready
    /// session for one delivers them. Keys: device names.
    DeviceOutbox,
    /// These actions reached a terminal state: replicas with a client
    /// waiting for one re-read it. Keys: correlation ids.
    ActionFinished,
    /// Close these devices' sessions (deleted, revoked, re-enrolled): the
    /// replica holding one closes it. Keys: device names.
    DisconnectDevice,
    /// These devices' sessions are now held by the announcing replica: a
    /// replica still holding an older session of one (half-open, its
    /// keepalive not yet run out) closes it, so no action is delivered into
    /// it. Keys: device names.
    SessionMoved,
    /// These devices' specs changed: the replica holding the session of one
    /// sends it the new spec. Keys: device names.
    DeviceSpec,
    /// These devices' log lines were stored: replicas with a live follower
    /// of one read the new lines. Keys: device names.
    LogsStored,
    /// The monitor asks these devices for a rebirth: the replica holding
    /// the session of one publishes the request. Nothing is stored; a lost
    /// notice is a request the monitor makes again. Keys: device names.
    DeviceRebirth,
    /// The monitor asks these devices to reload their spec: the replica
    /// holding the session of one sends the spec, then the request. Keys:
    /// device names.
    DeviceReload,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::DeviceOutbox,
        Channel::ActionFinished,
        Channel::DisconnectDevice,
        Channel::SessionMoved,
        Channel::DeviceSpec,
        Channel::LogsStored,
        Channel::DeviceRebirth,
        Channel::DeviceReload,
    ];

    /// The PostgreSQL channel name (an identifier: lowercase, under 64 bytes).
    pub fn name(self) -> &'static str {
        match self {
            Channel::DeviceOutbox => "tether_device_outbox",
            Channel::ActionFinished => "tether_action_finished",
            Channel::DisconnectDevice => "tether_disconnect_device",
            Channel::SessionMoved => "tether_session_moved",
            Channel::DeviceSpec => "tether_device_spec",
            Channel::LogsStored => "tether_logs_stored",
            Channel::DeviceRebirth => "tether_device_rebirth",
            Channel::DeviceReload => "tether_device_reload",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|channel| channel.name() == name)
    }
}

/// One announcement as heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub channel: Channel,
    pub keys: Vec<String>,
    pub published_at: DateTime<Utc>,
    /// Announced by this process: it has acted on the change itself already.
    pub from_here: bool,
}

/// What a subscriber hears.
#[derive(Debug, Clone)]
pub enum Heard {
    Notice(Arc<Notice>),
    /// Announcements may have been lost (the LISTEN connection dropped, or
    /// this subscriber fell behind): resync from the database.
    MayHaveMissed,
}

/// One subscriber's view of the bus.
pub struct Subscription(broadcast::Receiver<Heard>);

impl Subscription {
    /// The next announcement; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Heard> {
        match self.0.recv().await {
            Ok(heard) => Some(heard),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the notification bus; resyncing from the database"
                );
                Some(Heard::MayHaveMissed)
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("could not read the database URL for the notification listener")]
    Url(#[source] sqlx::Error),
    #[error(
        "could not LISTEN for notifications from the other replicas on PostgreSQL; is the database reachable?"
    )]
    Listen(#[source] sqlx::Error),
}

#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells this process's announcements from the other replicas'.
    origin: String,
    subscribers: broadcast::Sender<Heard>,
    /// `None`: in memory; `Some`: announcements queued for `NOTIFY`.
    outbox: Option<mpsc::UnboundedSender<Queued>>,
    stats: Stats,
    /// Where Prometheus reads the lag (`stats` keeps its own for the tests).
    observability: Arc<Observability>,
}

struct Queued {
    channel: Channel,
    key: String,
    at: DateTime<Utc>,
}

impl Bus {
    /// The bus of a single process (SQLite): announcements reach only this
    /// process's subscribers, at once.
    pub fn in_process() -> Self {
        Self::new(None, Arc::default())
    }

    /// The bus for `store`: on PostgreSQL, LISTENs on every channel (on its
    /// own connection, named `application_name` so operators and tests can
    /// find it in `pg_stat_activity`) before it returns, so nothing
    /// announced after that is missed; on SQLite, [`Bus::in_process`].
    pub async fn start(
        store: &Store,
        database_url: &str,
        application_name: &str,
        observability: Arc<Observability>,
    ) -> Result<Self, BusError> {
        if !store.is_postgres() {
            return Ok(Self::new(None, observability));
        }
        let options = PgConnectOptions::from_str(database_url)
            .map_err(BusError::Url)?
            .application_name(application_name);
        let listener = listen(&options).await.map_err(BusError::Listen)?;
        // Unbounded: only committed changes are queued, and while the
        // database is down (the one reason sending stalls) nothing commits.
        let (queue, queued) = mpsc::unbounded_channel();
        let bus = Self::new(Some(queue), observability);
        tokio::spawn(hear_forever(listener, options, bus.inner.clone()));
        tokio::spawn(notify_forever(queued, store.clone(), bus.inner.clone()));
        Ok(bus)
    }

    fn new(
        outbox: Option<mpsc::UnboundedSender<Queued>>,
        observability: Arc<Observability>,
    ) -> Self {
        let (subscribers, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Self {
            inner: Arc::new(Inner {
                origin: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
                subscribers,
                outbox,
                stats: Stats::default(),
                observability,
            }),
        }
    }

    /// Announces a committed change to every replica. Never waits: on
    /// PostgreSQL the keys are queued and sent by one task, which puts
    /// whatever queued meanwhile into as few `NOTIFY`s as fit.
    pub fn publish<K: Into<String>>(&self, channel: Channel, keys: impl IntoIterator<Item = K>) {
        let at = Utc::now();
        match &self.inner.outbox {
            Some(queue) => {
                for key in keys {
                    // The sending task lives as long as the process.
                    let _ = queue.send(Queued {
                        channel,
                        key: key.into(),
                        at,
                    });
                }
            }
            None => {
                let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
                if keys.is_empty() {
                    return;
                }
                self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
                self.inner.heard(Notice {
                    channel,
                    keys,
                    published_at: at,
                    from_here: true,
                });
            }
        }
    }

    /// On PostgreSQL, the announcement of `key` on `channel` for the store
    /// to send with the statement that commits the change
    /// (`Store::record_answer`, …): PostgreSQL sends it at commit, so it
    /// costs no round trip and no wait in this bus's queue, and a change
    /// that does not commit is never announced. `None` on the in-process
    /// bus: [`Bus::publish`] after the commit instead.
    pub fn with_commit(&self, channel: Channel, key: &str) -> Option<Announcement> {
        self.inner.outbox.as_ref()?;
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        let payload = encode(&self.inner.origin, to_micros(Utc::now()), &[key.to_owned()])
            .pop()
            .unwrap_or_default();
        Some(Announcement {
            channel: channel.name(),
            payload,
        })
    }

    /// Subscribes to every channel. Subscribe before reading the state an
    /// announcement would change, so a change in between is not missed.
    pub fn subscribe(&self) -> Subscription {
        Subscription(self.inner.subscribers.subscribe())
    }

    pub fn stats(&self) -> BusStats {
        self.inner.stats.snapshot()
    }
}

impl Inner {
    fn heard(&self, notice: Notice) {
        let lag = (Utc::now() - notice.published_at)
            .to_std()
            .unwrap_or_default();
        self.stats.record_lag(lag);
        self.observability.notification_received(lag);
        tracing::trace!(
            channel = notice.channel.name(),
            keys = notice.keys.len(),
            lag_us = lag.as_micros() as u64,
            "heard a notification"
        );
        // No subscriber is fine (e.g. before they are started).
        let _ = self.subscribers.send(Heard::Notice(Arc::new(notice)));
    }

    fn may_have_missed(&self) {
        self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        let _ = self.subscribers.send(Heard::MayHaveMissed);
    }
}

/// Opens the LISTEN connection and listens on every channel.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, sqlx::Error> {
    // One connection, replaced after a drop rather than reused: a pool
    // would hand back the broken one.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all(Channel::ALL.into_iter().map(Channel::name))
        .await?;
    Ok(listener)
}

async fn hear_forever(mut listener: PgListener, options: PgConnectOptions, inner: Arc<Inner>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let Some(channel) = Channel::from_name(notification.channel()) else {
                    continue;
                };
                match decode(notification.payload()) {
                    Ok(payload) => inner.heard(Notice {
                        channel,
                        from_here: payload.from == inner.origin,
                        keys: payload.keys,
                        published_at: from_micros(payload.at),
                    }),
                    Err(error) => {
                        tracing::warn!(channel = channel.name(), %error, "ignored a notification this version cannot read")
                    }
                }
            }
            // sqlx listens again on a new connection before it says so.
            Ok(None) => {
                tracing::warn!(
                    "the notification connection to PostgreSQL dropped and was opened again; resyncing from the database"
                );
                inner.may_have_missed();
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "lost the notification connection to PostgreSQL; listening again");
                listener = listen_again(&options).await;
                tracing::info!("listening for notifications again; resyncing from the database");
                inner.may_have_missed();
            }
        }
    }
}

/// Listens again, retrying with exponential backoff and jitter until it works.
async fn listen_again(options: &PgConnectOptions) -> PgListener {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(options).await {
            Ok(listener) => return listener,
            Err(error) => {
                let wait = backoff.mul_f64(rand::random_range(0.5..1.0));
                tracing::warn!(error = %crate::error_chain(&error), retry_in_ms = wait.as_millis() as u64, "could not listen for notifications");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            }
        }
    }
}

/// Sends queued announcements, batching what queued meanwhile: idle, each
/// goes at once; under load (a fleet-wide job) many keys share a `NOTIFY`.
async fn notify_forever(
    mut queued: mpsc::UnboundedReceiver<Queued>,
    store: Store,
    inner: Arc<Inner>,
) {
    while let Some(first) = queued.recv().await {
        let mut batches: BTreeMap<Channel, (DateTime<Utc>, Vec<String>)> = BTreeMap::new();
        let mut next = Some(first);
        while let Some(Queued { channel, key, at }) = next {
            let (earliest, keys) = batches.entry(channel).or_insert_with(|| (at, Vec::new()));
            *earliest = (*earliest).min(at);
            keys.push(key);
            next = queued.try_recv().ok();
        }
        for (channel, (at, keys)) in batches {
            for payload in encode(&inner.origin, to_micros(at), &keys) {
                send(&store, &inner, channel, &payload).await;
            }
        }
    }
}

async fn send(store: &Store, inner: &Inner, channel: Channel, payload: &str) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=NOTIFY_ATTEMPTS {
        match store.notify(channel.name(), payload).await {
            Ok(()) => {
                inner.stats.published.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) if attempt == NOTIFY_ATTEMPTS => {
                inner.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(channel = channel.name(), error = %crate::error_chain(&error), "could not announce a change to the other replicas; their periodic sweeps will find it");
            }
            Err(error) => {
                tracing::warn!(channel = channel.name(), attempt, error = %crate::error_chain(&error), "could not announce a change to the other replicas; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// An announcement on the wire: when it was published (µs since the epoch,
/// for the lag), by which process, and the keys.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Payload {
    at: i64,
    from: String,
    keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed notification payload: {0}")]
struct PayloadError(#[from] serde_json::Error);

/// The payloads announcing `keys`, each under [`MAX_PAYLOAD_BYTES`], keys in
/// order. A device name or correlation id is far smaller than the limit, so
/// every payload holds at least one.
fn encode(origin: &str, at_micros: i64, keys: &[String]) -> Vec<String> {
    let head = format!(
        "{{\"at\":{at_micros},\"from\":{},\"keys\":[",
        json_string(origin)
    );
    const TAIL: &str = "]}";
    let mut payloads = Vec::new();
    let mut current = head.clone();
    let mut empty = true;
    for key in keys {
        let key = json_string(key);
        let separator = usize::from(!empty);
        if !empty && current.len() + separator + key.len() + TAIL.len() > MAX_PAYLOAD_BYTES {
            current.push_str(TAIL);
            payloads.push(std::mem::replace(&mut current, head.clone()));
            empty = true;
        }
        if !empty {
            current.push(',');
        }
        current.push_str(&key);
        empty = false;
    }
    if !empty {
        current.push_str(TAIL);
        payloads.push(current);
    }
    payloads
}

fn json_string(text: &str) -> String {
    // Serialising a string cannot fail.
    serde_json::to_string(text).unwrap_or_default()
}

fn decode(payload: &str) -> Result<Payload, PayloadError> {
    Ok(serde_json::from_str(payload)?)
}

fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Upper bounds of the lag histogram's buckets.
const LAG_BUCKETS: [Duration; 14] = [
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
];

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    publish_failures: AtomicU64,
    resyncs: AtomicU64,
    /// Per bucket of `LAG_BUCKETS`, plus one for longer lags.
    lag_buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
    lag_max_micros: AtomicU64,
}

impl Stats {
    fn record_lag(&self, lag: Duration) {
        let bucket = LAG_BUCKETS
            .iter()
            .position(|bound| lag <= *bound)
            .unwrap_or(LAG_BUCKETS.len());
        self.lag_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.lag_sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.lag_max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BusStats {
        let mut cumulative = 0;
        let buckets = LAG_BUCKETS
            .iter()
            .zip(&self.lag_buckets)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        BusStats {
            published: self.published.load(Ordering::Relaxed),
            publish_failures: self.publish_failures.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            lag: LagHistogram {
                count: self.lag_count.load(Ordering::Relaxed),
                sum: Duration::from_micros(self.lag_sum_micros.load(Ordering::Relaxed)),
                max: Duration::from_micros(self.lag_max_micros.load(Ordering::Relaxed)),
                buckets,
            },
        }
    }
}

/// The bus's counters since the process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusStats {
    /// Announcements sent (`NOTIFY`s; one may carry many keys), and those
    /// handed to the store to send at commit ([`Bus::with_commit`]).
    pub published: u64,
    /// Announcements given up after retries.
    pub publish_failures: u64,
    /// Times subscribers were told to resync (the LISTEN connection dropped).
    pub resyncs: u64,
    /// Time from publish (on any replica) to being heard here.
    pub lag: LagHistogram,
}

/// A cumulative histogram, as Prometheus keeps one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagHistogram {
    pub count: u64,
    pub sum: Duration,
    pub max: Duration,
    /// (upper bound, how many lags were at most that), by bound.
    pub buckets: Vec<(Duration, u64)>,
}

impl LagHistogram {
    /// The smallest bucket bound at or under which a `q` share of the lags
    /// fall (`None` without lags, or past the largest bound).
    pub fn quantile_bound(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let wanted = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, count)| *count >= wanted)
            .map(|(bound, _)| *bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize, len: usize) -> Vec<String> {
        (0..count).map(|i| format!("{i:0>len$}")).collect()
    }

    #[test]
    fn a_payload_reads_back_as_written() {
        let keys = vec!["edge-1".to_owned(), "quote \" and \\ and ü".to_owned()];
        let payloads = encode("origin", 1_733_100_000_123_456, &keys);
        assert_eq!(payloads.len(), 1);
        assert_eq!(
            decode(&payloads[0]).expect("decodes"),
            Payload {
                at: 1_733_100_000_123_456,
                from: "origin".to_owned(),
                keys,
            }
        );
    }

    #[test]
    fn many_keys_are_split_into_payloads_under_the_limit_in_order() {
        // A fleet-wide job over 10,000 devices with the longest names.
        let keys = names(10_000, tether_proto::DeviceId::MAX_LEN);
        let payloads = encode("origin", 1, &keys);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD_BYTES));
        // Batched, not one per key: about 120 names per NOTIFY.
        assert!(
            payloads.len() <= 10_000 / 100,
            "{} payloads",
            payloads.len()
        );
        let decoded: Vec<String> = payloads
            .iter()
            .flat_map(|p| decode(p).expect("decodes").keys)
            .collect();
        assert_eq!(decoded, keys);
    }

    #[test]
    fn payloads_fill_up_to_the_limit_exactly() {
        let head = encode("o", 7, &["x".to_owned()])[0].len() - "\"x\"".len();
        // Keys of 10 bytes quoted, 11 with a comma: fill one payload to the byte.
        let per_key = 11;
        let fits = (MAX_PAYLOAD_BYTES - head + 1) / per_key;
        let keys = names(fits, 8);
        assert_eq!(encode("o", 7, &keys).len(), 1);
        let keys = names(fits + 1, 8);
        assert_eq!(encode("o", 7, &keys).len(), 2);
    }

    #[test]
    fn nothing_to_announce_sends_nothing() {
        assert!(encode("o", 1, &[]).is_empty());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode("edge-1").is_err());
        assert!(decode("{\"at\":1}").is_err());
    }

    #[tokio::test]
    async fn the_in_process_bus_tells_its_subscribers_and_measures_lag() {
        let bus = Bus::in_process();
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        bus.publish(Channel::ActionFinished, ["a", "b"]);
        for subscription in [&mut first, &mut second] {
            let Some(Heard::Notice(notice)) = subscription.next().await else {
                panic!("expected a notice");
            };
            assert_eq!(notice.channel, Channel::ActionFinished);
            assert_eq!(notice.keys, ["a", "b"]);
            assert!(notice.from_here);
        }
        bus.publish(Channel::DeviceOutbox, Vec::<String>::new());
        let stats = bus.stats();
        assert_eq!(stats.published, 1, "an empty announcement is not sent");
        assert_eq!(stats.lag.count, 1);
        assert!(stats.lag.quantile_bound(0.99).is_some());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_to_resync() {
        let bus = Bus::in_process();
        let mut slow = bus.subscribe();
        for i in 0..=SUBSCRIBER_BACKLOG {
            bus.publish(Channel::DeviceOutbox, [i.to_string()]);
        }
        assert!(matches!(slow.next().await, Some(Heard::MayHaveMissed)));
    }

    #[test]
    fn the_lag_histogram_is_cumulative() {
        let stats = Stats::default();
        stats.record_lag(Duration::from_micros(100));
        stats.record_lag(Duration::from_millis(3));
        stats.record_lag(Duration::from_secs(60));
        let lag = stats.snapshot().lag;
        assert_eq!(lag.count, 3);
        assert_eq!(lag.max, Duration::from_secs(60));
        assert_eq!(lag.buckets[0], (Duration::from_micros(250), 1));
        assert_eq!(lag.quantile_bound(0.5), Some(Duration::from_millis(5)));
        assert_eq!(lag.quantile_bound(1.0), None, "past the largest bound");
    }

    #[test]
    fn channel_names_are_postgres_identifiers() {
        for channel in Channel::ALL {
            let name = channel.name();
            assert!(name.len() < 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(Channel::from_name(name), Some(channel));
        }
    }
}
