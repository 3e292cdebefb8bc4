//! The fleet monitor end to end (issue 18, ADR 0032): real tetherd, real
//! agents stopped with SIGSTOP, simulated devices held on an old spec, two
//! replicas on one PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tether_testkit::sim_agent::{DeviceCredentials, Responder, SimAgent, SpecReporter};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::on_both_databases;

on_both_databases!(a_stopped_agent_is_asked_for_rebirths_then_alerted_and_resolved_when_it_returns);

/// Short intervals so the timeline takes seconds; production's are minutes.
const SILENCE_SECONDS: i64 = 2;
const DRIFT_GRACE_SECONDS: i64 = 2;

fn monitor_config(dir: &tempfile::TempDir, silence: i64, drift: i64) -> anyhow::Result<String> {
    let config = dir.path().join("tetherd.toml");
    std::fs::write(
        &config,
        format!("[monitor]\nsilence_seconds = {silence}\ndrift_grace_seconds = {drift}\n"),
    )?;
    Ok(config.to_str().context("temp path is UTF-8")?.to_owned())
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

fn time(value: &Value) -> anyhow::Result<DateTime<Utc>> {
    let text = value
        .as_str()
        .with_context(|| format!("a time, got {value}"))?;
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

/// The device's events of `kind`, oldest first, with their times.
async fn events(admin: &ApiClient, device: &str, kind: &str) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let page = admin
        .get(&format!("/api/v1/devices/{device}/events?limit=500"))
        .await?
        .expect_status(200)?;
    let mut times = Vec::new();
    for event in page["items"].as_array().context("items")? {
        if event["event"] == kind {
            times.push(time(&event["receivedAt"])?);
        }
    }
    times.sort();
    Ok(times)
}

/// The device's alerts of `rule`, in every state.
async fn alerts(admin: &ApiClient, device: &str, rule: &str) -> anyhow::Result<Vec<Value>> {
    let page = admin
        .get(&format!(
            "/api/v1/alerts?state=all&device={device}&rule={rule}"
        ))
        .await?
        .expect_status(200)?;
    Ok(page["items"].as_array().context("items")?.clone())
}

async fn wait_alert(
    admin: &ApiClient,
    device: &str,
    rule: &str,
    state: &str,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("{device}'s {rule} alert {state}"),
        Duration::from_secs(60),
        || async {
            Ok(alerts(admin, device, rule)
                .await?
                .into_iter()
                .find(|alert| alert["state"] == state))
        },
    )
    .await
}

/// Gaps between the times, in seconds.
fn gaps(times: &[DateTime<Utc>]) -> Vec<f64> {
    times
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).num_milliseconds() as f64 / 1000.0)
        .collect()
}

