//! `--mode replicas`: R tetherd replicas on one throwaway PostgreSQL and N
//! simulated device sessions spread over them, held by several simulator
//! processes (each of this binary, `--mode simulate`), so that no process
//! passes the machine's open-files cap. Reports, in one run: enrollment and
//! connect rates, memory per session on each replica, and action round
//! trips requested through every replica for devices on every replica.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent};
use tether_testkit::{Database, Tetherd};

use crate::{mib, ms, percentile, round_trip, rss_kib};

pub struct Settings {
    pub replicas: usize,
    pub agents: usize,
    pub simulators: usize,
    pub actions: usize,
    pub concurrency: usize,
}

/// Sessions one simulator process opens at once while connecting.
const CONNECTS_IN_FLIGHT: usize = 32;

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
    let mut credentials: Vec<DeviceCredentials> = futures::stream::iter(0..settings.agents)
        .map(|i| {
            let admin = admins[i % admins.len()].clone();
            async move { DeviceCredentials::enroll(&admin, &format!("sim-{i}")).await }
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
    for (n, share) in split(&credentials, settings.simulators)
        .into_iter()
        .enumerate()
    {
        let path = scratch.path().join(format!("simulator-{n}.json"));
        std::fs::write(&path, serde_json::to_vec(&share)?)?;
        simulators.push(Simulator::spawn(&path, share.len())?);
    }
    for simulator in &mut simulators {
        simulator.wait_connected(Duration::from_secs(600))?;
    }
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

/// A simulator process; killed when dropped.
struct Simulator {
    child: Child,
    expected: usize,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Simulator {
    fn spawn(credentials: &Path, expected: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe().context("finding tether-bench")?)
            .args(["--mode", "simulate", "--credentials"])
            .arg(credentials)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a simulator process")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        Ok(Self {
            child,
            expected,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Blocks until the simulator says all its sessions are up.
    fn wait_connected(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for line in self.lines.by_ref() {
            let line = line.context("reading a simulator's progress")?;
            if let Some(count) = line.strip_prefix("connected ") {
                let count: usize = count.parse()?;
                anyhow::ensure!(
                    count == self.expected,
                    "a simulator connected {count} of {} sessions",
                    self.expected
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
        }
        bail!(
            "a simulator did not connect its {} sessions within {} s",
            self.expected,
            within.as_secs()
        )
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--mode simulate`: connects every device in `credentials`, answers their
/// actions at once, prints `connected N`, and runs until its stdin closes
/// (the parent bench exited or dropped it).
pub async fn simulate(credentials: PathBuf) -> anyhow::Result<()> {
    let credentials: Vec<DeviceCredentials> =
        serde_json::from_slice(&std::fs::read(&credentials).context("reading the credentials")?)
            .context("parsing the credentials")?;
    let agents: Vec<SimAgent> = futures::stream::iter(credentials.iter())
        .map(|c| SimAgent::connect(c, Responder::Echo))
        .buffer_unordered(CONNECTS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "connected {}", agents.len())?;
    stdout.flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
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
