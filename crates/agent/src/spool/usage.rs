//! The agent's own count of bytes per feature (the MQTT payloads it sent
//! to tetherd and received from it), which it reports to tetherd so that
//! the operator can compare both ends' counts (`tether devices usage`).
//!
//! Totals since the state directory was made, in `usage.json` beside the
//! spools. Saved at most once a minute while they change and at a clean
//! stop: flash wears by writes, and a crash loses at most a minute's count.
//!
//! Actions are counted here too, against the spec's `actions` budget: an
//! operator's action is never dropped for a budget, so the agent warns once
//! a day when the day's action bytes pass it (ADR 0015).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use tether_proto::telemetry::{Feature, FeatureBytes};

use crate::state::write_atomic;

const USAGE_FILE: &str = "usage.json";
const FILE_MODE: u32 = 0o600;
/// Counts that changed are saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    counts: Vec<FeatureBytes>,
    dirty: bool,
    saved_at: Option<Instant>,
    actions: ActionsDay,
}

/// The day's action bytes against the spec's `actions` budget.
#[derive(Debug, Default)]
struct ActionsDay {
    budget: Option<u64>,
    day: Option<NaiveDate>,
    bytes: u64,
    warned: bool,
}

impl ActionsDay {
    /// Counts `bytes`; true the first time in a day they pass the budget.
    fn count(&mut self, now: DateTime<Utc>, bytes: u64) -> bool {
        let today = now.date_naive();
        if self.day != Some(today) {
            *self = Self {
                day: Some(today),
                budget: self.budget,
                ..Self::default()
            };
        }
        self.bytes += bytes;
        let over = self.budget.is_some_and(|budget| self.bytes > budget);
        over && !std::mem::replace(&mut self.warned, true)
    }
}

impl Usage {
    /// Reads the counts saved in `dir`; counts that cannot be read start
    /// again from zero (they are figures for the operator, not data).
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(USAGE_FILE);
        let saved: Vec<FeatureBytes> = match std::fs::read(&path) {
            Ok(json) => serde_json::from_slice(&json).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "unreadable usage counts; counting again from zero");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let counts = Feature::ALL
            .into_iter()
            .map(|feature| {
                saved
                    .iter()
                    .find(|f| f.feature == feature)
                    .copied()
                    .unwrap_or(FeatureBytes {
                        feature,
                        sent_bytes: 0,
                        received_bytes: 0,
                    })
            })
            .collect();
        Self {
            path,
            state: Mutex::new(State {
                counts,
                dirty: false,
                saved_at: None,
                actions: ActionsDay::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, feature: Feature, sent: usize, received: usize) {
        let mut state = self.state();
        if let Some(count) = state.counts.iter_mut().find(|f| f.feature == feature) {
            count.sent_bytes += sent as u64;
            count.received_bytes += received as u64;
        }
        state.dirty = true;
    }

    /// The agent sent `bytes` for `feature`.
    pub fn sent(&self, feature: Feature, bytes: usize) {
        self.add(feature, bytes, 0);
    }

    /// An action's request (`received`) or event (`sent`) crossed the wire.
    pub fn action(&self, now: DateTime<Utc>, sent: usize, received: usize) {
        self.add(Feature::Actions, sent, received);
        let mut state = self.state();
        if state.actions.count(now, (sent + received) as u64) {
            tracing::warn!(
                budget = state.actions.budget,
                bytes = state.actions.bytes,
                "today's actions passed their budget of bytes a day; actions still run, an operator's action is never dropped"
            );
        }
    }

    /// The spec's `actions` budget.
    pub fn set_actions_budget(&self, budget: Option<u64>) {
        self.state().actions.budget = budget;
    }

    /// Every feature's counts, for a batch.
    pub fn report(&self) -> Vec<FeatureBytes> {
        self.state().counts.clone()
    }

    /// Saves changed counts, if a minute passed since the last save or
    /// `now_anyway` (a clean stop).
    pub fn save(&self, now_anyway: bool) {
        let json = {
            let mut state = self.state();
            let due = state.saved_at.is_none_or(|at| at.elapsed() >= SAVE_EVERY);
            if !state.dirty || !(due || now_anyway) {
                return;
            }
            state.dirty = false;
            state.saved_at = Some(Instant::now());
            serde_json::to_vec(&state.counts).unwrap_or_default()
        };
        if let Err(error) = write_atomic(&self.path, &json, FILE_MODE) {
            tracing::warn!(path = %self.path.display(), %error, "could not save the usage counts");
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn count(usage: &Usage, feature: Feature) -> (u64, u64) {
        let report = usage.report();
        let f = report
            .iter()
            .find(|f| f.feature == feature)
            .expect("every feature");
        (f.sent_bytes, f.received_bytes)
    }

    #[test]
    fn counts_survive_a_restart_once_saved() {
        let dir = tempfile::tempdir().expect("temp");
        let usage = Usage::open(dir.path());
        assert_eq!(usage.report().len(), Feature::ALL.len());
        usage.sent(Feature::Logs, 1_000);
        usage.sent(Feature::SpoolReplay, 400);
        usage.action(Utc::now(), 30, 200);
        usage.save(false);
        usage.sent(Feature::Logs, 5);
        // Within the minute: not saved, unless the agent stops.
        usage.save(false);
        assert_eq!(count(&Usage::open(dir.path()), Feature::Logs), (1_000, 0));
        usage.save(true);
        let reopened = Usage::open(dir.path());
        assert_eq!(count(&reopened, Feature::Logs), (1_005, 0));
        assert_eq!(count(&reopened, Feature::SpoolReplay), (400, 0));
        assert_eq!(count(&reopened, Feature::Actions), (30, 200));

        std::fs::write(dir.path().join(USAGE_FILE), b"not json").expect("writes");
        assert_eq!(count(&Usage::open(dir.path()), Feature::Logs), (0, 0));
    }

    #[test]
    fn the_actions_budget_warns_once_a_day_and_never_stops_counting() {
        let mut day = ActionsDay {
            budget: Some(100),
            ..ActionsDay::default()
        };
        let morning: DateTime<Utc> = "2026-12-02T08:00:00Z".parse().expect("time");
        assert!(!day.count(morning, 60));
        assert!(day.count(morning, 60), "passed the budget");
        assert!(!day.count(morning, 60), "warned once");
        assert_eq!(day.bytes, 180);
        let tomorrow = morning + TimeDelta::days(1);
        assert!(!day.count(tomorrow, 60), "a new day");
        assert!(day.count(tomorrow, 60));
    }
}
