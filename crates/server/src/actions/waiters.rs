//! Long-poll support: callers wait for one action to reach a terminal state
//! without polling the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::store::ActionRecord;

type Senders = HashMap<String, watch::Sender<Option<ActionRecord>>>;

#[derive(Default)]
pub struct Waiters {
    by_correlation_id: Arc<Mutex<Senders>>,
}

/// One caller's interest in one action; dropping it (also when the HTTP
/// client goes away mid-wait) removes the entry once nobody else waits.
pub struct Waiter {
    correlation_id: String,
    receiver: Option<watch::Receiver<Option<ActionRecord>>>,
    senders: Arc<Mutex<Senders>>,
}

impl Waiters {
    /// Registers interest in `correlation_id`. Subscribe before reading the
    /// current state, so a completion between the read and the wait is not missed.
    pub fn subscribe(&self, correlation_id: &str) -> Waiter {
        let receiver = lock(&self.by_correlation_id)
            .entry(correlation_id.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Waiter {
            correlation_id: correlation_id.to_owned(),
            receiver: Some(receiver),
            senders: self.by_correlation_id.clone(),
        }
    }

    /// Wakes everyone waiting for this action.
    pub fn completed(&self, record: &ActionRecord) {
        if let Some(sender) = lock(&self.by_correlation_id).remove(&record.correlation_id) {
            sender.send_replace(Some(record.clone()));
        }
    }

    /// Whether a client here waits for this action.
    pub fn is_waited(&self, correlation_id: &str) -> bool {
        lock(&self.by_correlation_id).contains_key(correlation_id)
    }

    /// The actions clients here wait for.
    pub fn waited(&self) -> Vec<String> {
        lock(&self.by_correlation_id).keys().cloned().collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.by_correlation_id).len()
    }
}

impl Waiter {
    /// The completed record, or `None` on a spurious wake-up; pending forever
    /// once the entry is gone without a record (the caller times out).
    pub async fn changed(&mut self) -> Option<ActionRecord> {
        let receiver = self.receiver.as_mut()?;
        if receiver.changed().await.is_err() {
            return std::future::pending().await;
        }
        receiver.borrow_and_update().clone()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut senders = lock(&self.senders);
        if senders
            .get(&self.correlation_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            senders.remove(&self.correlation_id);
        }
    }
}

fn lock(senders: &Mutex<Senders>) -> MutexGuard<'_, Senders> {
    senders.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_waits_leave_nothing_behind() {
        let waiters = Waiters::default();
        let first = waiters.subscribe("a");
        let second = waiters.subscribe("a");
        assert_eq!(waiters.len(), 1);
        assert!(waiters.is_waited("a"));
        assert_eq!(waiters.waited(), ["a"]);
        drop(first);
        assert_eq!(waiters.len(), 1, "someone still waits");
        drop(second);
        assert_eq!(waiters.len(), 0);
        assert!(!waiters.is_waited("a"));
    }
}
