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
    let mut agent = Agent::enroll_online(&dying, &admin, "roamer").await?;

    // The endpoint list the agent stored puts the replica it enrolled on
    // first; make sure the survivor is on it too, as a cluster's answer has it.
    agent.stop().await?;
    let config_path = agent.state_file("agent.toml");
    let mut config: toml::Table = std::fs::read_to_string(&config_path)?.parse()?;
    let urls = vec![dying.mqtt_url.clone(), first.mqtt_url.clone()];
    config.insert("mqtt_urls".into(), urls.into());
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    agent.start()?;
    let survivor = first.admin().await?;
    survivor.wait_presence("roamer", "online").await?;

    dying.kill();
    let reconnected = format!("connected to {}", first.mqtt_url);
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
        agent.log().contains(&format!("trying {}", first.mqtt_url)),
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
