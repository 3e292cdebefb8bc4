//! Live pages: what the fleet does shows without a reload, whichever
//! replica the device's session is on.

use std::time::Duration;

use serde_json::json;
use tether_testkit::browser::Browser;
use tether_testkit::{Agent, Database, Tetherd};

use super::{SHOWN, assert_stayed_home, log_in_as_admin, texts};

/// The text of the listed device's presence cell.
async fn listed_presence(browser: &Browser, device: &str) -> anyhow::Result<String> {
    let found = browser
        .evaluate(&format!(
            "document.querySelector('tr[data-device={}] td.presence')?.textContent ?? ''",
            json!(device)
        ))
        .await?;
    Ok(found.as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_show_live_on_a_page_served_by_another_replica() -> anyhow::Result<()> {
    let serving = Tetherd::start(Database::Postgres).await?;
    let holding = Tetherd::start_replica_of(&serving, &[]).await?;
    let on_holding = holding.admin().await?;
    let agent = Agent::enroll_online(&holding, &on_holding, "edge-live-1").await?;

    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &serving).await?;
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    browser
        .navigate(&format!("{}/#/devices", serving.api_url))
        .await?;
    browser
        .wait_for_selector("tr[data-device=edge-live-1]", SHOWN)
        .await?;
    assert_eq!(listed_presence(&browser, "edge-live-1").await?, "online");

    // The agent stops; its replica records the end, and the page, served
    // by the other one, shows it without a reload.
    // Gone at a page load: what follows happens without one.
    browser.evaluate("window.stillTheSamePage = true").await?;
    drop(agent);
    browser
        .wait_for_true(
            "the row to show offline",
            "document.querySelector('tr[data-device=\"edge-live-1\"] td.presence')?.textContent === 'offline'",
            SHOWN,
        )
        .await?;

    // The overview's counts follow a new device coming online.
    browser.navigate(&format!("{}/#/", serving.api_url)).await?;
    browser.wait_for_selector(".cards", SHOWN).await?;
    let online_card = ".card.online .count";
    assert_eq!(texts(&browser, online_card).await?, ["0"]);
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    let _second = Agent::enroll_online(&holding, &on_holding, "edge-live-2").await?;
    browser
        .wait_for_true(
            "the online count to become 1",
            "document.querySelector('.card.online .count')?.textContent === '1'",
            Duration::from_secs(20),
        )
        .await?;

    // On the device's page, an action requested elsewhere (the CLI, a
    // script) shows its answer among the recent actions as it arrives.
    browser
        .navigate(&format!("{}/#/devices/edge-live-2", serving.api_url))
        .await?;
    browser
        .wait_for_text("#action-history", "No action", SHOWN)
        .await?;
    on_holding
        .post(
            "/api/v1/devices/edge-live-2/actions",
            json!({"action": "get-node-ip", "input": {}}),
        )
        .await?
        .expect_status(202)?;
    browser
        .wait_for_text("#action-history tbody", "succeeded", SHOWN)
        .await?;
    assert_eq!(
        browser.evaluate("window.stillTheSamePage === true").await?,
        json!(true),
        "no page load in between"
    );
    assert_stayed_home(&browser.record(), &serving);
    Ok(())
}

/// The console's live feed is authorized once, when it opens: a session
/// that ends afterwards (logged out, or its user deleted by an admin) goes
/// on hearing the fleet for as long as the connection stays up. The stream
/// should end (or send its error line) once the token no longer
/// authenticates, as the next call on any other route would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_session_stops_hearing_the_fleet() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let viewer = tetherd.user_with_role("viewer").await?;
    let mut stream = viewer.get_json_lines("/api/v1/events/follow").await?;
    assert_eq!(stream.status, 200);
    viewer
        .post("/api/v1/logout", json!({}))
        .await?
        .expect_status(204)?;
    viewer.get("/api/v1/users/me").await?.expect_status(401)?;

    // A device comes online after the logout.
    let _agent = Agent::enroll_online(&tetherd, &admin, "edge-after-logout").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let change = match stream.next(left).await {
            // Ended, or nothing within the deadline: nothing was heard.
            Ok(None) | Err(_) => return Ok(()),
            Ok(Some(change)) => change,
        };
        assert!(
            change["event"]["device"] != "edge-after-logout",
            "a logged-out session heard the fleet: {change}"
        );
        if change.get("error").is_some() {
            return Ok(());
        }
    }
}

/// Each console tab holds `/events/follow` open for good (a device page its
/// log follower too). Over HTTP/1.1 Chromium opens at most 6 connections
/// per host, shared by every tab: with six tabs open, every other call of
/// every tab waited for a connection that never freed (review M1). Over
/// HTTP/2 they all share one connection (ADR 0035). The five extra streams
/// here are what five more tabs hold, fetched as `api.js` fetches
/// (`credentials: 'omit'`, which Chromium pools apart from requests that
/// may send cookies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_open_tabs_leave_the_console_able_to_call_tetherd() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let browser = Browser::start().await?;
    log_in_as_admin(&browser, &tetherd).await?;
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    let protocol = browser
        .evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await?;
    assert_eq!(protocol, json!("h2"), "the console is served over HTTP/2");
    browser
        .evaluate(
            "window.otherTabs = new AbortController(); \
             for (let i = 0; i < 5; i++) fetch('/api/v1/events/follow', {headers: \
               {Authorization: `Bearer ${sessionStorage.getItem('tether.token')}`}, \
               signal: otherTabs.signal, credentials: 'omit', cache: 'no-store'}).then((r) => r.body.getReader().read()).catch(() => {}); \
             true",
        )
        .await?;
    let answered = browser
        .evaluate(
            "Promise.race([ \
               fetch('/api/v1/users/me', {headers: \
                 {Authorization: `Bearer ${sessionStorage.getItem('tether.token')}`}, credentials: 'omit'}) \
                 .then((r) => r.status), \
               new Promise((resolve) => setTimeout(() => resolve('no answer in 10 s'), 10000))])",
        )
        .await?;
    browser.evaluate("otherTabs.abort(); true").await?;
    assert_eq!(
        answered,
        json!(200),
        "GET /users/me with six live feeds open"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}
