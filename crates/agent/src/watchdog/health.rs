//! The agent's own health, as the watchdog judges it before each feed:
//! the MQTT session loop makes progress ([`Heartbeat`]), the state
//! directory takes a write ([`StoreProbe`]), and the deployments'
//! supervisor answers ([`SupervisorPing`]). [`evaluate`] is the verdict,
//! without IO.
//!
//! Being offline is healthy: the session loop beats while it waits to
//! reconnect, so a device whose network is down is not reset for it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// The probe file the store check replaces, in the state directory.
pub const PROBE_FILE: &str = "watchdog-probe";
/// How often the session loop beats while it waits.
pub const PULSE: Duration = Duration::from_secs(1);
/// A session loop silent this long is wedged.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(15);
/// How long the supervisor and the store probe may take to answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// When the session loop last made progress. The loop beats through
/// [`Heartbeat::pulse`], a branch of its `select!` that never completes:
/// it runs whenever the loop waits, and stops when the loop is stuck
/// inside a step (or has ended), without ever cancelling the MQTT poll.
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds from `origin` to the last beat, plus one; 0: none yet.
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let since = self.origin.elapsed().as_millis() as u64 + 1;
        self.last.store(since, Ordering::Relaxed);
    }

    /// How long ago the last beat was at `now`; `None` before the first
    /// (the session has not started: enrolling, or waiting for approval).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let at = self.origin + Duration::from_millis(since - 1);
                Some(now.saturating_duration_since(at))
            }
        }
    }

    /// Beats every [`PULSE`] for as long as it is polled; never completes.
    pub async fn pulse(&self) -> Infallible {
        loop {
            self.beat();
            tokio::time::sleep(PULSE).await;
        }
    }
}

/// Asks the supervisor's loop to answer; it does between two steps.
#[derive(Debug, Clone)]
pub struct SupervisorPing(pub mpsc::Sender<oneshot::Sender<()>>);

impl SupervisorPing {
    /// `Err` with the reason unless the supervisor answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let (answer, answered) = oneshot::channel();
        let asked = async {
            self.0.send(answer).await.map_err(|_| ())?;
            answered.await.map_err(|_| ())
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err("the deployments' supervisor has stopped".to_owned()),
            Err(_) => Err(format!(
                "the deployments' supervisor did not answer within {} s",
                timeout.as_secs()
            )),
        }
    }
}

/// What the checks found, for [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Since the session loop's last beat; `None`: not started.
    pub heartbeat_age: Option<Duration>,
    /// Whether the state directory took the last probe write.
    pub store: Result<(), String>,
    /// The supervisor's answer; `None` while it does not run.
    pub supervisor: Option<Result<(), String>>,
}

