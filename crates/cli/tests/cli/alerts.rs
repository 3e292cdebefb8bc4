//! `tether alerts` against a real tetherd watching a real agent that stops
//! (issue 18): list, get, acknowledge, and the resolved alert afterwards.

use std::time::Duration;

use serde_json::{Value, json};
use tether_testkit::{Agent, Database, Tetherd, wait_until};

use super::Tether;

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

async fn listed(tether: &Tether, state: &str) -> Vec<Value> {
    let out = tether
        .run_ok(&["alerts", "list", "--state", state, "-o", "json"])
        .await;
    serde_json::from_str(&out).expect("a JSON list")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_agents_alert_is_listed_acknowledged_and_resolved() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[monitor]\nsilence_seconds = 1\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(Database::Sqlite, &["--config", &config])
        .await
        .expect("tetherd starts");
    let tether = Tether::new();
    tether.login(&tetherd).await;
    let admin = tetherd.admin().await.expect("admin");
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-1")
        .await
        .expect("a real agent");
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await
        .expect("spec")
        .expect_status(200)
        .expect("spec written");
    let empty = tether.run(&["alerts", "list"]).await;
    assert_eq!(empty.code, 0, "{}", empty.stderr);
    assert!(
        empty.stderr.contains("No active alerts"),
        "{}",
        empty.stderr
    );

    let pid = agent.pid().expect("the agent runs");
    signal(pid, "STOP");
    let firing = wait_until("the silence alert", Duration::from_secs(60), || async {
        Ok(listed(&tether, "firing").await.into_iter().next())
    })
    .await;
    let firing = firing.expect("an alert");
    let id = firing["id"].to_string();

    let table = tether.run_ok(&["alerts", "list"]).await;
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("alert {id} listed:\n{table}"));
    for column in [
        "firing",
        "critical",
        "device_silent",
        "edge-1",
        "rebirth requests unanswered",
    ] {
        assert!(row.contains(column), "{column} in {row}");
    }
    let acked = tether.run_ok(&["alerts", "ack", &id]).await;
    assert!(
        acked.contains(&format!(
            "alert {id} (device_silent on edge-1) acknowledged by admin"
        )),
        "{acked}"
    );
    let shown = tether.run_ok(&["alerts", "get", &id]).await;
    assert!(shown.contains("State:     acknowledged"), "{shown}");
    assert!(shown.contains("by admin"), "{shown}");

    // The agent runs again (not before: once it answers, the alert
    // resolves, acknowledged or not): the alert resolves and leaves the
    // active list.
    signal(pid, "CONT");
    wait_until("the alert resolved", Duration::from_secs(60), || async {
        Ok(listed(&tether, "resolved").await.into_iter().next())
    })
    .await
    .expect("resolved");
    assert!(listed(&tether, "active").await.is_empty());
    let refused = tether.run(&["alerts", "ack", &id]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains(&format!("failed to acknowledge alert {id}")),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("resolved"), "{}", refused.stderr);
    drop(agent);
}
