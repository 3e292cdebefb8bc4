//! The device list with 50,000 devices registered: its first page shows
//! within a second and scrolling keeps up with the screen, measured in the
//! browser (the figures are printed, and kept in BENCHMARKS.md).

use anyhow::Context;
use serde_json::Value;
use sqlx::Connection as _;
use tether_testkit::browser::Browser;
use tether_testkit::{Database, Tetherd};

use super::{assert_stayed_home, log_in_as_admin};

const DEVICES: i64 = 50_000;
/// The bound for the first page, from the click to the frame
/// showing it.
const FIRST_PAGE_MS: f64 = 1_000.0;
/// A frame this long is a visible stutter (three frames missed at 60 Hz);
/// a loaded CI machine may miss one or two, not most.
const STUTTER_MS: f64 = 50.0;

/// Registers `count` devices straight into tetherd's SQLite database in one
/// statement, each seen a second before the one before it: 50,000 through
/// the API would take minutes in a debug build, and the list reads the
/// same rows either way.
async fn register_devices(tetherd: &Tetherd, count: i64) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let url = format!(
        "sqlite://{}",
        tetherd.data_dir().join("tether.db").display()
    );
    let mut connection = sqlx::AnyConnection::connect(&url)
        .await
        .context("opening tetherd's database")?;
    let now = chrono::Utc::now().timestamp_millis();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO devices (name, labels, presence, created_at, last_seen) \
         SELECT printf('edge-%05d', i), '{}', 'offline', $2, $2 - i * 1000 FROM n",
    )
    .bind(count)
    .bind(now)
    .execute(&mut connection)
    .await
    .context("registering the devices")?;
    Ok(())
}

/// Goes to `fragment` and answers the milliseconds until the frame that
/// shows a full page of rows.
async fn time_to_rows(browser: &Browser, fragment: &str) -> anyhow::Result<f64> {
    let elapsed = browser
        .evaluate(&format!(
            "(async () => {{
               const before = document.querySelector('table.devices tbody');
               const start = performance.now();
               location.hash = {fragment:?};
               const shown = () => {{
                 const rows = document.querySelector('table.devices tbody');
                 return rows !== null && rows !== before && rows.rows.length === 50;
               }};
               while (!shown()) await new Promise((resolve) => requestAnimationFrame(resolve));
               await new Promise((resolve) => requestAnimationFrame(resolve));
               return performance.now() - start;
             }})()"
        ))
        .await?;
    elapsed.as_f64().context("a duration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_50000_devices_the_first_page_shows_within_a_second_and_scrolls_smoothly()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    register_devices(&tetherd, DEVICES).await?;
    let admin = tetherd.admin().await?;
    let summary = admin
        .get("/api/v1/devices/summary")
        .await?
        .expect_status(200)?;
    assert_eq!(summary["total"]["total"], DEVICES);

    let browser = Browser::start().await?;
    browser.set_viewport(1280, 800).await?;
    log_in_as_admin(&browser, &tetherd).await?;
    let by_name = time_to_rows(&browser, "#/devices").await?;
    let first = browser
        .evaluate("document.querySelector('table.devices tbody tr')?.dataset.device")
        .await?;
    assert_eq!(first, "edge-00001");
    let by_last_seen = time_to_rows(&browser, "#/devices?sort=-lastSeen").await?;
    let searched = time_to_rows(&browser, "#/devices?search=edge-4").await?;
    let next = browser
        .evaluate("document.querySelector('nav.pager a[rel=next]')?.getAttribute('href')")
        .await?;
    let next = next.as_str().context("a link to the next page")?.to_owned();
    let next_page = time_to_rows(&browser, &next).await?;

    // Scrolling the page down and up a few pixels a frame, as a wheel does.
    let scrolled: Value = browser
        .evaluate(
            "(async () => {
               const frames = [];
               let last = performance.now();
               const bottom = document.documentElement.scrollHeight - innerHeight;
               const steps = [];
               for (let y = 0; y <= bottom; y += 60) steps.push(y);
               for (const y of [...steps, ...steps.reverse()]) {
                 window.scrollTo(0, y);
                 await new Promise((resolve) => requestAnimationFrame(resolve));
                 const now = performance.now();
                 frames.push(now - last);
                 last = now;
               }
               frames.sort((a, b) => a - b);
               return {frames: frames.length, bottom,
                 median: frames[Math.floor(frames.length / 2)],
                 p95: frames[Math.floor(frames.length * 0.95)],
                 stutters: frames.filter((frame) => frame > 50).length};
             })()",
        )
        .await?;
    eprintln!(
        "50,000 devices: first page by name {by_name:.0} ms, by last seen {by_last_seen:.0} ms, \
         its next page {next_page:.0} ms, a search matching 10,000 {searched:.0} ms; \
         scrolling {scrolled}"
    );
    assert!(
        [by_name, by_last_seen, next_page, searched]
            .iter()
            .all(|&ms| ms < FIRST_PAGE_MS),
        "a page took {by_name:.0} ms by name, {by_last_seen:.0} ms by last seen, \
         {next_page:.0} ms the next, {searched:.0} ms searched"
    );
    let frames = scrolled["frames"].as_f64().unwrap_or_default();
    assert!(
        scrolled["bottom"].as_f64().unwrap_or_default() > 800.0,
        "the page is long enough to scroll: {scrolled}"
    );
    let stutters = scrolled["stutters"].as_f64().unwrap_or(f64::MAX);
    assert!(
        stutters <= frames / 10.0 && scrolled["median"].as_f64().unwrap_or(f64::MAX) < STUTTER_MS,
        "scrolling stuttered: {scrolled}"
    );
    assert_stayed_home(&browser.record(), &tetherd);
    Ok(())
}