/// An agent that talks every second (its host metrics), so only a stop
/// makes it silent.
async fn talking_agent(tetherd: &Tetherd, admin: &ApiClient, name: &str) -> anyhow::Result<Agent> {
    let agent = Agent::enroll_online(tetherd, admin, name).await?;
    admin
        .patch(
            &format!("/api/v1/devices/{name}"),
            json!({"spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;
    wait_until(
        "the agent applied its spec",
        Duration::from_secs(30),
        || async {
            let device = admin
                .get(&format!("/api/v1/devices/{name}"))
                .await?
                .expect_status(200)?;
            Ok((device["status"]["specVersion"] == 1).then_some(()))
        },
    )
    .await?;
    Ok(agent)
}

async fn a_stopped_agent_is_asked_for_rebirths_then_alerted_and_resolved_when_it_returns(
    database: Database,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = monitor_config(&dir, SILENCE_SECONDS, 600)?;
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let agent = talking_agent(&tetherd, &admin, "edge-1").await?;
    let pid = agent.pid().context("the agent runs")?;

    signal(pid, "STOP")?;
    let alert = wait_alert(&admin, "edge-1", "device_silent", "firing").await;
    // Whatever happened, the agent must not stay stopped.
    signal(pid, "CONT")?;
    let alert = alert?;

    let rebirths = events(&admin, "edge-1", "rebirth-requested").await?;
    assert_eq!(rebirths.len(), 3, "{rebirths:?}");
    let started = time(&alert["startedAt"])?;
    let mut spacing = gaps(&rebirths);
    spacing.push((started - rebirths[2]).num_milliseconds() as f64 / 1000.0);
    // Each request waits a whole interval for its answer; the pass runs
    // every quarter interval, so a step is at most that late.
    let interval = SILENCE_SECONDS as f64;
    for gap in &spacing {
        assert!(
            *gap >= interval - 0.01 && *gap <= interval + interval / 4.0 + 1.0,
            "requests and the alert an interval apart: {spacing:?}"
        );
    }
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .is_some_and(|summary| summary.contains("3 rebirth requests unanswered")),
        "{alert}"
    );

    // An operator takes it on; twice is the same; a bad id is named.
    let id = alert["id"].as_u64().context("id")?;
    let path = format!("/api/v1/alerts/{id}/acknowledge");
    let acknowledged = admin.post(&path, json!({})).await?.expect_status(200)?;
    assert_eq!(acknowledged["state"], "acknowledged", "{acknowledged}");
    assert_eq!(acknowledged["acknowledgedBy"], "admin", "{acknowledged}");
    let again = admin.post(&path, json!({})).await?.expect_status(200)?;
    assert_eq!(again["acknowledgedAt"], acknowledged["acknowledgedAt"]);
    let refused = admin.get("/api/v1/alerts/forty-two").await?;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.to_string().contains("forty-two"),
        "{}",
        refused.body
    );
    let refused = admin.get("/api/v1/alerts?state=open").await?;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.to_string().contains("state"),
        "{}",
        refused.body
    );

    // Back: the alert resolves, and it was the only one.
    let resolved = wait_alert(&admin, "edge-1", "device_silent", "resolved").await?;
    assert_eq!(resolved["id"], alert["id"]);
    assert_eq!(alerts(&admin, "edge-1", "device_silent").await?.len(), 1);
    let active = admin.get("/api/v1/alerts").await?.expect_status(200)?;
    assert_eq!(active["items"], json!([]), "{active}");
    assert_eq!(admin.post(&path, json!({})).await?.status, 409, "resolved");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_each_silent_device_raises_exactly_one_alert() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = monitor_config(&dir, SILENCE_SECONDS, 600)?;
    let args = ["--config", config.as_str()];
    let first = Tetherd::start_with(Database::Postgres, &args).await?;
    let second = Tetherd::start_replica_of(&first, &args).await?;
    let mut agents = Vec::new();
    for (replica, name) in [(&first, "edge-a"), (&second, "edge-b")] {
        let admin = replica.admin().await?;
        agents.push((name, talking_agent(replica, &admin, name).await?));
    }
    let admin = first.admin().await?;
    let pids: Vec<u32> = agents
        .iter()
        .map(|(_, agent)| agent.pid().context("the agent runs"))
        .collect::<anyhow::Result<_>>()?;
    for pid in &pids {
        signal(*pid, "STOP")?;
    }
    let mut raised = Vec::new();
    for (name, _) in &agents {
        raised.push(wait_alert(&admin, name, "device_silent", "firing").await);
    }
    for pid in &pids {
        signal(*pid, "CONT")?;
    }
    for (name, _) in &agents {
        wait_alert(&admin, name, "device_silent", "resolved").await?;
        assert_eq!(
            alerts(&admin, name, "device_silent").await?.len(),
            1,
            "one alert for {name}, whichever replica holds it"
        );
        assert_eq!(
            events(&admin, name, "rebirth-requested").await?.len(),
            3,
            "three requests for {name}, not three per replica"
        );
    }
    for alert in raised {
        alert?;
    }
    drop(second);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_held_on_an_old_spec_is_sent_it_asked_to_reload_then_alerted() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let config = monitor_config(&dir, 600, DRIFT_GRACE_SECONDS)?;
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let credentials = DeviceCredentials::enroll(&admin, "edge-1").await?;
    // The device applies what it is sent until it is held; held, it keeps
    // reporting the last version it applied. Each spec it is sent counts.
    let held = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let specs_received = Arc::new(AtomicU64::new(0));
    let reporter: SpecReporter = {
        let (held, applied, specs_received) =
            (held.clone(), applied.clone(), specs_received.clone());
        Arc::new(move |_, message| {
            specs_received.fetch_add(1, Ordering::SeqCst);
            if !held.load(Ordering::SeqCst) {
                applied.store(message.version, Ordering::SeqCst);
            }
            tether_proto::spec::ReportedStatus {
                spec_version: applied.load(Ordering::SeqCst),
                ..Default::default()
            }
        })
    };
    let _device = SimAgent::connect_reporting(&credentials, Responder::Silent, reporter).await?;
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 30}}}),
        )
        .await?
        .expect_status(200)?;
    wait_until("version 1 applied", Duration::from_secs(30), || async {
        Ok((applied.load(Ordering::SeqCst) == 1).then_some(()))
    })
    .await?;

    held.store(true, Ordering::SeqCst);
    let changed = Utc::now();
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 20}}}),
        )
        .await?
        .expect_status(200)?;
    let alert = wait_alert(&admin, "edge-1", "config_drift", "firing").await?;
    let reloads = events(&admin, "edge-1", "reload-requested").await?;
    assert!(!reloads.is_empty(), "a reload before the alert");
    let grace = chrono::Duration::seconds(DRIFT_GRACE_SECONDS);
    assert!(
        reloads[0] - changed >= grace - chrono::Duration::milliseconds(50),
        "{reloads:?} after {changed}"
    );
    assert!(
        time(&alert["startedAt"])? - reloads[0] >= grace,
        "{alert} after {reloads:?}"
    );
    assert_eq!(alert["severity"], "warning", "{alert}");
    // The spec went out again with each reload request: the device got
    // version 2 more than once.
    assert!(
        specs_received.load(Ordering::SeqCst) >= 3,
        "spec sent again"
    );

    // Released, it takes the spec sent with the next reload request.
    held.store(false, Ordering::SeqCst);
    let resolved = wait_alert(&admin, "edge-1", "config_drift", "resolved").await?;
    assert_eq!(resolved["id"], alert["id"]);
    assert_eq!(applied.load(Ordering::SeqCst), 2);
    Ok(())
}
