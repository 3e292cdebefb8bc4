//! The fleet's changes as they are stored, for followers such as the web
//! console (ADR 0034, amendment): every device event (sessions starting
//! and ending, action answers, the monitor's requests) and a notice when
//! the alerts change, from whichever replica wrote them.
//!
//! One poller per replica reads the database once a second while anybody
//! follows ([`Feed`]), rather than waiting on the bus: every replica's
//! writes land there, and its cost is one read a second per replica with a
//! console open, not per event nor per follower. A notice on the bus per
//! stored event would cost a PostgreSQL `NOTIFY` for each of 15,000 devices
//! reconnecting at once, whether anybody follows or not.
//!
//! Events carry the clock of the replica that wrote them and commit in any
//! order, so each read goes back [`LOOKBACK`] before the newest event sent
//! and drops those already sent ([`Window`]): an event that commits up to
//! that late is still sent, once.

mod feed;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::{AlertsMark, EventRecord};

pub use feed::{Ended, Feed, FeedConfig, FleetReads, FollowError, Follower};

/// How often the poller reads what changed.
const POLL: Duration = Duration::from_secs(1);
/// How late (by its replica's clock, or its commit) an event may arrive
/// and still be sent.
const LOOKBACK: TimeDelta = TimeDelta::seconds(10);
/// Events read at most at once; a burst larger than this is sent over the
/// next reads.
const READ_LIMIT: u32 = 1_000;
/// An empty item this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One thing a follower is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A device event was stored.
    Event(EventRecord),
    /// An alert was raised, acknowledged or resolved; how many are active.
    Alerts(AlertsMark),
    /// Nothing happened for a while.
    Keepalive,
}

/// Which events of the last [`LOOKBACK`] were sent, and where the next
/// read starts. No IO: the poller ([`Feed`]) feeds it what it reads.
///
/// A burst (a read that came back full, e.g. a replica's thousands of
/// devices going offline in one millisecond) is paged by the strict key
/// `(received_at, id)` after the last event read, never by time alone, which
/// would read the same first rows again and again; once it is read, the
/// lookback starts again from the newest event, so an event committed late
/// during a burst is not sent.
#[derive(Debug)]
pub struct Window {
    /// The next read returns events received at or after this…
    since: DateTime<Utc>,
    /// …or, paging a burst, those after this key.
    after: Option<(DateTime<Utc>, String)>,
    /// Events sent, by when they were received: those older than `since`
    /// are forgotten.
    sent: BTreeSet<(DateTime<Utc>, String)>,
    sent_ids: HashSet<String>,
}

impl Window {
    /// A window that starts sending from `now`.
    pub fn starting(now: DateTime<Utc>) -> Self {
        Self {
            since: now,
            after: None,
            sent: BTreeSet::new(),
            sent_ids: HashSet::new(),
        }
    }

    /// Where the next read starts: the events after this key (an empty id
    /// takes every event of that instant).
    pub fn read_from(&self) -> (DateTime<Utc>, &str) {
        match &self.after {
            Some((at, id)) => (*at, id.as_str()),
            None => (self.since, ""),
        }
    }

    /// The events of a read not sent before, in the order read; `full`
    /// says the read hit its limit.
    pub fn take_new(&mut self, read: Vec<EventRecord>, full: bool) -> Vec<EventRecord> {
        let last = read
            .last()
            .map(|event| (event.received_at, event.id.clone()));
        let new: Vec<EventRecord> = read
            .into_iter()
            .filter(|event| !self.sent_ids.contains(&event.id))
            .collect();
        for event in &new {
            self.sent_ids.insert(event.id.clone());
            self.sent.insert((event.received_at, event.id.clone()));
        }
        let newest = self.sent.last().map(|(at, _)| *at);
        if full {
            self.after = last;
            return new;
        }
        let leaving_burst = self.after.take().is_some();
        if let Some(newest) = newest {
            let lookback = if leaving_burst {
                TimeDelta::zero()
            } else {
                LOOKBACK
            };
            self.since = (newest - lookback).max(self.since);
        }
        self.forget_before(self.since);
        new
    }

