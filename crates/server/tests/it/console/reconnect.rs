//! The console's live streams over a connection that breaks: Chromium
//! reaches tetherd through a proxy the test cuts (every connection
//! dropped, new ones refused) or pauses (nothing forwarded, every socket
//! kept open). Pages read their data again after the live feed comes
//! back, a feed gone silent is given up and reopened, and the device
//! page's log follows again without losing or repeating a line.

use std::time::Duration;

use serde_json::json;
use tether_testkit::browser::{Browser, PageRecord};
use tether_testkit::{Agent, ApiClient, Database, TcpProxy, Tetherd, post_local, wait_until};

use super::{SHOWN, assert_stayed_at, log_in_at, texts};

/// How long the page may take to come back after the proxy forwards
/// again: the feed's next attempt waits out its backoff first (up to 15 s).
const BACK: Duration = Duration::from_secs(30);
/// The silence limit the watchdog test sets (the console's is 45 s): more
/// than tetherd's keepalive interval (15 s), so a quiet healthy stream
/// is never given up, and less than a test should wait.
const SILENCE_LIMIT_MS: u64 = 20_000;

/// Chromium through a proxy to `tetherd`, logged in as the admin with the
/// live feed up; `silence_limit_ms` shortens the streams' watchdog.
async fn console_through_proxy(
    tetherd: &Tetherd,
    silence_limit_ms: Option<u64>,
) -> anyhow::Result<(Browser, TcpProxy, String)> {
    let (proxy, url) = TcpProxy::to_url(&tetherd.api_url).await?;
    let browser = Browser::start().await?;
    if let Some(limit) = silence_limit_ms {
        // Before logging in: every stream opened afterwards reads it.
        browser.navigate(&format!("{url}/")).await?;
        browser
            .evaluate(&format!(
                "sessionStorage.setItem('tether.test.silenceLimitMs', '{limit}')"
            ))
            .await?;
    }
    log_in_at(&browser, &url, "admin", tetherd.admin_password()).await?;
    browser.wait_for_selector(".cards", SHOWN).await?;
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    Ok((browser, proxy, url))
}

/// Opens device `name`'s page through `url` and waits until it has read
/// all it reads at first (its metrics and recent actions), after which it
/// listens to the live feed: a break before then would meet its first
/// load, which shows that tetherd cannot be reached.
async fn open_device_page(browser: &Browser, url: &str, name: &str) -> anyhow::Result<()> {
    browser.navigate(&format!("{url}/#/devices/{name}")).await?;
    browser
        .wait_for_true(
            "the device page to have loaded",
            "document.querySelector('#action-history') !== null \
             && document.querySelector('#metric-chart .loading, #action-history .loading') === null",
            SHOWN,
        )
        .await
}

/// An enrolled device whose agent is stopped: offline.
async fn offline_device(tetherd: &Tetherd, admin: &ApiClient, name: &str) -> anyhow::Result<Agent> {
    let mut agent = Agent::enroll_online(tetherd, admin, name).await?;
    agent.stop().await?;
    agent.wait_presence(admin, "offline").await?;
    Ok(agent)
}

