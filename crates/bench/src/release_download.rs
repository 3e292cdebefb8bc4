//! `--mode release-download`: what an agent release costs tetherd (issue
//! 19). The agent binary of this build, stamped as a new version, is
//! published (hashed, signed, stored in 1 MiB chunks), rolled out to N
//! enrolled devices (`--agents`) in one batch, and each device's binary is
//! downloaded with its own token, `--concurrency` at a time, as agents
//! fetching an update would (without their pacing). Prints the publish
//! time, the aggregate and per-download rates, and tetherd's RSS while it
//! serves them (a download streams chunk by chunk, so it should stay flat).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tether_testkit::sim_agent::enroll_many;
use tether_testkit::{ApiClient, Database, Tetherd};

use crate::{mib, ms, percentile, rss_kib};

pub struct Settings {
    pub database: Database,
    pub devices: usize,
    pub concurrency: usize,
}

const VERSION: &str = "99.0.0";
const PLATFORM: &str = "linux-x86_64";
/// How often tetherd's RSS is read while the downloads run.
const RSS_EVERY: Duration = Duration::from_millis(20);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let pid = tetherd.pid().context("tetherd runs")?;
    let names: Vec<String> = (0..settings.devices).map(|i| format!("sim-{i}")).collect();
    enroll_many(&admin, names.clone(), &json!({"fleet": "bench"}), 16).await?;

    let dir = tempfile::tempdir()?;
    let stamped = dir.path().join("tether-agent");
    tether_testkit::binaries::stamp_agent_binary(
        &tether_testkit::binaries::binary("tether-agent")?,
        &stamped,
        VERSION,
    )?;
    let binary = std::fs::read(&stamped)?;
    let sha256 = hex::encode(Sha256::digest(&binary));

    let idle = rss_kib(pid)?;
    let started = Instant::now();
    admin
        .put_bytes(
            &format!("/api/v1/agent-releases/{VERSION}/{PLATFORM}"),
            binary.clone(),
        )
        .await?
        .expect_status(201)?;
    let published_in = started.elapsed();
    let after_publish = rss_kib(pid)?;

    admin
        .post(
            "/api/v1/deployments",
            json!({"name": "tether-agent",
                   "spec": {"target": {"selector": "fleet=bench"}, "agentRelease": VERSION,
                            "rollout": {"batchPercent": 100}}}),
        )
        .await?
        .expect_status(201)?;
    let mut tokens = Vec::with_capacity(names.len());
    for name in &names {
        tokens.push(download_token(&admin, name).await?);
    }

    let peak = Arc::new(AtomicU64::new(after_publish));
    let downloading = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let (peak, downloading) = (peak.clone(), downloading.clone());
        async move {
            while downloading.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_EVERY).await;
            }
        }
    });
    let anonymous = tetherd.anonymous()?;
    let path = format!("/api/v1/agent-releases/{VERSION}/{PLATFORM}/binary");
    let started = Instant::now();
    let mut took: Vec<Duration> = futures::stream::iter(tokens)
        .map(|token| {
            let (client, path, sha256) = (anonymous.with_token(Some(token)), &path, &sha256);
            async move {
                let started = Instant::now();
                let reply = client.get_bytes(path, None).await?;
                anyhow::ensure!(reply.status == 200, "download answered {}", reply.status);
                let got = hex::encode(Sha256::digest(&reply.body));
                anyhow::ensure!(&got == sha256, "downloaded other bytes");
                Ok(started.elapsed())
            }
        })
        .buffer_unordered(settings.concurrency)
        .collect::<Vec<anyhow::Result<Duration>>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let elapsed = started.elapsed();
    downloading.store(false, Ordering::Relaxed);
    watcher.await?;
    took.sort();

    let size_mib = binary.len() as f64 / (1024.0 * 1024.0);
    println!(
        "tether-bench release-download: {} devices, {} at a time, {:.1} MiB binary, {}",
        settings.devices,
        settings.concurrency,
        size_mib,
        match settings.database {
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
        }
    );
    println!(
        "  publish              {:>8.0} ms (hash, sign, store)",
        ms(published_in)
    );
    println!(
        "  downloads            {:>8.1} MiB/s over all   {:.1} s for {} MiB",
        size_mib * settings.devices as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        (size_mib * settings.devices as f64).round()
    );
    println!(
        "  one download         p50 {:>7.0} ms   p99 {:>7.0} ms   ({:.1} MiB/s at p50)",
        ms(percentile(&took, 50.0)),
        ms(percentile(&took, 99.0)),
        size_mib / percentile(&took, 50.0).as_secs_f64().max(f64::EPSILON)
    );
    println!(
        "  tetherd RSS          idle {:>6.1} MiB   after publish {:>6.1} MiB   peak downloading {:>6.1} MiB",
        mib(idle),
        mib(after_publish),
        mib(peak.load(Ordering::Relaxed))
    );
    Ok(())
}

/// The token `device`'s spec carries for the release, once rendered.
async fn download_token(admin: &ApiClient, device: &str) -> anyhow::Result<String> {
    tether_testkit::wait_until(
        &format!("{device}'s spec to carry the release"),
        Duration::from_secs(120),
        || async move {
            let shown = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            Ok(
                shown["spec"]["deployments"]["tether-agent"]["agent"]["downloadToken"]
                    .as_str()
                    .map(str::to_owned),
            )
        },
    )
    .await
}
