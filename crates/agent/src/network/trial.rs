//! `netplan try` as two pure decisions: what to do with the spec's
//! `network` section given what was done last ([`plan`]), and, while a
//! change is on trial, what each reachability probe means ([`Trial`]).

use std::time::{Duration, Instant};

use serde_json::Value;
use tether_proto::network::{self, NetworkPlan};

use super::Saved;

/// What to do about the spec's network section.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Nothing new: no section, the one applied last (kept or rolled back;
    /// a rolled-back document is tried again only once it changes), or one
    /// that does not validate (the spec's errors report it).
    Nothing,
    /// The section is gone: the network stays as it is, and the document
    /// tried last is forgotten, so that the same one added again is tried.
    Forget,
    /// The agent stopped while a change was on trial: nothing proved it,
    /// so the snapshot goes back.
    RestoreInterrupted,
    /// A new document to try.
    Try(Box<NetworkPlan>),
}

/// Decides what `section` (the applied spec's `network`, if any) asks,
/// given `saved`.
pub fn plan(saved: &Saved, section: Option<&Value>) -> Plan {
    if saved.trial.is_some() {
        return Plan::RestoreInterrupted;
    }
    let Some(section) = section else {
        return if saved == &Saved::default() {
            Plan::Nothing
        } else {
            Plan::Forget
        };
    };
    if saved.section.as_ref() == Some(section) {
        return Plan::Nothing;
    }
    match network::parse(&format!("spec.{}", network::SECTION), section) {
        Ok(plan) => Plan::Try(Box::new(plan)),
        Err(_) => Plan::Nothing,
    }
}

/// What a probe's result means for the change on trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// tetherd was reached: the change stays.
    Keep { reason: String },
    /// Not reached yet; probe again.
    Wait,
    /// Not reached by the deadline: put the snapshot back.
    RollBack { reason: String },
}

/// A change on trial: applied at `started`, kept if tetherd is reached
/// before `deadline`.
#[derive(Debug, Clone)]
pub struct Trial {
    started: Instant,
    deadline: Instant,
    last_error: Option<String>,
}

impl Trial {
    pub fn new(started: Instant, rollback_after: Duration) -> Self {
        Self {
            started,
            deadline: started + rollback_after,
            last_error: None,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes a probe's result at `now`: reached (naming what) or why not.
    pub fn on_probe(&mut self, result: Result<String, String>, now: Instant) -> Verdict {
        match result {
            Ok(reached) => Verdict::Keep {
                reason: format!(
                    "{reached} {:.1} s after the change",
                    now.saturating_duration_since(self.started).as_secs_f64()
                ),
            },
            Err(error) => {
                self.last_error = Some(error);
                if now >= self.deadline {
                    self.expired()
                } else {
                    Verdict::Wait
                }
            }
        }
    }

    /// The deadline passed without a probe succeeding.
    pub fn expired(&self) -> Verdict {
        let waited = self.deadline.saturating_duration_since(self.started);
        Verdict::RollBack {
            reason: format!(
                "tetherd was not reachable within {} s of the change ({}); the previous network configuration is back",
                waited.as_secs(),
                self.last_error.as_deref().unwrap_or("no probe finished")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn section(address: &str) -> Value {
        json!({"netplan": {"network": {"version": 2, "ethernets": {"eth0": {"addresses": [address]}}}}, "rollbackSeconds": 5})
    }

    #[test]
    fn only_a_new_valid_document_is_tried() {
        let saved = Saved::default();
        assert_eq!(plan(&saved, None), Plan::Nothing);
        let Plan::Try(tried) = plan(&saved, Some(&section("10.0.0.2/24"))) else {
            panic!("a new document is tried");
        };
        assert_eq!(tried.rollback_seconds, 5);
        assert_eq!(
            plan(&saved, Some(&section("10.0.0.2"))),
            Plan::Nothing,
            "an invalid one is the spec's error, not applied"
        );
        let applied = Saved {
            section: Some(section("10.0.0.2/24")),
            ..Saved::default()
        };
        assert_eq!(
            plan(&applied, Some(&section("10.0.0.2/24"))),
            Plan::Nothing,
            "a restart does not apply the same document again"
        );
        assert!(matches!(
            plan(&applied, Some(&section("10.0.0.3/24"))),
            Plan::Try(_)
        ));
        assert_eq!(
            plan(&applied, None),
            Plan::Forget,
            "a section removed and added again is tried again"
        );
    }

    #[test]
    fn a_trial_cut_short_by_a_restart_is_rolled_back_first() {
        let interrupted = Saved {
            section: Some(section("10.0.0.2/24")),
            trial: Some(super::super::Snapshot::Netplan {
                file: super::super::FileSnapshot::Absent,
            }),
            ..Saved::default()
        };
        assert_eq!(
            plan(&interrupted, Some(&section("10.0.0.3/24"))),
            Plan::RestoreInterrupted
        );
    }

    #[test]
    fn a_probe_keeps_the_change_until_the_deadline_rolls_it_back() {
        let start = Instant::now();
        let mut trial = Trial::new(start, Duration::from_secs(5));
        assert_eq!(
            trial.on_probe(
                Err("connection refused".into()),
                start + Duration::from_secs(1)
            ),
            Verdict::Wait
        );
        assert_eq!(
            trial.on_probe(Ok("reached tetherd".into()), start + Duration::from_secs(2)),
            Verdict::Keep {
                reason: "reached tetherd 2.0 s after the change".into()
            }
        );
        let Verdict::RollBack { reason } = trial.on_probe(
            Err("network is unreachable".into()),
            start + Duration::from_secs(5),
        ) else {
            panic!("rolled back at the deadline");
        };
        assert!(reason.contains("within 5 s"), "{reason}");
        assert!(reason.contains("network is unreachable"), "{reason}");
        let Verdict::RollBack { reason } = Trial::new(start, Duration::from_secs(3)).expired()
        else {
            panic!("expired");
        };
        assert!(reason.contains("no probe finished"), "{reason}");
    }
}
