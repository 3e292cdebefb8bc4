//! One poller per replica, its changes fanned out to every follower.
//!
//! Each follower (a console tab) used to read the database itself once a
//! second: 60 followers at ~200 events/s took 72 % of a core (review M2).
//! Now the first follower starts a poller (one [`Window`], one read of the
//! events and of the alerts mark a second) and the last one to leave stops
//! it: nobody following reads nothing.
//!
//! The poller sends each read's changes as one `Arc`'d batch on a
//! `tokio::sync::broadcast` channel. Not a `watch`: that keeps only the
//! latest value, and every follower must get every change. The broadcast's
//! ring of [`FeedConfig::backlog`] batches is shared by all followers and
//! bounded, so a follower whose client stops reading holds back nobody and
//! keeps no memory of its own; once it falls further behind than the ring,
//! it is told it lagged and its stream ends ([`Ended::TooSlow`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Change, KEEPALIVE, POLL, READ_LIMIT, Window};
use crate::store::{AlertsMark, EventRecord, Store, StoreError};

/// What the poller reads: the store in tetherd, a fake in tests.
pub trait FleetReads: Clone + Send + Sync + 'static {
    /// Events after `(at, id)`, oldest first (`Store::list_events_after`).
    fn events_after(
        &self,
        at: DateTime<Utc>,
        id: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<EventRecord>, StoreError>> + Send;

    /// The alerts' newest id and counts (`Store::alerts_mark`).
    fn alerts_mark(&self) -> impl Future<Output = Result<AlertsMark, StoreError>> + Send;
}

impl FleetReads for Store {
    async fn events_after(
        &self,
        at: DateTime<Utc>,
        id: &str,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.list_events_after(at, id, limit).await
    }

    async fn alerts_mark(&self) -> Result<AlertsMark, StoreError> {
        Store::alerts_mark(self).await
    }
}

/// The feed's limits and pace.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Follows one user or API key may hold at once
    /// (`api.max_follows_per_user`): each holds a connection and a place
    /// in the fan-out.
    pub max_follows_per_user: u32,
    /// How often the poller reads.
    pub poll: Duration,
    /// A follower that was sent nothing for this long is sent a keepalive.
    pub keepalive: Duration,
    /// Batches a follower may fall behind before its stream ends: at one
    /// read a second, about a minute.
    pub backlog: usize,
}

impl FeedConfig {
    /// The pace tetherd runs at, with its configured per-user limit.
    pub fn new(max_follows_per_user: u32) -> Self {
        Self {
            max_follows_per_user,
            poll: POLL,
            keepalive: KEEPALIVE,
            backlog: 64,
        }
    }
}

/// Why a follow was refused.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(
        "{user} already follows the fleet's changes {limit} times at once, the most one user or API key may (api.max_follows_per_user); close a console tab or another follow first"
    )]
    TooMany { user: String, limit: u32 },
    #[error("could not read the fleet's changes")]
    Read(#[source] Arc<StoreError>),
    /// The poller ended without reading (it panicked); the next follow
    /// starts another.
    #[error("the fleet's poller stopped")]
    PollerStopped,
}

/// Why a follower's stream ended; it may follow again.
#[derive(Debug)]
pub enum Ended {
    /// It fell more than the backlog behind (its client read too slowly).
    TooSlow { missed: u64 },
    /// The poller's read failed.
    ReadFailed(Arc<StoreError>),
    /// The poller ended (it panicked).
    PollerStopped,
}

/// What the poller sends its followers.
#[derive(Debug, Clone)]
enum Polled {
    Changes(Arc<[Change]>),
    Failed(Arc<StoreError>),
}

/// How the poller's last read went; a follow waits for the first.
#[derive(Debug, Clone)]
enum Health {
    Starting,
    Reading,
    Failed(Arc<StoreError>),
}

/// The replica's followers and, while there are any, its one poller.
/// Cheap to clone: clones share both.
#[derive(Clone)]
pub struct Feed<R = Store> {
    reads: R,
    config: FeedConfig,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// Follows held, by user or API key: never zero.
    followers: HashMap<String, u32>,
    poller: Option<Poller>,
}

struct Poller {
    /// Never read: new followers resubscribe from it. The task holds the
    /// one sender, so followers hear when it ends.
    changes: broadcast::Receiver<Polled>,
    health: watch::Receiver<Health>,
    task: JoinHandle<()>,
}

