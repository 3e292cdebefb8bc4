//! Silence and rebirth (seed 002's Edge Monitor, ADR 0032): a device that
//! sent nothing for its interval is asked for a rebirth; three requests
//! left unanswered raise an alert; anything heard after a request answers
//! it, resets the watch and resolves the alert.
//!
//! Plain state: the caller passes the device's `lastSeen` and the clock,
//! stores the returned watch and carries out the steps.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Rebirth requests sent before the silence alert is raised.
pub const REBIRTHS_BEFORE_ALERT: u32 = 3;

/// What the monitor remembers of one device between passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watch {
    /// Rebirth requests sent since the device was last heard.
    pub rebirths_sent: u32,
    /// When the last of them was sent.
    pub last_request_at: Option<DateTime<Utc>>,
    /// Whether the silence alert is raised.
    pub alerting: bool,
}

/// What the monitor does for a device after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ask the device for its birth and status again.
    RequestRebirth,
    /// The device stayed silent through every request.
    RaiseAlert,
    /// The device was heard again.
    ResolveAlert,
}

/// The watch after a pass at `now`, and the step to take, if any.
/// `last_seen` is when anything was last heard from the device (`None`:
/// never); `interval` is how long it may stay silent.
pub fn check(
    watch: Watch,
    last_seen: Option<DateTime<Utc>>,
    interval: Duration,
    now: DateTime<Utc>,
) -> (Watch, Option<Step>) {
    let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    let heard_since_request = match (last_seen, watch.last_request_at) {
        (Some(seen), Some(asked)) => seen >= asked,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let silent = last_seen.is_none_or(|seen| now - seen >= interval);
    if !silent || (watch.rebirths_sent > 0 && heard_since_request) {
        let step = watch.alerting.then_some(Step::ResolveAlert);
        return (Watch::default(), step);
    }
    // Each request gets a whole interval to be answered.
    let waited = watch
        .last_request_at
        .is_none_or(|asked| now - asked >= interval);
    if !waited {
        return (watch, None);
    }
    if watch.rebirths_sent < REBIRTHS_BEFORE_ALERT {
        let watch = Watch {
            rebirths_sent: watch.rebirths_sent + 1,
            last_request_at: Some(now),
            alerting: watch.alerting,
        };
        return (watch, Some(Step::RequestRebirth));
    }
    if watch.alerting {
        return (watch, None);
    }
    (
        Watch {
            alerting: true,
            ..watch
        },
        Some(Step::RaiseAlert),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(180);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(1_000_000 + seconds)
    }

    /// Runs passes every `every` seconds from `from` to `to`, returning the
    /// steps taken with their times.
    fn passes(
        mut watch: Watch,
        last_seen: Option<DateTime<Utc>>,
        from: i64,
        to: i64,
        every: i64,
    ) -> (Watch, Vec<(i64, Step)>) {
        let mut steps = Vec::new();
        let mut t = from;
        while t <= to {
            let (next, step) = check(watch, last_seen, INTERVAL, at(t));
            watch = next;
            if let Some(step) = step {
                steps.push((t, step));
            }
            t += every;
        }
        (watch, steps)
    }

    #[test]
    fn a_device_heard_within_its_interval_is_left_alone() {
        let (watch, steps) = passes(Watch::default(), Some(at(0)), 0, 179, 1);
        assert_eq!(watch, Watch::default());
        assert!(steps.is_empty(), "{steps:?}");
    }

    #[test]
    fn silence_brings_three_rebirths_an_interval_apart_then_one_alert() {
        let (watch, steps) = passes(Watch::default(), Some(at(0)), 0, 2000, 15);
        assert_eq!(
            steps,
            [
                (180, Step::RequestRebirth),
                (360, Step::RequestRebirth),
                (540, Step::RequestRebirth),
                (720, Step::RaiseAlert),
            ]
        );
        assert!(watch.alerting);
        assert_eq!(watch.rebirths_sent, REBIRTHS_BEFORE_ALERT);
    }

    #[test]
    fn an_answer_after_a_request_resets_the_watch_without_an_alert() {
        let (watch, steps) = passes(Watch::default(), Some(at(0)), 0, 200, 10);
        assert_eq!(steps, [(180, Step::RequestRebirth)]);
        // The birth arrives a second after the request.
        let (watch, step) = check(watch, Some(at(181)), INTERVAL, at(190));
        assert_eq!((watch, step), (Watch::default(), None));
    }

    #[test]
    fn a_device_heard_again_after_the_alert_resolves_it_once() {
        let (watch, _) = passes(Watch::default(), Some(at(0)), 0, 800, 20);
        assert!(watch.alerting);
        let (watch, step) = check(watch, Some(at(900)), INTERVAL, at(905));
        assert_eq!(step, Some(Step::ResolveAlert));
        assert_eq!(watch, Watch::default());
        let (_, step) = check(watch, Some(at(900)), INTERVAL, at(910));
        assert_eq!(step, None, "resolved once");
    }

    #[test]
    fn data_from_before_the_last_request_is_no_answer() {
        // The request went out at 180; lastSeen is still 0.
        let (watch, _) = passes(Watch::default(), Some(at(0)), 180, 180, 1);
        let (watch, step) = check(watch, Some(at(0)), INTERVAL, at(300));
        assert_eq!(step, None, "waits a whole interval for the answer");
        assert_eq!(watch.rebirths_sent, 1);
    }

    #[test]
    fn a_device_never_heard_is_asked_at_once_and_alerted_after_three() {
        let (watch, steps) = passes(Watch::default(), None, 0, 600, 30);
        assert_eq!(
            steps,
            [
                (0, Step::RequestRebirth),
                (180, Step::RequestRebirth),
                (360, Step::RequestRebirth),
                (540, Step::RaiseAlert),
            ]
        );
        assert!(watch.alerting);
    }

    #[test]
    fn a_pass_missed_by_a_dying_leader_is_made_up_by_the_next_one() {
        // The leader sent the first request at 180 and died; the next
        // leader's first pass is at 500, with the stored watch.
        let (watch, _) = passes(Watch::default(), Some(at(0)), 180, 180, 1);
        let (watch, step) = check(watch, Some(at(0)), INTERVAL, at(500));
        assert_eq!(step, Some(Step::RequestRebirth));
        assert_eq!(watch.rebirths_sent, 2);
        assert_eq!(watch.last_request_at, Some(at(500)));
    }
}
