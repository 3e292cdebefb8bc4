//! `--mode replicas`: R tetherd replicas on one throwaway PostgreSQL and N
//! simulated device sessions spread over them, held by several simulator
//! processes (each of this binary, `--mode simulate`), so that no process
//! passes the machine's open-files cap. Reports, in one run: enrollment and
//! connect rates, memory per session on each replica, action round trips
//! requested through every replica for devices on every replica, and one
//! fleet-wide job over `job_devices` of them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::json;
use tether_testkit::sim_agent::{DeviceCredentials, Pace, Responder, SessionCounts, hold_sessions};
use tether_testkit::{ApiClient, Database, Tetherd};

use crate::fleet_job::time_job;
use crate::{mib, ms, percentile, round_trip, rss_kib};

pub struct Settings {
    pub replicas: usize,
    pub agents: usize,
    pub simulators: usize,
    pub actions: usize,
    pub concurrency: usize,
    /// Sessions opened a second, over all simulators.
    pub connect_rate: f64,
    /// Devices (spread over every replica) labelled for the fleet-wide job.
    pub job_devices: usize,
    /// Where to copy each replica's log at the end (replica-K.log), to
    /// read what happened during a slow run.
    pub keep_logs: Option<PathBuf>,
}

/// Sessions one simulator process opens at once while connecting.
const CONNECTS_IN_FLIGHT: usize = 32;
/// The whole fleet must be online within this, or the run fails.
const CONNECT_LIMIT: Duration = Duration::from_secs(1200);
/// The label of the devices in the fleet-wide job.
const JOB_LABEL: &str = "bench-job";

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(settings.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(settings.simulators >= 1, "--simulators must be at least 1");
    let first = Tetherd::start(Database::Postgres).await?;
    let mut replicas = vec![];
    for _ in 1..settings.replicas {
        replicas.push(Tetherd::start_replica_of(&first, &[]).await?);
    }
    let all: Vec<&Tetherd> = std::iter::once(&first).chain(replicas.iter()).collect();
    let mut admins = vec![];
    for replica in &all {
        admins.push(replica.admin().await?);
    }
    let idle: Vec<u64> = all
        .iter()
        .map(|replica| rss_kib(replica.pid().context("replica runs")?))
        .collect::<anyhow::Result<_>>()?;

    let started = Instant::now();
    let mut credentials: Vec<DeviceCredentials> =
        futures::stream::iter(0..settings.agents)
            .map(|i| {
                let admin = admins[i % admins.len()].clone();
                let labels = if i < settings.job_devices {
                    json!({JOB_LABEL: "in"})
                } else {
                    json!({})
                };
                async move {
                    DeviceCredentials::enroll_labelled(&admin, &format!("sim-{i}"), labels).await
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let enrolled_in = started.elapsed();
    // Device i holds its session on replica i mod R, whichever replica
    // enrolled it, so every replica holds N/R sessions.
    for credential in &mut credentials {
        let index: usize = credential.device.as_str()["sim-".len()..].parse()?;
        credential.mqtt_url = all[index % all.len()].mqtt_url.clone();
    }

    let scratch = tempfile::tempdir().context("a scratch dir for the simulators")?;
    let started = Instant::now();
    let mut simulators = vec![];
    let per_simulator = settings.connect_rate / settings.simulators as f64;
    for (n, share) in split(&credentials, settings.simulators)
        .into_iter()
        .enumerate()
    {
        let path = scratch.path().join(format!("simulator-{n}.json"));
        std::fs::write(&path, serde_json::to_vec(&share)?)?;
        simulators.push(Simulator::spawn(&path, per_simulator)?);
    }
    wait_all_online(&admins[0], &mut simulators, settings.agents).await?;
    let connected_in = started.elapsed();
    let connected: Vec<u64> = all
        .iter()
        .map(|replica| rss_kib(replica.pid().context("replica runs")?))
        .collect::<anyhow::Result<_>>()?;

    // Through replica k for device i: requests cross replicas (k ≠ i mod R)
    // as often as they do not, as behind a load balancer.
    let started = Instant::now();
    let mut round_trips: Vec<Duration> = futures::stream::iter(0..settings.actions)
        .map(|i| {
            let admin = admins[(i / all.len()) % admins.len()].clone();
            let device = format!("sim-{}", (i * 7919) % settings.agents);
            async move { round_trip(&admin, &device).await }
        })
        .buffer_unordered(settings.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let elapsed = started.elapsed();
    round_trips.sort();
    let job = time_job(
        &admins[0],
        &format!("{JOB_LABEL}=in"),
        settings.job_devices,
        true,
    )
    .await?;

    println!(
        "tether-bench --mode replicas: {} replicas on PostgreSQL, {} sessions from {} simulator processes, {} actions, concurrency {}",
        settings.replicas,
        settings.agents,
        settings.simulators,
        settings.actions,
        settings.concurrency
    );
    println!(
        "  enrollment           {:>8.1} s for {} devices ({:.0}/s)",
        enrolled_in.as_secs_f64(),
        settings.agents,
        settings.agents as f64 / enrolled_in.as_secs_f64()
    );
    println!(
        "  connect + birth      {:>8.1} s for {} sessions ({:.0}/s)",
        connected_in.as_secs_f64(),
        settings.agents,
        settings.agents as f64 / connected_in.as_secs_f64()
    );
    for (k, (idle, connected)) in idle.iter().zip(&connected).enumerate() {
        let sessions = sessions_on(k, all.len(), settings.agents);
        println!(
            "  replica {k}            idle {:>7.1} MiB   {sessions} sessions {:>7.1} MiB   {:>5.1} KiB/session",
            mib(*idle),
            mib(*connected),
            connected.saturating_sub(*idle) as f64 / sessions.max(1) as f64
        );
    }
    println!(
        "  action round trip    p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   ({:.0} actions/s)",
        ms(percentile(&round_trips, 50.0)),
        ms(percentile(&round_trips, 99.0)),
        ms(round_trips.last().copied().unwrap_or_default()),
        settings.actions as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  fleet-wide job       {} devices: created {:>6.0} ms, half answered {:>5.2} s, all answered {:>5.2} s, finished {:>5.2} s",
        job.stored,
        ms(job.created_in),
        job.half_in.as_secs_f64(),
        job.answered_in.as_secs_f64(),
        job.finished_in.as_secs_f64()
    );
    println!("    answered over time: {}", job.timeline_text());
    if let Some(dir) = &settings.keep_logs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (k, replica) in all.iter().enumerate() {
            let path = dir.join(format!("replica-{k}.log"));
            std::fs::write(&path, replica.log())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        println!("  replica logs in      {}", dir.display());
    }
    let progress = total_progress(&simulators);
    println!("  connects retried     {}", progress.retried);
    for (why, count) in &progress.why {
        println!("    {count:>6} × {why}");
    }
    drop(simulators);
    drop(replicas);
    Ok(())
}

/// How many of `agents` sessions replica `k` of `replicas` holds.
fn sessions_on(k: usize, replicas: usize, agents: usize) -> usize {
    agents / replicas + usize::from(k < agents % replicas)
}

fn split<T: Clone>(items: &[T], parts: usize) -> Vec<Vec<T>> {
    let size = items.len().div_ceil(parts).max(1);
    items.chunks(size).map(<[T]>::to_vec).collect()
}

/// Waits until every simulator holds all its sessions and the API shows
/// `expected` devices online, printing progress to stderr; fails at
/// [`CONNECT_LIMIT`] or when a simulator exits.
async fn wait_all_online(
    admin: &ApiClient,
    simulators: &mut [Simulator],
    expected: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let up = total_progress(simulators).up;
        let summary = admin
            .get("/api/v1/devices/summary")
            .await?
            .expect_status(200)?;
        let online = summary["total"]["online"].as_u64().unwrap_or_default() as usize;
        if up >= expected && online >= expected {
            return Ok(());
        }
        for simulator in simulators.iter_mut() {
            if let Some(status) = simulator.child.try_wait()? {
                bail!("a simulator process exited ({status}) with {up} of {expected} sessions up");
            }
        }
        anyhow::ensure!(
            started.elapsed() < CONNECT_LIMIT,
            "{online} of {expected} devices online after {} s ({up} sessions up)",
            CONNECT_LIMIT.as_secs()
        );
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  … {:>4.0} s: {up} sessions up, {online} devices online",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A simulator process; killed when dropped. A thread reads its progress
/// (a JSON [`Progress`] line a second).
struct Simulator {
    child: Child,
    progress: Arc<Mutex<Progress>>,
}

/// What a simulator has done so far.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    /// Sessions established now.
    up: usize,
    /// Connects tried again after a session failed or closed.
    retried: usize,
    /// Why connects failed or sessions closed, and how often.
    why: BTreeMap<String, usize>,
}

impl Simulator {
    fn spawn(credentials: &Path, connect_rate: f64) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe().context("finding tether-bench")?)
            .args(["--mode", "simulate", "--connect-rate"])
            .arg(connect_rate.to_string())
            .arg("--credentials")
            .arg(credentials)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a simulator process")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let progress = Arc::new(Mutex::new(Progress::default()));
        let latest = progress.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(now) = serde_json::from_str(&line) {
                    *latest.lock().unwrap_or_else(PoisonError::into_inner) = now;
                }
            }
        });
        Ok(Self { child, progress })
    }

    fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The progress of every simulator together.
