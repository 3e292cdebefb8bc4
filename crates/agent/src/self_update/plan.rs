//! What the agent does about the release its spec names, and what it
//! reports meanwhile: a pure function of the spec, the running version,
//! the pinned key, the recorded failures and the trial.

use chrono::{DateTime, Timelike as _, Utc};
use tether_proto::desired::agent_release::{AgentBinary, AgentRelease};
use tether_proto::desired::{DeploymentState, DeploymentStatus, Deployments};

use super::failures::Failures;
use super::pin::{KeyCheck, check_key};
use super::trial::{Now, Phase, Trial};
use super::verify::{self, VerifyError};
use super::version;

/// What the agent knows when it decides.
pub struct Situation<'a> {
    pub deployments: &'a Deployments,
    /// This agent's version.
    pub running: &'a str,
    pub platform: &'a str,
    pub pinned: Option<&'a str>,
    pub failures: &'a Failures,
    pub trial: Option<&'a Trial>,
    /// Both clocks: a trial's time left is judged as the guard judges it.
    pub now: Now,
}

/// A release to fetch and swap in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The deployment carrying the release, and its version (what the
    /// status is about).
    pub deployment: String,
    pub deployment_version: String,
    pub release: AgentRelease,
    pub binary: AgentBinary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No deployment carries a release: nothing to do or report.
    Idle,
    /// Nothing to do; report `status` for `deployment`.
    Report {
        deployment: String,
        status: DeploymentStatus,
    },
    Update(Update),
    /// No release key is pinned: fetch tetherd's, pin it, and decide
    /// again (the release's own key is never pinned). Meanwhile `status`
    /// is reported for `deployment`.
    FetchKey {
        deployment: String,
        status: DeploymentStatus,
    },
}

/// `HH:MM:SS UTC`, written out rather than with `format("%H:%M:%S")`:
/// a strftime string links chrono's format parser, about 11 kB of the
/// agent's resident code for one message (ADR 0031).
fn clock_time(at: &DateTime<Utc>) -> String {
    format!("{:02}:{:02}:{:02} UTC", at.hour(), at.minute(), at.second())
}

fn status(version: &str, state: DeploymentState, reason: Option<String>) -> DeploymentStatus {
    DeploymentStatus {
        version: version.to_owned(),
        state,
        reason,
    }
}

pub fn decide(situation: &Situation<'_>) -> Decision {
    let Some((name, deployment, release)) = situation
        .deployments
        .iter()
        .find_map(|(name, d)| d.agent.as_ref().map(|release| (name, d, release)))
    else {
        return Decision::Idle;
    };
    let report = |state, reason: Option<String>| Decision::Report {
        deployment: name.clone(),
        status: status(&deployment.version, state, reason),
    };
    let failed = |error: VerifyError| report(DeploymentState::Failed, Some(error.to_string()));
    if release.version == situation.running {
        return match situation.trial {
            Some(trial)
                if trial.is_pending()
                    && trial.to == situation.running
                    && !trial.remaining(&situation.now).is_zero() =>
            {
                report(
                    DeploymentState::Progressing,
                    Some(format!(
                        "agent {} on trial until {}: waiting to connect and report (else back to {})",
                        trial.to,
                        clock_time(&trial.deadline),
                        trial.from
                    )),
                )
            }
            _ => report(DeploymentState::Ready, None),
        };
    }
    if let Some(reason) = downgrade(&release.version, situation.running, release.allow_downgrade) {
        return report(DeploymentState::Failed, Some(reason));
    }
    let binary = match verify::binary_for(release, situation.platform) {
        Ok(binary) => binary,
        Err(error) => return failed(error),
    };
    if let Some(trial) = situation.trial {
        // One trial at a time: swapping again now would make the unproven
        // binary the one a rollback goes back to (review M6).
        if trial.is_pending() {
            return report(
                DeploymentState::Progressing,
                Some(format!(
                    "agent {} is on trial; {} waits until it is kept or rolled back",
                    trial.to, release.version
                )),
            );
        }
        // The binary runs but reports another version than its release's
        // name: fetching it again would loop (review M1).
        if trial.phase == Phase::Committed && trial.sha256 == binary.sha256 {
            return report(
                DeploymentState::Failed,
                Some(format!(
                    "release {}'s binary reports version {}: publish a binary stamped {}",
                    release.version, situation.running, release.version
                )),
            );
        }
    }
    if let Some(failure) = situation.failures.find(&release.version, &binary.sha256) {
        return report(DeploymentState::Failed, Some(failure.reason.clone()));
    }
    let key = match check_key(situation.pinned, &release.signing_key) {
        KeyCheck::Pinned => release.signing_key.as_str(),
        KeyCheck::NonePinned => {
            return Decision::FetchKey {
                deployment: name.clone(),
                status: status(
                    &deployment.version,
                    DeploymentState::Progressing,
                    Some(format!(
                        "fetching tetherd's release signing key to check agent release {}",
                        release.version
                    )),
                ),
            };
        }
        KeyCheck::Mismatch { pinned, offered } => {
            return failed(VerifyError::KeyMismatch {
                version: release.version.clone(),
                pinned,
                offered,
            });
        }
    };
    if let Err(error) = verify::check_signature(release, situation.platform, binary, key) {
        return failed(error);
    }
    Decision::Update(Update {
        deployment: name.clone(),
        deployment_version: deployment.version.clone(),
        release: release.clone(),
        binary: binary.clone(),
    })
}

