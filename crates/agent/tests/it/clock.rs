//! An agent whose clock is a day off still runs actions inside their TTL and
//! refuses them after it: expiry is counted from the time left that tetherd
//! sends, on the device's own monotonic clock. The clock is shifted with
//! libfaketime (Debian package `faketime`), which also shifts what the
//! agent's TLS checks of tetherd's certificate see.

use std::time::{Duration, Instant};

use serde_json::json;
use tether_testkit::http_target::{Behaviour, HttpTarget};
use tether_testkit::{Agent, Database, Tetherd, faketime_env, wait_until};

use crate::support::{newest_sample, outcome, request};

async fn actions_keep_their_ttl_with_the_clock_off_by(offset: &str, direction: &str) {
    let tetherd = Tetherd::start(Database::Sqlite)
        .await
        .expect("tetherd starts");
    let admin = tetherd.admin().await.expect("admin logs in");
    let env = faketime_env(offset).expect("libfaketime is installed");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::enroll_with_env(&tetherd, &admin, "skewed", &env)
        .await
        .expect("agent enrolls");
    agent
        .wait_presence(&admin, "online")
        .await
        .expect("an agent a day off enrolls and connects over TLS");

    // Inside its TTL: runs. (Compared with the device's clock, an agent a
    // day ahead would have answered 410.)
    let id = request(
        &admin,
        &agent.name,
        json!({"action": "get-node-ip", "ttlSeconds": 30}),
    )
    .await
    .expect("action accepted");
    let done = outcome(&admin, &id).await.expect("action ends");
    assert_eq!(done["state"], "succeeded", "{done}\n{}", agent.log());

    // Past its TTL before the agent could start it: refused with 410. The
    // agent is busy with a request that hangs while a short-lived action
    // waits behind it. (Compared with the device's clock, an agent a day
    // behind would have run it.)
    let target = HttpTarget::start(Behaviour::Hang).await.expect("target");
    let busy = request(
        &admin,
        &agent.name,
        json!({"action": "send-api", "input": {"href": target.url}}),
    )
    .await
    .expect("send-api accepted");
    target.wait_for_requests(1).await.expect("agent is busy");
    let ttl = Duration::from_secs(2);
    let queued_at = Instant::now();
    let short = request(
        &admin,
        &agent.name,
        json!({"action": "get-node-ip", "ttlSeconds": ttl.as_secs()}),
    )
    .await
    .expect("short action accepted");
    // The TTL is the thing under test: let it run out while the action waits.
    tokio::time::sleep(ttl.saturating_sub(queued_at.elapsed()) + Duration::from_secs(1)).await;
    drop(target); // the hanging request fails; the agent takes the next one
    let busy = outcome(&admin, &busy).await.expect("send-api ends");
    assert_eq!(busy["state"], "failed", "{busy}");
    let expired = outcome(&admin, &short).await.expect("short action ends");
    assert_eq!(expired["state"], "expired", "{expired}\n{}", agent.log());
    assert_eq!(expired["statusCode"], 410, "{expired}");

    let log = agent.log();
    let offset_line = log
        .lines()
        .find(|line| line.contains("this device's clock is"))
        .unwrap_or_else(|| panic!("the agent logs its clock offset:\n{log}"));
    let seconds: f64 = offset_line
        .split("clock is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("the offset is a number of seconds: {offset_line}"));
    assert!(
        (seconds - 86_400.0).abs() < 60.0 && offset_line.contains(direction),
        "{offset_line}"
    );

    // Samples are dated by tetherd's clock, so its clock window takes them.
    let stats = request(
        &admin,
        &agent.name,
        json!({"action": "run-stats", "input": {"interval": 1}}),
    )
    .await
    .expect("run-stats accepted");
    assert_eq!(
        outcome(&admin, &stats).await.expect("ends")["state"],
        "succeeded"
    );
    let sampled_at = wait_until("a stored sample", Duration::from_secs(20), || {
        let admin = admin.clone();
        let device = agent.name.clone();
        async move {
            Ok(newest_sample(&admin, &device)
                .await?
                .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    let off_by = (chrono::Utc::now() - sampled_at).num_seconds().abs();
    assert!(
        off_by < 60,
        "sampledAt {sampled_at} is {off_by} s from tetherd's clock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_a_day_ahead_runs_actions_with_the_right_ttl() {
    actions_keep_their_ttl_with_the_clock_off_by("+1d", "ahead of").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_a_day_behind_runs_actions_with_the_right_ttl() {
    actions_keep_their_ttl_with_the_clock_off_by("-1d", "behind").await;
}
