//! While tetherd is unreachable the agent loses nothing: metrics samples go
//! to its disk spool (bounded; `crates/agent/src/spool`) and reach tetherd
//! once it is back, and so does an answer made meanwhile.
//! (The 30-minute RSS figure is `tether-bench --mode agent-offline`.)

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tether_testkit::http_target::{Behaviour, HttpTarget};
use tether_testkit::{Agent, Database, Tetherd, wait_until};

use crate::support::{newest_sample, outcome, request};

async fn wait_for_log(agent: &Agent, what: &str, needle: &str, count: usize) -> anyhow::Result<()> {
    wait_until(what, Duration::from_secs(30), || {
        let found = agent.log().matches(needle).count() >= count;
        async move { Ok(found.then_some(())) }
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_the_agent_keeps_its_samples_and_its_answers() {
    let mut tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let agent = Agent::enroll_online(&tetherd, &admin, "offline")
        .await
        .expect("agent online");
    let stats = request(
        &admin,
        "offline",
        json!({"action": "run-stats", "input": {"interval": 1}}),
    )
    .await
    .expect("run-stats accepted");
    assert_eq!(
        outcome(&admin, &stats).await.expect("ends")["state"],
        "succeeded"
    );
    let before = wait_until("a first sample", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move { newest_sample(&admin, "offline").await }
    })
    .await
    .expect("samples arrive while connected");

    // An action in progress when tetherd goes away, answered while it is away.
    let target = HttpTarget::start(Behaviour::Hang).await.expect("target");
    let answered_offline = request(
        &admin,
        "offline",
        json!({"action": "send-api", "input": {"href": target.url}}),
    )
    .await
    .expect("send-api accepted");
    target.wait_for_requests(1).await.expect("agent is busy");
    tetherd.kill();
    let down_from = chrono::Utc::now();
    drop(target);
    wait_for_log(&agent, "the answer made offline", "answered 502", 1)
        .await
        .expect("the agent answers while tetherd is down");
    // A few failed reconnects: samples were due meanwhile.
    wait_for_log(&agent, "failed reconnects", "; trying mqtts://", 3)
        .await
        .expect("the agent keeps trying");

    let down_until = chrono::Utc::now();
    tetherd.start_again().await.expect("tetherd starts again");
    let admin = tetherd.admin().await.expect("admin logs in again");
    let done = outcome(&admin, &answered_offline)
        .await
        .expect("send-api ends");
    assert_eq!(
        done["state"], "failed",
        "the answer made offline arrived: {done}"
    );
    assert_eq!(done["statusCode"], 502, "{done}");

    wait_until(
        "samples taken while tetherd was down",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            async move {
                let page = admin
                    .get("/api/v1/devices/offline/metrics?limit=200")
                    .await?
                    .expect_status(200)?;
                let items = page["items"].as_array().cloned().unwrap_or_default();
                Ok(items
                    .iter()
                    .filter_map(|sample| sample["sampledAt"].as_str())
                    .filter_map(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    .any(|at| at > down_from && at < down_until)
                    .then_some(()))
            }
        },
    )
    .await
    .expect("samples spooled offline arrive once tetherd is back");
    wait_until("samples after the outage", Duration::from_secs(30), || {
        let admin = admin.clone();
        let before = before.clone();
        async move {
            let newest = newest_sample(&admin, "offline").await?;
            Ok(newest.filter(|newest| *newest > before).map(drop))
        }
    })
    .await
    .expect("samples flow again once tetherd is back");
}
