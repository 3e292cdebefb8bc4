//! Configuration drift (seed 002's "Reload Edge Agent Config", ADR 0032):
//! a device that has not applied its current spec a grace period after it
//! changed is asked to reload; still behind a grace period after that
//! request, it raises the `config_drift` alert; once it reports the
//! current version the watch resets and the alert resolves.
//!
//! In tether a deployment's revision reaches a device as a new spec
//! version, so the applied `specVersion` covers the device's deployments
//! too; how a deployment that arrived is doing belongs to its rollout and to
//! alert rules.
//!
//! Plain state: the caller judges whether the device is behind, passes the
//! clock, stores the returned watch and carries out the steps.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What the monitor remembers of one device's drift between passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftWatch {
    /// Reload requests sent since the device fell behind.
    pub reloads_sent: u32,
    /// When the last of them was sent.
    pub last_reload_at: Option<DateTime<Utc>>,
    /// Whether the drift alert is raised.
    pub alerting: bool,
}

/// Where a device's applied configuration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It reported the current spec version.
    Current,
    /// It has not, and the current version was written at this time.
    Behind { since: DateTime<Utc> },
    /// It cannot be judged now (offline: it gets its spec when it is back,
    /// and its silence is the silence check's).
    Unknown,
}

/// What the monitor does for a device after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftStep {
    /// Send the current spec again and ask the device to apply it in full.
    Reload,
    /// The device stayed behind after a reload.
    RaiseAlert,
    /// The device caught up.
    ResolveAlert,
}

/// The watch after a pass at `now`, and the steps to take in order.
pub fn check(
    watch: DriftWatch,
    applied: Applied,
    grace: Duration,
    now: DateTime<Utc>,
) -> (DriftWatch, Vec<DriftStep>) {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let since = match applied {
        Applied::Unknown => return (watch, Vec::new()),
        Applied::Current => {
            let steps = if watch.alerting {
                vec![DriftStep::ResolveAlert]
            } else {
                Vec::new()
            };
            return (DriftWatch::default(), steps);
        }
        Applied::Behind { since } => since,
    };
    // A spec changed moments ago is on its way: no drift yet.
    if now - since < grace && watch.reloads_sent == 0 {
        return (watch, Vec::new());
    }
    let mut next = watch;
    let mut steps = Vec::new();
    let reload_unanswered = watch.last_reload_at.is_some_and(|at| now - at >= grace);
    if reload_unanswered && !watch.alerting {
        next.alerting = true;
        steps.push(DriftStep::RaiseAlert);
    }
    // Asked again each grace period while behind: a lost request or a
    // restart of the agent may be what kept it behind.
    if watch.last_reload_at.is_none() || reload_unanswered {
        next.reloads_sent = watch.reloads_sent.saturating_add(1);
        next.last_reload_at = Some(now);
        steps.push(DriftStep::Reload);
    }
    (next, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    /// Runs passes every `step` seconds from `from` to `to`, the device
    /// behind since 0, and returns when each step was taken.
    fn timeline(from: i64, to: i64, step: i64) -> Vec<(i64, DriftStep)> {
        let mut watch = DriftWatch::default();
        let mut taken = Vec::new();
        let mut now = from;
        while now <= to {
            let (next, steps) = check(watch, Applied::Behind { since: at(0) }, GRACE, at(now));
            taken.extend(steps.into_iter().map(|step| (now, step)));
            watch = next;
            now += step;
        }
        taken
    }

    #[test]
    fn a_device_behind_is_asked_to_reload_after_the_grace_then_alerts_a_grace_later() {
        assert_eq!(
            timeline(0, 200, 5),
            [
                (60, DriftStep::Reload),
                (120, DriftStep::RaiseAlert),
                (120, DriftStep::Reload),
                (180, DriftStep::Reload),
            ]
        );
    }

    #[test]
    fn catching_up_resets_the_watch_and_resolves_the_alert() {
        let alerting = DriftWatch {
            reloads_sent: 2,
            last_reload_at: Some(at(120)),
            alerting: true,
        };
        assert_eq!(
            check(alerting, Applied::Current, GRACE, at(130)),
            (DriftWatch::default(), vec![DriftStep::ResolveAlert])
        );
        let asked = DriftWatch {
            alerting: false,
            ..alerting
        };
        assert_eq!(
            check(asked, Applied::Current, GRACE, at(130)),
            (DriftWatch::default(), vec![])
        );
    }

    #[test]
    fn an_offline_device_keeps_its_watch_and_its_alert() {
        let alerting = DriftWatch {
            reloads_sent: 2,
            last_reload_at: Some(at(120)),
            alerting: true,
        };
        assert_eq!(
            check(alerting, Applied::Unknown, GRACE, at(500)),
            (alerting, vec![])
        );
    }

    #[test]
    fn a_spec_changed_again_while_asked_does_not_restart_the_grace() {
        // Behind since 0, asked at 60; the spec changes at 90: the request
        // still counts, the alert comes at 120.
        let asked = DriftWatch {
            reloads_sent: 1,
            last_reload_at: Some(at(60)),
            alerting: false,
        };
        let (_, steps) = check(asked, Applied::Behind { since: at(90) }, GRACE, at(120));
        assert_eq!(steps, [DriftStep::RaiseAlert, DriftStep::Reload]);
    }
}