/// Nothing holding the lock can panic halfway through a change, so a
/// poisoned lock holds consistent counts.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: FleetReads> Feed<R> {
    pub fn new(reads: R, config: FeedConfig) -> Self {
        Self {
            reads,
            config,
            shared: Arc::default(),
        }
    }

    /// Follows the fleet's changes from now on, as `user`. Starts the
    /// poller if nobody follows yet and waits for its first read; refused
    /// if that read, or the running poller's last one, failed, so the
    /// caller can say so before answering 200.
    pub async fn follow(&self, user: &str) -> Result<Follower, FollowError> {
        let since = Utc::now();
        let (changes, mut health, slot) = {
            let mut shared = lock(&self.shared);
            let held = shared.followers.get(user).copied().unwrap_or(0);
            if held >= self.config.max_follows_per_user {
                return Err(FollowError::TooMany {
                    user: user.to_owned(),
                    limit: self.config.max_follows_per_user,
                });
            }
            shared.followers.insert(user.to_owned(), held + 1);
            // From here on, dropping the slot gives the place back and
            // stops the poller if it was the last (it takes the lock: no
            // early return below while this block holds it).
            let slot = Slot {
                shared: self.shared.clone(),
                user: user.to_owned(),
            };
            // A poller that ended (it panicked) is replaced.
            if shared
                .poller
                .as_ref()
                .is_some_and(|poller| poller.task.is_finished())
            {
                shared.poller = None;
            }
            let poller = shared
                .poller
                .get_or_insert_with(|| Poller::start(self.reads.clone(), &self.config));
            (poller.changes.resubscribe(), poller.health.clone(), slot)
        };
        let health = health
            .wait_for(|health| !matches!(health, Health::Starting))
            .await
            .map(|health| health.clone());
        match health {
            Ok(Health::Failed(error)) => return Err(FollowError::Read(error)),
            Ok(_) => {}
            Err(_) => return Err(FollowError::PollerStopped),
        }
        Ok(Follower {
            changes,
            since,
            batch: None,
            keepalive: self.config.keepalive,
            quiet_since: Instant::now(),
            _slot: slot,
        })
    }

    /// Whether the poller runs (only while somebody follows).
    pub fn is_polling(&self) -> bool {
        lock(&self.shared).poller.is_some()
    }
}

impl Poller {
    fn start<R: FleetReads>(reads: R, config: &FeedConfig) -> Self {
        let (sender, changes) = broadcast::channel(config.backlog);
        let (health_tx, health) = watch::channel(Health::Starting);
        tracing::debug!("the first follower came; the fleet's poller starts");
        let task = tokio::spawn(poll(reads, sender, health_tx, config.poll));
        Self {
            changes,
            health,
            task,
        }
    }
}

/// A follow's place among its user's and the replica's followers.
struct Slot {
    shared: Arc<Mutex<Shared>>,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        if let Some(held) = shared.followers.get_mut(&self.user) {
            *held -= 1;
            if *held == 0 {
                shared.followers.remove(&self.user);
            }
        }
        if shared.followers.is_empty()
            && let Some(poller) = shared.poller.take()
        {
            poller.task.abort();
            tracing::debug!("the last follower left; the fleet's poller stops");
        }
    }
}

async fn poll<R: FleetReads>(
    reads: R,
    changes: broadcast::Sender<Polled>,
    health: watch::Sender<Health>,
    every: Duration,
) {
    let mut window = Window::starting(Utc::now());
    let mut alerts = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match read(&reads, &mut window, &mut alerts).await {
            Ok(batch) => {
                health.send_if_modified(|health| {
                    let was_reading = matches!(health, Health::Reading);
                    *health = Health::Reading;
                    !was_reading
                });
                if !batch.is_empty() {
                    // Fails only without receivers; the feed holds one.
                    let _ = changes.send(Polled::Changes(batch.into()));
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "could not read the fleet's changes; its followers' streams end");
                let error = Arc::new(error);
                health.send_replace(Health::Failed(error.clone()));
                let _ = changes.send(Polled::Failed(error));
            }
        }
    }
}

/// One read: the events not sent before, and the alerts if they changed
/// (the first read only notes them).
async fn read<R: FleetReads>(
    reads: &R,
    window: &mut Window,
    alerts: &mut Option<AlertsMark>,
) -> Result<Vec<Change>, StoreError> {
    let first = alerts.is_none();
    let (at, id) = window.read_from();
    let read = reads.events_after(at, id, READ_LIMIT).await?;
    let full = read.len() >= READ_LIMIT as usize;
    let mark = reads.alerts_mark().await?;
    let mut changes: Vec<Change> = window
        .take_new(read, full)
        .into_iter()
        .map(Change::Event)
        .collect();
    if alerts.replace(mark) != Some(mark) && !first {
        changes.push(Change::Alerts(mark));
    }
    Ok(changes)
}

