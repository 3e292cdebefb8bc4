//! An agent whose replica dies moves to another endpoint of the cluster and
//! keeps working there.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tether_testkit::{Agent, Database, Tetherd, wait_until};

use crate::support::{outcome, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_another_replica_when_its_own_dies() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let mut dying = Tetherd::start_replica_of(&first, &[]).await?;
    let admin = dying.admin().await?;
    let agent = Agent::enroll_online(&dying, &admin, "roamer").await?;

    // The cluster's answer listed every replica, the one it enrolled on first.
    let config: toml::Table = std::fs::read_to_string(agent.state_file("agent.toml"))?.parse()?;
    let urls: Vec<&str> = config["mqtt_urls"]
        .as_array()
        .context("agent.toml lists the cluster's endpoints")?
        .iter()
        .filter_map(|url| url.as_str())
        .collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(urls[0].ends_with(&port(&dying.mqtt_url)), "{urls:?}");
    let survivor = first.admin().await?;
    survivor.wait_presence("roamer", "online").await?;

    dying.kill();
    let reconnected = format!("connected to {}", urls[1]);
    wait_until(
        "the agent on the surviving replica",
        Duration::from_secs(30),
        || {
            let found = agent.log().contains(&reconnected);
            async move { Ok(found.then_some(())) }
        },
    )
    .await
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    assert!(
        agent.log().contains(&format!("trying {}", urls[1])),
        "the agent says where it fails over to:\n{}",
        agent.log()
    );

    let id = request(
        &survivor,
        "roamer",
        json!({"action": "get-node-ip", "input": {}}),
    )
    .await?;
    assert_eq!(outcome(&survivor, &id).await?["state"], "succeeded");
    Ok(())
}

fn port(url: &str) -> String {
    url.rsplit(':').next().unwrap_or_default().to_owned()
}