/// The page's record without the failed loads a broken connection causes
/// (`net::ERR_…`), which a real break also logs; anything else stays.
fn without_broken_connections(record: PageRecord) -> PageRecord {
    PageRecord {
        errors: record
            .errors
            .into_iter()
            .filter(|error| !(error.starts_with("network (") && error.contains("net::ERR_")))
            .collect(),
        ..record
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_reads_presence_again_when_the_live_feed_comes_back() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = offline_device(&tetherd, &admin, "edge-gap").await?;
    let (browser, proxy, url) = console_through_proxy(&tetherd, None).await?;
    browser.navigate(&format!("{url}/#/devices")).await?;
    browser
        .wait_for_text("tr[data-device=edge-gap] td.presence", "offline", SHOWN)
        .await?;
    // Gone at a page load: what follows happens without one.
    browser.evaluate("window.stillTheSamePage = true").await?;

    // The device comes online while the feed is cut: its event is sent to
    // nobody, and the row cannot change.
    proxy.cut();
    browser
        .wait_for_selector(".live[data-state=connecting]", SHOWN)
        .await?;
    agent.start()?;
    agent.wait_presence(&admin, "online").await?;
    assert_eq!(
        texts(&browser, "tr[data-device=edge-gap] td.presence").await?,
        ["offline"],
        "the row cannot have heard of it"
    );

    // Once the feed is back, the list is read again.
    proxy.restore();
    browser
        .wait_for_true(
            "the row to show the device online",
            "document.querySelector('tr[data-device=\"edge-gap\"] td.presence')?.textContent === 'online'",
            BACK,
        )
        .await?;
    assert_eq!(
        texts(&browser, ".live").await?,
        ["Live"],
        "the header says the page is live again"
    );
    assert_eq!(
        browser.evaluate("window.stillTheSamePage === true").await?,
        json!(true),
        "no page load in between"
    );
    assert_stayed_at(&without_broken_connections(browser.record()), &url);
    Ok(())
}

/// A connection that stays open but delivers nothing (a stalled path) is
/// noticed by the silence of its keepalives, given up and reopened; the
/// device page then reads its presence again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_live_feed_is_given_up_and_reopened() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let mut agent = offline_device(&tetherd, &admin, "edge-stall").await?;
    let (browser, proxy, url) = console_through_proxy(&tetherd, Some(SILENCE_LIMIT_MS)).await?;
    open_device_page(&browser, &url, "edge-stall").await?;
    browser.wait_for_text("h1 .badge", "offline", SHOWN).await?;
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    browser.evaluate("window.stillTheSamePage = true").await?;

    // Nothing reaches the page and nothing closes: only the watchdog can
    // tell.
    proxy.pause();
    let limit = Duration::from_millis(SILENCE_LIMIT_MS);
    browser
        .wait_for_selector(".live[data-state=connecting]", limit + SHOWN)
        .await?;
    agent.start()?;
    agent.wait_presence(&admin, "online").await?;
    assert_eq!(texts(&browser, "h1 .badge").await?, ["offline"]);

    // The attempt under way (or the next) goes through once bytes flow.
    proxy.restore();
    browser
        .wait_for_true(
            "the heading to show the device online",
            "document.querySelector('h1 .badge')?.textContent === 'online'",
            limit + BACK,
        )
        .await?;
    browser
        .wait_for_selector(".live[data-state=live]", SHOWN)
        .await?;
    assert_eq!(
        browser.evaluate("window.stillTheSamePage === true").await?,
        json!(true),
        "no page load in between"
    );
    assert_stayed_at(&without_broken_connections(browser.record()), &url);
    Ok(())
}

