//! A rule's life on one device, as a pure function of what was stored,
//! whether the condition holds now, the rule's `for` and the clock:
//! nothing → pending (the condition began) → firing (it held for `for`:
//! the alert is raised) → nothing again (it ended: a raised alert
//! resolves, a pending one is forgotten).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The condition holds on the device: since when, and whether its alert
/// was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleState {
    pub pending_since: DateTime<Utc>,
    pub firing: bool,
}

/// What the evaluator does with the rule's alert on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChange {
    Raise,
    Resolve,
}

/// The outcome of one look at a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The state to keep; `None`: none (the condition does not hold).
    pub state: Option<RuleState>,
    /// Whether `state` differs from what was stored, so it is written.
    pub changed: bool,
    pub alert: Option<AlertChange>,
}

/// One look at a device: `stored` is the state from the last pass,
/// `holds` whether the condition holds at `now`.
pub fn step(
    stored: Option<RuleState>,
    holds: bool,
    hold_for: Duration,
    now: DateTime<Utc>,
) -> Step {
    let unchanged = Step {
        state: stored,
        changed: false,
        alert: None,
    };
    match (stored, holds) {
        (None, false) => unchanged,
        (Some(state), false) => Step {
            state: None,
            changed: true,
            alert: state.firing.then_some(AlertChange::Resolve),
        },
        (Some(state), true) if state.firing => unchanged,
        (stored, true) => {
            let pending_since = stored.map_or(now, |state| state.pending_since);
            let held = (now - pending_since).to_std().unwrap_or_default();
            if held >= hold_for {
                Step {
                    state: Some(RuleState {
                        pending_since,
                        firing: true,
                    }),
                    changed: true,
                    alert: Some(AlertChange::Raise),
                }
            } else if stored.is_none() {
                Step {
                    state: Some(RuleState {
                        pending_since,
                        firing: false,
                    }),
                    changed: true,
                    alert: None,
                }
            } else {
                unchanged
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid")
    }

    const TEN_MINUTES: Duration = Duration::from_secs(600);

    /// Runs `step` over `(second, holds)` looks, returning each look's alert
    /// change and the final state.
    fn run(
        hold_for: Duration,
        looks: &[(i64, bool)],
    ) -> (Vec<(i64, Option<AlertChange>)>, Option<RuleState>) {
        let mut state = None;
        let mut changes = Vec::new();
        for &(second, holds) in looks {
            let step = step(state, holds, hold_for, at(second));
            if !step.changed {
                assert_eq!(step.state, state, "unchanged at {second}");
            }
            state = step.state;
            changes.push((second, step.alert));
        }
        (changes, state)
    }

    #[test]
    fn a_condition_held_for_the_duration_fires_once_and_resolves_when_it_ends() {
        let (changes, state) = run(
            TEN_MINUTES,
            &[
                (0, true),
                (300, true),
                (599, true),
                (600, true),
                (900, true),
                (1200, false),
                (1500, false),
            ],
        );
        assert_eq!(
            changes,
            [
                (0, None),
                (300, None),
                (599, None),
                (600, Some(AlertChange::Raise)),
                (900, None),
                (1200, Some(AlertChange::Resolve)),
                (1500, None),
            ]
        );
        assert_eq!(state, None);
    }

    #[test]
    fn a_condition_that_stops_before_the_duration_never_fires_and_starts_over() {
        let (changes, _) = run(
            TEN_MINUTES,
            &[
                (0, true),
                (500, false),
                (600, true),
                (1100, true),
                (1200, true),
            ],
        );
        assert!(
            changes[..4].iter().all(|(_, change)| change.is_none()),
            "{changes:?}"
        );
        // Pending again from 600, so it fires at 1200, not at 600.
        assert_eq!(changes[4], (1200, Some(AlertChange::Raise)));
    }

    #[test]
    fn without_a_duration_the_first_look_fires() {
        let (changes, state) = run(Duration::ZERO, &[(0, true), (30, true)]);
        assert_eq!(changes, [(0, Some(AlertChange::Raise)), (30, None)]);
        assert_eq!(
            state,
            Some(RuleState {
                pending_since: at(0),
                firing: true
            })
        );
    }

    #[test]
    fn only_the_first_look_and_the_changes_are_written() {
        let first = step(None, true, TEN_MINUTES, at(0));
        assert!(first.changed);
        let again = step(first.state, true, TEN_MINUTES, at(30));
        assert!(!again.changed && again.alert.is_none());
        assert!(!step(None, false, TEN_MINUTES, at(30)).changed);
    }

    #[test]
    fn a_clock_that_went_back_keeps_the_alert_pending() {
        let pending = step(None, true, TEN_MINUTES, at(600)).state;
        let back = step(pending, true, TEN_MINUTES, at(0));
        assert_eq!(back.alert, None);
        assert_eq!(back.state, pending);
    }
}
