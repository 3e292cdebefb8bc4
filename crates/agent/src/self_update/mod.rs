//! Agent self-update (issue 19, ADR 0033). A deployment of the device's
//! spec may carry an agent release ([`AgentRelease`]); when its version is
//! not the running one, the agent checks the release's signature with the
//! key it pinned, downloads its platform's binary in the background at the
//! spec's rate, checks its size and SHA-256, waits for running actions to
//! finish (no new one starts), swaps the binary in (keeping the previous
//! one), records a trial, and execs the new binary with a guard running
//! the previous one. The new agent commits its trial once connected and
//! reported; otherwise the guard (or the next start) rolls back, and the
//! restored agent reports the release failed.
//!
//! Files, in `STATE_DIR/self-update/`: `signing-key` (the pinned key),
//! `trial.json`, `failed.json`, `download/` (partial downloads),
//! `guard.log` (the guard's output, and the restored agent's if the guard
//! started it; emptied when a guard starts, the last run's tail kept in
//! `guard.log.1`), `guard.pid`.
//!
//! Pure parts: [`plan`], [`verify`], [`trial`], [`failures`], [`pin`]'s
//! check, [`download::pace`]; IO: [`download`], [`swap`], [`guard`], and
//! the task here.

pub mod download;
pub mod failures;
pub mod gate;
pub mod guard;
pub mod pin;
pub mod plan;
pub mod signing_key;
pub mod swap;
pub mod trial;
pub mod verify;
pub mod version;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tether_proto::desired::agent_release::{AgentRelease, platform};
use tether_proto::desired::{DeploymentState, DeploymentStatus};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::deployments::{DeploymentReports, Part};
use crate::spec::AppliedSpec;
pub use gate::ActionGate;
pub use version::agent_version;

use failures::{Failure, FailuresFile};
use pin::PinnedKey;
use plan::{Decision, Situation, Update};
use trial::{AtStart, Now, Phase, Running, Trial, TrialFile};

/// The self-update's directory in the state directory.
pub const DIR: &str = "self-update";
/// The guard's output, in [`DIR`].
pub const GUARD_LOG: &str = "guard.log";
/// The guard's process id, in [`DIR`]; after a rollback outside systemd
/// the restored agent runs as that process.
pub const GUARD_PID: &str = "guard.pid";
/// How long a new binary has to connect and report by default.
pub const DEFAULT_TRIAL: Duration = Duration::from_secs(120);

/// How the agent updates itself.
#[derive(Debug, Clone)]
pub struct SelfUpdateConfig {
    /// The running executable, as it was at start (before any swap).
    pub exe: PathBuf,
    /// How long a new binary has to connect and report.
    pub trial: Duration,
}

/// A new binary to run in place of this process, once it has stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub exe: PathBuf,
    /// Start the guard (the previous binary) first: not when the binary
    /// to run is the restored previous one.
    pub guard: Option<PathBuf>,
    pub state_dir: PathBuf,
}

/// Pins the release key tetherd named at enrollment (ADR 0033); without
/// one, tetherd's key is fetched from it when the first release comes.
pub fn pin_at_enrollment(state_dir: &Path, key: Option<&str>) {
    let Some(key) = key else {
        tracing::info!(
            "tetherd named no release signing key; it is fetched from tetherd when the first agent release comes"
        );
        return;
    };
    let pinned = PinnedKey::new(state_dir);
    match pinned.pin(key) {
        Ok(()) => tracing::info!(key, "pinned tetherd's release signing key"),
        Err(error) => tracing::error!(
            %error,
            "cannot pin the release signing key in {}; it is fetched from tetherd when the first release comes",
            pinned.path().display()
        ),
    }
}

