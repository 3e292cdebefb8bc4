//! Device logs for the operator: the archive's windows, filters and pages,
//! live following (also across replicas), retention. Real tetherd, a real
//! tether-agent fed through its local API socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, post_local, wait_until};

use crate::support::{minutes_ago, on_both_databases, store_of};

on_both_databases!(
    the_archive_answers_exact_windows_filters_and_pages,
    a_follower_sees_the_lines_stored_from_its_start_and_only_those_it_asked_for,
);

const LINES: u64 = 3000;

/// Pushes lines `range` through the agent's local API: priority `i % 8`,
/// unit `a` for even `i` and `b` for odd, message `{prefix} {i:05}`, time
/// `start + 10 ms · i`.
async fn push(
    socket: &Path,
    prefix: &str,
    range: std::ops::Range<u64>,
    start: DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut body = String::new();
    for i in range {
        let unit = if i % 2 == 0 { "a" } else { "b" };
        body.push_str(
            &json!({"message": format!("{prefix} {i:05}"), "priority": i % 8, "unit": unit,
                "at": at(start, i)})
            .to_string(),
        );
        body.push('\n');
    }
    post_local(socket, "/v1/logs", &body).await?;
    Ok(())
}

fn at(start: DateTime<Utc>, i: u64) -> DateTime<Utc> {
    start + chrono::Duration::milliseconds(10 * i as i64)
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn stored(admin: &ApiClient, device: &str) -> anyhow::Result<u64> {
    let usage = admin
        .get(&format!("/api/v1/devices/{device}/usage"))
        .await?
        .expect_status(200)?;
    usage["streams"]
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream"] == "logs"))
        .and_then(|logs| logs["storedRecords"].as_u64())
        .with_context(|| format!("no logs usage in {usage}"))
}

async fn wait_stored(admin: &ApiClient, device: &str, count: u64) -> anyhow::Result<()> {
    wait_until(
        &format!("{count} lines stored"),
        Duration::from_secs(60),
        || async move { Ok((stored(admin, device).await? >= count).then_some(())) },
    )
    .await
}

/// Every page of `path` (with its query) walked through `continue`:
/// messages in order, and how many pages.
async fn walk(admin: &ApiClient, path: &str) -> anyhow::Result<(Vec<String>, usize)> {
    let mut messages = Vec::new();
    let mut pages = 0;
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(token) => format!("{path}&continue={token}"),
            None => path.to_owned(),
        };
        let page = admin.get(&url).await?.expect_status(200)?;
        pages += 1;
        for item in page["items"].as_array().context("items")? {
            messages.push(item["message"].as_str().context("message")?.to_owned());
        }
        match page["continue"].as_str() {
            Some(token) => next = Some(token.to_owned()),
            None => return Ok((messages, pages)),
        }
    }
}

fn expected(prefix: &str, range: impl Iterator<Item = u64>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i:05}")).collect()
}

async fn enrolled(tetherd: &Tetherd, admin: &ApiClient) -> anyhow::Result<(Agent, PathBuf)> {
    let agent = Agent::enroll_online(tetherd, admin, "edge-1").await?;
    let socket = agent.local_api_socket();
    Ok((agent, socket))
}

