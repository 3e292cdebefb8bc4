//! `--mode agent-offline`: a real tether-agent runs `run-stats` every
//! second; its RSS is read while connected, then while tetherd is
//! unreachable for a while (the samples go to its disk spool), then after
//! tetherd is back and the spooled samples have arrived.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::{mib, rss_kib};

/// How tetherd becomes unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Outage {
    /// tetherd is killed: connections are refused, the agent retries with
    /// backoff. Started again on the same data dir and ports afterwards.
    Kill,
    /// tetherd is frozen (SIGSTOP): the open connection goes silent and new
    /// ones hang in the TLS handshake until they time out.
    Stop,
}

pub struct Settings {
    pub database: Database,
    pub outage: Outage,
    pub offline: Duration,
    pub warm_up: Duration,
    pub sample_every: Duration,
}

/// The agent's reconnect backoff tops out at 60 s (plus the TLS handshake).
const RECONNECT_WITHIN: Duration = Duration::from_secs(90);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "offline-agent").await?;
    let agent_pid = agent.pid().context("agent runs")?;
    start_stats(&admin, &agent.name).await?;

    // Connected: samples flow; the figure is the highest seen in the warm-up's
    // second half, after start-up allocations settled.
    let warm_up_started = Instant::now();
    let mut connected = 0;
    while warm_up_started.elapsed() < settings.warm_up {
        tokio::time::sleep(settings.sample_every).await;
        if warm_up_started.elapsed() >= settings.warm_up / 2 {
            connected = connected.max(rss_kib(agent_pid)?);
        }
    }
    let newest_before = newest_sample(&admin, &agent.name)
        .await?
        .context("no metrics arrived while connected")?;

    let stored_before = metrics_usage(&admin, &agent.name).await?;
    let tetherd_pid = tetherd.pid().context("tetherd runs")?;
    match settings.outage {
        Outage::Kill => tetherd.kill(),
        Outage::Stop => signal(tetherd_pid, "STOP")?,
    }
    let outage_started = Instant::now();
    let mut offline_max = 0;
    let mut offline_last = 0;
    let mut samples_offline = 0;
    while outage_started.elapsed() < settings.offline {
        tokio::time::sleep(settings.sample_every).await;
        offline_last = rss_kib(agent_pid).context("the agent died while offline")?;
        offline_max = offline_max.max(offline_last);
        samples_offline += 1;
        if samples_offline % 30 == 0 {
            eprintln!(
                "  {:>6.0} s offline: agent RSS {:.2} MiB (connected {:.2} MiB)",
                outage_started.elapsed().as_secs_f64(),
                mib(offline_last),
                mib(connected)
            );
        }
    }
    match settings.outage {
        Outage::Kill => tetherd.start_again().await?,
        Outage::Stop => signal(tetherd_pid, "CONT")?,
    }

    report_offline(
        &settings,
        connected,
        offline_max,
        offline_last,
        samples_offline,
    );

    // Back: the agent reconnects (within its 60 s backoff) and sends what it
    // spooled, and new samples reach the store again.
    let admin = tetherd.admin().await?;
    wait_until("the agent to reconnect", RECONNECT_WITHIN, || {
        let admin = admin.clone();
        let name = agent.name.clone();
        async move {
            let device = admin
                .get(&format!("/api/v1/devices/{name}"))
                .await?
                .expect_status(200)?;
            Ok((device["presence"] == "online").then_some(()))
        }
    })
    .await?;
    // One sample a second was spooled while tetherd was away; allow the
    // second or two around the outage's edges.
    let spooled = settings.offline.as_secs().saturating_sub(2);
    let arrived = wait_until(
        "the samples spooled during the outage to arrive",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let name = agent.name.clone();
            async move {
                let usage = metrics_usage(&admin, &name).await?;
                Ok((usage.stored >= stored_before.stored + spooled).then_some(usage))
            }
        },
    )
    .await?;
    wait_until(
        "new metrics after the outage",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let name = agent.name.clone();
            let before = newest_before.clone();
            async move {
                let newest = newest_sample(&admin, &name).await?;
                Ok(newest.filter(|newest| *newest > before).map(drop))
            }
        },
    )
    .await?;
    tokio::time::sleep(settings.warm_up / 2).await;
    let recovered = rss_kib(agent_pid)?;

    println!(
        "  after reconnect      {:>6.2} MiB; {} samples arrived since the outage began, {} dropped by the spool, gap {}",
        mib(recovered),
        arrived.stored - stored_before.stored,
        arrived.dropped,
        arrived.gap,
    );
    Ok(())
}

fn report_offline(
    settings: &Settings,
    connected: u64,
    offline_max: u64,
    offline_last: u64,
    samples_offline: usize,
) {
    let growth = offline_max as f64 - connected as f64;
    println!(
        "tether-bench agent-offline: run-stats every 1 s, tetherd {} for {} s",
        match settings.outage {
            Outage::Kill => "killed",
            Outage::Stop => "stopped (SIGSTOP)",
        },
        settings.offline.as_secs()
    );
    println!(
        "  tether-agent RSS     connected {:>6.2} MiB   offline max {:>6.2} MiB   offline last {:>6.2} MiB",
        mib(connected),
        mib(offline_max),
        mib(offline_last),
    );
    println!(
        "  offline growth       {:>+6.2} MiB over {samples_offline} readings (bound: +2 MiB)",
        growth / 1024.0,
    );
}

async fn start_stats(admin: &ApiClient, device: &str) -> anyhow::Result<()> {
    let accepted = admin
        .post(
            &format!("/api/v1/devices/{device}/actions"),
            json!({"action": "run-stats", "input": {"interval": 1}}),
        )
        .await?
        .expect_status(202)?;
    let id = accepted["correlationId"]
        .as_str()
        .context("correlationId")?;
    let done = admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await?
        .expect_status(200)?;
    ensure!(done["state"] == "succeeded", "run-stats failed: {done}");
    Ok(())
}

/// `sampledAt` of the newest stored sample (RFC 3339 UTC, so it sorts as text).
async fn newest_sample(admin: &ApiClient, device: &str) -> anyhow::Result<Option<String>> {
    let metrics = admin
        .get(&format!("/api/v1/devices/{device}/metrics?limit=1"))
        .await?
        .expect_status(200)?;
    Ok(metrics["items"][0]["sampledAt"].as_str().map(str::to_owned))
}

/// The metrics stream's counters of `GET /devices/{name}/usage`.
struct MetricsUsage {
    stored: u64,
    dropped: u64,
    gap: u64,
}

async fn metrics_usage(admin: &ApiClient, device: &str) -> anyhow::Result<MetricsUsage> {
    let usage = admin
        .get(&format!("/api/v1/devices/{device}/usage"))
        .await?
        .expect_status(200)?;
    let metrics = usage["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream"] == "metrics"));
    let count = |field: &str| {
        metrics
            .and_then(|m| m[field].as_u64().or_else(|| m[field]["total"].as_u64()))
            .unwrap_or(0)
    };
    Ok(MetricsUsage {
        stored: count("storedRecords"),
        dropped: count("dropped"),
        gap: count("gap"),
    })
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}