/// One follow: the poller's changes from when it began, a keepalive when
/// there were none for a while. Dropping it gives its place back.
pub struct Follower {
    changes: broadcast::Receiver<Polled>,
    /// Events received before the follow began are not its to send.
    since: DateTime<Utc>,
    /// The batch being sent, and how much of it was.
    batch: Option<(Arc<[Change]>, usize)>,
    keepalive: Duration,
    quiet_since: Instant,
    _slot: Slot,
}

impl Follower {
    /// The next change, or why the stream ends (then it is over).
    pub async fn next(&mut self) -> Result<Change, Ended> {
        loop {
            if let Some(change) = self.next_of_batch() {
                self.quiet_since = Instant::now();
                return Ok(change);
            }
            let polled = tokio::select! {
                polled = self.changes.recv() => polled,
                () = tokio::time::sleep_until(self.quiet_since + self.keepalive) => {
                    self.quiet_since = Instant::now();
                    return Ok(Change::Keepalive);
                }
            };
            match polled {
                Ok(Polled::Changes(batch)) => self.batch = Some((batch, 0)),
                Ok(Polled::Failed(error)) => return Err(Ended::ReadFailed(error)),
                Err(RecvError::Lagged(missed)) => return Err(Ended::TooSlow { missed }),
                Err(RecvError::Closed) => return Err(Ended::PollerStopped),
            }
        }
    }