/// Why release `offered` is refused as a downgrade of the `running`
/// agent, unless the deployment `allowed` it: an old signed release must
/// not be rolled out again unasked, with the flaws it had (review M7).
fn downgrade(offered: &str, running: &str, allowed: bool) -> Option<String> {
    if allowed {
        return None;
    }
    let allow = format!(
        "roll it out with `tether releases rollout {offered} --allow-downgrade` (allowAgentDowngrade) to take it anyway"
    );
    match version::compare(offered, running) {
        Some(std::cmp::Ordering::Less) => Some(format!(
            "agent release {offered} is older than the running {running}: refused as a downgrade; {allow}"
        )),
        // Another build of the same version (`1.2.0+a` over `1.2.0+b`,
        // `1.2` over `1.2.0`): not newer, so not taken unasked either
        // (second review L3). Equal strings never get here.
        Some(std::cmp::Ordering::Equal) => Some(format!(
            "agent release {offered} is not newer than the running {running} (the same version by semver): refused as a possible downgrade; {allow}"
        )),
        Some(std::cmp::Ordering::Greater) => None,
        None => Some(format!(
            "cannot tell whether agent release {offered} is older than the running {running} (not both semver versions): refused as a possible downgrade; {allow}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};
    use tether_proto::desired::DeploymentSpec;

    use super::super::failures::Failure;
    use super::super::verify::tests::signed_release;
    use super::*;

    #[test]
    fn a_trial_deadline_reads_as_strftime_would_write_it() {
        for at in [
            "2026-12-03T00:00:00Z",
            "2026-12-03T09:05:07.999Z",
            "2026-12-03T23:59:59Z",
        ] {
            let at: DateTime<Utc> = at.parse().expect("time");
            assert_eq!(
                clock_time(&at),
                at.format("%H:%M:%S UTC").to_string(),
                "{at}"
            );
        }
    }

    const PLATFORM: &str = "linux-x86_64";

    fn deployments(release: Option<AgentRelease>) -> Deployments {
        let spec: DeploymentSpec =
            serde_json::from_value(serde_json::json!({"version": "r7"})).expect("a deployment");
        [(
            "agent".to_owned(),
            DeploymentSpec {
                agent: release,
                ..spec
            },
        )]
        .into()
    }

    fn decide_with(
        deployments: &Deployments,
        running: &str,
        pinned: Option<&str>,
        failures: &Failures,
        trial: Option<&Trial>,
    ) -> Decision {
        decide(&Situation {
            deployments,
            running,
            platform: PLATFORM,
            pinned,
            failures,
            trial,
            now: Now::read(),
        })
    }

    fn failed_reason(decision: Decision) -> String {
        match decision {
            Decision::Report { status, .. } if status.state == DeploymentState::Failed => {
                status.reason.expect("a reason")
            }
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn a_new_release_is_fetched_once_tetherds_key_is_pinned_never_its_own() {
        let (_, release) = signed_release("0.2.0", PLATFORM, b"new");
        let deployments = deployments(Some(release.clone()));
        let none = Failures::default();
        // Nothing pinned: tetherd's key first, whatever the release names
        // (review M5).
        match decide_with(&deployments, "0.1.0", None, &none, None) {
            Decision::FetchKey { deployment, status } => {
                assert_eq!(deployment, "agent");
                assert_eq!(status.state, DeploymentState::Progressing);
                assert!(status.reason.expect("why").contains("signing key"));
            }
            other => panic!("not a key fetch: {other:?}"),
        }
        let Decision::Update(update) = decide_with(
            &deployments,
            "0.1.0",
            Some(&release.signing_key),
            &none,
            None,
        ) else {
            panic!("an update");
        };
        assert_eq!(update.deployment, "agent");
        assert_eq!(update.deployment_version, "r7");
        assert_eq!(
            decide_with(&Deployments::new(), "0.1.0", None, &none, None),
            Decision::Idle
        );
    }

    #[test]
    fn another_key_a_bad_signature_a_missing_platform_and_a_past_failure_are_refused() {
        let (_, release) = signed_release("0.2.0", PLATFORM, b"new");
        let (_, other) = signed_release("0.2.0", PLATFORM, b"other");
        let none = Failures::default();
        let reason = failed_reason(decide_with(
            &deployments(Some(release.clone())),
            "0.1.0",
            Some(&other.signing_key),
            &none,
            None,
        ));
        assert!(
            reason.contains(&release.signing_key) && reason.contains(&other.signing_key),
            "{reason}"
        );
        let mut forged = release.clone();
        forged.signing_key = other.signing_key.clone();
        let reason = failed_reason(decide_with(
            &deployments(Some(forged)),
            "0.1.0",
            Some(&other.signing_key),
            &none,
            None,
        ));
        assert!(reason.starts_with("bad signature"), "{reason}");
        let (_, arm) = signed_release("0.2.0", "linux-aarch64", b"arm");
        let reason = failed_reason(decide_with(
            &deployments(Some(arm.clone())),
            "0.1.0",
            Some(&arm.signing_key),
            &none,
            None,
        ));
        assert!(reason.contains("no binary"), "{reason}");
        let mut failures = Failures::default();
        failures.add(Failure {
            version: "0.2.0".into(),
            sha256: release.binaries[PLATFORM].sha256.clone(),
            reason: "0.2.0 did not report healthy within 10 s; rolled back to 0.1.0".into(),
        });
        let reason = failed_reason(decide_with(
            &deployments(Some(release.clone())),
            "0.1.0",
            Some(&release.signing_key),
            &failures,
            None,
        ));
        assert!(reason.contains("rolled back"), "{reason}");
    }

    #[test]
    fn an_older_release_is_refused_naming_both_versions_unless_the_deployment_allows_it() {
        // Review M7: an old signed release, rolled out again.
        let (_, mut old) = signed_release("0.1.0", PLATFORM, b"old");
        let key = old.signing_key.clone();
        let none = Failures::default();
        let reason = failed_reason(decide_with(
            &deployments(Some(old.clone())),
            "0.2.0",
            Some(&key),
            &none,
            None,
        ));
        assert!(
            reason.contains("0.1.0 is older than the running 0.2.0")
                && reason.contains("--allow-downgrade"),
            "{reason}"
        );
        // Refused before anything is fetched, the key included.
        let reason = failed_reason(decide_with(
            &deployments(Some(old.clone())),
            "0.2.0",
            None,
            &none,
            None,
        ));
        assert!(reason.contains("downgrade"), "{reason}");
        // A version that does not order is no way around it.
        let (_, nightly) = signed_release("nightly", PLATFORM, b"n");
        let reason = failed_reason(decide_with(
            &deployments(Some(nightly.clone())),
            "0.2.0",
            Some(&nightly.signing_key),
            &none,
            None,
        ));
        assert!(reason.contains("cannot tell"), "{reason}");
        // Another build of the running version is no way around it either.
        for same in ["0.2.0+other", "0.2"] {
            let (_, release) = signed_release(same, PLATFORM, b"same");
            let reason = failed_reason(decide_with(
                &deployments(Some(release.clone())),
                "0.2.0",
                Some(&release.signing_key),
                &none,
                None,
            ));
            assert!(
                reason.contains("not newer than the running 0.2.0"),
                "{reason}"
            );
        }
        // Newer, a pre-release of a newer one: updates.
        for newer in ["0.2.1", "0.3.0-rc.1"] {
            let (_, release) = signed_release(newer, PLATFORM, b"newer");
            assert!(matches!(
                decide_with(
                    &deployments(Some(release.clone())),
                    "0.2.0",
                    Some(&release.signing_key),
                    &none,
                    None
                ),
                Decision::Update(_)
            ));
        }
        old.allow_downgrade = true;
        assert!(matches!(
            decide_with(&deployments(Some(old)), "0.2.0", Some(&key), &none, None),
            Decision::Update(_)
        ));
    }

    #[test]
    fn the_running_release_is_ready_once_its_trial_is_committed() {
        let (_, release) = signed_release("0.2.0", PLATFORM, b"new");
        let deployments = deployments(Some(release.clone()));
        let none = Failures::default();
        let now = Utc::now();
        let mut trial = Trial {
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            sha256: release.binaries[PLATFORM].sha256.clone(),
            exe: "/x".into(),
            started_at: now,
            deadline: now + TimeDelta::seconds(60),
            ends: None,
            phase: Phase::Trial,
            reason: None,
        };
        match decide_with(&deployments, "0.2.0", None, &none, Some(&trial)) {
            Decision::Report { status, .. } => {
                assert_eq!(status.state, DeploymentState::Progressing);
                assert!(status.reason.expect("why").contains("on trial"));
            }
            other => panic!("{other:?}"),
        }
        trial.phase = Phase::Committed;
        match decide_with(&deployments, "0.2.0", None, &none, Some(&trial)) {
            Decision::Report { status, .. } => {
                assert_eq!(status.state, DeploymentState::Ready);
                assert_eq!(status.version, "r7");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_update_starts_during_a_trial_and_a_misstamped_release_is_not_fetched_again() {
        let (_, release) = signed_release("0.3.0", PLATFORM, b"newer");
        let deployments = deployments(Some(release.clone()));
        let none = Failures::default();
        let now = Utc::now();
        let mut trial = Trial {
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            sha256: "00".repeat(32),
            exe: "/x".into(),
            started_at: now,
            deadline: now + TimeDelta::seconds(60),
            ends: None,
            phase: Phase::Trial,
            reason: None,
        };
        match decide_with(&deployments, "0.2.0", None, &none, Some(&trial)) {
            Decision::Report { status, .. } => {
                assert_eq!(status.state, DeploymentState::Progressing);
                assert!(status.reason.expect("why").contains("on trial"));
            }
            other => panic!("{other:?}"),
        }
        // 0.3.0's binary, kept, but stamped otherwise.
        trial.to = "0.3.0".into();
        trial.sha256 = release.binaries[PLATFORM].sha256.clone();
        trial.phase = Phase::Committed;
        let reason = failed_reason(decide_with(
            &deployments,
            "0.1.0-dev",
            None,
            &none,
            Some(&trial),
        ));
        assert!(reason.contains("stamped 0.3.0"), "{reason}");
        // A staged record whose saves after the rename failed holds it
        // back too: its binary may be the one running (second review L2).
        trial.phase = Phase::Staged;
        trial.to = "0.2.0".into();
        assert!(matches!(
            decide_with(&deployments, "0.2.0", None, &none, Some(&trial)),
            Decision::Report { .. }
        ));
        trial.to = "0.3.0".into();
        // A trial that ended otherwise does not hold a new release back.
        trial.phase = Phase::RolledBack;
        trial.sha256 = "00".repeat(32);
        assert!(matches!(
            decide_with(
                &deployments,
                "0.1.0",
                Some(&release.signing_key),
                &none,
                Some(&trial)
            ),
            Decision::Update(_)
        ));
    }
}
