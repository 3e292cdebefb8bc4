//! Long-poll support: callers wait for one action to reach a terminal state
//! without polling the database.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::store::ActionRecord;

#[derive(Default)]
pub struct Waiters {
    by_correlation_id: Mutex<HashMap<String, watch::Sender<Option<ActionRecord>>>>,
}

impl Waiters {
    /// Registers interest in `correlation_id`. Subscribe before reading the
    /// current state, so a completion between the read and the wait is not missed.
    pub fn subscribe(&self, correlation_id: &str) -> watch::Receiver<Option<ActionRecord>> {
        let mut map = self.lock();
        map.entry(correlation_id.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Wakes everyone waiting for this action.
    pub fn completed(&self, record: &ActionRecord) {
        if let Some(sender) = self.lock().remove(&record.correlation_id) {
            sender.send_replace(Some(record.clone()));
        }
    }

    /// Drops the entry once its last waiter gave up.
    pub fn release(&self, correlation_id: &str) {
        let mut map = self.lock();
        if map
            .get(correlation_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            map.remove(correlation_id);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<ActionRecord>>>> {
        self.by_correlation_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