async fn the_archive_answers_exact_windows_filters_and_pages(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let (_agent, socket) = enrolled(&tetherd, &admin).await?;
    let start = minutes_ago(30);
    push(&socket, "line", 0..LINES, start).await?;
    wait_stored(&admin, "edge-1", LINES).await?;

    let logs = "/api/v1/devices/edge-1/logs";
    let since = rfc3339(start);
    let (all, pages) = walk(&admin, &format!("{logs}?since={since}&limit=700")).await?;
    assert_eq!(all, expected("line", 0..LINES), "each line once, in order");
    assert_eq!(pages, 5, "3000 lines in pages of 700");

    // `since` inclusive, `until` exclusive, to the millisecond.
    let window = format!(
        "{logs}?since={}&until={}",
        rfc3339(at(start, 1000)),
        rfc3339(at(start, 2000))
    );
    let (lines, _) = walk(&admin, &window).await?;
    assert_eq!(lines, expected("line", 1000..2000));

    let (severe, _) = walk(&admin, &format!("{logs}?since={since}&priority=err")).await?;
    assert_eq!(severe, expected("line", (0..LINES).filter(|i| i % 8 <= 3)));
    let (unit_a, _) = walk(&admin, &format!("{logs}?since={since}&priority=0&unit=a")).await?;
    assert_eq!(unit_a, expected("line", (0..LINES).filter(|i| i % 8 == 0)));
    let (both_units, _) =
        walk(&admin, &format!("{logs}?since={since}&unit=a,b&limit=5000")).await?;
    assert_eq!(both_units.len() as u64, LINES);
    let (grepped, _) = walk(&admin, &format!("{logs}?since={since}&grep=line%200042")).await?;
    assert_eq!(grepped, expected("line", 420..430));

    // The same through the fleet listing, by label.
    admin
        .patch(
            "/api/v1/devices/edge-1",
            json!({"labels": {"site": "berlin"}}),
        )
        .await?
        .expect_status(200)?;
    let (fleet, _) = walk(
        &admin,
        &format!("/api/v1/logs?labelSelector=site%3Dberlin&since={since}&priority=0"),
    )
    .await?;
    assert_eq!(fleet, expected("line", (0..LINES).filter(|i| i % 8 == 0)));
    let elsewhere = admin
        .get(&format!(
            "/api/v1/logs?labelSelector=site%3Dparis&since={since}"
        ))
        .await?
        .expect_status(200)?;
    assert_eq!(elsewhere["items"], json!([]));

    // Bad input names what is wrong; nothing is read.
    let first = admin
        .get(&format!("{logs}?since={since}&limit=10"))
        .await?
        .expect_status(200)?;
    let token = first["continue"].as_str().context("more pages")?;
    for (query, needle) in [
        ("priority=loud", "priority"),
        ("since=soon", "since"),
        ("until=1w", "until"),
        (
            &format!(
                "since={}&until={}",
                rfc3339(at(start, 2000)),
                rfc3339(at(start, 1000))
            ) as &str,
            "earlier",
        ),
        (&format!("continue={token}") as &str, "continue token"),
        ("limit=0", "limit"),
        ("labelSelector=site%3Dberlin", "labelSelector"),
        ("color=blue", "color"),
    ] {
        let reply = admin.get(&format!("{logs}?{query}")).await?;
        let body = reply.expect_status(400).with_context(|| query.to_owned())?;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{query}: {body}"
        );
    }
    admin
        .get("/api/v1/devices/nobody/logs")
        .await?
        .expect_status(404)?;
    admin
        .get("/api/v1/logs?labelSelector=site%20in%20()")
        .await?
        .expect_status(400)?;

    // Retention takes the lines older than its limit and keeps the rest.
    let store = store_of(&tetherd).await?;
    let removed = store.delete_logs_before(at(start, 1500)).await?;
    assert_eq!(removed, 1500);
    let (kept, _) = walk(&admin, &format!("{logs}?since={since}&limit=5000")).await?;
    assert_eq!(kept, expected("line", 1500..LINES));
    Ok(())
}

async fn a_follower_sees_the_lines_stored_from_its_start_and_only_those_it_asked_for(
    database: Database,
) -> anyhow::Result<()> {
    let tetherd = Tetherd::start(database).await?;
    let admin = tetherd.admin().await?;
    let (_agent, socket) = enrolled(&tetherd, &admin).await?;
    let start = minutes_ago(10);
    push(&socket, "before", 0..100, start).await?;
    wait_stored(&admin, "edge-1", 100).await?;

    let mut follow = admin
        .get_json_lines("/api/v1/devices/edge-1/logs/follow?priority=warning&unit=a")
        .await?;
    assert_eq!(follow.status, 200);
    // Lines stored after the follow began, some of them with old times
    // (a spool replayed after an outage): they are new to the follower.
    push(&socket, "after", 0..200, minutes_ago(60)).await?;
    let wanted = expected("after", (0..200).filter(|i| i % 8 <= 4 && i % 2 == 0));
    let mut seen = Vec::new();
    while seen.len() < wanted.len() {
        let line = follow
            .next(Duration::from_secs(30))
            .await?
            .context("the stream ended")?;
        assert_eq!(line["device"], "edge-1");
        seen.push(line["message"].as_str().context("message")?.to_owned());
    }
    assert_eq!(seen, wanted, "new lines only, filtered, in order");

    for (path, status) in [
        ("/api/v1/devices/nobody/logs/follow", 404),
        ("/api/v1/devices/edge-1/logs/follow?priority=11", 400),
        ("/api/v1/devices/edge-1/logs/follow?since=60", 400),
        ("/api/v1/logs/follow", 400),
    ] {
        let reply = admin.get(path).await?;
        assert_eq!(reply.status.as_u16(), status, "{path}: {}", reply.body);
    }
    Ok(())
}

/// Issue 13: `--follow` works whichever replica the follower and the
/// device are on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_on_every_replica_see_the_lines_stored_on_any() -> anyhow::Result<()> {
    let first = Tetherd::start(Database::Postgres).await?;
    let second = Tetherd::start_replica_of(&first, &[]).await?;
    let admin = first.admin().await?;
    let (_agent, socket) = enrolled(&first, &admin).await?;
    let second_admin = second.admin().await?;
    let mut followers = Vec::new();
    for client in [&admin, &second_admin] {
        let follow = client
            .get_json_lines("/api/v1/devices/edge-1/logs/follow")
            .await?;
        assert_eq!(follow.status, 200);
        followers.push(follow);
    }
    push(&socket, "live", 0..50, Utc::now()).await?;
    for follow in &mut followers {
        let mut seen = Vec::new();
        while seen.len() < 50 {
            let line = follow
                .next(Duration::from_secs(30))
                .await?
                .context("the stream ended")?;
            seen.push(line["message"].as_str().context("message")?.to_owned());
        }
        assert_eq!(seen, expected("live", 0..50));
    }
    Ok(())
}
