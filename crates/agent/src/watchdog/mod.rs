//! The watchdog (issue 19): the agent feeds a hardware watchdog (the
//! spec's `watchdog` section) or systemd's (`WatchdogSec=`), and only
//! while its own health checks pass ([`health`]), so a hung agent lets
//! the machine (or systemd) reset it. The status reports whether it feeds
//! and, if not, why.
//!
//! Closing: a crash or an abort closes the device armed, and the machine
//! resets unless an agent feeds it again in time — what a watchdog is
//! for. The magic `V` that disarms it is written only on purpose: when
//! the spec turns the watchdog off or moves it to another device, and
//! when the agent stops cleanly with `--watchdog-disarm-on-stop true`
//! (off by default: an agent stopped for good is a device nobody
//! manages, and an update restarts it well within any timeout).

pub mod feeder;
pub mod health;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::host::{WatchdogConfig, WatchdogMode, WatchdogState, WatchdogStatus};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::spec::AppliedSpec;
use feeder::WatchdogDevice;
use health::{Heartbeat, Observations, StoreProbe, SupervisorPing};
use tether_proto::sd_notify::SystemdWatchdog;

/// The watchdog's settings from the agent's config (the spec says
/// whether and where; these say how the agent checks itself).
#[derive(Debug, Clone)]
pub struct WatchdogOptions {
    /// The store check's probe file ([`health::PROBE_FILE`] in the state directory).
    pub probe_file: PathBuf,
    pub store_probe_every: Duration,
    /// Whether a clean stop disarms the device.
    pub disarm_on_stop: bool,
    /// systemd's watchdog, when systemd set one for the agent; it wins
    /// over the spec's device.
    pub systemd: Option<SystemdWatchdog>,
}

/// What the health checks look at, filled in as the agent's parts start.
#[derive(Clone)]
pub struct HealthSources {
    /// The MQTT session loop beats it.
    pub heartbeat: Arc<Heartbeat>,
    /// Set while the deployments' supervisor runs.
    pub supervisor: watch::Sender<Option<SupervisorPing>>,
}

impl Default for HealthSources {
    fn default() -> Self {
        Self {
            heartbeat: Arc::default(),
            supervisor: watch::channel(None).0,
        }
    }
}

/// What the watchdog should be doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Off,
    Device { path: PathBuf, interval: Duration },
    Systemd(SystemdWatchdog),
}

/// systemd's watchdog when systemd set one (it kills the agent without
/// notifications, whatever the spec says), else the spec's device.
fn target(systemd: Option<&SystemdWatchdog>, config: &WatchdogConfig) -> Target {
    match systemd {
        Some(systemd) => Target::Systemd(systemd.clone()),
        None if config.enabled => Target::Device {
            path: PathBuf::from(&config.device),
            interval: Duration::from_secs(config.interval_seconds.into()),
        },
        None => Target::Off,
    }
}

/// The running watchdog; [`Watchdog::stop`] ends it on purpose.
pub struct Watchdog {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Follows the applied spec's `watchdog` section and feeds while
    /// healthy, reporting its state to `report`.
    pub fn start(
        options: WatchdogOptions,
        sources: HealthSources,
        spec: watch::Receiver<AppliedSpec>,
        report: watch::Sender<Option<WatchdogStatus>>,
    ) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(options, sources, spec, report, stopped));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops feeding; the device is disarmed if the options say so.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Not stopped on purpose: the device closes armed.
        self.task.abort();
    }
}