    fn next_of_batch(&mut self) -> Option<Change> {
        let (batch, sent) = self.batch.as_mut()?;
        while let Some(change) = batch.get(*sent) {
            *sent += 1;
            let ours = match change {
                Change::Event(event) => event.received_at >= self.since,
                Change::Alerts(_) | Change::Keepalive => true,
            };
            if ours {
                return Some(change.clone());
            }
        }
        self.batch = None;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    /// Events and alerts the test adds, reads counted, and a switch that
    /// makes every read fail as a stopped database does.
    #[derive(Clone, Default)]
    struct FakeFleet {
        events: Arc<Mutex<Vec<EventRecord>>>,
        alerts: Arc<Mutex<AlertsMark>>,
        reads: Arc<AtomicU32>,
        down: Arc<AtomicBool>,
    }

    impl FakeFleet {
        fn store(&self, id: &str) {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            events.push(EventRecord {
                id: id.to_owned(),
                device: tether_proto::DeviceId::new("edge-1").expect("a name"),
                correlation_id: None,
                event: "device-online".into(),
                status_code: 200,
                status_message: String::new(),
                response: serde_json::Value::Null,
                received_at: Utc::now(),
            });
        }

        fn reads(&self) -> u32 {
            self.reads.load(Ordering::SeqCst)
        }

        fn fail_if_down(&self) -> Result<(), StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Query {
                    context: "read the fleet's changes",
                    source: sqlx::Error::PoolTimedOut,
                });
            }
            Ok(())
        }
    }

    impl FleetReads for FakeFleet {
        async fn events_after(
            &self,
            at: DateTime<Utc>,
            id: &str,
            limit: u32,
        ) -> Result<Vec<EventRecord>, StoreError> {
            self.fail_if_down()?;
            let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(events
                .iter()
                .filter(|event| (event.received_at, event.id.as_str()) > (at, id))
                .take(limit as usize)
                .cloned()
                .collect())
        }

        async fn alerts_mark(&self) -> Result<AlertsMark, StoreError> {
            self.fail_if_down()?;
            Ok(*self.alerts.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    fn quick() -> FeedConfig {
        FeedConfig {
            max_follows_per_user: 3,
            poll: Duration::from_millis(10),
            keepalive: Duration::from_secs(60),
            backlog: 4,
        }
    }

    const DEADLINE: Duration = Duration::from_secs(5);

    async fn next_event(follower: &mut Follower) -> String {
        loop {
            let change = tokio::time::timeout(DEADLINE, follower.next())
                .await
                .expect("a change within the deadline")
                .expect("the stream goes on");
            if let Change::Event(event) = change {
                return event.id;
            }
        }
    }

    #[tokio::test]
    async fn one_poller_reads_for_every_follower_and_stops_with_the_last() {
        let fleet = FakeFleet::default();
        let feed = Feed::new(fleet.clone(), quick());
        assert!(!feed.is_polling(), "nobody follows: nothing is read");
        let mut followers = Vec::new();
        for user in ["ada", "bob", "cy"] {
            followers.push(feed.follow(user).await.expect("a follow"));
        }
        fleet.store("e1");
        for follower in &mut followers {
            assert_eq!(next_event(follower).await, "e1");
        }
        let polls = 2 * 20;
        let reads_before = fleet.reads();
        tokio::time::sleep(quick().poll * 20).await;
        let reads = fleet.reads() - reads_before;
        assert!(
            reads <= polls,
            "one poller reads (events and alerts) once a poll, whatever the followers: {reads} reads in 20 polls"
        );

        followers.pop();
        followers.pop();
        assert!(feed.is_polling(), "one follower is left");
        followers.clear();
        assert!(!feed.is_polling(), "the last follower left");
        // An aborted read may have been in flight; none starts after it.
        tokio::time::sleep(quick().poll * 2).await;
        let stopped_at = fleet.reads();
        tokio::time::sleep(quick().poll * 10).await;
        assert_eq!(fleet.reads(), stopped_at, "nobody follows: nothing is read");

        // The next follower starts a poller again, and hears only what
        // comes after it began.
        let mut again = feed.follow("ada").await.expect("a follow");
        fleet.store("e2");
        assert_eq!(next_event(&mut again).await, "e2");
    }

    #[tokio::test]
    async fn a_follower_that_stops_reading_ends_too_slow_and_holds_back_nobody() {
        let fleet = FakeFleet::default();
        let feed = Feed::new(fleet.clone(), quick());
        let mut reading = feed.follow("ada").await.expect("a follow");
        let mut stalled = feed.follow("bob").await.expect("a follow");
        // One event per read, more reads than the backlog holds.
        let count = quick().backlog * 3;
        for i in 0..count {
            let id = format!("e{i:02}");
            fleet.store(&id);
            assert_eq!(
                next_event(&mut reading).await,
                id,
                "the reader is not held back"
            );
        }
        let first = tokio::time::timeout(DEADLINE, stalled.next())
            .await
            .expect("an answer");
        match first {
            Err(Ended::TooSlow { missed }) => assert!(missed > 0, "{missed}"),
            other => panic!("the stalled follower should end too slow, not {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_follow_is_refused_while_reads_fail_and_taken_once_they_work() {
        let fleet = FakeFleet::default();
        fleet.down.store(true, Ordering::SeqCst);
        let feed = Feed::new(fleet.clone(), quick());
        match feed.follow("ada").await {
            Err(FollowError::Read(error)) => assert!(error.is_unavailable(), "{error}"),
            Err(other) => panic!("the first read failed: {other}"),
            Ok(_) => panic!("a follow whose first read failed was taken"),
        }
        assert!(!feed.is_polling(), "the refused follower left");

        fleet.down.store(false, Ordering::SeqCst);
        let mut follower = feed.follow("ada").await.expect("a follow");
        // A second follower keeps the poller going after the first ends.
        let _watching = feed.follow("bob").await.expect("a follow");
        fleet.down.store(true, Ordering::SeqCst);
        let ended = tokio::time::timeout(DEADLINE, follower.next())
            .await
            .expect("an answer");
        assert!(matches!(ended, Err(Ended::ReadFailed(_))), "{ended:?}");
        match feed.follow("cy").await {
            Err(FollowError::Read(_)) => {}
            Err(other) => panic!("the poller's last read failed: {other}"),
            Ok(_) => panic!("a follow was taken while the poller's last read failed"),
        }
    }

    #[tokio::test]
    async fn a_user_holds_at_most_the_limit_of_follows() {
        let feed = Feed::new(FakeFleet::default(), quick());
        let mut held = Vec::new();
        for _ in 0..quick().max_follows_per_user {
            held.push(feed.follow("ada").await.expect("a follow"));
        }
        let refused = feed.follow("ada").await.err().expect("over the limit");
        assert!(
            refused.to_string().contains("3 times at once"),
            "the limit is named: {refused}"
        );
        let _other_user = feed.follow("bob").await.expect("another user's follow");
        held.pop();
        let _again = feed.follow("ada").await.expect("a place was given back");
    }

    #[tokio::test]
    async fn a_quiet_follower_is_sent_keepalives() {
        let config = FeedConfig {
            keepalive: Duration::from_millis(50),
            ..quick()
        };
        let feed = Feed::new(FakeFleet::default(), config);
        let mut follower = feed.follow("ada").await.expect("a follow");
        let change = tokio::time::timeout(DEADLINE, follower.next())
            .await
            .expect("a keepalive within the deadline");
        assert_eq!(change.expect("the stream goes on"), Change::Keepalive);
    }

    #[tokio::test]
    async fn an_alert_change_reaches_the_followers() {
        let fleet = FakeFleet::default();
        let feed = Feed::new(fleet.clone(), quick());
        let mut follower = feed.follow("ada").await.expect("a follow");
        let raised = AlertsMark {
            newest: 7,
            firing: 1,
            acknowledged: 0,
        };
        *fleet.alerts.lock().unwrap_or_else(PoisonError::into_inner) = raised;
        let change = tokio::time::timeout(DEADLINE, follower.next())
            .await
            .expect("a change within the deadline");
        assert_eq!(change.expect("the stream goes on"), Change::Alerts(raised));
    }
}
