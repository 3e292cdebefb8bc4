//! What an operator's monitoring reads from each replica.

use serde_json::json;
use tether_testkit::{Agent, Database, Tetherd};

use crate::support::run;

/// Prometheus scrapes with the token tetherd keeps in its data dir and sees
/// the sessions it holds and what happened to actions; without the token
/// it learns nothing and is told where the token is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_sessions_and_actions_with_the_scrape_token() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-1").await?;
    let done = run(&admin, "edge-1", "get-node-ip", json!({})).await?;
    assert_eq!(done["state"], "succeeded");

    let anonymous = tetherd.anonymous()?;
    let (status, refused) = anonymous.get_text("/metrics").await?;
    assert_eq!(status, 401);
    assert!(refused.contains("metrics-token"), "{refused}");
    let (status, _) = admin.get_text("/metrics").await?;
    assert_eq!(status, 401, "a login session is not a scrape credential");

    let token = std::fs::read_to_string(tetherd.data_dir().join("metrics-token"))?;
    let scraper = anonymous.with_token(Some(token.trim().to_owned()));
    let (status, text) = scraper.get_text("/metrics").await?;
    assert_eq!(status, 200, "{text}");
    for line in [
        "tether_device_sessions 1",
        "tether_actions_finished_total{state=\"succeeded\"} 1",
        "tether_open_actions{state=\"pending\"} 0",
        "tether_database_connections_max 4",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        !text.contains("tether_ingest_seconds_count 0"),
        "the answer and the birth were ingested:\n{text}"
    );
    Ok(())
}
