//! Several tetherd replicas on one PostgreSQL (issue 12).

use serde_json::json;
use tether_testkit::{Database, Tetherd};

/// Any replica answers any request: what one replica stored, another serves,
/// and one admin login works on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_database() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let second = Tetherd::start_replica_of(&first, &[]).await?;
    first
        .admin()
        .await?
        .post(
            "/api/v1/devices",
            json!({"name": "edge-1", "labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(201)?;
    let listed = second
        .admin()
        .await?
        .get("/api/v1/devices/edge-1")
        .await?
        .expect_status(200)?;
    assert_eq!(listed["labels"]["site"], "berlin");
    Ok(())
}
