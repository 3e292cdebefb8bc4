//! Alert rules end to end (issue 18): a real tetherd evaluating every
//! second, a real tether-agent whose custom metric the test sets through
//! the agent's local API, so the value the rule sees is the test's.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::{Value, json};
use tether_proto::alerts::{Alert, AlertState, Severity};
use tether_testkit::{Agent, ApiClient, Database, Tetherd, post_local, wait_until};

use crate::support::on_both_databases;

on_both_databases!(a_threshold_rule_fires_after_its_duration_and_resolves_when_the_value_drops);

const RULE: &str = "tank-high";
/// How long the value must stay above the threshold.
const HOLD: Duration = Duration::from_secs(3);

/// Sets the device's `tank_level{tank="a"}` to `value`, now.
async fn set_level(agent: &Agent, value: f64) -> anyhow::Result<()> {
    let body =
        json!({"name": "tank_level", "value": value, "labels": {"tank": "a"}, "at": Utc::now()});
    post_local(&agent.local_api_socket(), "/v1/metrics", &body.to_string()).await?;
    Ok(())
}

/// The rule's alerts on edge-1, newest first, as the API lists them.
async fn alerts_of_rule(client: &ApiClient) -> anyhow::Result<Vec<Alert>> {
    let page = client
        .get(&format!(
            "/api/v1/alerts?state=all&device=edge-1&rule={RULE}"
        ))
        .await?
        .expect_status(200)?;
    Ok(serde_json::from_value(page["items"].clone())?)
}

async fn get_alert(client: &ApiClient, id: u64) -> anyhow::Result<Alert> {
    let alert = client
        .get(&format!("/api/v1/alerts/{id}"))
        .await?
        .expect_status(200)?;
    Ok(serde_json::from_value(alert)?)
}

/// A user with `role`, logged in.
async fn logged_in(tetherd: &Tetherd, admin: &ApiClient, role: &str) -> anyhow::Result<ApiClient> {
    let created = admin
        .post(
            "/api/v1/users",
            json!({"username": format!("{role}-1"), "role": role}),
        )
        .await?
        .expect_status(201)?;
    let login = tetherd
        .anonymous()?
        .post(
            "/api/v1/login",
            json!({"username": format!("{role}-1"), "password": created["password"]}),
        )
        .await?
        .expect_status(200)?;
    Ok(admin.with_token(login["token"].as_str().map(str::to_owned)))
}

fn rule_body() -> Value {
    json!({
        "name": RULE,
        "spec": {
            "selector": "site=a",
            "severity": "critical",
            "for": format!("{}s", HOLD.as_secs()),
            "labels": {"team": "ops"},
            "summary": "tank {{ labels.site }} at {{ value }}",
            "condition": {"metric": {"name": "tank_level", "labels": {"tank": "a"}, "op": ">", "value": 80}}
        }
    })
}

/// The field path of a 400 refusal of `body`.
async fn refused_field(client: &ApiClient, body: Value) -> anyhow::Result<String> {
    let reply = client.post("/api/v1/alert-rules", body).await?;
    anyhow::ensure!(reply.status == 400, "{} {}", reply.status, reply.body);
    Ok(reply.body["error"]["details"]["fields"][0]["path"]
        .as_str()
        .with_context(|| format!("no field in {}", reply.body))?
        .to_owned())
}

