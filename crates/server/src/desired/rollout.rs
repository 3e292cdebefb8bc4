//! The staged rollout of a deployment's revision, without IO: given the
//! devices it targets and where each stands, what to do next — devices to
//! update (the next batch), devices to put back on the revision they had
//! (they failed), devices to take it off (no longer targeted) — and the
//! phase the rollout is in.
//!
//! A batch is sent, then waited for: each device reports the version it
//! was sent ready or failed, or counts as failed once the progress
//! deadline passes. A failed device goes back to the revision it had at
//! once. When a batch has settled and more than `maxFailurePercent` of the
//! devices updated to this revision so far failed, the rollout pauses; a
//! new revision, or resuming, goes on. Devices that start being targeted
//! later (a label set, a device added) join the next batch.

use chrono::{DateTime, TimeDelta, Utc};
use tether_proto::DeviceId;
use tether_proto::desired::DeploymentState;
use tether_proto::desired::resources::{RolloutPhase, RolloutPolicy};

/// Where one targeted (or formerly targeted) device stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStep {
    pub device: DeviceId,
    /// The revision in its spec; `None`: none.
    pub revision: Option<u64>,
    /// The revision it had before `revision`, to go back to.
    pub previous_revision: Option<u64>,
    /// The version string it was sent with `revision`.
    pub version: Option<String>,
    pub batch: Option<u32>,
    /// It failed this revision and was put back.
    pub rolled_back_from: Option<u64>,
    pub assigned_at: DateTime<Utc>,
    /// Its last report for this deployment: the version it is about and
    /// the state.
    pub reported: Option<(String, DeploymentState)>,
}