fn total_progress(simulators: &[Simulator]) -> Progress {
    let mut total = Progress::default();
    for progress in simulators.iter().map(Simulator::progress) {
        total.up += progress.up;
        total.retried += progress.retried;
        for (why, count) in progress.why {
            *total.why.entry(why).or_default() += count;
        }
    }
    total
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--mode simulate`: holds a session for every device in `credentials`
/// (opened at `connect_rate` a second, retried with backoff when closed),
/// answers their actions at once, prints its [`Progress`] every second,
/// and runs until its stdin closes (the parent bench exited or dropped it).
pub async fn simulate(credentials: PathBuf, connect_rate: f64) -> anyhow::Result<()> {
    let credentials: Vec<DeviceCredentials> =
        serde_json::from_slice(&std::fs::read(&credentials).context("reading the credentials")?)
            .context("parsing the credentials")?;
    let counts = Arc::new(SessionCounts::default());
    let pace = Pace {
        per_second: connect_rate,
        in_flight: CONNECTS_IN_FLIGHT,
    };
    let holding = tokio::spawn(hold_sessions(
        credentials,
        Responder::Echo,
        pace,
        counts.clone(),
    ));
    let mut stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let mut stdout = std::io::stdout();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stdin_closed => break,
            _ = every.tick() => {
                let progress = Progress {
                    up: counts.up.load(Ordering::SeqCst),
                    retried: counts.retried.load(Ordering::SeqCst),
                    why: counts.why.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                };
                writeln!(stdout, "{}", serde_json::to_string(&progress)?)?;
                stdout.flush()?;
            }
        }
    }
    holding.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_spread_evenly_over_replicas() {
        let counts: Vec<usize> = (0..4).map(|k| sessions_on(k, 4, 50_002)).collect();
        assert_eq!(counts, [12_501, 12_501, 12_500, 12_500]);
        assert_eq!(counts.iter().sum::<usize>(), 50_002);
    }

    #[test]
    fn every_item_lands_in_one_part() {
        let parts = split(&(0..10).collect::<Vec<_>>(), 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.concat(), (0..10).collect::<Vec<_>>());
    }
}