async fn a_threshold_rule_fires_after_its_duration_and_resolves_when_the_value_drops(
    database: Database,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tetherd.toml");
    std::fs::write(&config, "[alert_rules]\nevaluation_interval_seconds = 1\n")?;
    let config = config.to_string_lossy().into_owned();
    let tetherd = Tetherd::start_with(database, &["--config", &config]).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"labels": {"site": "a"}, "spec": {"metricsConfig": {"intervalSeconds": 1}}}),
        )
        .await?
        .expect_status(200)?;

    // Bad rules are refused naming the field; a viewer may read, not write.
    let mut bad = rule_body();
    bad["spec"]["for"] = json!("ten minutes");
    assert_eq!(refused_field(&admin, bad).await?, "spec.for");
    let mut bad = rule_body();
    bad["spec"]["condition"]["metric"]["name"] = json!("");
    assert_eq!(
        refused_field(&admin, bad).await?,
        "spec.condition.metric.name"
    );
    let mut bad = rule_body();
    bad["name"] = json!("Tank High");
    assert_eq!(refused_field(&admin, bad).await?, "name");
    let mut bad = rule_body();
    bad["spec"]["condition"]["metric"]["op"] = json!("=>");
    let reply = admin.post("/api/v1/alert-rules", bad).await?;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.condition.metric.op")),
        "{}",
        reply.body
    );
    let viewer = logged_in(&tetherd, &admin, "viewer").await?;
    let refused = viewer.post("/api/v1/alert-rules", rule_body()).await?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "role_denied");

    let created = admin
        .post("/api/v1/alert-rules", rule_body())
        .await?
        .expect_status(201)?;
    assert_eq!(created["spec"]["for"], "3s");
    let listed = viewer
        .get("/api/v1/alert-rules")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["items"][0]["name"], RULE, "{listed}");
    admin
        .post("/api/v1/alert-rules", rule_body())
        .await?
        .expect_status(409)?;

    // Below the threshold: nothing, however long.
    set_level(&agent, 50.0).await?;
    wait_until(
        "the first value stored",
        Duration::from_secs(30),
        || async {
            let series = admin
                .get("/api/v1/devices/edge-1/metrics/series")
                .await?
                .expect_status(200)?;
            Ok(series["series"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "tank_level")
                .then_some(()))
        },
    )
    .await?;

    let above_since = Utc::now();
    set_level(&agent, 93.0).await?;
    let alert = wait_until(
        "the rule's alert firing",
        Duration::from_secs(60),
        || async {
            Ok(alerts_of_rule(&viewer)
                .await?
                .into_iter()
                .find(|alert| alert.state == AlertState::Firing))
        },
    )
    .await?;
    let held = alert.started_at - above_since;
    assert!(
        held >= chrono::Duration::from_std(HOLD)?,
        "fired {held} after the value went above, before its 3 s"
    );
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.summary, "tank a at 93.0");
    assert_eq!(alert.labels.get("site").map(String::as_str), Some("a"));
    assert_eq!(alert.labels.get("team").map(String::as_str), Some("ops"));

    set_level(&agent, 12.0).await?;
    let resolved = wait_until(
        "the rule's alert resolved",
        Duration::from_secs(60),
        || async {
            let alert = get_alert(&viewer, alert.id).await?;
            Ok(alert.resolved_at.is_some().then_some(alert))
        },
    )
    .await?;
    assert_eq!(resolved.state, AlertState::Resolved);

    // Firing again, then the rule deleted: its alert resolves with it.
    set_level(&agent, 99.0).await?;
    let again = wait_until("a second alert firing", Duration::from_secs(60), || async {
        Ok(alerts_of_rule(&viewer)
            .await?
            .into_iter()
            .find(|a| a.id != alert.id && a.state == AlertState::Firing))
    })
    .await?;
    viewer
        .delete(&format!("/api/v1/alert-rules/{RULE}"))
        .await?
        .expect_status(403)?;
    admin
        .delete(&format!("/api/v1/alert-rules/{RULE}"))
        .await?
        .expect_status(204)?;
    assert_eq!(
        get_alert(&viewer, again.id).await?.state,
        AlertState::Resolved
    );
    admin
        .get(&format!("/api/v1/alert-rules/{RULE}"))
        .await?
        .expect_status(404)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_a_reported_condition_names_a_condition_type() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let body = |kind: &str| {
        json!({"name": "clock-skewed", "spec": {
            "severity": "warning",
            "condition": {"status": {"condition": kind}}
        }})
    };
    assert_eq!(
        refused_field(&admin, body("clock skewed")).await?,
        "spec.condition.status.condition"
    );
    let created = admin
        .post("/api/v1/alert-rules", body("ClockSkewed"))
        .await?
        .expect_status(201)?;
    assert_eq!(
        created["spec"]["condition"],
        json!({"status": {"condition": "ClockSkewed"}})
    );
    Ok(())
}