/// Ships a log line through `device`'s agent's local API and waits until
/// tetherd has stored it.
async fn ship_line(
    agent: &Agent,
    admin: &ApiClient,
    device: &str,
    message: &str,
) -> anyhow::Result<()> {
    post_local(
        &agent.local_api_socket(),
        "/v1/logs",
        &format!(
            "{}\n",
            json!({"message": message, "priority": 6, "unit": "app"})
        ),
    )
    .await?;
    wait_until("the line stored", Duration::from_secs(30), || async {
        let page = admin
            .get(&format!("/api/v1/devices/{device}/logs?since=5m"))
            .await?
            .expect_status(200)?;
        Ok(page.to_string().contains(message).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_log_follows_again_after_a_break_and_shows_each_line_once() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let agent = Agent::enroll_online(&tetherd, &admin, "edge-log").await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let [before, during, after] = ["before", "during", "after"].map(|when| format!("{when}-{run}"));
    ship_line(&agent, &admin, "edge-log", &before).await?;

    let (browser, proxy, url) = console_through_proxy(&tetherd, None).await?;
    open_device_page(&browser, &url, "edge-log").await?;
    browser.wait_for_text("#log-lines", &before, SHOWN).await?;
    browser
        .wait_for_text("#log-state", "Following", SHOWN)
        .await?;

    // A line stored while the stream is down is read back after it.
    proxy.cut();
    browser
        .wait_for_text("#log-state", "Reconnecting…", SHOWN)
        .await?;
    ship_line(&agent, &admin, "edge-log", &during).await?;
    proxy.restore();
    browser.wait_for_text("#log-lines", &during, BACK).await?;
    browser
        .wait_for_text("#log-state", "Following", SHOWN)
        .await?;

    // And the stream follows again.
    ship_line(&agent, &admin, "edge-log", &after).await?;
    browser.wait_for_text("#log-lines", &after, SHOWN).await?;
    let shown = texts(&browser, "#log-lines li").await?;
    let place = |marker: &str| {
        let found: Vec<usize> = shown
            .iter()
            .enumerate()
            .filter(|(_, line)| line.contains(marker))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(found.len(), 1, "{marker} shown once: {shown:#?}");
        found[0]
    };
    assert!(
        place(&before) < place(&during) && place(&during) < place(&after),
        "in the order written: {shown:#?}"
    );
    assert_stayed_at(&without_broken_connections(browser.record()), &url);
    Ok(())
}

/// Replaces the page's `fetch` for the streams: each path in `answers`
/// gets its listed answers first (an HTTP status, or an error line's code
/// after a 200), then the real one; `window.faked` lists those given.
/// tetherd answers these when busy, down or a reader lags behind; the
/// test cannot make a real tetherd do so on demand.
fn fake_stream_answers(answers: &serde_json::Value) -> String {
    format!(
        "window.fakeAnswers = {answers}; window.faked ??= []; \
         window.realFetch ??= window.fetch; \
         window.fetch = (url, init) => {{ \
           const next = window.fakeAnswers[url]?.shift(); \
           if (next === undefined) return window.realFetch(url, init); \
           window.faked.push(`${{url}} ${{next}}`); \
           const error = (code) => JSON.stringify({{error: {{code, message: `fake ${{code}}`}}}}); \
           return Promise.resolve(typeof next === 'number' \
             ? new Response(error('busy'), {{status: next, headers: {{'Content-Type': 'application/json'}}}}) \
             : new Response(`${{error(next)}}\\n`, {{status: 200, headers: {{'Content-Type': 'application/x-ndjson'}}}})); \
         }}; true"
    )
}

/// A 503, a 429 or an error line is tried again with backoff, on the live
/// feed and the log follow alike, saying "Reconnecting…" meanwhile; a 401
/// ends the session as any call's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_broken_streams_are_tried_again_and_a_401_ends_the_session() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    super::create_device(&admin, "edge-busy", json!({})).await?;
    let (browser, proxy, url) = console_through_proxy(&tetherd, None).await?;
    open_device_page(&browser, &url, "edge-busy").await?;
    browser
        .wait_for_text("#log-state", "Following", SHOWN)
        .await?;
    browser
        .evaluate(&fake_stream_answers(&json!({
            "/api/v1/events/follow": [503, 429, "too_slow"],
            "/api/v1/devices/edge-busy/logs/follow": [503, "database_unavailable"],
        })))
        .await?;
    // Both streams break; their next attempts get the answers above.
    proxy.cut();
    browser
        .wait_for_selector(".live[data-state=connecting]", SHOWN)
        .await?;
    browser
        .wait_for_text("#log-state", "Reconnecting…", SHOWN)
        .await?;
    proxy.restore();
    browser
        .wait_for_true(
            "every fake answer given, and both streams open again",
            "window.faked.length === 5 \
             && document.querySelector('.live')?.dataset.state === 'live' \
             && document.querySelector('#log-state')?.textContent === 'Following'",
            BACK,
        )
        .await?;
    assert_eq!(
        texts(&browser, "h1").await?.len(),
        1,
        "still on the device page"
    );

    // The session ended: the feed's 401 returns to the login page. (On the
    // overview: the log's follow, on the device page, would meet a 401 of
    // its own once the page forgot the token.)
    browser.navigate(&format!("{url}/#/")).await?;
    browser.wait_for_selector(".cards", SHOWN).await?;
    browser
        .evaluate(&fake_stream_answers(
            &json!({"/api/v1/events/follow": [401]}),
        ))
        .await?;
    proxy.cut();
    proxy.restore();
    browser
        .wait_for_text(".login .notice", "Your session expired", BACK)
        .await?;
    assert_stayed_at(&without_broken_connections(browser.record()), &url);
    Ok(())
}
