//! What the agent's integration tests ask tetherd's API.

use anyhow::Context;
use serde_json::Value;
use tether_testkit::ApiClient;

pub async fn request(admin: &ApiClient, device: &str, body: Value) -> anyhow::Result<String> {
    let accepted = admin
        .post(&format!("/api/v1/devices/{device}/actions"), body)
        .await?
        .expect_status(202)?;
    Ok(accepted["correlationId"]
        .as_str()
        .context("correlationId")?
        .to_owned())
}

pub async fn outcome(admin: &ApiClient, id: &str) -> anyhow::Result<Value> {
    admin
        .get(&format!("/api/v1/actions/{id}?waitSeconds=30"))
        .await?
        .expect_status(200)
}

pub async fn newest_sample(admin: &ApiClient, device: &str) -> anyhow::Result<Option<String>> {
    let metrics = admin
        .get(&format!("/api/v1/devices/{device}/metrics?limit=1"))
        .await?
        .expect_status(200)?;
    Ok(metrics["items"][0]["sampledAt"].as_str().map(str::to_owned))
}