    fn forget_before(&mut self, horizon: DateTime<Utc>) {
        while let Some((at, id)) = self.sent.first().cloned() {
            if at >= horizon {
                break;
            }
            self.sent.pop_first();
            self.sent_ids.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn event(id: &str, seconds: i64) -> EventRecord {
        EventRecord {
            id: id.to_owned(),
            device: tether_proto::DeviceId::new("edge-1").expect("a name"),
            correlation_id: None,
            event: "device-online".into(),
            status_code: 200,
            status_message: String::new(),
            response: serde_json::Value::Null,
            received_at: at(seconds),
        }
    }

    fn ids(events: &[EventRecord]) -> Vec<&str> {
        events.iter().map(|event| event.id.as_str()).collect()
    }

    #[test]
    fn an_event_read_again_in_the_lookback_is_sent_once() {
        let mut window = Window::starting(at(0));
        let first = window.take_new(vec![event("a", 1), event("b", 2)], false);
        assert_eq!(ids(&first), ["a", "b"]);
        // The next read goes back before the newest sent, and finds them again.
        assert!(window.read_from().0 <= at(1));
        let again = window.take_new(vec![event("a", 1), event("b", 2), event("c", 3)], false);
        assert_eq!(ids(&again), ["c"]);
    }

    #[test]
    fn an_event_committed_late_with_an_earlier_time_is_still_sent() {
        let mut window = Window::starting(at(0));
        window.take_new(vec![event("b", 5)], false);
        // Another replica's event, received at 3 s, committed after b was read.
        let late = window.take_new(vec![event("a", 3), event("b", 5)], false);
        assert_eq!(ids(&late), ["a"]);
    }

    #[test]
    fn the_window_never_starts_before_the_follow_did() {
        let mut window = Window::starting(at(100));
        window.take_new(vec![event("a", 101)], false);
        assert_eq!(window.read_from(), (at(100), ""));
    }

    #[test]
    fn a_full_read_goes_on_from_its_last_event() {
        let mut window = Window::starting(at(0));
        let burst: Vec<EventRecord> = (0..5).map(|i| event(&format!("e{i}"), 20 + i)).collect();
        window.take_new(burst, true);
        assert_eq!(window.read_from(), (at(24), "e4"));
        // The last event is read again at its own time, and not sent twice.
        let next = window.take_new(vec![event("e4", 24), event("e5", 25)], false);
        assert_eq!(ids(&next), ["e5"]);
    }

    /// A replica that ends (lease lapsed, stopped) writes a `device-offline`
    /// for each of its devices at one `last_seen`
    /// (`Store::end_replica_sessions`): more than [`READ_LIMIT`] events with
    /// the same millisecond. Review finding: the full read's next `since` is
    /// that same instant, so every later read returns the same first
    /// 1,000 rows, all sent; the follower never sends the rest, nor anything
    /// stored after them.
    #[tokio::test]
    async fn more_events_in_one_millisecond_than_a_read_takes_are_all_sent() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let device = tether_proto::DeviceId::new("edge-1").expect("a name");
        store
            .create_device(&device, &Default::default(), Utc::now())
            .await
            .expect("a device");
        let feed = Feed::new(store.clone(), FeedConfig::new(1));
        let mut follower = feed.follow("tester").await.expect("a follow");
        let ended_at = Utc::now() + TimeDelta::milliseconds(100);
        let burst = READ_LIMIT as usize + 200;
        for i in 0..=burst {
            let at = if i < burst {
                ended_at
            } else {
                ended_at + TimeDelta::milliseconds(1)
            };
            store
                .insert_event(&EventRecord {
                    id: format!("e{i:05}"),
                    device: device.clone(),
                    correlation_id: None,
                    event: "device-offline".into(),
                    status_code: 200,
                    status_message: String::new(),
                    response: serde_json::Value::Null,
                    received_at: at,
                })
                .await
                .expect("an event");
        }
        let mut sent = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while sent.len() <= burst {
            let Ok(change) = tokio::time::timeout_at(deadline, follower.next()).await else {
                break;
            };
            if let Change::Event(event) = change.expect("no read failed") {
                sent.insert(event.id);
            }
        }
        assert_eq!(
            sent.len(),
            burst + 1,
            "the follower sent {} of {} events within 8 s (the rest of the burst and the event after it never came)",
            sent.len(),
            burst + 1
        );
    }

    #[test]
    fn what_is_older_than_the_lookback_is_forgotten() {
        let mut window = Window::starting(at(0));
        window.take_new(vec![event("old", 1)], false);
        window.take_new(vec![event("new", 100)], false);
        assert_eq!(window.sent_ids.len(), 1, "only the newest is remembered");
        assert_eq!(window.read_from(), (at(100) - LOOKBACK, ""));
    }
}
