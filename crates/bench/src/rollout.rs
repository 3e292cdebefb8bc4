//! `--mode rollout`: N simulated devices that report every deployment they
//! are sent ready at once; one deployment targeting all of them by label
//! rolls out in batches (`--batch-percent`), then a second revision does.
//! Prints the time from the write to the last device's ready, the time a
//! batch takes (the controller's write of a batch's specs, the devices'
//! reports, the controller's next pass), and the controller's cost per
//! device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tether_proto::DeviceId;
use tether_proto::desired::{DeploymentState, DeploymentStatus};
use tether_proto::spec::{ReportedStatus, SpecMessage};
use tether_testkit::sim_agent::{Responder, SimAgent, SpecReporter, enroll_many, wait_online};
use tether_testkit::{ApiClient, Database, Tetherd};

pub struct Settings {
    pub database: Database,
    pub devices: usize,
    pub batch_percent: u8,
}

/// How often the rollout's status is read while it runs.
const POLL: Duration = Duration::from_millis(50);
const LIMIT: Duration = Duration::from_secs(900);

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(settings.database).await?;
    let admin = tetherd.admin().await?;
    let names = (0..settings.devices).map(|i| format!("sim-{i}"));
    let credentials = enroll_many(&admin, names, &json!({"fleet": "bench"}), 16).await?;
    let reporter = all_ready();
    let mut agents = Vec::with_capacity(credentials.len());
    for chunk in credentials.chunks(32) {
        let connected = futures::future::try_join_all(
            chunk
                .iter()
                .map(|c| SimAgent::connect_reporting(c, Responder::Silent, reporter.clone())),
        )
        .await?;
        agents.extend(connected);
    }
    wait_online(&admin, settings.devices, Duration::from_secs(300)).await?;
    println!(
        "tether-bench rollout: {} simulated devices, batches of {} %, tetherd on {:?}",
        settings.devices, settings.batch_percent, settings.database
    );
    for (revision, args) in [(1u64, "600"), (2, "700")] {
        let spec = json!({
            "target": {"selector": "fleet=bench"},
            "processes": {"app": {"execCmd": "/usr/bin/app", "execArgs": [args]}},
            "rollout": {"batchPercent": settings.batch_percent, "maxFailurePercent": 10},
        });
        let started = Instant::now();
        if revision == 1 {
            admin
                .post(
                    "/api/v1/deployments",
                    json!({"name": "bench", "spec": spec}),
                )
                .await?
                .expect_status(201)?;
        } else {
            admin
                .put_json("/api/v1/deployments/bench", spec)
                .await?
                .expect_status(200)?;
        }
        let written = started.elapsed();
        let (status, batches) = wait_complete(&admin, revision, started).await?;
        let took = started.elapsed();
        anyhow::ensure!(
            status["ready"].as_u64() == Some(settings.devices as u64),
            "every device ready: {status}"
        );
        let per_batch: Vec<String> = batches
            .windows(2)
            .map(|w| format!("{:.0}", (w[1] - w[0]).as_secs_f64() * 1000.0))
            .collect();
        println!(
            "  revision {revision}: written in {:.0} ms; {} devices ready in {:.2} s over {} batches ({:.1} ms a device); each batch, sent to the next sent (the last: to complete), ms: {}",
            written.as_secs_f64() * 1000.0,
            settings.devices,
            took.as_secs_f64(),
            batches.len() - 1,
            took.as_secs_f64() * 1000.0 / settings.devices as f64,
            per_batch.join(", ")
        );
    }
    for agent in agents {
        agent.disconnect().await;
    }
    Ok(())
}

/// Reads the status until the rollout of `revision` is complete; returns
/// it and when each batch was first seen sent, then when it completed.
async fn wait_complete(
    admin: &ApiClient,
    revision: u64,
    started: Instant,
) -> anyhow::Result<(Value, Vec<Duration>)> {
    let mut batches: Vec<Duration> = Vec::new();
    loop {
        let status = admin
            .get("/api/v1/deployments/bench/status")
            .await?
            .expect_status(200)?;
        let seen = status["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["revision"] == revision)
            .filter_map(|d| d["batch"].as_u64())
            .max()
            .unwrap_or(0) as usize;
        while batches.len() < seen {
            batches.push(started.elapsed());
        }
        if status["revision"] == revision && status["phase"] == "complete" {
            batches.push(started.elapsed());
            return Ok((status, batches));
        }
        anyhow::ensure!(status["phase"] != "paused", "the rollout paused: {status}");
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "not complete after {LIMIT:?}: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Reports every deployment of the spec ready, as a device would once it
/// runs it.
fn all_ready() -> SpecReporter {
    Arc::new(|_: &DeviceId, message: &SpecMessage| ReportedStatus {
        spec_version: message.version,
        deployments: message
            .spec
            .get(tether_proto::desired::SECTION)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(name, deployment)| {
                (
                    name.clone(),
                    DeploymentStatus {
                        version: deployment["version"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        state: DeploymentState::Ready,
                        reason: None,
                    },
                )
            })
            .collect(),
        ..ReportedStatus::default()
    })
}
