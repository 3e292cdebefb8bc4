//! How many requests that stay open (log follows, long-polls) one caller, a
//! user or an API key, may hold at once. HTTP/2 carries up to 200 requests
//! per connection (ADR 0035), so the per-address connection cap no longer
//! bounds them; each costs reads while it is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Places held, by caller; a caller holding none has no entry.
#[derive(Debug)]
pub struct PerCaller {
    held: Arc<Mutex<HashMap<String, u32>>>,
    limit: u32,
}

/// A caller's place; dropping it (the request ended, however) gives it back.
#[derive(Debug)]
pub struct Place {
    held: Arc<Mutex<HashMap<String, u32>>>,
    caller: String,
}

impl PerCaller {
    pub fn new(limit: u32) -> Self {
        Self {
            held: Arc::default(),
            limit,
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// A place for `caller`, or `None` once it holds the limit.
    pub fn take(&self, caller: &str) -> Option<Place> {
        let mut held = lock(&self.held);
        let count = held.entry(caller.to_owned()).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                held.remove(caller);
            }
            return None;
        }
        *count += 1;
        Some(Place {
            held: self.held.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

fn lock(held: &Mutex<HashMap<String, u32>>) -> MutexGuard<'_, HashMap<String, u32>> {
    // Plain counters: a panic elsewhere leaves them consistent.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_the_limit_and_places_come_back() {
        let places = PerCaller::new(2);
        let first = places.take("alice").expect("first");
        let _second = places.take("alice").expect("second");
        assert!(places.take("alice").is_none(), "over the limit");
        let _other = places
            .take("sa:ci")
            .expect("another caller is counted apart");
        drop(first);
        let _again = places.take("alice").expect("a place came back");
    }

    #[test]
    fn callers_holding_nothing_leave_no_entry() {
        let places = PerCaller::new(1);
        drop(places.take("alice"));
        assert!(lock(&places.held).is_empty());
        let none = PerCaller::new(0);
        assert!(none.take("bob").is_none());
        assert!(lock(&none.held).is_empty());
    }
}