impl DeviceStep {
    /// How the device did with the revision it was sent, once known.
    fn outcome(&self, now: DateTime<Utc>, deadline: TimeDelta) -> Option<Outcome> {
        let reported = self
            .reported
            .as_ref()
            .filter(|(version, _)| Some(version) == self.version.as_ref())
            .map(|(_, state)| *state);
        match reported {
            Some(DeploymentState::Ready) => Some(Outcome::Ready),
            Some(DeploymentState::Failed) => Some(Outcome::Failed),
            _ if now - self.assigned_at >= deadline => Some(Outcome::TimedOut),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ready,
    Failed,
    TimedOut,
}

/// What the rollout does next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Devices to send the current revision, as batch `batch`.
    pub update: Vec<DeviceId>,
    pub batch: u32,
    /// Devices that failed: back to their previous revision (or none).
    pub roll_back: Vec<(DeviceId, Option<u64>)>,
    /// Devices the deployment no longer targets: off them.
    pub remove: Vec<DeviceId>,
    /// Devices that timed out (counted as failed), for the reason shown.
    pub timed_out: Vec<DeviceId>,
    pub phase: Option<RolloutPhase>,
    pub reason: Option<String>,
}

/// The next step of the rollout of `revision`. `targeted` are the devices
/// the deployment targets now; `steps` every device it has a record of;
/// `is_held`: whether a device takes no new revision now (an update lock,
/// outside its maintenance windows) — it waits, and the batches go on
/// without it.
pub fn plan(
    revision: u64,
    phase: RolloutPhase,
    policy: &RolloutPolicy,
    targeted: &[DeviceId],
    steps: &[DeviceStep],
    is_held: impl Fn(&DeviceId) -> bool,
    now: DateTime<Utc>,
) -> Plan {
    let deadline = TimeDelta::seconds(i64::from(policy.progress_deadline_seconds));
    let mut plan = Plan::default();
    let is_targeted = |device: &DeviceId| targeted.binary_search(device).is_ok();
    plan.remove = steps
        .iter()
        .filter(|s| {
            !is_targeted(&s.device) && (s.revision.is_some() || phase == RolloutPhase::Deleting)
        })
        .map(|s| s.device.clone())
        .collect();
    if phase == RolloutPhase::Deleting {
        return plan;
    }

    let mut in_flight = 0usize;
    let mut updated = 0usize;
    let mut failed = 0usize;
    for step in steps.iter().filter(|s| is_targeted(&s.device)) {
        if step.rolled_back_from == Some(revision) {
            updated += 1;
            failed += 1;
            continue;
        }
        if step.revision != Some(revision) {
            continue;
        }
        updated += 1;
        match step.outcome(now, deadline) {
            None => in_flight += 1,
            Some(Outcome::Ready) => {}
            Some(outcome) => {
                failed += 1;
                if outcome == Outcome::TimedOut {
                    plan.timed_out.push(step.device.clone());
                }
                plan.roll_back
                    .push((step.device.clone(), step.previous_revision));
            }
        }
    }
    if phase == RolloutPhase::Paused || in_flight > 0 {
        return plan;
    }
    // The batch has settled.
    if failed * 100 > usize::from(policy.max_failure_percent) * updated {
        plan.phase = Some(RolloutPhase::Paused);
        plan.reason = Some(format!(
            "{failed} of the {updated} devices updated to revision {revision} failed, more than {}%; the failed ones went back to the revision they had. Fix the deployment (a new revision rolls out) or resume",
            policy.max_failure_percent
        ));
        return plan;
    }
    let waiting: Vec<&DeviceId> = targeted
        .iter()
        .filter(|device| {
            !steps.iter().any(|s| {
                &s.device == *device
                    && (s.revision == Some(revision) || s.rolled_back_from == Some(revision))
            })
        })
        .collect();
    if waiting.is_empty() {
        plan.phase = Some(RolloutPhase::Complete);
        return plan;
    }
    let free: Vec<&DeviceId> = waiting.iter().copied().filter(|d| !is_held(d)).collect();
    if free.is_empty() {
        plan.phase = Some(RolloutPhase::Progressing);
        plan.reason = Some(format!(
            "{} device(s) wait until they take updates (an update lock, or outside their maintenance windows); `tether deployments status` shows why",
            waiting.len()
        ));
        return plan;
    }
    let size = batch_size(policy, targeted.len());
    plan.update = free.into_iter().take(size).cloned().collect();
    plan.batch = steps
        .iter()
        .filter(|s| s.revision == Some(revision) || s.rolled_back_from == Some(revision))
        .filter_map(|s| s.batch)
        .max()
        .map_or(1, |last| last + 1);
    plan.phase = Some(RolloutPhase::Progressing);
    plan
}

/// Devices per batch: the policy's count, or its percentage of the
/// targeted devices, at least one.
pub fn batch_size(policy: &RolloutPolicy, targeted: usize) -> usize {
    let size = match policy.batch_size {
        Some(size) => usize::try_from(size).unwrap_or(usize::MAX),
        None => (targeted * usize::from(policy.batch_percent)).div_ceil(100),
    };
    size.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(n: usize) -> Vec<DeviceId> {
        let mut devices: Vec<DeviceId> = (0..n)
            .map(|i| DeviceId::new(format!("d{i:03}")).expect("name"))
            .collect();
        devices.sort();
        devices
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn policy(batch_size: u32, max_failure_percent: u8) -> RolloutPolicy {
        RolloutPolicy {
            batch_size: Some(batch_size),
            max_failure_percent,
            ..RolloutPolicy::default()
        }
    }

    /// Applies a plan as the service would.
    fn apply(steps: &mut Vec<DeviceStep>, plan: &Plan, revision: u64, now: DateTime<Utc>) {
        for device in &plan.update {
            let old = steps.iter().position(|s| &s.device == device);
            let previous = old.and_then(|i| steps[i].revision);
            let step = DeviceStep {
                device: device.clone(),
                revision: Some(revision),
                previous_revision: previous,
                version: Some(format!("{revision}-x")),
                batch: Some(plan.batch),
                rolled_back_from: None,
                assigned_at: now,
                reported: None,
            };
            match old {
                Some(i) => steps[i] = step,
                None => steps.push(step),
            }
        }
        for (device, previous) in &plan.roll_back {
            let step = steps
                .iter_mut()
                .find(|s| &s.device == device)
                .expect("known");
            step.rolled_back_from = step.revision;
            step.revision = *previous;
            step.version = previous.map(|p| format!("{p}-x"));
            step.reported = None;
        }
        steps.retain(|s| !plan.remove.contains(&s.device));
    }

    fn report(steps: &mut [DeviceStep], device: &DeviceId, state: DeploymentState) {
        let step = steps
            .iter_mut()
            .find(|s| &s.device == device)
            .expect("known");
        step.reported = Some((step.version.clone().expect("sent"), state));
    }

    #[test]
    fn batches_go_out_one_after_the_other_and_complete() {
        let targeted = devices(5);
        let policy = policy(2, 10);
        let mut steps = Vec::new();
        let mut batches = Vec::new();
        for _ in 0..3 {
            let plan = plan(
                1,
                RolloutPhase::Progressing,
                &policy,
                &targeted,
                &steps,
                |_| false,
                t0(),
            );
            assert_eq!(plan.phase, Some(RolloutPhase::Progressing));
            batches.push(plan.update.len());
            apply(&mut steps, &plan, 1, t0());
            // Nothing more while the batch has not reported.
            let waiting = super::plan(
                1,
                RolloutPhase::Progressing,
                &policy,
                &targeted,
                &steps,
                |_| false,
                t0(),
            );
            assert!(
                waiting.update.is_empty() && waiting.phase.is_none(),
                "{waiting:?}"
            );
            for device in &plan.update {
                report(&mut steps, device, DeploymentState::Ready);
            }
        }
        assert_eq!(batches, [2, 2, 1]);
        let done = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(done.phase, Some(RolloutPhase::Complete));
        assert_eq!(steps.iter().filter_map(|s| s.batch).max(), Some(3));
    }

    #[test]
    fn a_report_of_another_version_does_not_count() {
        let targeted = devices(1);
        let policy = policy(1, 10);
        let mut steps = Vec::new();
        let first = plan(
            2,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        apply(&mut steps, &first, 2, t0());
        steps[0].reported = Some(("1-x".into(), DeploymentState::Ready));
        let next = plan(
            2,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(next, Plan::default(), "still waiting");
    }

    #[test]
    fn twenty_percent_failing_pauses_at_the_threshold_and_the_failed_go_back() {
        // 100 devices on revision 1; revision 2 fails on every fifth.
        let targeted = devices(100);
        let policy = policy(10, 10);
        let mut steps: Vec<DeviceStep> = targeted
            .iter()
            .map(|d| DeviceStep {
                device: d.clone(),
                revision: Some(1),
                previous_revision: None,
                version: Some("1-x".into()),
                batch: Some(1),
                rolled_back_from: None,
                assigned_at: t0(),
                reported: Some(("1-x".into(), DeploymentState::Ready)),
            })
            .collect();
        let plan_2 = plan(
            2,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(plan_2.update.len(), 10);
        assert_eq!(plan_2.batch, 1);
        apply(&mut steps, &plan_2, 2, t0());
        for (i, device) in plan_2.update.iter().enumerate() {
            let state = if i % 5 == 0 {
                DeploymentState::Failed
            } else {
                DeploymentState::Ready
            };
            report(&mut steps, device, state);
        }
        let settled = plan(
            2,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(settled.roll_back.len(), 2, "the two failed go back");
        assert!(
            settled
                .roll_back
                .iter()
                .all(|(_, previous)| *previous == Some(1))
        );
        assert_eq!(settled.phase, Some(RolloutPhase::Paused), "20% > 10%");
        assert!(settled.update.is_empty(), "no further batch");
        assert!(
            settled
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("2 of the 10"))
        );
        apply(&mut steps, &settled, 2, t0());
        assert_eq!(steps.iter().filter(|s| s.revision == Some(2)).count(), 8);
        assert_eq!(
            steps
                .iter()
                .filter(|s| s.rolled_back_from == Some(2))
                .count(),
            2
        );
        // Paused: nothing moves until resumed or a new revision.
        let paused = plan(
            2,
            RolloutPhase::Paused,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert!(paused.update.is_empty() && paused.roll_back.is_empty());
    }

    #[test]
    fn a_device_that_never_reports_counts_as_failed_at_the_deadline() {
        let targeted = devices(1);
        let policy = RolloutPolicy {
            progress_deadline_seconds: 60,
            ..policy(1, 0)
        };
        let mut steps = Vec::new();
        let first = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        apply(&mut steps, &first, 1, t0());
        let before = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0() + TimeDelta::seconds(59),
        );
        assert!(before.roll_back.is_empty());
        let after = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0() + TimeDelta::seconds(60),
        );
        assert_eq!(after.timed_out, targeted);
        assert_eq!(
            after.roll_back,
            [(targeted[0].clone(), None)],
            "nothing to go back to: off"
        );
        assert_eq!(after.phase, Some(RolloutPhase::Paused));
    }

    #[test]
    fn devices_no_longer_targeted_are_taken_off_and_new_ones_join() {
        let all = devices(3);
        let policy = policy(10, 10);
        let mut steps = Vec::new();
        let first = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &all[..2],
            &steps,
            |_| false,
            t0(),
        );
        apply(&mut steps, &first, 1, t0());
        for device in &all[..2] {
            report(&mut steps, device, DeploymentState::Ready);
        }
        let complete = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &all[..2],
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(complete.phase, Some(RolloutPhase::Complete));
        // d000 leaves the selector, d002 joins it.
        let targeted = vec![all[1].clone(), all[2].clone()];
        let next = plan(
            1,
            RolloutPhase::Complete,
            &policy,
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(next.remove, [all[0].clone()]);
        assert_eq!(next.update, [all[2].clone()]);
        assert_eq!(next.phase, Some(RolloutPhase::Progressing));
    }

    #[test]
    fn deleting_takes_it_off_every_device() {
        let targeted = devices(2);
        let mut steps = Vec::new();
        let first = plan(
            1,
            RolloutPhase::Progressing,
            &policy(5, 10),
            &targeted,
            &steps,
            |_| false,
            t0(),
        );
        apply(&mut steps, &first, 1, t0());
        let deleting = plan(
            1,
            RolloutPhase::Deleting,
            &policy(5, 10),
            &[],
            &steps,
            |_| false,
            t0(),
        );
        assert_eq!(deleting.remove, targeted);
        assert!(deleting.update.is_empty());
    }

    #[test]
    fn held_devices_are_passed_over_until_free_and_the_rollout_waits_for_them() {
        let targeted = devices(4);
        let policy = policy(2, 10);
        let held = [targeted[0].clone(), targeted[2].clone()];
        let is_held = |device: &DeviceId| held.contains(device);
        let mut steps = Vec::new();
        let first = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            is_held,
            t0(),
        );
        assert_eq!(first.update, [targeted[1].clone(), targeted[3].clone()]);
        apply(&mut steps, &first, 1, t0());
        for device in &first.update {
            report(&mut steps, device, DeploymentState::Ready);
        }
        let waiting = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            is_held,
            t0(),
        );
        assert!(waiting.update.is_empty());
        assert_eq!(
            waiting.phase,
            Some(RolloutPhase::Progressing),
            "not complete"
        );
        assert!(
            waiting
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("2 device(s) wait")),
            "{waiting:?}"
        );
        // Held devices that failed still go back; a freed device goes next.
        let freed = plan(
            1,
            RolloutPhase::Progressing,
            &policy,
            &targeted,
            &steps,
            |d: &DeviceId| *d == targeted[2],
            t0(),
        );
        assert_eq!(freed.update, [targeted[0].clone()]);
        assert_eq!(freed.reason, None);
    }

    #[test]
    fn batch_sizes_are_a_count_or_a_share_and_never_zero() {
        let share = RolloutPolicy {
            batch_percent: 25,
            ..RolloutPolicy::default()
        };
        assert_eq!(batch_size(&share, 100), 25);
        assert_eq!(batch_size(&share, 3), 1);
        assert_eq!(batch_size(&share, 0), 1);
        assert_eq!(batch_size(&policy(7, 10), 100), 7);
    }
}