/// Settles a trial left from before this start: a rollback whose time
/// ran out while nobody watched (a reboot during the trial) restores the
/// previous binary and returns it to run instead. A staged record is a
/// trial if the executable is its binary (the rename happened before a
/// crash), and is dropped otherwise.
pub fn at_start(state_dir: &Path) -> Option<Restart> {
    let trials = TrialFile::new(state_dir);
    let trial = match trials.load() {
        Ok(trial) => trial,
        Err(error) => {
            tracing::error!(%error, "cannot read {}", trials.path().display());
            return None;
        }
    };
    let exe_sha256 = trial
        .as_ref()
        .filter(|trial| trial.phase == Phase::Staged)
        .and_then(|trial| match download::sha256_file(&trial.exe) {
            Ok((_, sha256)) => Some(sha256),
            Err(error) => {
                tracing::warn!(%error, "cannot read {} to tell whether the swap happened", trial.exe.display());
                None
            }
        });
    let now = Now::read();
    let running = Running {
        version: agent_version(),
        exe_sha256: exe_sha256.as_deref(),
    };
    let decision = trial::at_start(trial.as_ref(), running, &now);
    let recorded = trial?;
    // Promoted from staged, and its end put on this boot's clock.
    let trial = recorded.on_trial(&now);
    match decision {
        AtStart::Nothing => None,
        AtStart::Discard => {
            tracing::warn!(
                to = recorded.to,
                "agent {} was staged but never swapped in (a stop before the rename); dropping its record",
                recorded.to
            );
            if let Err(error) = trials.remove() {
                tracing::error!(%error, "cannot drop the staged trial record");
            }
            swap::remove_staged_copies(&recorded.exe);
            None
        }
        AtStart::OnTrial => {
            if trial != recorded
                && let Err(error) = trials.save(&trial)
            {
                tracing::error!(%error, "cannot record the trial of agent {}", trial.to);
            }
            tracing::info!(
                from = trial.from,
                to = trial.to,
                "agent {} on trial for {} s more; it stays once it has connected and reported",
                trial.to,
                trial.remaining(&now).as_secs()
            );
            // A restart during the trial (a crash, systemd's Restart=, a
            // reboot) may have taken the guard with it (review H1).
            if !guard_alive(state_dir) {
                let args: Vec<OsString> = std::env::args_os().skip(1).collect();
                if let Err(error) = start_guard(&swap::previous_path(&trial.exe), state_dir, &args)
                {
                    tracing::error!(%error, "cannot start the update guard again");
                }
            }
            None
        }
        AtStart::RecordRollBack => {
            record_rollback(state_dir, &trial);
            None
        }
        AtStart::RollBack => {
            if let Err(error) = swap::restore(&trial.exe) {
                tracing::error!(%error, "the trial of agent {} is over, but the previous binary cannot be put back; running on", trial.to);
                return None;
            }
            record_rollback(state_dir, &trial);
            Some(Restart {
                exe: trial.exe.clone(),
                guard: None,
                state_dir: state_dir.to_owned(),
            })
        }
    }
}

fn record_rollback(state_dir: &Path, trial: &Trial) {
    let rolled_back = trial.rolled_back();
    let reason = rolled_back.reason.clone().unwrap_or_default();
    tracing::error!("{reason}");
    if let Err(error) = TrialFile::new(state_dir).save(&rolled_back) {
        tracing::error!(%error, "cannot record the rollback");
    }
    if let Err(error) = FailuresFile::new(state_dir).record(Failure {
        version: trial.to.clone(),
        sha256: trial.sha256.clone(),
        reason,
    }) {
        tracing::error!(%error, "cannot record the failed release");
    }
}

/// Starts the guard (if any) and execs the new binary with this process's
/// arguments and environment. Returns only if that fails.
pub fn restart(restart: &Restart) -> std::io::Error {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(previous) = &restart.guard
        && let Err(error) = start_guard(previous, &restart.state_dir, &args)
    {
        // Without a guard nothing rolls a bad binary back but the next
        // start after the deadline: still better than not updating.
        tracing::error!(%error, "cannot start the update guard");
    }
    tracing::info!("running {}", restart.exe.display());
    Command::new(&restart.exe).args(args).exec()
}

/// Whether the guard recorded in `guard.pid` still runs: a live process
/// whose command line is the guard's (not a process that took its pid).
fn guard_alive(state_dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(state_dir.join(DIR).join(GUARD_PID)) else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<u32>() else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg == guard::SUBCOMMAND.as_bytes())
    })
}

