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