/// Healthy, or every reason it is not (so the status names them all).
pub fn evaluate(observed: &Observations, stale_after: Duration) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if let Some(age) = observed.heartbeat_age
        && age > stale_after
    {
        reasons.push(format!(
            "the MQTT session loop has made no progress for more than {} s",
            stale_after.as_secs()
        ));
    }
    if let Err(reason) = &observed.store {
        reasons.push(reason.clone());
    }
    if let Some(Err(reason)) = &observed.supervisor {
        reasons.push(reason.clone());
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

type Probe = tokio::task::JoinHandle<Result<(), String>>;

/// Writes, syncs and renames a probe file in the state directory, at
/// most every `every` (each one is a flash write); a probe whose disk
/// hangs is not started twice.
pub struct StoreProbe {
    file: PathBuf,
    every: Duration,
    last: Option<(Instant, Result<(), String>)>,
    in_flight: Option<(Instant, Probe)>,
}

impl StoreProbe {
    pub fn new(file: PathBuf, every: Duration) -> Self {
        Self {
            file,
            every,
            last: None,
            in_flight: None,
        }
    }

    /// The store's health now: the last probe's result, after a new probe
    /// if one is due.
    pub async fn check(&mut self, now: Instant) -> Result<(), String> {
        let due = self
            .last
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= self.every);
        if due && self.in_flight.is_none() {
            let file = self.file.clone();
            let probe = tokio::task::spawn_blocking(move || {
                let stamp = chrono::Utc::now().to_rfc3339();
                crate::state::write_atomic(&file, stamp.as_bytes(), 0o600).map_err(|error| {
                    format!(
                        "the state directory cannot be written ({}: {error})",
                        file.display()
                    )
                })
            });
            self.in_flight = Some((now, probe));
        }
        if let Some((started, probe)) = &mut self.in_flight {
            let started = *started;
            let left = ANSWER_TIMEOUT.saturating_sub(now.duration_since(started));
            match tokio::time::timeout(left, probe).await {
                Ok(result) => {
                    let result = result.unwrap_or_else(|error| {
                        Err(format!("the state directory probe failed: {error}"))
                    });
                    self.in_flight = None;
                    self.last = Some((started, result));
                }
                Err(_) => {
                    return Err(format!(
                        "writing to the state directory has not finished for {} s",
                        Instant::now().duration_since(started).as_secs()
                    ));
                }
            }
        }
        match &self.last {
            Some((_, result)) => result.clone(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Observations {
        Observations {
            heartbeat_age: Some(Duration::from_secs(1)),
            store: Ok(()),
            supervisor: Some(Ok(())),
        }
    }

    #[test]
    fn healthy_checks_pass_and_a_session_not_started_is_no_failure() {
        let stale = HEARTBEAT_STALE_AFTER;
        assert_eq!(evaluate(&healthy(), stale), Ok(()));
        let starting = Observations {
            heartbeat_age: None,
            supervisor: None,
            ..healthy()
        };
        assert_eq!(evaluate(&starting, stale), Ok(()));
    }

    #[test]
    fn a_wedged_heartbeat_fails_and_every_failure_is_named() {
        let stale = Duration::from_secs(15);
        let wedged = Observations {
            heartbeat_age: Some(Duration::from_secs(16)),
            ..healthy()
        };
        let reasons = evaluate(&wedged, stale).expect_err("wedged");
        assert_eq!(
            reasons,
            ["the MQTT session loop has made no progress for more than 15 s"]
        );
        let at_the_limit = Observations {
            heartbeat_age: Some(stale),
            ..healthy()
        };
        assert_eq!(evaluate(&at_the_limit, stale), Ok(()));

        let everything = Observations {
            heartbeat_age: Some(Duration::from_secs(60)),
            store: Err("the state directory cannot be written".into()),
            supervisor: Some(Err("the supervisor did not answer".into())),
        };
        assert_eq!(evaluate(&everything, stale).expect_err("sick").len(), 3);
    }

    #[test]
    fn the_heartbeat_ages_from_its_last_beat() {
        let heartbeat = Heartbeat::default();
        let now = Instant::now();
        assert_eq!(heartbeat.age(now), None);
        heartbeat.beat();
        let later = Instant::now() + Duration::from_secs(20);
        let age = heartbeat.age(later).expect("beaten");
        assert!(
            age >= Duration::from_secs(19) && age <= Duration::from_secs(21),
            "{age:?}"
        );
    }

    #[tokio::test]
    async fn the_store_probe_fails_while_its_file_is_a_directory_and_recovers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join(PROBE_FILE);
        let mut probe = StoreProbe::new(file.clone(), Duration::ZERO);
        assert_eq!(probe.check(Instant::now()).await, Ok(()));
        assert!(file.is_file());
        std::fs::remove_file(&file).expect("removes");
        std::fs::create_dir_all(file.join("blocker")).expect("a directory in its place");
        let failed = probe
            .check(Instant::now())
            .await
            .expect_err("cannot rename");
        assert!(failed.contains("cannot be written"), "{failed}");
        std::fs::remove_dir_all(&file).expect("removes");
        assert_eq!(probe.check(Instant::now()).await, Ok(()));
    }

    #[tokio::test]
    async fn a_supervisor_that_does_not_answer_fails_the_ping() {
        let (ask, mut asked) = mpsc::channel(1);
        let ping = SupervisorPing(ask);
        let answering = tokio::spawn(async move {
            if let Some(answer) = asked.recv().await {
                let _ = answer.send(());
            }
            // Then it wedges: takes requests, answers none.
            let mut held = Vec::new();
            while let Some(answer) = asked.recv().await {
                held.push(answer);
            }
        });
        assert_eq!(ping.ping(Duration::from_secs(5)).await, Ok(()));
        let failed = ping
            .ping(Duration::from_millis(50))
            .await
            .expect_err("wedged");
        assert!(failed.contains("did not answer"), "{failed}");
        answering.abort();
    }
}