/// Starts the guard from `previous`. Under systemd it runs as a transient
/// unit of its own (`systemd-run`), outside the agent's cgroup, so a
/// crash of the agent on trial, which makes systemd stop the agent's
/// unit, does not take the guard with it.
fn start_guard(previous: &Path, state_dir: &Path, agent_args: &[OsString]) -> std::io::Result<()> {
    let log_path = state_dir.join(DIR).join(GUARD_LOG);
    let log = guard::start_log(&state_dir.join(DIR))?;
    let args = guard::GuardArgs {
        state_dir: state_dir.to_owned(),
        pid: std::process::id(),
        agent_args: agent_args.to_vec(),
    };
    let mut command = if std::env::var_os("INVOCATION_ID").is_some() {
        let mut command = Command::new("systemd-run");
        command
            .args(["--quiet", "--collect", "--service-type=exec", "--"])
            .arg(previous);
        command
    } else {
        Command::new(previous)
    };
    let child = command
        .arg(guard::SUBCOMMAND)
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    if let Err(error) = std::fs::write(
        state_dir.join(DIR).join(GUARD_PID),
        format!("{}\n", child.id()),
    ) {
        tracing::warn!(%error, "cannot record the update guard's pid");
    }
    tracing::info!(
        guard = child.id(),
        "update guard started from {} (output in {})",
        previous.display(),
        log_path.display()
    );
    Ok(())
}

/// What the self-update task works with.
pub struct SelfUpdate {
    pub config: SelfUpdateConfig,
    pub state_dir: PathBuf,
    /// tetherd's API and CA, as the agent enrolled with them.
    pub api_url: String,
    pub ca_pem: String,
    pub clock: Arc<ServerClock>,
}

/// The parts of the agent the task follows and drives.
pub struct Links {
    pub spec: watch::Receiver<AppliedSpec>,
    pub reports: DeploymentReports,
    pub gate: ActionGate,
    /// Whether the session is up: connected, birth and status published.
    pub online: watch::Receiver<bool>,
    /// Where the decided restart goes; the agent then stops and runs it.
    pub restart: watch::Sender<Option<Restart>>,
}

/// Why one attempt at an update did not end in a restart.
enum Attempt {
    /// Worth trying again later (the network, tetherd).
    Later(String),
    /// The release is wrong for this device: recorded, not tried again.
    Failed(String),
}

