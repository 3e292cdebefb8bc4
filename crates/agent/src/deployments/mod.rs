//! Desired state on the device (issue 17): the spec's `deployments`
//! section, reconciled by its parts — Helm releases on the device's
//! cluster and supervised processes with their config files — each
//! reporting how every deployment is doing. The reports are merged per
//! deployment into the reported status, which goes out again whenever one
//! changes.

pub mod charts;
pub mod supervisor;

use std::collections::BTreeMap;

use tether_proto::desired::DeploymentStatus;
use tokio::sync::watch;

/// The parts of the agent that run a deployment's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Helm releases on the cluster.
    Charts = 0,
    /// Supervised processes and config files.
    Processes = 1,
    /// The agent's own release ([`crate::self_update`]).
    Agent = 2,
}

/// Each part's report, indexed by [`Part`].
pub type PartReports = [BTreeMap<String, DeploymentStatus>; 3];

/// Each part's latest report, shared with the status that carries them.
#[derive(Clone)]
pub struct DeploymentReports {
    parts: watch::Sender<PartReports>,
}

impl Default for DeploymentReports {
    fn default() -> Self {
        Self {
            parts: watch::channel(PartReports::default()).0,
        }
    }
}

impl DeploymentReports {
    /// Replaces what `part` reports, deployment by deployment; subscribers
    /// hear of it only if it changed.
    pub fn set(&self, part: Part, statuses: BTreeMap<String, DeploymentStatus>) {
        self.parts.send_if_modified(|parts| {
            let slot = &mut parts[part as usize];
            let changed = *slot != statuses;
            *slot = statuses;
            changed
        });
    }

    /// Follows the reports: wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<PartReports> {
        self.parts.subscribe()
    }
}

/// One status per deployment: a deployment with charts and processes is
/// as well as its worse part.
pub fn merged(parts: &PartReports) -> BTreeMap<String, DeploymentStatus> {
    let mut merged = BTreeMap::<String, DeploymentStatus>::new();
    for (name, status) in parts.iter().flatten() {
        let status = match merged.remove(name) {
            Some(earlier) => earlier.combine(status.clone()),
            None => status.clone(),
        };
        merged.insert(name.clone(), status);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::desired::DeploymentState;

    fn status(state: DeploymentState) -> DeploymentStatus {
        DeploymentStatus {
            version: "1".into(),
            state,
            reason: None,
        }
    }

    #[test]
    fn a_deployment_is_as_well_as_its_worse_part_and_unchanged_reports_wake_nobody() {
        let reports = DeploymentReports::default();
        let mut follow = reports.subscribe();
        reports.set(
            Part::Charts,
            [("web".to_owned(), status(DeploymentState::Ready))].into(),
        );
        reports.set(
            Part::Processes,
            [
                ("web".to_owned(), status(DeploymentState::Progressing)),
                ("db".to_owned(), status(DeploymentState::Ready)),
            ]
            .into(),
        );
        assert!(follow.has_changed().expect("open"));
        let merged = merged(&follow.borrow_and_update());
        assert_eq!(merged["web"].state, DeploymentState::Progressing);
        assert_eq!(merged["db"].state, DeploymentState::Ready);
        reports.set(
            Part::Charts,
            [("web".to_owned(), status(DeploymentState::Ready))].into(),
        );
        assert!(!follow.has_changed().expect("open"));
    }
}