async fn run(
    options: WatchdogOptions,
    sources: HealthSources,
    mut spec: watch::Receiver<AppliedSpec>,
    report: watch::Sender<Option<WatchdogStatus>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut probe = StoreProbe::new(options.probe_file.clone(), options.store_probe_every);
    let mut device: Option<WatchdogDevice> = None;
    loop {
        let config = spec.borrow_and_update().watchdog.clone();
        let target = target(options.systemd.as_ref(), &config);
        let kept = match (&target, &device) {
            (Target::Device { path, .. }, Some(open)) => open.path() == path,
            _ => false,
        };
        if !kept && let Some(mut old) = device.take() {
            // The spec turned it off or moved it: on purpose.
            old.close(true);
        }
        let started = Instant::now();
        let interval = match &target {
            Target::Off => {
                report.send_if_modified(|reported| reported.take().is_some());
                tokio::select! {
                    _ = &mut stop => return,
                    changed = spec.changed() => if changed.is_err() { return },
                }
                continue;
            }
            Target::Device { interval, .. } => *interval,
            Target::Systemd(systemd) => systemd.interval(),
        };
        let verdict = check(&sources, &mut probe).await;
        let fed = verdict.and_then(|()| match &target {
            Target::Device { path, .. } => device
                .get_or_insert_with(|| WatchdogDevice::new(path.clone()))
                .feed(),
            Target::Systemd(systemd) => systemd.notify(),
            Target::Off => Ok(()),
        });
        let status = status(&target, fed);
        report.send_if_modified(|reported| {
            if reported.as_ref() == Some(&status) {
                return false;
            }
            match (&status.state, &status.reason) {
                (WatchdogState::Stopped, Some(reason)) => {
                    tracing::warn!(mode = ?status.mode, reason, "watchdog not fed");
                }
                _ => tracing::info!(mode = ?status.mode, device = ?status.device, "feeding the watchdog"),
            }
            *reported = Some(status);
            true
        });
        tokio::select! {
            _ = &mut stop => break,
            changed = spec.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(started + interval) => {}
        }
    }
    if let Some(mut device) = device {
        device.close(options.disarm_on_stop);
    }
}

/// Runs the health checks: `Err` with every failing one's reason.
async fn check(sources: &HealthSources, probe: &mut StoreProbe) -> Result<(), String> {
    let now = std::time::Instant::now();
    let heartbeat_age = sources.heartbeat.age(now);
    let store = probe.check(now).await;
    let supervisor = sources.supervisor.borrow().clone();
    let supervisor = match supervisor {
        Some(supervisor) => Some(supervisor.ping(health::ANSWER_TIMEOUT).await),
        None => None,
    };
    let observed = Observations {
        heartbeat_age,
        store,
        supervisor,
    };
    health::evaluate(&observed, health::HEARTBEAT_STALE_AFTER).map_err(|reasons| reasons.join("; "))
}

fn status(target: &Target, fed: Result<(), String>) -> WatchdogStatus {
    let (mode, device) = match target {
        Target::Device { path, .. } => (WatchdogMode::Device, Some(path.display().to_string())),
        _ => (WatchdogMode::Systemd, None),
    };
    let (state, reason) = match fed {
        Ok(()) => (WatchdogState::Feeding, None),
        Err(mut reason) => {
            if reason.len() > WatchdogStatus::MAX_REASON_BYTES {
                let mut end = WatchdogStatus::MAX_REASON_BYTES - 3;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
                reason.push('…');
            }
            (WatchdogState::Stopped, Some(reason))
        }
    };
    WatchdogStatus {
        mode,
        device,
        state,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_wins_over_the_spec_and_a_disabled_spec_is_off() {
        let enabled = WatchdogConfig {
            enabled: true,
            device: "/dev/watchdog1".into(),
            interval_seconds: 7,
        };
        assert_eq!(
            target(None, &enabled),
            Target::Device {
                path: "/dev/watchdog1".into(),
                interval: Duration::from_secs(7)
            }
        );
        assert_eq!(target(None, &WatchdogConfig::default()), Target::Off);
        let systemd = SystemdWatchdog {
            socket: "/run/systemd/notify".into(),
            timeout: Duration::from_secs(30),
        };
        for config in [enabled, WatchdogConfig::default()] {
            assert_eq!(
                target(Some(&systemd), &config),
                Target::Systemd(systemd.clone())
            );
        }
    }

    #[test]
    fn a_long_reason_is_cut_to_the_reported_limit() {
        let target = Target::Device {
            path: "/dev/watchdog".into(),
            interval: Duration::from_secs(5),
        };
        let status = status(&target, Err("é".repeat(2000)));
        assert_eq!(status.state, WatchdogState::Stopped);
        assert!(status.reason.expect("a reason").len() <= WatchdogStatus::MAX_REASON_BYTES);
    }
}