impl SelfUpdate {
    /// Follows the spec until a restart is decided.
    pub async fn run(self, mut links: Links) {
        let trials = TrialFile::new(&self.state_dir);
        let failures_file = FailuresFile::new(&self.state_dir);
        let pinned = PinnedKey::new(&self.state_dir);
        let mut backoff = Backoff::default();
        loop {
            let applied = links.spec.borrow_and_update().clone();
            let trial = trials.load().unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the trial record");
                None
            });
            let key = match pinned.load() {
                Ok(key) => key,
                Err(error) => {
                    let reason = format!(
                        "cannot read the pinned release key {}: {error}",
                        pinned.path().display()
                    );
                    self.report_all(&applied, &links.reports, DeploymentState::Failed, &reason);
                    if links.spec.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // The new agent on trial is connected and has reported: it
            // stays, whatever its spec says now.
            if let Some(trial) = &trial
                && trial::at_start(
                    Some(trial),
                    Running {
                        version: agent_version(),
                        exe_sha256: None,
                    },
                    &Now::read(),
                ) == AtStart::OnTrial
                && *links.online.borrow_and_update()
                && self.commit(&trials, trial)
            {
                continue;
            }
            let failures = failures_file.load();
            let decision = plan::decide(&Situation {
                deployments: &applied.deployments,
                running: agent_version(),
                platform: &platform(),
                pinned: key.as_deref(),
                failures: &failures,
                trial: trial.as_ref(),
                now: Now::read(),
            });
            let mut retry = None;
            match decision {
                Decision::Idle => {
                    download::remove_parts(&self.state_dir, None);
                    links.reports.set(Part::Agent, Default::default());
                }
                Decision::Report { deployment, status } => {
                    // Nothing to fetch: a partial download is of a release
                    // no longer wanted, or failed (review L7).
                    download::remove_parts(&self.state_dir, None);
                    links
                        .reports
                        .set(Part::Agent, [(deployment, status)].into());
                }
                Decision::FetchKey { deployment, status } => match self.pin_tetherds_key().await {
                    Ok(()) => continue,
                    Err(reason) => {
                        let delay = backoff.next_delay(rand::random());
                        let reason =
                            format!("{reason}; trying again in {:.0} s", delay.as_secs_f64());
                        tracing::warn!("{reason}");
                        let status = DeploymentStatus {
                            reason: Some(reason),
                            ..status
                        };
                        links
                            .reports
                            .set(Part::Agent, [(deployment, status)].into());
                        retry = Some(delay);
                    }
                },
                Decision::Update(update) => {
                    let rate = applied.updates.download_bytes_per_second;
                    let attempt = tokio::select! {
                        attempt = self.update(&update, &links.reports, &links.gate, rate) => attempt,
                        Ok(()) = links.spec.changed() => {
                            links.gate.open();
                            continue;
                        }
                    };
                    // Shut until the restart once swapped; open again otherwise.
                    if attempt.is_err() {
                        links.gate.open();
                    }
                    match attempt {
                        Ok(restart) => {
                            links.restart.send_replace(Some(restart));
                            return;
                        }
                        Err(Attempt::Failed(reason)) => {
                            tracing::error!(version = update.release.version, "{reason}");
                            download::remove_parts(&self.state_dir, None);
                            if let Err(error) = failures_file.record(Failure {
                                version: update.release.version.clone(),
                                sha256: update.binary.sha256.clone(),
                                reason: reason.clone(),
                            }) {
                                tracing::error!(%error, "cannot record the failed release");
                            }
                            continue;
                        }
                        Err(Attempt::Later(reason)) => {
                            let delay = backoff.next_delay(rand::random());
                            tracing::warn!(
                                version = update.release.version,
                                "{reason}; trying again in {:.0} s",
                                delay.as_secs_f64()
                            );
                            report(
                                &links.reports,
                                &update,
                                DeploymentState::Progressing,
                                format!("{reason}; trying again in {:.0} s", delay.as_secs_f64()),
                            );
                            retry = Some(delay);
                        }
                    }
                }
            }
            let retried = async {
                match retry {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = links.spec.changed() => if changed.is_err() { return },
                Ok(()) = links.online.changed() => {}
                () = retried => {}
            }
        }
    }

    /// Fetches tetherd's release signing key and pins it (review M5).
    async fn pin_tetherds_key(&self) -> Result<(), String> {
        let key = signing_key::fetch(&self.api_url, &self.ca_pem, self.clock.clone())
            .await
            .map_err(|error| {
                format!(
                    "cannot fetch tetherd's release signing key: {}",
                    crate::actions::chain(&error)
                )
            })?;
        let pinned = PinnedKey::new(&self.state_dir);
        pinned.pin(&key).map_err(|error| {
            format!(
                "cannot pin the release signing key in {}: {error}",
                pinned.path().display()
            )
        })?;
        tracing::info!(key, "pinned tetherd's release signing key, fetched from it");
        Ok(())
    }

    /// The new agent is healthy: it stays. Not once its time ran out, when
    /// the guard may be rolling back already.
    fn commit(&self, trials: &TrialFile, trial: &Trial) -> bool {
        if trial.remaining(&Now::read()).is_zero() {
            return false;
        }
        let committed = Trial {
            phase: Phase::Committed,
            ..trial.clone()
        };
        match trials.save(&committed) {
            Ok(()) => {
                tracing::info!(
                    from = trial.from,
                    to = trial.to,
                    "agent {} connected and reported: its trial is committed",
                    trial.to
                );
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot commit the trial of agent {}", trial.to);
                false
            }
        }
    }

    fn report_all(
        &self,
        applied: &AppliedSpec,
        reports: &DeploymentReports,
        state: DeploymentState,
        reason: &str,
    ) {
        let statuses = applied
            .deployments
            .iter()
            .filter(|(_, d)| d.agent.is_some())
            .map(|(name, d)| {
                (
                    name.clone(),
                    DeploymentStatus {
                        version: d.version.clone(),
                        state,
                        reason: Some(reason.to_owned()),
                    },
                )
            })
            .collect();
        reports.set(Part::Agent, statuses);
    }

    /// Downloads, checks and swaps in `update`'s binary, and records the
    /// trial.
    async fn update(
        &self,
        update: &Update,
        reports: &DeploymentReports,
        gate: &ActionGate,
        rate: Option<u64>,
    ) -> Result<Restart, Attempt> {
        let release: &AgentRelease = &update.release;
        let version = &release.version;
        let running = agent_version();
        let part = download::part_path(&self.state_dir, version, &update.binary.sha256);
        download::remove_parts(&self.state_dir, Some(&part));
        let client = download::client(&self.ca_pem, self.clock.clone())
            .map_err(|e| Attempt::Later(crate::actions::chain(&e)))?;
        let size = update.binary.size;
        report(
            reports,
            update,
            DeploymentState::Progressing,
            format!("downloading agent {version} ({size} bytes)"),
        );
        let fetch = download::Fetch {
            client: &client,
            url: download::binary_url(&self.api_url, version, &platform()),
            token: &release.download_token,
            part: &part,
            size,
            bytes_per_second: rate,
        };
        fetch
            .run(|held| {
                // In tenths, so the status changes a few times, not per chunk.
                let tenths = held.saturating_mul(10) / size.max(1);
                report(
                    reports,
                    update,
                    DeploymentState::Progressing,
                    format!(
                        "downloading agent {version}: {}% of {size} bytes",
                        tenths * 10
                    ),
                );
            })
            .await
            .map_err(|error| {
                let reason = format!(
                    "download of agent {version} failed: {}",
                    crate::actions::chain(&error)
                );
                if error.is_transient() {
                    Attempt::Later(reason)
                } else {
                    Attempt::Failed(reason)
                }
            })?;
        let (have, sha256) = download::digest(&part).await.map_err(|e| {
            Attempt::Later(format!("cannot read the download {}: {e}", part.display()))
        })?;
        if let Err(error) = verify::check_download(release, &update.binary, have, &sha256) {
            let _ = std::fs::remove_file(&part);
            return Err(Attempt::Failed(error.to_string()));
        }
        tracing::info!(version, sha256, "downloaded and verified agent {version}");

        gate.close();
        let running_actions = gate.busy();
        if running_actions > 0 {
            tracing::info!(
                running_actions,
                "agent {version} waits for the running actions to finish"
            );
            report(
                reports,
                update,
                DeploymentState::Progressing,
                format!(
                    "agent {version} downloaded and verified; waiting for {running_actions} running action(s) to finish"
                ),
            );
        }
        gate.until_idle().await;

        let exe = &self.config.exe;
        let staged = Trial::staged(
            running,
            version,
            &sha256,
            exe,
            self.config.trial,
            &Now::read(),
        );
        // A full disk or a busy directory passes: try again later. Off
        // the runtime's thread: copying and syncing up to 256 MiB on an SD
        // card must not stall the session's keepalive or the watchdog's
        // feeding (review M2 of the second round).
        let trials = TrialFile::new(&self.state_dir);
        let installing = part.clone();
        tokio::task::spawn_blocking(move || swap::install_on_trial(&trials, &staged, &installing))
            .await
            .map_err(|e| Attempt::Later(format!("the swap did not finish: {e}")))?
            .map_err(|e| Attempt::Later(crate::actions::chain(&e)))?;
        let _ = std::fs::remove_file(&part);
        report(
            reports,
            update,
            DeploymentState::Progressing,
            format!("restarting on agent {version}"),
        );
        tracing::info!(
            from = running,
            to = version,
            "swapped agent {version} in (previous kept as {}); restarting on it",
            swap::previous_path(exe).display()
        );
        Ok(Restart {
            exe: exe.clone(),
            guard: Some(swap::previous_path(exe)),
            state_dir: self.state_dir.clone(),
        })
    }
}

fn report(reports: &DeploymentReports, update: &Update, state: DeploymentState, reason: String) {
    reports.set(
        Part::Agent,
        [(
            update.deployment.clone(),
            DeploymentStatus {
                version: update.deployment_version.clone(),
                state,
                reason: Some(reason),
            },
        )]
        .into(),
    );
}
